import warnings

import keras
import numpy as np
import pytest

import keras_uncertainty as ku

MC_LAYERS = [
    (ku.layers.MCDropout, (4, 6)),
    (ku.layers.MCSpatialDropout1D, (4, 5, 6)),
    (ku.layers.MCSpatialDropout2D, (4, 5, 5, 6)),
    (ku.layers.MCSpatialDropout3D, (4, 3, 3, 3, 6)),
    (ku.layers.MCGaussianDropout, (4, 6)),
]


@pytest.mark.parametrize("layer_class, shape", MC_LAYERS)
def test_layer_is_stochastic_in_inference_mode(layer_class, shape):
    layer = layer_class(0.5, seed=3)
    x = np.ones(shape, dtype="float32")
    first = keras.ops.convert_to_numpy(layer(x, training=False))
    second = keras.ops.convert_to_numpy(layer(x))
    assert not np.allclose(first, x)
    assert not np.allclose(first, second)


def test_mc_dropout_zeroes_and_rescales():
    x = np.ones((2000, 50), dtype="float32")
    y = keras.ops.convert_to_numpy(ku.layers.MCDropout(0.25, seed=1)(x))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.01


def test_spatial_dropout_drops_whole_channels():
    x = np.ones((64, 5, 5, 8), dtype="float32")
    y = keras.ops.convert_to_numpy(ku.layers.MCSpatialDropout2D(0.5, seed=2)(x))
    per_channel = y.reshape(64, 25, 8)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))
    assert 0.4 < (per_channel[:, 0, :] == 0).mean() < 0.6


def test_gaussian_dropout_noise_has_dropout_variance():
    rate = 0.2
    x = np.ones((20000, 10), dtype="float32")
    y = keras.ops.convert_to_numpy(ku.layers.MCGaussianDropout(rate, seed=4)(x))
    assert abs(y.mean() - 1.0) < 0.01
    assert abs(y.var() - rate / (1 - rate)) < 0.01


def test_rate_zero_is_identity():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    y = keras.ops.convert_to_numpy(ku.layers.MCDropout(0.0)(x))
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("layer_class, _", MC_LAYERS)
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.5", None])
def test_rate_outside_unit_interval_is_rejected(layer_class, _, rate):
    with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\).*Received: rate="):
        layer_class(rate)


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="`seed`"):
        ku.layers.MCDropout(0.1, seed=-1)


@pytest.mark.parametrize("layer_class, shape", MC_LAYERS)
def test_layer_config_round_trip(layer_class, shape):
    layer = layer_class(0.3, seed=7, name="mc")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is layer_class
    assert restored.get_config() == layer.get_config()


def test_model_with_mc_layers_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3)(inputs)
    x = ku.layers.MCSpatialDropout2D(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = ku.layers.MCGaussianDropout(0.1)(x)
    x = ku.layers.MCDropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    model.compile("adam", loss=ku.losses.GaussianNLL(beta=0.5))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert [type(layer) for layer in loaded.layers] == [
        type(layer) for layer in model.layers
    ]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert isinstance(loaded.loss, ku.losses.GaussianNLL)
    assert loaded.loss.beta == 0.5
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype("float32")
    samples = ku.sample(loaded, x, num_samples=4, seed=0)
    assert samples.shape == (4, 5, 2)
    assert samples.std(axis=0).min() > 0


def _model_with_keras_dropout():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8)(inputs)
    x = keras.layers.Dropout(0.3, seed=1)(x)
    x = keras.layers.Reshape((2, 4))(x)
    x = keras.layers.SpatialDropout1D(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.GaussianDropout(0.1)(x)
    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dropout(0.5), keras.layers.Dense(3)]
    )
    return keras.Model(inputs, inner(x))


def _all_layers(model):
    """Every layer of `model`, nested models' layers included (public API)."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(_all_layers(layer))
    return layers


def test_to_mc_dropout_swaps_every_dropout_and_keeps_weights():
    model = _model_with_keras_dropout()
    mc_model = ku.layers.to_mc_dropout(model)
    kinds = [type(layer) for layer in _all_layers(mc_model)]
    assert ku.layers.MCDropout in kinds
    assert ku.layers.MCSpatialDropout1D in kinds
    assert ku.layers.MCGaussianDropout in kinds
    assert not any(
        type(layer)
        in (
            keras.layers.Dropout,
            keras.layers.SpatialDropout1D,
            keras.layers.GaussianDropout,
        )
        for layer in _all_layers(mc_model)
    )
    # The nested model's dropout is converted too, and config is kept.
    nested = [layer for layer in mc_model.layers if isinstance(layer, keras.Model)]
    assert isinstance(nested[0].layers[0], ku.layers.MCDropout)
    assert nested[0].layers[0].rate == 0.5
    for a, b in zip(model.get_weights(), mc_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The original is untouched and still deterministic at inference.
    x = np.ones((3, 6), dtype="float32")
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.allclose(mc_model(x), mc_model(x))


def test_to_mc_dropout_keeps_sequential_models_sequential():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.2)]
    )
    mc_model = ku.layers.to_mc_dropout(model)
    assert isinstance(mc_model, keras.Sequential)
    assert isinstance(mc_model.layers[-1], ku.layers.MCDropout)


def test_to_mc_dropout_converts_subclassed_models_that_round_trip():
    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)
            self.dropout = keras.layers.Dropout(0.5)

        def call(self, x):
            return self.dropout(self.dense(x))

    model = Subclassed()
    x = np.ones((3, 4), "float32")
    model(x)
    mc_model = ku.layers.to_mc_dropout(model)
    assert isinstance(mc_model, Subclassed)
    assert isinstance(mc_model.dropout, ku.layers.MCDropout)
    np.testing.assert_array_equal(mc_model.dense.kernel, model.dense.kernel)
    assert not np.allclose(mc_model(x), mc_model(x))


def test_to_mc_dropout_refuses_models_that_do_not_round_trip_and_non_models():
    class NeedsArguments(keras.Model):
        def __init__(self, units):
            super().__init__()
            self.dense = keras.layers.Dense(units)

        def call(self, x):
            return self.dense(x)

    model = NeedsArguments(2)
    model(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="saves to and loads from a `.keras` file"):
        ku.layers.to_mc_dropout(model)
    with pytest.raises(ValueError, match="Received: Dense"):
        ku.layers.to_mc_dropout(keras.layers.Dense(2))


def test_packed_dropout_uses_each_members_rate_and_stays_unbiased():
    layer = ku.layers.PackedDropout([0.0, 0.5, 0.9], seed=3)
    out = layer(np.ones((3, 4000, 10), "float32"), training=False).numpy()
    dropped = (out == 0).mean(axis=(1, 2))
    np.testing.assert_allclose(dropped, [0.0, 0.5, 0.9], atol=0.01)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), [1.0, 1.0, 1.0], atol=0.05)
    assert ku.sampling.is_stochastic(layer)


def test_packed_dropout_without_monte_carlo_is_off_at_inference():
    layer = ku.layers.PackedDropout(0.5, num_members=2, monte_carlo=False, seed=1)
    x = np.ones((2, 50, 4), "float32")
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    assert (layer(x, training=True).numpy() == 0).any()
    assert not ku.sampling.is_stochastic(layer)


def test_packed_dense_member_computes_its_own_dense_layer():
    rng = np.random.default_rng(0)
    layer = ku.layers.PackedDense(4, num_members=3, activation="tanh")
    x = rng.normal(size=(3, 5, 6)).astype("float32")
    out = layer(x).numpy()
    shared = layer(x[0]).numpy()  # (batch, k) rows shared by every member
    assert out.shape == shared.shape == (3, 5, 4)
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    for m in range(3):
        dense = keras.layers.Dense(4, activation="tanh")
        dense.build((None, 6))
        dense.set_weights([kernel[m], bias[m]])
        np.testing.assert_allclose(out[m], dense(x[m]).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(shared[m], dense(x[0]).numpy(), rtol=1e-5, atol=1e-6)
    # Each member's kernel is drawn on its own (Glorot for one (6, 4) kernel).
    assert not np.allclose(kernel[0], kernel[1])
    assert np.abs(kernel).max() <= np.sqrt(6.0 / (6 + 4))


def test_packed_l2_is_the_sum_of_each_members_l2():
    reg = ku.layers.PackedL2([0.1, 0.0, 2.0])
    weights = np.random.default_rng(1).normal(size=(3, 4, 5)).astype("float32")
    expected = 0.1 * np.sum(weights[0] ** 2) + 2.0 * np.sum(weights[2] ** 2)
    assert float(reg(weights)) == pytest.approx(expected, rel=1e-5)
    assert isinstance(reg, keras.regularizers.Regularizer)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: ku.layers.PackedDense(
            3, 2, activation="relu", kernel_regularizer=ku.layers.PackedL2([1e-3, 0])
        ),
        lambda: ku.layers.PackedDropout([0.1, 0.3], seed=4),
    ],
)
def test_packed_layers_round_trip_through_keras_file(layer, tmp_path):
    inputs = keras.Input((2, 5))  # (M, batch) as the model's (batch, steps)
    model = keras.Model(inputs, layer()(inputs))
    model.save(tmp_path / "packed.keras")
    loaded = keras.models.load_model(tmp_path / "packed.keras")
    original, restored = model.layers[-1], loaded.layers[-1]
    assert type(restored) is type(original)
    assert restored.get_config() == original.get_config()
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ku.layers.PackedDropout([0.1, 1.0]), "rate"),
        (lambda: ku.layers.PackedDropout(0.1), "num_members"),
        (lambda: ku.layers.PackedDropout([]), "rates"),
        (lambda: ku.layers.PackedDense(0, 2), "units"),
        (lambda: ku.layers.PackedDense(3, 0), "num_members"),
        (lambda: ku.layers.PackedL2([0.1, -1.0]), "l2"),
    ],
)
def test_bad_packed_layer_arguments_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_to_mc_dropout_warns_when_there_is_nothing_to_convert():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.warns(
        UserWarning, match=r"no layer to convert.*SpatialDropout1D.*Dropout"
    ):
        copy = ku.layers.to_mc_dropout(model)
    x = np.ones((2, 4), "float32")
    np.testing.assert_array_equal(copy(x), model(x))
    # A model that is already MC converts nothing and needs no warning.
    mc = keras.Sequential([keras.Input((4,)), ku.layers.MCDropout(0.2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ku.layers.to_mc_dropout(mc)
