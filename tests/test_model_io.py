"""The models users bring: string inputs, several outputs, Keras's
`batch_size`, and the guesses sampling must not make silently."""

import io
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the dog sat",
    "cats and dogs play",
    "a cat ran far away",
    "the park is green",
]


def _text_classifier(rate):
    keras.utils.set_random_seed(3)
    vectorize = keras.layers.TextVectorization(max_tokens=30, output_sequence_length=6)
    vectorize.adapt(SENTENCES)
    inputs = keras.Input((), dtype="string")
    hidden = keras.layers.Embedding(30, 8)(vectorize(inputs))
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    hidden = ku.layers.MCDropout(rate)(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def text_classifier():
    return _text_classifier(0.5)


def test_a_text_classifier_at_rate_zero_equals_model_predict_on_strings():
    model = _text_classifier(0.0)
    prediction = ku.predict_classification(model, np.array(SENTENCES), 3, seed=0)
    expected = model.predict(tf.constant(SENTENCES), verbose=0)
    np.testing.assert_allclose(prediction.probs, expected, rtol=1e-5, atol=1e-6)


def test_a_text_classifier_mean_matches_calling_the_model_many_times(
    text_classifier,
):
    t = 2000
    prediction = ku.predict_classification(text_classifier, SENTENCES, t, seed=1)
    # Plain Keras: the model called T times (its MC layer draws at every call).
    x = tf.constant(SENTENCES)
    draws = np.stack([text_classifier(x, training=True).numpy() for _ in range(200)])
    reference = draws.mean(axis=0)
    # Two means of the same distribution: within 5 standard errors of each.
    spread = draws.std(axis=0)
    tolerance = 5 * spread * np.sqrt(1 / 200 + 1 / t) + 1e-6
    assert np.all(np.abs(prediction.probs - reference) <= tolerance)
    assert np.all(prediction.mutual_information > 0)


def test_string_arrays_lists_tensors_and_datasets_give_the_same_seeded_result(
    text_classifier,
):
    def probs(x, **kwargs):
        return ku.predict_classification(text_classifier, x, 16, seed=4, **kwargs).probs

    reference = probs(np.array(SENTENCES))
    for x in (
        SENTENCES,
        np.array(SENTENCES, dtype=object),
        np.array([s.encode() for s in SENTENCES]),
        tf.constant(SENTENCES),
        tf.data.Dataset.from_tensor_slices(SENTENCES).batch(4),
    ):
        np.testing.assert_array_equal(probs(x), reference)
    # Other chunks of inputs: the same draws, summed in another order.
    np.testing.assert_allclose(probs(SENTENCES, batch_size=2), reference, rtol=1e-6)
    samples = ku.sample(text_classifier, SENTENCES, 16, seed=4)
    np.testing.assert_allclose(samples.mean(axis=0), reference, rtol=1e-5)


def test_a_string_lookup_model_takes_strings_and_is_exported(tmp_path):
    keras.utils.set_random_seed(5)
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["red", "green", "blue"])(inputs)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(4, 6)(ids))
    hidden = ku.layers.MCDropout(0.3)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    x = np.array([["red"], ["blue"], ["purple"], ["green"]])
    prediction = ku.predict_classification(model, x, 50, seed=2)
    path = ku.export(model, tmp_path / "lookup", task="classification", num_samples=50)
    served = tf.saved_model.load(str(path))
    out = served.serve_seeded(tf.constant(x), tf.constant(2, tf.int64))
    np.testing.assert_allclose(out["probs"].numpy(), prediction.probs, rtol=1e-5)


def test_strings_given_to_a_numeric_input_are_refused(classifier):
    with pytest.raises(ValueError, match=r"`x`.*numbers.*Received: strings"):
        ku.sample(classifier, np.array([["a"] * 8]), 2)
    with pytest.raises(ValueError, match=r"`x`.*strings.*Received: an entry"):
        ku.sample(_text_classifier(0.1), np.array(["a", 3], dtype=object), 2)


def _two_heads():
    """A trunk with MC dropout and two heads; returns the model and the
    layers, so that single-output models can be built from the same ones."""
    keras.utils.set_random_seed(7)
    trunk = [
        keras.layers.Dense(16, activation="relu"),
        ku.layers.MCDropout(0.4),
        keras.layers.Dense(16, activation="relu"),
    ]
    price_head = keras.layers.Dense(1, name="price")
    kind_head = keras.layers.Dense(3, activation="softmax", name="kind")
    inputs = keras.Input((5,))
    hidden = inputs
    for layer in trunk:
        hidden = layer(hidden)
    outputs = {"price": price_head(hidden), "kind": kind_head(hidden)}
    model = keras.Model(inputs, outputs)

    def single(head):
        x = keras.Input((5,))
        h = x
        for layer in trunk:
            h = layer(h)
        return keras.Model(x, head(h))

    return model, single(price_head), single(kind_head)


@pytest.fixture(scope="module")
def heads():
    return _two_heads()


@pytest.fixture(scope="module")
def rows():
    return np.random.default_rng(8).normal(size=(30, 5)).astype("float32")


def test_each_head_equals_sampling_the_trunk_with_that_head_alone(heads, rows):
    model, price_only, kind_only = heads
    samples = ku.sample(model, rows, 20, seed=9)
    assert sorted(samples) == ["kind", "price"]
    assert samples["price"].shape == (20, 30, 1) and samples["kind"].shape == (
        20,
        30,
        3,
    )
    np.testing.assert_allclose(
        samples["price"], ku.sample(price_only, rows, 20, seed=9), rtol=1e-6
    )
    np.testing.assert_allclose(
        samples["kind"], ku.sample(kind_only, rows, 20, seed=9), rtol=1e-6
    )
    # The samples differ (the masks are drawn), so the equalities above say
    # both heads saw the trunk masks of the seed: the same ones.
    assert not np.allclose(samples["price"][0], samples["price"][1])


def test_a_head_that_is_a_function_of_another_gets_the_same_trunk_sample(rows):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((5,))
    hidden = ku.layers.MCDropout(0.5)(keras.layers.Dense(8, activation="relu")(inputs))
    logits = keras.layers.Dense(3, name="logits")(hidden)
    probs = keras.layers.Softmax(name="probs")(logits)
    model = keras.Model(inputs, [logits, probs])
    samples = ku.sample(model, rows, 25, seed=1)
    assert isinstance(samples, list) and len(samples) == 2
    # Plain numpy softmax of each logits sample: the probs of the same pass.
    exp = np.exp(samples[0] - samples[0].max(-1, keepdims=True))
    np.testing.assert_allclose(
        samples[1], exp / exp.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7
    )


class _Counter(keras.layers.Layer):
    """Counts how often its Python `call` runs (symbolic calls and traces)."""

    calls = 0

    def call(self, x):
        self.calls += 1
        return x


def test_the_trunk_runs_once_for_both_heads(rows):
    def calls_of_one_prediction(num_heads):
        counter = _Counter()
        inputs = keras.Input((5,))
        hidden = counter(ku.layers.MCDropout(0.4)(keras.layers.Dense(8)(inputs)))
        heads = {f"h{i}": keras.layers.Dense(2)(hidden) for i in range(num_heads)}
        model = keras.Model(inputs, heads if num_heads > 1 else heads["h0"])
        tasks = {
            i: {"task": "regression", "variance_head": False} for i in range(num_heads)
        }
        before = counter.calls
        ku.predict(model, rows, tasks, 10)
        return counter.calls - before

    # The twin and the compiled step call the trunk as often for three heads
    # as for one: once per pass, not once per head.
    assert calls_of_one_prediction(3) == calls_of_one_prediction(1)


def test_predict_with_tasks_equals_each_head_predicted_alone(heads, rows):
    model, _, _ = heads
    both = ku.predict(
        model,
        rows,
        tasks={
            "price": "regression",
            "kind": {"task": "classification", "votes": True},
        },
        num_samples=40,
        seed=3,
    )
    price = ku.predict_regression(model, rows, 40, seed=3, output="price")
    kind = ku.predict_classification(model, rows, 40, seed=3, votes=True, output="kind")
    np.testing.assert_allclose(both["price"].mean, price.mean, rtol=1e-6)
    np.testing.assert_allclose(
        both["price"].epistemic_std, price.epistemic_std, rtol=1e-5
    )
    np.testing.assert_allclose(both["kind"].probs, kind.probs, rtol=1e-6)
    np.testing.assert_array_equal(both["kind"].votes, kind.votes)
    # An output may be named by its index in `model.outputs` too.
    index = list(ku.sampling.output_names(model)).index("price")
    by_index = ku.predict_regression(model, rows, 40, seed=3, output=index)
    np.testing.assert_array_equal(by_index.mean, price.mean)
    # Against numpy on the raw samples of the same seed.
    raw = ku.sample(model, rows, 40, seed=3)
    np.testing.assert_allclose(
        both["price"].mean, raw["price"].astype(np.float64).mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        both["kind"].probs, raw["kind"].astype(np.float64).mean(0), rtol=1e-5
    )


def test_a_multi_output_model_without_output_names_its_outputs(heads, rows):
    model, _, _ = heads
    with pytest.raises(ValueError, match=r"`output`.*\['kind', 'price'\]"):
        ku.predict_regression(model, rows, 4)
    with pytest.raises(ValueError, match=r"`output`.*\['kind', 'price'\]"):
        ku.predict_classification(model, rows, 4, output="colour")
    with pytest.raises(ValueError, match=r"`tasks`"):
        ku.predict(model, rows, "regression")


def test_a_backbone_with_a_dict_of_sequence_and_pooled_outputs_is_sampled():
    keras.utils.set_random_seed(4)
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    sequence = ku.layers.MCDropout(0.3)(keras.layers.Embedding(50, 6)(token_ids))
    pooled_dense = keras.layers.Dense(4, activation="tanh")
    pooled = pooled_dense(keras.layers.GlobalAveragePooling1D()(sequence))
    backbone = keras.Model(
        token_ids, {"sequence_output": sequence, "pooled_output": pooled}
    )
    ids = np.random.default_rng(0).integers(0, 50, size=(7, 9)).astype("int32")
    samples = ku.sample(backbone, {"token_ids": ids}, 6, seed=0)
    assert samples["sequence_output"].shape == (6, 7, 9, 6)
    assert samples["pooled_output"].shape == (6, 7, 4)
    # The pooled output of each sample is the plain Keras head applied to
    # the same sample's sequence output.
    kernel, bias = (w.numpy() for w in pooled_dense.weights)
    expected = np.tanh(samples["sequence_output"].mean(axis=2) @ kernel + bias)
    np.testing.assert_allclose(samples["pooled_output"], expected, rtol=1e-4, atol=1e-5)


def test_an_export_serves_each_head_from_one_pass(heads, rows, tmp_path):
    model, _, _ = heads
    tasks = {
        "price": {"task": "regression", "variance_head": False},
        "kind": "classification",
    }
    path = ku.export(model, tmp_path / "heads", task=tasks, num_samples=30)
    served = tf.saved_model.load(str(path))
    out = served.serve_seeded(tf.constant(rows), tf.constant(6, tf.int64))
    assert {"price_mean", "price_epistemic_std", "kind_probs", "kind_entropy"} <= set(
        out
    )
    expected = ku.predict(model, rows, tasks, num_samples=30, seed=6)
    np.testing.assert_allclose(
        out["price_mean"].numpy(), expected["price"].mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        out["kind_probs"].numpy(), expected["kind"].probs, rtol=1e-5
    )
    # One task for a model with several outputs: which output is unclear.
    with pytest.raises(ValueError, match=r"`task`.*\['kind', 'price'\]"):
        ku.export(model, tmp_path / "one", task="regression")


@pytest.mark.parametrize("from_logits", [False, True])
def test_a_one_dimensional_output_is_refused_for_classification(rows, from_logits):
    inputs = keras.Input((5,))
    hidden = ku.layers.MCDropout(0.2)(inputs)
    unit = keras.layers.Dense(1, activation=None if from_logits else "sigmoid")(hidden)
    flat = keras.Model(inputs, keras.layers.Reshape(())(unit))
    with pytest.raises(ValueError, match=r"`model`.*class axis"):
        ku.predict_classification(flat, rows, 4, from_logits=from_logits)
    # The sigmoid unit that keeps (N, 1) is read as two classes.
    kept = keras.Model(inputs, unit)
    prediction = ku.predict_classification(kept, rows, 4, from_logits=from_logits)
    assert prediction.probs.shape == (30, 2)


@pytest.fixture(scope="module")
def wide_mlp():
    keras.utils.set_random_seed(0)
    return ku.models.mlp(8, 3, hidden_units=(32,), dropout_rate=0.3)


def test_seeded_means_do_not_depend_on_batch_size_or_chunking(wide_mlp):
    x = np.random.default_rng(1).normal(size=(45, 8)).astype("float32")
    reference = ku.predict_regression(wide_mlp, x, 30, seed=5, variance_head=False).mean
    for batch_size, max_rows in [
        (1, None),
        (7, None),
        (32, None),
        (None, None),
        (7, 50),
    ]:
        mean = ku.predict_regression(
            wide_mlp,
            x,
            30,
            seed=5,
            variance_head=False,
            batch_size=batch_size,
            max_rows_per_call=max_rows,
        ).mean
        np.testing.assert_allclose(mean, reference, rtol=1e-6, atol=1e-6)


def _calls(model, x, **kwargs):
    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        ku.predict_classification(model, x, 8, verbose=2, **kwargs)
    finally:
        sys.stdout = stdout
    return out.getvalue().strip().split("/")[0]


def test_batch_size_counts_inputs_per_call_as_in_model_predict(
    classifier, class_inputs
):
    # 40 inputs: batch_size=10 gives 4 calls, whatever the number of samples.
    assert _calls(classifier, class_inputs, batch_size=10) == "4"
    assert _calls(classifier, class_inputs, batch_size=32) == "2"
    # 10 inputs x 8 samples over a budget of 40 rows: samples in 2 calls each.
    assert _calls(classifier, class_inputs, batch_size=10, max_rows_per_call=40) == "8"


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_bad_max_rows_per_call_is_rejected(classifier, class_inputs, value):
    with pytest.raises(ValueError, match=r"`max_rows_per_call`.*positive integer"):
        ku.sample(classifier, class_inputs, 2, max_rows_per_call=value)


def test_sample_predict_and_export_share_the_default_num_samples(
    classifier, class_inputs, tmp_path
):
    default = ku.sampling.DEFAULT_NUM_SAMPLES
    assert ku.sample(classifier, class_inputs[:3]).shape[0] == default
    votes = ku.predict_classification(classifier, class_inputs[:3], votes=True).votes
    np.testing.assert_array_equal(votes.sum(axis=1), default)
    path = ku.export(classifier, tmp_path / "c", task="classification", votes=True)
    served = tf.saved_model.load(str(path))
    np.testing.assert_array_equal(
        served.serve(tf.constant(class_inputs[:3]))["votes"].numpy().sum(axis=1),
        default,
    )


def test_an_uncompiled_even_width_output_warns_once_and_says_how_to_state_it(
    class_inputs,
):
    keras.utils.set_random_seed(0)
    model = ku.models.mlp(8, 2, hidden_units=(8,), dropout_rate=0.2)
    with pytest.warns(UserWarning, match=r"variance_head=True.*variance_head=False"):
        guessed = ku.predict_regression(model, class_inputs, 5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ku.predict_regression(model, class_inputs, 5, seed=0)
        stated = ku.predict_regression(
            model, class_inputs, 5, seed=0, variance_head=True
        )
        other = ku.models.mlp(8, 2, hidden_units=(8,), dropout_rate=0.2)
        ku.predict_regression(other, class_inputs, 5, variance_head=False)
    np.testing.assert_array_equal(guessed.mean, again.mean)
    np.testing.assert_array_equal(guessed.mean, stated.mean)
    assert np.all(guessed.aleatoric_std > 0)


def test_an_ensemble_of_deterministic_members_warns_when_asked_for_samples(
    class_inputs,
):
    keras.utils.set_random_seed(0)
    ensemble = ku.Ensemble(
        lambda: ku.models.mlp(
            8, 3, hidden_units=(8,), dropout_rate=0.0, output_activation="softmax"
        ),
        num_members=3,
    )
    ensemble(class_inputs[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_default = ku.sample(ensemble, class_inputs)
    with pytest.warns(UserWarning, match=r"one sample per member.*num_samples=50"):
        asked = ku.sample(ensemble, class_inputs, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ku.predict_classification(ensemble, class_inputs, 50)  # once per model
    # One sample per member, as plain Keras gives member by member.
    assert asked.shape == by_default.shape == (3, 40, 3)
    for member, samples in zip(ensemble.members, asked):
        np.testing.assert_allclose(
            samples, member.predict(class_inputs, verbose=0), rtol=1e-5
        )


def test_a_functional_model_compiled_with_an_unregistered_loss_is_sampled():
    def own_loss(y_true, y_pred):  # not registered: Keras cannot reload it
        return keras.ops.mean(keras.ops.square(y_true - y_pred))

    model = ku.models.mlp(4, 2, hidden_units=(8,), dropout_rate=0.3)
    model.compile("adam", loss=own_loss)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    samples = ku.sample(model, x, num_samples=5, seed=0, verbose=0)
    assert samples.shape == (5, 6, 2) and samples.std(axis=0).mean() > 0
