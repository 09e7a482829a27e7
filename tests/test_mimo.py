"""ku.MIMO: shapes, test-time repetition, training batches, engine, .keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels


def _backbone(shape):
    inputs = keras.Input(shape)
    h = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, h)


def _conv_backbone(shape):
    inputs = keras.Input(shape)
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))


def _blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 3], [3, 0], [-3, -3]], np.float32)
    labels = rng.integers(0, 3, size=n)
    return (centers[labels] + rng.normal(size=(n, 2))).astype("float32"), labels


def test_shapes_and_channel_concatenation():
    mimo = ku.MIMO(_conv_backbone, (6, 6, 2), num_outputs=5, num_members=3)
    assert ku.mimo.MIMO is ku.MIMO
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype("float32")
    assert tuple(mimo(x).shape) == (4, 3, 5)
    member_x = np.random.default_rng(1).normal(size=(4, 3, 6, 6, 2))
    network = mimo.network
    concat = keras.Model(
        network.inputs[0], network.get_layer("concatenate_members").output
    )
    got = concat(member_x.astype("float32")).numpy()
    assert got.shape == (4, 6, 6, 6)
    for m in range(3):  # member m's channels are [2m, 2m + 2)
        np.testing.assert_allclose(got[..., 2 * m : 2 * m + 2], member_x[:, m], 1e-6)


@pytest.mark.parametrize("kind", ["conv", "dense", "normalized", "off"])
def test_folded_stem_equals_the_repeated_input(kind):
    keras.utils.set_random_seed(4)

    def normalized(shape):
        inputs = keras.Input(shape)
        h = keras.layers.Rescaling(0.5)(inputs)
        return keras.Model(inputs, keras.layers.Dense(8, activation="relu")(h))

    def deep_dense(shape):
        inputs = keras.Input(shape)
        h = keras.layers.Dense(8, activation="tanh")(inputs)
        return keras.Model(inputs, keras.layers.Dense(8, activation="relu")(h))

    def strided(shape):
        inputs = keras.Input(shape)
        h = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=True)(inputs)
        h = keras.layers.Activation("relu")(h)
        return keras.Model(inputs, keras.layers.Flatten()(h))

    build, shape = {
        "conv": (strided, (7, 7, 2)),
        "dense": (deep_dense, (5,)),
        "normalized": (normalized, (5,)),
        "off": (deep_dense, (5,)),
    }[kind]
    mimo = ku.MIMO(build, shape, num_outputs=3, num_members=3, fold_stem=kind != "off")
    assert (mimo.folded.value is not None) == (kind in ("conv", "dense"))
    x = np.random.default_rng(4).normal(size=(6, *shape)).astype("float32")
    np.testing.assert_allclose(
        mimo.predict_heads(x).numpy(), mimo(x).numpy(), rtol=1e-5, atol=1e-6
    )


def test_test_time_repeats_the_input_and_predictions_are_the_mixture():
    keras.utils.set_random_seed(0)
    mimo = ku.MIMO(
        _backbone, (2,), num_outputs=3, num_members=3, output_activation="softmax"
    )
    x, _ = _blobs(20)
    heads = mimo(x).numpy()
    repeated = np.repeat(x[:, None], 3, axis=1)
    np.testing.assert_allclose(heads, mimo.member_outputs(repeated).numpy(), 1e-6)
    # The heads differ (independent head weights) but each is a softmax.
    assert np.abs(heads[:, 0] - heads[:, 1]).max() > 1e-3
    np.testing.assert_allclose(heads.sum(-1), 1.0, atol=1e-5)

    pred = ku.predict_classification(mimo, x, verbose=0)
    mean = heads.mean(axis=1)
    np.testing.assert_allclose(pred.probs, mean, rtol=1e-5, atol=1e-7)
    entropy = lambda p: -np.sum(p * np.log(p), -1)  # noqa: E731
    np.testing.assert_allclose(pred.entropy, entropy(mean), rtol=1e-5)
    np.testing.assert_allclose(pred.expected_entropy, entropy(heads).mean(1), rtol=1e-5)
    np.testing.assert_allclose(mimo.predict(x, verbose=0), mean, rtol=1e-6)
    samples = ku.sample(mimo, x, verbose=0)  # member-major (M, N, K)
    np.testing.assert_allclose(samples, np.moveaxis(heads, 1, 0), rtol=1e-6)


def test_regression_heads_mixture():
    keras.utils.set_random_seed(1)
    mimo = ku.MIMO(_backbone, (2,), num_outputs=2, num_members=4)
    mimo.compile("adam", loss=ku.losses.gaussian_nll)
    x, _ = _blobs(16)
    heads = mimo(x).numpy().astype(np.float64)
    mu, var = heads[..., :1], np.exp(heads[..., 1:])
    pred = ku.predict_regression(mimo, x, verbose=0)
    np.testing.assert_allclose(pred.mean, mu.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.aleatoric_std**2, var.mean(1), rtol=1e-5)
    np.testing.assert_allclose(pred.epistemic_std**2, mu.var(1), rtol=1e-4, atol=1e-7)
    mixed = mimo.predict(x, verbose=0)
    np.testing.assert_allclose(mixed[:, :1], mu.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(mixed[:, 1:]), var.mean(1) + mu.var(1), rtol=1e-4)


def test_training_batches():
    mimo = ku.MIMO(_backbone, (2,), num_outputs=3, num_members=3, seed=0)
    indices = mimo.training_indices(10).numpy()
    assert indices.shape == (3, 10)
    for row in indices:  # each member reads every row once
        assert sorted(row) == list(range(10))
    assert not (indices[0] == indices[1]).all()
    rep = ku.MIMO(
        _backbone,
        (2,),
        num_outputs=3,
        num_members=3,
        repetition_probability=0.5,
        batch_repetitions=2,
        seed=0,
    )
    indices = rep.training_indices(10).numpy()
    assert indices.shape == (3, 20)
    # The last half of the columns is shared by every member.
    assert (indices[:, 10:] == indices[0, 10:]).all()
    for row in indices:
        assert sorted(row) == sorted(list(range(10)) * 2)
    x = np.arange(10, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    y = np.arange(10)
    member_x, member_y, member_w = rep.training_batch(x, y, np.ones(10))
    assert tuple(member_x.shape) == (20, 3, 2)
    assert tuple(member_y.shape) == (20, 3) and tuple(member_w.shape) == (20, 3)
    # Each member's inputs and targets stay paired.
    np.testing.assert_array_equal(member_x.numpy()[..., 0], member_y.numpy())


def test_training_reduces_loss_and_round_trips(tmp_path):
    keras.utils.set_random_seed(2)
    x, labels = _blobs(300, seed=2)
    mimo = ku.MIMO(
        _backbone,
        (2,),
        num_outputs=3,
        num_members=3,
        output_activation="softmax",
        repetition_probability=0.2,
        seed=3,
    )
    mimo.compile(
        keras.optimizers.Adam(0.01),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    before = mimo.evaluate(x, labels, verbose=0, return_dict=True)
    history = mimo.fit(x, labels, epochs=4, batch_size=50, verbose=0)
    after = mimo.evaluate(x, labels, verbose=0, return_dict=True)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after["loss"] < before["loss"] - 0.3
    assert after["accuracy"] > 0.85
    pred = ku.predict_classification(mimo, x, verbose=0)
    assert (pred.label == labels).mean() > 0.85

    path = tmp_path / "mimo.keras"
    mimo.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ku.MIMO) and loaded.num_members == 3
    assert loaded.repetition_probability == 0.2
    assert loaded.fold_stem and loaded.folded.value is not None
    again = ku.predict_classification(loaded, x, verbose=0)
    np.testing.assert_allclose(again.probs, pred.probs, rtol=1e-6)
    loaded.fit(x[:50], labels[:50], epochs=1, verbose=0)  # still trains

    served = ku.export(mimo, str(tmp_path / "served"), task="classification")
    endpoint = tf.saved_model.load(served)  # held while it serves
    out = endpoint.serve(tf.constant(x[:8]))
    np.testing.assert_allclose(out["probs"].numpy(), pred.probs[:8], rtol=1e-5)
    np.testing.assert_allclose(
        out["mutual_information"].numpy(),
        pred.mutual_information[:8],
        rtol=1e-3,
        atol=1e-6,
    )


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="repetition_probability"):
        ku.MIMO(_backbone, (2,), 3, repetition_probability=1.0)
    with pytest.raises(ValueError, match="batch_repetitions"):
        ku.MIMO(_backbone, (2,), 3, batch_repetitions=0)
    with pytest.raises(ValueError, match="num_members"):
        ku.MIMO(_backbone, (2,), 3, num_members=0)
    with pytest.raises(ValueError, match="num_outputs"):
        ku.MIMO(_backbone, (2,), 0)
    with pytest.raises(ValueError, match="input_shape"):
        ku.MIMO(_backbone, None, 3)
    with pytest.raises(ValueError, match="build_fn"):
        ku.MIMO("backbone", (2,), 3)
    with pytest.raises(ValueError, match="seed"):
        ku.MIMO(_backbone, (2,), 3, seed=1.5)
    with pytest.raises(ValueError, match="fold_stem"):
        ku.MIMO(_backbone, (2,), 3, fold_stem="yes")

    def image_features(shape):
        inputs = keras.Input(shape)
        return keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))

    with pytest.raises(ValueError, match="Flatten"):
        ku.MIMO(image_features, (5, 5, 1), 3)
    with pytest.raises(ValueError, match="network"):
        ku.MIMO(network="not a model")


def test_the_mnist_benchmark_widens_lenet_and_shares_half_of_each_batch():
    # LeNet-5 is too small for three independent subnetworks: the benchmark
    # entry widens it 1.5x and repeats half of each batch across the heads
    # (UCI keeps none).
    from keras_uncertainty.experiments import registry

    method = registry.METHODS["mimo"]
    network = method.mnist_network(8000)
    assert network.num_members == 3 and network.repetition_probability == 0.5
    assert ("input repetition", "probability 0.5", "ours") in method.settings["mnist"]
    (backbone,) = [
        layer for layer in network.network.layers if isinstance(layer, keras.Model)
    ]
    widths = [
        getattr(layer, "filters", None) or layer.units
        for layer in backbone.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert widths == [9, 24, 180, 126]
    indices = network.training_indices(64).numpy()
    assert (indices[:, 32:] == indices[0, 32:]).all()
    assert not (indices[0, :32] == indices[1, :32]).all()
    # The UCI protocol's MIMO keeps independent heads: each its own shuffle.
    assert ("members", "3 heads, no input repetition", "[H 2021]") in method.settings[
        "uci"
    ]
