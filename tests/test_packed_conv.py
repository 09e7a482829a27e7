"""Packed convolutions, pooling, flatten, normalization and the packing registry."""

import warnings

import keras
import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.ensemble import packing

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels


def _conv2d_member(padding="valid", strides=1, pool=keras.layers.AveragePooling2D):
    return keras.Sequential(
        [
            keras.Input((9, 9, 2)),
            keras.layers.Conv2D(
                3, 3, padding=padding, strides=strides, activation="tanh"
            ),
            pool(2),
            keras.layers.Conv2D(4, 2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def _conv1d_member():
    inputs = keras.Input((12, 2))
    x = keras.layers.Conv1D(3, 3, dilation_rate=2, activation="relu")(inputs)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(2, 2, padding="same", use_bias=False)(x)
    x = keras.layers.AveragePooling1D(2)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _images(shape, n=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


@pytest.mark.parametrize(
    "build",
    [
        _conv2d_member,
        lambda: _conv2d_member(
            padding="same", strides=2, pool=keras.layers.MaxPooling2D
        ),
        _conv1d_member,
    ],
    ids=["conv2d_avg", "conv2d_same_strided_max", "conv1d"],
)
def test_packed_outputs_equal_each_members_own_output(build):
    keras.utils.set_random_seed(0)
    members = [build() for _ in range(3)]
    x = _images(members[0].inputs[0].shape[1:])
    alone = [member(x).numpy() for member in members]
    ens = ku.Ensemble.from_models(members, pack=True)
    outputs = ens(x).numpy()
    for m in range(3):
        np.testing.assert_allclose(outputs[:, m], alone[m], atol=1e-5)
    # Member-major inputs: each member its own rows.
    rows = np.stack([_images(x.shape[1:], seed=s) for s in range(3)])
    by_member = ens.packed_network.member_major(rows).numpy()
    for m in range(3):
        np.testing.assert_allclose(
            by_member[m], alone_rows(members[m], rows[m]), atol=1e-5
        )


def alone_rows(member, rows):
    return member(rows).numpy()


def test_packed_layers_alone_match_keras_layers():
    keras.utils.set_random_seed(1)
    convs = [keras.layers.Conv2D(4, 3, strides=2, padding="same") for _ in range(2)]
    x = _images((7, 7, 3), n=4)
    alone = [conv(x).numpy() for conv in convs]
    packed = ku.layers.PackedConv2D(4, 3, num_members=2, strides=2, padding="same")
    packed.build((2, None, 7, 7, 3))
    packed.kernel.assign(np.stack([c.kernel.numpy() for c in convs]))
    packed.bias.assign(np.stack([c.bias.numpy() for c in convs]))
    shared = packed(x).numpy()
    assert shared.shape == (2, 4, 4, 4, 4)
    assert packed.compute_output_shape((None, 7, 7, 3)) == (2, None, 4, 4, 4)
    for m in range(2):
        np.testing.assert_allclose(shared[m], alone[m], atol=1e-5)
    member_major = packed(np.stack([x, 2 * x])).numpy()
    np.testing.assert_allclose(member_major[1], convs[1](2 * x).numpy(), atol=1e-5)
    pool = ku.layers.PackedPooling(keras.layers.MaxPooling2D(2), num_members=2)
    np.testing.assert_allclose(
        pool(member_major).numpy()[1],
        keras.layers.MaxPooling2D(2)(member_major[1]).numpy(),
    )
    flat = ku.layers.PackedFlatten(num_members=2)(member_major).numpy()
    np.testing.assert_allclose(flat[0], member_major[0].reshape(4, -1))


def test_per_member_initialization_uses_one_members_fans():
    layer = ku.layers.PackedConv2D(
        8, 3, num_members=4, kernel_initializer=keras.initializers.GlorotUniform(seed=3)
    )
    layer.build((None, 6, 6, 5))
    kernel = layer.kernel.numpy()
    limit = np.sqrt(6 / (3 * 3 * 5 + 3 * 3 * 8))  # fans of one member
    assert kernel.shape == (4, 3, 3, 5, 8)
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.9 * limit
    assert not np.allclose(kernel[0], kernel[1])


def test_one_epoch_packed_equals_each_member_trained_alone():
    keras.utils.set_random_seed(2)
    alone = [_conv2d_member() for _ in range(3)]
    together = []
    for model in alone:
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
        together.append(twin)
    rng = np.random.default_rng(0)
    x = _images((9, 9, 2), n=64)
    y = rng.integers(0, 3, size=64)
    for model in alone:
        model.compile(keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    ens = ku.Ensemble.from_models(together)
    assert ens.packed
    ens.compile(keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    ens.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for reference, member in zip(alone, ens.members):
        for a, b in zip(reference.get_weights(), member.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(alone[0].get_weights()[0], alone[1].get_weights()[0])


def test_lenet5_ensemble_packs_trains_samples_and_round_trips(tmp_path):
    keras.utils.set_random_seed(3)
    ens = ku.Ensemble(lambda: ku.models.lenet5(dropout_rate=0.0), num_members=2)
    assert ens.packed
    x = _images((32, 32, 1), n=8)
    y = np.arange(8) % 10
    ens.compile("adam", loss="sparse_categorical_crossentropy")
    ens.fit(x, y, epochs=1, batch_size=4, verbose=0)
    ens.save(tmp_path / "lenet.keras")
    loaded = keras.models.load_model(tmp_path / "lenet.keras")
    assert loaded.packed
    np.testing.assert_allclose(loaded(x).numpy(), ens(x).numpy(), atol=1e-6)
    for m, member in enumerate(loaded.members):
        np.testing.assert_allclose(member(x).numpy(), ens(x).numpy()[:, m], atol=1e-5)
    prediction = ku.predict_classification(loaded, x)
    np.testing.assert_allclose(
        np.asarray(prediction.probs), ens(x).numpy().mean(axis=1), atol=1e-5
    )


def test_lenet5_with_mc_spatial_dropout_samples():
    keras.utils.set_random_seed(4)
    ens = ku.Ensemble(lambda: ku.models.lenet5(dropout_rate=0.5), num_members=2)
    assert ens.packed
    x = _images((32, 32, 1), n=3)
    samples = np.asarray(ku.sample(ens, x, num_samples=4))
    assert samples.shape[-1] == 10
    assert np.isfinite(samples).all()
    np.testing.assert_allclose(samples.sum(axis=-1), 1.0, atol=1e-5)


def _dropout_member(layer, shape=(4, 4, 64)):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize(
    "kind, spatial",
    [
        (ku.layers.MCSpatialDropout2D, True),
        (keras.layers.SpatialDropout2D, True),
        (ku.layers.MCDropout, False),
        (keras.layers.Dropout, False),
    ],
)
def test_per_member_dropout_rates_on_feature_maps(kind, spatial):
    rates = [0.1, 0.5, 0.8]
    members = [
        keras.Sequential(
            [
                keras.Input((4, 4, 1)),
                keras.layers.Conv2D(
                    64, 1, use_bias=False, kernel_initializer="ones"
                ),  # folded layout from here on
                kind(rate),
                keras.layers.Flatten(),
            ]
        )
        for rate in rates
    ]
    ens = ku.Ensemble.from_models(members, pack=True)
    dropout = ens.packed_network.packed_layers[1]
    assert dropout.rates == pytest.approx(rates)
    assert dropout.spatial == spatial
    monte_carlo = kind in (ku.layers.MCSpatialDropout2D, ku.layers.MCDropout)
    assert dropout.monte_carlo == monte_carlo
    x = np.ones((200, 4, 4, 1), "float32")
    outputs = ens(x, training=True).numpy().reshape(200, 3, 4, 4, 64)
    for m, rate in enumerate(rates):
        kept = outputs[:, m] != 0
        np.testing.assert_allclose(outputs[:, m][kept], 1 / (1 - rate), rtol=1e-3)
        assert abs(1 - kept.mean() - rate) < 0.03
        if spatial:  # whole feature maps: every position of a channel agrees
            assert (kept == kept[:, :1, :1, :]).all()
        else:
            assert not (kept == kept[:, :1, :1, :]).all()
    inference = ens(x).numpy()
    assert (not np.all(inference == 1)) == monte_carlo
    # The member-major layout draws the same way.
    rows = np.ones((3, 200, 4, 4, 64), "float32")
    drawn = dropout(rows, training=True).numpy()
    for m, rate in enumerate(rates):
        assert abs((drawn[m] == 0).mean() - rate) < 0.03


def test_normalization_members_pack_with_their_own_statistics(tmp_path):
    rng = np.random.default_rng(5)
    data = [rng.normal(loc=m, scale=m + 1, size=(50, 3)) for m in range(3)]

    def member(m, adapted):
        if adapted:
            norm = keras.layers.Normalization()
            norm.adapt(data[m])
        else:
            norm = keras.layers.Normalization(
                mean=data[m].mean(0), variance=data[m].var(0)
            )
        return keras.Sequential(
            [
                keras.Input((3,)),
                norm,
                keras.layers.Dense(4, activation="relu"),
                keras.layers.Dense(2),
            ]
        )

    for adapted in (False, True):
        members = [member(m, adapted) for m in range(3)]
        x = rng.normal(size=(7, 3)).astype("float32")
        alone = [model(x).numpy() for model in members]
        ens = ku.Ensemble.from_models(members, pack=True)
        assert isinstance(
            ens.packed_network.packed_layers[0], ku.layers.PackedNormalization
        )
        for m in range(3):
            np.testing.assert_allclose(ens(x).numpy()[:, m], alone[m], atol=1e-5)
        ens.compile("adam", loss=ku.losses.gaussian_nll)
        ens.fit(x, x[:, :1], epochs=1, verbose=0)
        for m, model in enumerate(ens.members):
            np.testing.assert_allclose(
                model(x).numpy(), ens(x).numpy()[:, m], atol=1e-5
            )
        # A loaded ensemble's members get their statistics back too (adapted
        # members are rebuilt unadapted from their configs).
        ens.save(tmp_path / "norm.keras")
        loaded = keras.models.load_model(tmp_path / "norm.keras")
        np.testing.assert_allclose(loaded(x).numpy(), ens(x).numpy(), atol=1e-6)
        for m, model in enumerate(loaded.members):
            np.testing.assert_allclose(
                model(x).numpy(), ens(x).numpy()[:, m], atol=1e-5
            )


def test_packed_normalization_inverts_and_round_trips(tmp_path):
    mean = np.array([[0.0, 1.0], [2.0, 3.0]], "float32")
    variance = np.array([[1.0, 4.0], [9.0, 1.0]], "float32")
    inputs = keras.Input((2,))
    packed = ku.layers.PackedNormalization(mean, variance, invert=True)
    model = keras.Model(inputs, packed(inputs))
    x = np.ones((3, 2), "float32")
    expected = mean[:, None] + x * np.sqrt(variance)[:, None]
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-6)
    model.save(tmp_path / "n.keras")
    loaded = keras.models.load_model(tmp_path / "n.keras")
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-6)


def test_packed_conv_layers_round_trip_through_keras_files(tmp_path):
    inputs = keras.Input((10, 10, 2))
    x = ku.layers.PackedConv2D(
        3,
        3,
        num_members=2,
        activation="relu",
        kernel_regularizer=ku.layers.PackedL2([0.1, 0.2]),
    )(inputs)
    x = ku.layers.PackedPooling(keras.layers.AveragePooling2D(2), num_members=2)(x)
    x = ku.layers.PackedDropout([0.1, 0.3], spatial=True, seed=1)(x)
    x = ku.layers.PackedFlatten(num_members=2)(x)
    model = keras.Model(inputs, ku.layers.PackedDense(2, num_members=2)(x))
    steps = keras.Input((8, 2))
    model_1d = keras.Model(steps, ku.layers.PackedConv1D(2, 3, num_members=2)(steps))
    images = _images((10, 10, 2), n=3)
    for net, batch in ((model, images), (model_1d, _images((8, 2), n=3))):
        net.save(tmp_path / "p.keras")
        loaded = keras.models.load_model(tmp_path / "p.keras")
        for a, b in zip(net.layers, loaded.layers):
            assert a.get_config() == b.get_config()
        if net is model_1d:
            np.testing.assert_allclose(
                loaded(batch).numpy(), net(batch).numpy(), atol=1e-6
            )
    assert model.layers[3].get_config()["rates"] == [0.1, 0.3]


def _groups_member():
    return keras.Sequential(
        [keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, groups=2)]
    )


def _causal_member():
    return keras.Sequential(
        [keras.Input((6, 2)), keras.layers.Conv1D(2, 3, padding="causal")]
    )


def _batch_norm_member():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3),
            keras.layers.BatchNormalization(),
        ]
    )


def _gaussian_member():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3),
            ku.layers.MCGaussianDropout(0.1),
        ]
    )


def _conv3d_member():
    return keras.Sequential([keras.Input((4, 4, 4, 1)), keras.layers.Conv3D(2, 3)])


@pytest.mark.parametrize(
    "build",
    [
        _groups_member,
        _causal_member,
        _batch_norm_member,
        _gaussian_member,
        _conv3d_member,
    ],
)
def test_unpackable_members_are_refused_with_pack_true(build):
    with pytest.raises(ValueError, match="pack"):
        ku.Ensemble(build, num_members=2, pack=True)
    assert not ku.Ensemble(build, num_members=2).packed


def test_members_of_different_filters_do_not_pack():
    members = [
        keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(f, 3)])
        for f in (2, 3)
    ]
    assert not packing.packable(members)


def test_one_registration_makes_a_layer_type_packable():
    class Scale(keras.layers.Layer):
        def call(self, inputs):
            return 2.0 * inputs

    def member():
        return keras.Sequential(
            [
                keras.Input((5, 5, 1)),
                keras.layers.Conv2D(2, 3),
                Scale(),
                keras.layers.Flatten(),
            ]
        )

    assert not packing.packable([member(), member()])
    packing.register(Scale, lambda layer: ("scale",), lambda layers, index: Scale())
    try:
        members = [member(), member()]
        ens = ku.Ensemble.from_models(members, pack=True)
        x = _images((5, 5, 1), n=2)
        for m, model in enumerate(members):
            np.testing.assert_allclose(
                ens(x).numpy()[:, m], model(x).numpy(), atol=1e-5
            )
    finally:
        packing._REGISTRY.pop(Scale)


def test_seeded_samples_of_a_packed_lenet5_do_not_depend_on_batch_size():
    keras.utils.set_random_seed(6)
    ens = ku.Ensemble(lambda: ku.models.lenet5(dropout_rate=0.3), num_members=2)
    x = _images((32, 32, 1), n=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        a = np.asarray(ku.sample(ens, x, num_samples=6, seed=3))
        b = np.asarray(ku.sample(ens, x, num_samples=6, seed=3, batch_size=4))
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = np.asarray(ku.sample(ens, x, num_samples=6, seed=4))
    assert not np.allclose(a, c)


def test_spatial_dropout_on_conv1d_feature_maps_drops_whole_channels():
    members = [
        keras.Sequential(
            [
                keras.Input((6, 1)),
                keras.layers.Conv1D(32, 1, use_bias=False, kernel_initializer="ones"),
                ku.layers.MCSpatialDropout1D(rate),
            ]
        )
        for rate in (0.25, 0.75)
    ]
    ens = ku.Ensemble.from_models(members, pack=True)
    assert ens.packed_network.packed_layers[1].spatial
    outputs = ens(np.ones((300, 6, 1), "float32")).numpy()  # (300, 2, 6, 32)
    for m, rate in enumerate((0.25, 0.75)):
        kept = outputs[:, m] != 0
        assert (kept == kept[:, :1]).all()
        assert abs(1 - kept.mean() - rate) < 0.03
