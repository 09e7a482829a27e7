"""BatchEnsemble (Wen et al. 2020): layers against M plain layers, training,
the engine's mixture against the members by hand, .keras, export, errors."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.layers import batch_ensemble
from keras_uncertainty.layers.batch_ensemble import RandomSign

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels

M = 4


def _normal_around_one(seed):
    return keras.initializers.RandomNormal(1.0, 0.5, seed=seed)


def _dense_net(m, classes=3, hidden=16, activation="softmax", dropout=0.0):
    layers = [
        keras.Input((5,)),
        ku.layers.BatchEnsembleDense(hidden, m, activation="relu"),
    ]
    if dropout:
        layers.append(ku.layers.MCDropout(dropout))
    layers.append(ku.layers.BatchEnsembleDense(classes, m, activation=activation))
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=2.0, size=(3, 5))
    y = rng.integers(0, 3, size=192).astype("int32")
    x = (centers[y] + rng.normal(size=(192, 5))).astype("float32")
    return x, y


@pytest.fixture(params=["member_kernels", "scaled_rows"])
def path(request, monkeypatch):
    """Both ways a layer computes its members: the M kernels formed (small
    layers) or the rows scaled around the shared kernel (large layers)."""
    if request.param == "scaled_rows":
        monkeypatch.setattr(batch_ensemble, "MEMBER_KERNEL_LIMIT", 0)
    return request.param


def test_dense_equals_m_dense_layers(path):
    rng = np.random.default_rng(1)
    layer = ku.layers.BatchEnsembleDense(
        6,
        M,
        activation="tanh",
        bias_initializer=keras.initializers.RandomNormal(seed=2),
        r_initializer=_normal_around_one(3),
        s_initializer=_normal_around_one(4),
    )
    x = rng.normal(size=(M * 7, 3, 5)).astype("float32")  # rank 3: last axis
    out = layer(x).numpy()
    kernel, r, s, bias = (
        w.numpy() for w in (layer.kernel, layer.r, layer.s, layer.bias)
    )
    for m in range(M):
        rows = x[m * 7 : (m + 1) * 7]
        expected = np.tanh(rows @ (kernel * np.outer(r[m], s[m])) + bias[m])
        np.testing.assert_allclose(out[m * 7 : (m + 1) * 7], expected, atol=1e-5)
        dense = keras.layers.Dense(6, activation="tanh")
        dense.build((None, 5))
        dense.set_weights(layer.member_weights()[m])
        np.testing.assert_allclose(out[m * 7 : (m + 1) * 7], dense(rows), atol=1e-5)
    assert layer.count_params() == 5 * 6 + M * (5 + 6 + 6)


@pytest.mark.parametrize(
    "padding,strides,activation",
    [("valid", 1, "relu"), ("same", 2, "softmax"), ("same", 1, None)],
)
def test_conv2d_equals_m_conv2d_layers(path, padding, strides, activation):
    rng = np.random.default_rng(5)
    layer = ku.layers.BatchEnsembleConv2D(
        4,
        3,
        M,
        strides=strides,
        padding=padding,
        activation=activation,
        bias_initializer=keras.initializers.RandomNormal(seed=6),
        r_initializer=_normal_around_one(7),
    )
    x = rng.normal(size=(M * 2, 9, 9, 3)).astype("float32")
    out = layer(x).numpy()
    assert out.shape == layer.compute_output_shape(x.shape)
    for m, weights in enumerate(layer.member_weights()):
        conv = keras.layers.Conv2D(
            4, 3, strides=strides, padding=padding, activation=activation
        )
        conv.build((None, 9, 9, 3))
        conv.set_weights(weights)
        np.testing.assert_allclose(
            out[m * 2 : (m + 1) * 2], conv(x[m * 2 : (m + 1) * 2]), atol=1e-5
        )


def test_random_sign_initialization():
    signs = RandomSign(seed=0)((400,)).numpy()
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert 0.4 < (signs > 0).mean() < 0.6
    layer = ku.layers.BatchEnsembleDense(3, M)
    layer.build((None, 20))
    assert set(np.unique(layer.r.numpy())) == {-1.0, 1.0}
    assert not np.all(layer.r.numpy()[0] == layer.r.numpy()[1])  # members differ


@pytest.fixture(scope="module")
def trained(blobs):
    x, y = blobs
    keras.utils.set_random_seed(0)
    model = ku.BatchEnsemble(_dense_net, num_members=M)
    model.compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    history = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return model, before, history


def _members_by_hand(model, x):
    """Each member as a plain Dense network with its effective weights."""
    first, second = (
        layer
        for layer in model.network.layers
        if isinstance(layer, ku.layers.BatchEnsembleDense)
    )
    probs = []
    for (k1, b1), (k2, b2) in zip(first.member_weights(), second.member_weights()):
        hidden = np.maximum(x @ k1 + b1, 0.0)
        logits = hidden @ k2 + b2
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs.append(e / e.sum(-1, keepdims=True))
    return np.stack(probs)  # (M, N, C)


def test_training_reduces_loss_and_members_differ(trained, blobs):
    model, before, history = trained
    x, y = blobs
    assert history.history["loss"][-1] < 0.7 * before["loss"]
    assert history.history["accuracy"][-1] > 0.8
    per_member = model(x[:20]).numpy()  # (N, M, C)
    assert per_member.shape == (20, M, 3)
    spread = np.abs(per_member - per_member.mean(axis=1, keepdims=True)).max()
    assert spread > 1e-3
    # The loss is the mean of the members' losses on the same targets.
    by_hand = _members_by_hand(model, x)
    nll = -np.log(by_hand[:, np.arange(len(y)), y]).mean()
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], nll, rtol=1e-4)


def test_predict_classification_is_the_members_mixture(trained, blobs):
    model, _, _ = trained
    x, _ = blobs
    members = _members_by_hand(model, x[:50])
    mean = members.mean(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default num_samples: no warning
        pred = ku.predict_classification(model, x[:50])
    np.testing.assert_allclose(pred.probs, mean, atol=1e-5)
    entropy = -(mean * np.log(mean)).sum(-1)
    expected = -(members * np.log(members)).sum(-1).mean(0)
    np.testing.assert_allclose(pred.entropy, entropy, atol=1e-4)
    np.testing.assert_allclose(pred.expected_entropy, expected, atol=1e-4)
    np.testing.assert_allclose(model.predict(x[:50], verbose=0), mean, atol=1e-5)
    samples = np.asarray(ku.sample(model, x[:50]))
    np.testing.assert_allclose(samples, members, atol=1e-5)  # member-major
    sampled = ku.sampling.sampled_model(model)
    assert (sampled.num_members, sampled.stochastic) == (M, False)


def test_keras_round_trip_and_export(trained, blobs, tmp_path):
    model, _, _ = trained
    x, y = blobs
    path = tmp_path / "be.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ku.BatchEnsemble) and loaded.num_members == M
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    np.testing.assert_allclose(
        ku.predict_classification(loaded, x[:9]).probs,
        ku.predict_classification(model, x[:9]).probs,
        atol=1e-6,
    )
    loaded.fit(x, y, epochs=1, batch_size=64, verbose=0)  # compiled as saved
    exported = ku.export(model, str(tmp_path / "served"), task="classification")
    served = tf.saved_model.load(exported)
    out = served.serve(tf.constant(x[:7]))
    local = ku.predict_classification(model, x[:7])
    for field in ("probs", "entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_allclose(
            out[field].numpy(), getattr(local, field), rtol=1e-4, atol=1e-6
        )


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
def test_logits_regression_mc_dropout_and_callback(blobs):
    x, y = blobs
    keras.utils.set_random_seed(1)
    logits = ku.BatchEnsemble(_dense_net(M, activation=None))
    logits.compile(
        "adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    callback = ku.callbacks.UncertaintyMetrics((x[:32], y[:32]), num_samples=1)
    history = logits.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    assert np.isfinite(history.history["val_mc_nll"]).all()
    per_member = logits(x[:8]).numpy()
    probs = np.exp(per_member) / np.exp(per_member).sum(-1, keepdims=True)
    mixture = keras.ops.softmax(logits.predict(x[:8], verbose=0)).numpy()
    np.testing.assert_allclose(mixture, probs.mean(1), atol=1e-5)
    pred = ku.predict_classification(logits, x[:8], from_logits=True)
    np.testing.assert_allclose(pred.probs, probs.mean(1), atol=1e-5)

    # Gaussian members: the mixture's mean and total variance.
    reg = ku.BatchEnsemble(lambda m: _dense_net(m, classes=2, activation=None), M)
    reg.compile("adam", loss=ku.losses.gaussian_nll)
    reg.fit(x, x[:, :1], epochs=1, verbose=0)
    members = reg(x[:8]).numpy()
    mu, var = members[..., 0], np.exp(members[..., 1])
    pred = ku.predict_regression(reg, x[:8])
    np.testing.assert_allclose(pred.mean[:, 0], mu.mean(1), atol=1e-5)
    total = var.mean(1) + mu.var(1)
    np.testing.assert_allclose(pred.std[:, 0] ** 2, total, rtol=1e-4)
    mean_logvar = reg.predict(x[:8], verbose=0)
    np.testing.assert_allclose(np.exp(mean_logvar[:, 1]), total, rtol=1e-4)

    # MC dropout inside: T samples of each member, member-major.
    mc = ku.BatchEnsemble(_dense_net(M, dropout=0.3))
    sampled = ku.sampling.sampled_model(mc)
    assert (sampled.num_members, sampled.stochastic) == (M, True)
    samples = np.asarray(ku.sample(mc, x[:6], num_samples=5, seed=0))
    assert samples.shape == (M * 5, 6, 3)
    assert not np.allclose(samples[0], samples[1])


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_members"):
        ku.layers.BatchEnsembleDense(3, 0)
    with pytest.raises(ValueError, match="num_members"):
        ku.layers.BatchEnsembleConv2D(3, 3, num_members=-1)
    with pytest.raises(ValueError, match="padding"):
        ku.layers.BatchEnsembleConv2D(3, 3, 2, padding="causal")
    with pytest.raises(ValueError, match="probability"):
        RandomSign(1.5)
    layer = ku.layers.BatchEnsembleDense(3, M)
    with pytest.raises(ValueError, match="batch of 6 rows, not a multiple of 4"):
        layer(np.ones((6, 2), "float32"))
    # An unknown batch size (a compiled function) is checked when it runs.
    compiled = tf.function(layer, input_signature=[tf.TensorSpec((None, 2))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a multiple of"):
        compiled(np.ones((6, 2), "float32"))
    with pytest.raises(ValueError, match="num_members"):
        ku.BatchEnsemble(_dense_net, num_members=0)
    with pytest.raises(ValueError, match="Expected a positive integer when"):
        ku.BatchEnsemble(_dense_net)
    with pytest.raises(ValueError, match="the network's num_members \\(4\\)"):
        ku.BatchEnsemble(_dense_net(M), num_members=3)
    plain = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="at least one ku.layers.BatchEnsembleDense"):
        ku.BatchEnsemble(plain)
    mixed = keras.Sequential(
        [
            keras.Input((5,)),
            ku.layers.BatchEnsembleDense(4, 2),
            ku.layers.BatchEnsembleDense(2, 3),
        ]
    )
    with pytest.raises(ValueError, match="the same `num_members`"):
        ku.BatchEnsemble(mixed)
    with pytest.raises(ValueError, match="Expected a keras.Model or a callable"):
        ku.BatchEnsemble("network", num_members=2)
    # The model tiles: any batch size works at inference.
    model = ku.BatchEnsemble(_dense_net, num_members=M)
    assert ku.predict_classification(model, np.ones((3, 5), "float32")).probs.shape == (
        3,
        3,
    )


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
def test_cnn_runs_folded_and_equals_the_tiled_network():
    keras.utils.set_random_seed(3)

    def cnn(m):
        return keras.Sequential(
            [
                keras.Input((10, 10, 2)),
                ku.layers.BatchEnsembleConv2D(4, 3, m, activation="relu"),
                keras.layers.MaxPooling2D(2),
                ku.layers.BatchEnsembleConv2D(
                    5, 2, m, activation="tanh", r_initializer=_normal_around_one(1)
                ),
                keras.layers.AveragePooling2D(2),
                keras.layers.Flatten(),
                ku.layers.BatchEnsembleDense(3, m, activation="softmax"),
            ]
        )

    model = ku.BatchEnsemble(cnn, num_members=M)
    assert model.runs_folded
    x = np.random.default_rng(0).normal(size=(6, 10, 10, 2)).astype("float32")
    y = np.arange(6) % 3
    tiled = tf.constant(np.tile(x, (M, 1, 1, 1)))
    loss = keras.losses.SparseCategoricalCrossentropy()

    def grads(fn):
        with tf.GradientTape() as tape:
            value = loss(np.tile(y, M), fn())
        return tape.gradient(value, model.trainable_variables)

    np.testing.assert_allclose(
        model.member_rows(x), model.network(tiled), rtol=1e-5, atol=1e-6
    )
    for folded, plain in zip(
        grads(lambda: model.member_rows(x)), grads(lambda: model.network(tiled))
    ):
        np.testing.assert_allclose(folded, plain, rtol=1e-4, atol=1e-6)
    members = model.network(tiled).numpy().reshape(M, 6, 3)
    pred = ku.predict_classification(model, x)
    np.testing.assert_allclose(pred.probs, members.mean(0), atol=1e-5)
    model.compile("adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
