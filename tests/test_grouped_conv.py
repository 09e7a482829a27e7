"""Grouped convolutions run on every kernel set: the split formulation is
chosen where the grouped kernels (or their gradients, or their fusion with a
bias) are missing, and both formulations compute the same layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels

# Both formulations sum the same products in a different order.
FLOAT32_ROUNDING = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def auto_formulation():
    yield
    ku.layers.set_grouped_convolution_formulation("auto")


@pytest.fixture
def without_grouped_kernels(monkeypatch):
    """A kernel set with no grouped convolution at all: any convolution whose
    inputs have more channels than its kernel fails as TensorFlow fails."""
    convolution = tf.nn.convolution

    def ungrouped(inputs, filters, *args, **kwargs):
        if inputs.shape[-1] != filters.shape[-2]:
            raise tf.errors.InvalidArgumentError(
                None, None, "Gradients for grouped convolutions are not supported"
            )
        return convolution(inputs, filters, *args, **kwargs)

    monkeypatch.setattr(tf.nn, "convolution", ungrouped)
    ku.layers.set_grouped_convolution_formulation("auto")  # probe again
    yield
    monkeypatch.undo()
    ku.layers.set_grouped_convolution_formulation("auto")


def _lenet_member():
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(6, 3, padding="same", activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 3, size=16)
    return x, y


def test_the_fallback_is_chosen_when_grouped_kernels_fail(without_grouped_kernels):
    assert ku.layers.grouped_convolution_formulation("CPU") == "split"
    keras.utils.set_random_seed(0)
    ensemble = ku.Ensemble(_lenet_member, num_members=3, pack=True)
    ensemble.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = _data()
    history = ensemble.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert np.all(np.isfinite(ku.sample(ensemble, x, seed=0)))


def test_batch_ensemble_conv_trains_without_grouped_kernels(without_grouped_kernels):
    keras.utils.set_random_seed(0)
    layer = ku.layers.BatchEnsembleConv2D(4, 3, num_members=2, activation="relu")
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(np.all(np.isfinite(g)) for g in grads)


def _grouped_training_step_runs():
    """Whether this process's CPU kernels train a grouped convolution with a
    bias, checked the way a user's training step would run it."""
    x = tf.random.normal((2, 6, 6, 4))
    kernel = tf.Variable(tf.random.normal((3, 3, 2, 6)))
    bias = tf.Variable(tf.zeros((6,)))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            convolved = tf.nn.convolution(x, kernel)
            loss = tf.reduce_sum(tf.nn.relu(tf.nn.bias_add(convolved, bias)))
        return tape.gradient(loss, [kernel, bias])

    with tf.device("/CPU:0"):
        try:
            step()
            return True
        except tf.errors.OpError:
            return False


def test_auto_picks_the_grouped_form_exactly_where_it_trains():
    expected = "grouped" if _grouped_training_step_runs() else "split"
    assert ku.layers.grouped_convolution_formulation("CPU") == expected


@pytest.mark.parametrize("kind", ["CPU", "GPU"])
def test_a_formulation_is_decided_per_device_kind(kind):
    formulation = ku.layers.grouped_convolution_formulation(kind)
    assert formulation in ("grouped", "split")
    if not tf.config.list_logical_devices(kind):
        assert formulation == "split"  # nothing to probe: the portable form


def test_a_formulation_can_be_forced_and_unknown_ones_are_refused():
    ku.layers.set_grouped_convolution_formulation("split")
    assert ku.layers.grouped_convolution_formulation("CPU") == "split"
    with pytest.raises(ValueError, match="`formulation`.*'auto'.*Received"):
        ku.layers.set_grouped_convolution_formulation("fast")


def _packed_outputs_and_grads(formulation, layer, x):
    ku.layers.set_grouped_convolution_formulation(formulation)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = layer(x)
            loss = tf.reduce_sum(tf.square(outputs))
        return outputs, tape.gradient(loss, [x, *layer.trainable_weights])

    outputs, grads = step(tf.constant(x))
    return outputs.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize(
    "layer_fn, shape",
    [
        (
            lambda: ku.layers.PackedConv2D(5, 3, num_members=4, strides=2),
            (4, 6, 9, 9, 3),
        ),
        (
            lambda: ku.layers.PackedConv1D(
                3, 2, num_members=3, padding="same", dilation_rate=2
            ),
            (3, 5, 11, 2),
        ),
        (
            lambda: ku.layers.BatchEnsembleConv2D(
                4, 3, num_members=2, activation="relu", bias_initializer="ones"
            ),
            (6, 7, 7, 3),
        ),
    ],
)
def test_the_two_formulations_agree(layer_fn, shape):
    keras.utils.set_random_seed(0)
    layer = layer_fn()
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    layer(x)
    split = _packed_outputs_and_grads("split", layer, x)
    # Every kernel set runs a grouped convolution's forward pass eagerly
    # (no graph fusion there).
    ku.layers.set_grouped_convolution_formulation("grouped")
    np.testing.assert_allclose(split[0], layer(x), **FLOAT32_ROUNDING)
    ku.layers.set_grouped_convolution_formulation("auto")
    if ku.layers.grouped_convolution_formulation("CPU") == "grouped":
        grouped = _packed_outputs_and_grads("grouped", layer, x)
        np.testing.assert_allclose(split[0], grouped[0], **FLOAT32_ROUNDING)
        for a, b in zip(split[1], grouped[1]):
            np.testing.assert_allclose(a, b, **FLOAT32_ROUNDING)


def test_the_split_form_matches_one_keras_convolution_per_member():
    keras.utils.set_random_seed(0)
    ku.layers.set_grouped_convolution_formulation("split")
    layer = ku.layers.PackedConv2D(4, 3, num_members=3, activation="relu")
    x = np.random.default_rng(3).normal(size=(3, 5, 8, 8, 2)).astype("float32")
    outputs = layer(x)
    for m in range(3):
        conv = keras.layers.Conv2D(4, 3, activation="relu")
        conv.build((None, 8, 8, 2))
        conv.set_weights([layer.kernel.numpy()[m], layer.bias.numpy()[m]])
        np.testing.assert_allclose(outputs[m], conv(x[m]), **FLOAT32_ROUNDING)


def test_many_groups_run_as_one_map_and_match_each_convolution():
    """The T samples of a Flipout sampling call (more groups than are
    unrolled) give each sample's convolution with its own kernel."""
    keras.utils.set_random_seed(0)
    ku.layers.set_grouped_convolution_formulation("split")
    layer = ku.layers.Conv2DFlipout(3, 3)
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 2)).astype("float32")
    layer(x)
    samples = ku.sample(
        keras.Sequential([keras.Input((6, 6, 2)), layer]), x, 24, seed=3
    )
    ku.layers.set_grouped_convolution_formulation("grouped")  # forward only
    reference = ku.sample(
        keras.Sequential([keras.Input((6, 6, 2)), layer]), x, 24, seed=3
    )
    np.testing.assert_allclose(samples, reference, **FLOAT32_ROUNDING)
    assert samples.shape == (24, 2, 4, 4, 3)
    assert np.all(np.isfinite(samples))
    # Each sample its own kernel: the samples differ.
    assert not np.allclose(samples[0], samples[1])
