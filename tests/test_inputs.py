"""Sampling takes what `model.predict` takes, streams datasets, shows progress."""

import io
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku


class _CallCounter(keras.layers.Layer):
    """Counts how often its Python `call` runs: once per trace."""

    calls = 0

    def call(self, x):
        self.calls += 1
        return x


@pytest.fixture(scope="module")
def counted_model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    counter = _CallCounter()
    hidden = counter(ku.layers.MCDropout(0.3)(hidden))
    outputs = keras.layers.Dense(2)(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", loss=ku.losses.gaussian_nll)
    return model, counter


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(230, 4)).astype("float32")
    y = rng.normal(size=(230, 1)).astype("float32")
    return x, y


class _Rows(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


def _in_memory(model, x):
    # 20 samples x 32 inputs per compiled call: the streamed inputs (batches
    # of 50) must be re-cut into the same chunks of 32.
    return ku.predict_regression(model, x, num_samples=20, batch_size=32, seed=5)


@pytest.mark.parametrize(
    "make",
    [
        lambda x, y: tf.data.Dataset.from_tensor_slices(x).batch(50),
        lambda x, y: tf.data.Dataset.from_tensor_slices((x,)).batch(50),
        lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(50),
        lambda x, y: tf.data.Dataset.from_tensor_slices((x, y, y[:, 0])).batch(50),
        lambda x, y: _Rows(x, y, 50),
        lambda x, y: ((x[i : i + 50], y[i : i + 50]) for i in range(0, len(x), 50)),
    ],
    ids=["x", "(x,)", "(x, y)", "(x, y, w)", "PyDataset", "generator"],
)
def test_streamed_inputs_give_exactly_the_in_memory_result(counted_model, rows, make):
    model, counter = counted_model
    x, y = rows
    expected = _in_memory(model, x)
    traces = counter.calls
    streamed = ku.predict_regression(
        model, make(x, y), num_samples=20, batch_size=32, seed=5
    )
    for field in ("mean", "std", "aleatoric_std", "epistemic_std"):
        np.testing.assert_array_equal(
            getattr(streamed, field), getattr(expected, field)
        )
    # Five batches of 50 (re-cut into 32s and a last 6) trace nothing new.
    assert counter.calls == traces


def test_streaming_many_batches_traces_a_bounded_number_of_times(counted_model, rows):
    model, counter = counted_model
    x, _ = rows
    ku.sample(model, x, num_samples=3, batch_size=32)  # chunks of 32 and a 6
    before = counter.calls
    for batch in (1, 7, 13, 50, 230):
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch)
        ku.sample(model, dataset, num_samples=3, batch_size=32)
    # However the data set is batched, the compiled step sees the same
    # chunks: no trace per batch, none at all here.
    assert counter.calls == before


def test_lists_tensors_and_one_element_lists_are_read_as_model_predict_does(
    classifier, class_inputs
):
    expected = ku.sample(classifier, class_inputs, 3, seed=2)
    for x in (
        class_inputs.tolist(),
        [class_inputs],
        list(class_inputs),
        tf.constant(class_inputs),
        [tf.constant(class_inputs)],
    ):
        np.testing.assert_allclose(ku.sample(classifier, x, 3, seed=2), expected)


def test_dict_inputs_reach_a_multi_input_model(class_inputs):
    a = keras.Input((8,), name="a")
    b = keras.Input((2,), name="b")
    merged = keras.layers.Concatenate()([a, ku.layers.MCDropout(0.5)(b)])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2)(merged))
    x = {"a": class_inputs, "b": np.ones((len(class_inputs), 2), "float32")}
    in_memory = ku.sample(model, x, num_samples=3, seed=0)
    streamed = ku.sample(
        model, tf.data.Dataset.from_tensor_slices(x).batch(16), num_samples=3, seed=0
    )
    assert in_memory.shape == (3, len(class_inputs), 2)
    np.testing.assert_array_equal(in_memory, streamed)


@pytest.mark.parametrize(
    "x, message",
    [
        (
            tf.data.Dataset.from_tensor_slices(np.zeros((0, 8), "float32")).batch(4),
            "at least one batch",
        ),
        (
            tf.data.Dataset.from_tensor_slices(np.zeros((4, 8), "float32")),
            r"rank 2.*must be batched",
        ),
        (
            tf.data.Dataset.from_tensor_slices(np.zeros((4, 8), "float32"))
            .batch(2)
            .repeat(),
            "infinite",
        ),
        (
            tf.data.Dataset.from_tensor_slices(
                np.full((4, 8), np.nan, "float32")
            ).batch(2),
            r"batch 0.*finite",
        ),
        ([[1.0, 2.0], [3.0]], "list of rows of the same shape"),
        ([], "at least one row"),
        (np.array(["a"] * 8).reshape(1, 8), "Expected numbers"),
    ],
    ids=["empty", "unbatched", "infinite", "nan", "ragged", "empty-list", "strings"],
)
def test_bad_inputs_are_refused_with_the_reason(classifier, x, message):
    with pytest.raises(ValueError, match=message):
        ku.predict_classification(classifier, x, num_samples=2)


def test_batches_of_different_shapes_are_refused():
    model = keras.Sequential([keras.Input((None, 2)), ku.layers.MCDropout(0.2)])

    def batches():
        yield np.ones((2, 3, 2), "float32")
        yield np.ones((2, 5, 2), "float32")

    with pytest.raises(ValueError, match=r"batch 1"):
        ku.sample(model, batches(), num_samples=2)


def test_verbose_one_shows_a_progress_bar_and_zero_is_silent(
    classifier, class_inputs, monkeypatch
):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    ku.predict_classification(classifier, class_inputs, 8, batch_size=10, verbose=1)
    shown = out.getvalue()
    # 40 inputs in calls of 10 inputs (x 8 samples): 4 calls.
    assert "4/4" in shown
    out.truncate(0)
    out.seek(0)
    ku.predict_classification(classifier, class_inputs, 8, batch_size=10, verbose=0)
    ku.predict_classification(classifier, class_inputs, 8, batch_size=10)
    assert out.getvalue() == ""  # "auto": not a terminal, and short


def test_verbose_two_prints_one_line_at_the_end(classifier, class_inputs, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    dataset = tf.data.Dataset.from_tensor_slices(class_inputs).batch(10)
    ku.predict_classification(classifier, dataset, 8, batch_size=10, verbose=2)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and "4/4" in lines[0]


@pytest.mark.parametrize("value", [3, -1, "yes", True, None])
def test_bad_verbose_is_rejected(classifier, class_inputs, value):
    with pytest.raises(ValueError, match=r"`verbose`.*Received"):
        ku.sample(classifier, class_inputs, 2, verbose=value)


def test_logits_without_from_logits_are_refused_not_averaged(class_inputs):
    keras.utils.set_random_seed(3)
    model = ku.models.mlp(8, 3, hidden_units=(16,), dropout_rate=0.2)  # logits
    with pytest.raises(ValueError, match="from_logits=True"):
        ku.predict_classification(model, class_inputs * 10, num_samples=5)
    prediction = ku.predict_classification(
        model, class_inputs, num_samples=5, from_logits=True
    )
    np.testing.assert_allclose(prediction.probs.sum(-1), 1.0, rtol=1e-6)


def test_a_sigmoid_unit_outside_zero_one_is_refused(class_inputs):
    model = keras.Sequential(
        [keras.Input((8,)), ku.layers.MCDropout(0.1), keras.layers.Dense(1)]
    )
    with pytest.raises(ValueError, match=r"probabilities.*from_logits=True"):
        ku.predict_classification(model, class_inputs * 10, num_samples=3)


def test_non_finite_values_in_any_field_warn_and_name_the_field(class_inputs):
    model = keras.Sequential(
        [keras.Input((8,)), ku.layers.MCDropout(0.1), keras.layers.Dense(2)]
    )
    # Means of about 1e3 are fine; log-variances of about 1e3 overflow.
    model.layers[-1].set_weights([np.full((8, 2), 300.0, "float32"), np.zeros(2)])
    with pytest.warns(RuntimeWarning, match=r"std.*aleatoric_std"):
        ku.predict_regression(model, np.abs(class_inputs), 4, variance_head=True)
