"""SNGP (Liu et al. 2020): spectral normalization, the random-feature GP head,
its Laplace covariance, mean-field logits, distance awareness, one-pass
prediction, .keras round trip, export and argument checks, each against an
independent numpy reference."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels

SN = ku.layers.SNGPSpectralNormalization
GP = ku.layers.RandomFeatureGaussianProcess


def _spectral_norm(kernel):
    matrix = np.asarray(kernel).reshape(-1, np.shape(kernel)[-1])
    return np.linalg.svd(matrix, compute_uv=False)[0]


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# -- spectral normalization ---------------------------------------------------


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: keras.layers.Dense(6), (3, 8)),
        (lambda: keras.layers.Conv2D(4, 3), (2, 6, 6, 2)),
    ],
)
def test_spectral_norm_is_bounded_by_norm_multiplier(layer, shape):
    # A seeded kernel: how fast the power iteration converges depends on the
    # gap between the kernel's top singular values (seed 0's Dense kernel has
    # a ratio of 0.986, about the slowest; 40 calls bring it within 2e-5).
    keras.utils.set_random_seed(0)
    wrapper = SN(layer(), norm_multiplier=0.9, power_iterations=3, seed=0)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    wrapper(x)
    kernel = wrapper.layer.kernel
    kernel.assign(kernel.numpy() * 10.0)  # well above the bound
    assert _spectral_norm(kernel.numpy()) > 2.0
    for _ in range(40):  # u converges across training calls
        wrapper(x, training=True)
    norm = _spectral_norm(kernel.numpy())
    assert norm <= 0.9 * (1 + 1e-4)
    assert norm == pytest.approx(0.9, rel=1e-3)
    # The output is the wrapped layer's with the rescaled kernel.
    np.testing.assert_allclose(
        wrapper(x).numpy(), wrapper.layer(x).numpy(), rtol=1e-6, atol=1e-6
    )


def test_spectral_norm_leaves_a_kernel_below_the_bound_unchanged():
    keras.utils.set_random_seed(0)  # the kernel: the same whatever ran before
    wrapper = SN(keras.layers.Dense(5), norm_multiplier=0.95, seed=1)
    x = np.ones((2, 7), "float32")
    wrapper(x)
    kernel = wrapper.layer.kernel
    small = kernel.numpy() * (0.5 / _spectral_norm(kernel.numpy()))
    kernel.assign(small)
    for _ in range(5):
        wrapper(x, training=True)
    np.testing.assert_array_equal(kernel.numpy(), small)
    # Inference neither iterates nor rescales.
    kernel.assign(small * 10)
    u = wrapper.vector_u.numpy()
    wrapper(x, training=False)
    np.testing.assert_array_equal(kernel.numpy(), small * 10)
    np.testing.assert_array_equal(wrapper.vector_u.numpy(), u)
    sigma = float(wrapper.normalize_kernel())
    assert sigma == pytest.approx(_spectral_norm(small * 10), rel=0.05)


# -- random features, precision, covariance, mean field -----------------------


def _numpy_features(layer, x):
    w = layer.random_kernel.numpy()
    b = layer.random_bias.numpy()
    scale = math.sqrt(2.0 / layer.num_inducing) if layer.scale_random_features else 1
    return scale * np.cos(x @ w + b)


def test_random_features_match_the_numpy_formula():
    layer = GP(
        3, num_inducing=4000, gp_kernel_scale=2.0, scale_random_features=True, seed=0
    )
    x = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")
    layer(x)
    np.testing.assert_allclose(
        layer.random_features(x).numpy(), _numpy_features(layer, x), atol=1e-5
    )
    # W ~ N(0, 1 / l^2), b ~ U(0, 2 pi), both fixed (non-trainable).
    assert layer.random_kernel.numpy().std() == pytest.approx(0.5, rel=0.03)
    b = layer.random_bias.numpy()
    assert 0 <= b.min() and b.max() <= 2 * np.pi
    assert [w.name for w in layer.trainable_weights] == ["beta"]
    # phi(x) . phi(x') approximates the RBF kernel exp(-|x - x'|^2 / (2 l^2)).
    phi = _numpy_features(layer, x)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(phi @ phi.T, np.exp(-d2 / 8.0), atol=0.06)
    unscaled = GP(3, num_inducing=16, scale_random_features=False, seed=0)
    unscaled(x)
    np.testing.assert_allclose(
        unscaled.random_features(x).numpy(),
        np.cos(x @ unscaled.random_kernel.numpy() + unscaled.random_bias.numpy()),
        atol=1e-5,
    )


def _head_model(seed=0, **kwargs):
    # The paper's formulas (features times sqrt(2 / D), logistic weights),
    # which the defaults leave (see the tests of the defaults below).
    kwargs.setdefault("scale_random_features", True)
    kwargs.setdefault("gp_cov_likelihood", "logistic")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    gp = GP(3, num_inducing=64, gp_cov_ridge_penalty=2.0, seed=seed, **kwargs)
    model = ku.sngp.SNGPModel(inputs, gp(inputs))
    # lr 0: the weights (so phi and p) stay fixed over the epochs.
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    return model, gp


def _numpy_weights(gp, phi, likelihood="logistic"):
    logits = phi @ gp.beta.numpy()
    if likelihood == "gaussian":
        return np.ones(len(phi)), logits
    p = _softmax(logits).max(-1)
    return p * (1 - p), logits


@pytest.fixture(scope="module")
def blob_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = rng.integers(0, 3, size=96)
    return x, y


def test_precision_is_the_sum_over_the_last_epoch(blob_data):
    x, y = blob_data
    model, gp = _head_model()
    reset = ku.sngp.SNGPCovarianceReset()
    model.fit(
        x, y, epochs=3, batch_size=16, shuffle=False, verbose=0, callbacks=[reset]
    )
    phi = _numpy_features(gp, x)
    w, _ = _numpy_weights(gp, phi)
    one_epoch = 2.0 * np.eye(64) + (phi * w[:, None]).T @ phi
    np.testing.assert_allclose(
        gp.precision_matrix.numpy(), one_epoch, rtol=1e-4, atol=1e-4
    )
    # Without the reset the batches of every epoch add up.
    model2, gp2 = _head_model()
    model2.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    phi2 = _numpy_features(gp2, x)
    w2, _ = _numpy_weights(gp2, phi2)
    two_epochs = 2.0 * np.eye(64) + 2 * (phi2 * w2[:, None]).T @ phi2
    np.testing.assert_allclose(
        gp2.precision_matrix.numpy(), two_epochs, rtol=1e-4, atol=1e-4
    )


def test_moving_average_and_gaussian_precision(blob_data):
    x, y = blob_data
    model, gp = _head_model(gp_cov_momentum=0.9, gp_cov_likelihood="gaussian")
    model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
    phi = _numpy_features(gp, x)
    expected = 2.0 * np.eye(64)
    for start in range(0, 96, 32):
        batch = phi[start : start + 32]
        expected = 0.9 * expected + 0.1 * batch.T @ batch / 32
    np.testing.assert_allclose(
        gp.precision_matrix.numpy(), expected, rtol=1e-4, atol=1e-5
    )


@pytest.fixture(scope="module")
def trained_head(blob_data):
    x, y = blob_data
    model, gp = _head_model()
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        shuffle=False,
        verbose=0,
        callbacks=[ku.sngp.SNGPCovarianceReset()],
    )
    return model, gp, x


def test_covariance_variance_and_mean_field_match_numpy(trained_head):
    model, gp, x = trained_head
    phi = _numpy_features(gp, x)
    w, logits = _numpy_weights(gp, phi)
    precision = 2.0 * np.eye(64) + (phi * w[:, None]).T @ phi
    covariance = np.linalg.inv(precision.astype(np.float64))
    variance = np.einsum("nd,de,ne->n", phi, covariance, phi)
    probs = model.predict(x, verbose=0)  # computes and caches the covariance
    np.testing.assert_allclose(gp.covariance_matrix.numpy(), covariance, atol=1e-5)
    assert gp.covariance_stale.numpy() == 0.0
    np.testing.assert_allclose(gp.predictive_variance(x).numpy(), variance, rtol=1e-4)
    expected = _softmax(logits / np.sqrt(1 + np.pi / 8 * variance)[:, None])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    # One pass through the engine, without warnings, whatever num_samples.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = ku.predict_classification(model, x)
        pred_many = ku.predict_classification(model, x, num_samples=500)
    np.testing.assert_allclose(pred.probs, expected, atol=1e-5)
    np.testing.assert_array_equal(pred.probs, pred_many.probs)
    np.testing.assert_allclose(pred.mutual_information, 0.0, atol=1e-6)
    assert ku.sample(model, x[:4], num_samples=30).shape == (1, 4, 3)


def test_variance_far_from_the_data_approaches_the_prior(trained_head):
    _, gp, x = trained_head
    near = gp.predictive_variance(x).numpy()
    far = gp.predictive_variance(x + 50.0).numpy()
    prior = (gp.random_features(x + 50.0).numpy() ** 2).sum(-1) / 2.0
    # 96 points in 4-D, each weighted about 2/9: the variance halves at most.
    assert near.mean() < 0.8 * far.mean()
    np.testing.assert_allclose(far, prior, rtol=0.25)


def test_logit_and_sigmoid_outputs_use_the_same_mean_field():
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    for activation, units in ((None, 4), ("sigmoid", 1), (None, 1)):
        gp = GP(units, num_inducing=32, activation=activation, seed=3)
        gp(x)
        gp.precision_matrix.assign(3.0 * np.eye(32, dtype="float32"))
        gp.covariance_stale.assign(1.0)
        phi = _numpy_features(gp, x)
        variance = (phi**2).sum(-1) / 3.0
        logits = phi @ gp.beta.numpy() / np.sqrt(1 + np.pi / 8 * variance)[:, None]
        expected = logits if activation is None else 1 / (1 + np.exp(-logits))
        np.testing.assert_allclose(gp(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    no_mean_field = GP(2, num_inducing=8, mean_field_factor=0.0, activation=None)
    np.testing.assert_allclose(
        no_mean_field(x).numpy(),
        no_mean_field.random_features(x).numpy() @ no_mean_field.beta.numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


# -- the whole model ----------------------------------------------------------


def _sngp_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    h = SN(keras.layers.Dense(64, activation="relu"), 0.95, seed=seed)(inputs)
    h = SN(keras.layers.Dense(64, activation="relu"), 0.95, seed=seed + 1)(h)
    outputs = GP(3, num_inducing=256, seed=seed)(h)
    model = ku.sngp.SNGPModel(inputs, outputs, name="sngp")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def sngp_blobs():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]], "float32")
    y = rng.integers(0, 3, 600)
    x = (centers[y] + 0.6 * rng.normal(size=(600, 2))).astype("float32")
    model = _sngp_mlp()
    model.fit(
        x,
        y,
        epochs=10,
        batch_size=64,
        verbose=0,
        callbacks=[ku.sngp.SNGPCovarianceReset()],
    )
    return model, x, y


def test_distance_awareness_on_blobs(sngp_blobs):
    model, x, y = sngp_blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        near = ku.predict_classification(model, x)
        far_x = np.array(
            [[20, 20], [-25, 10], [0, -30], [30, -5], [-15, -25]], "float32"
        )
        far = ku.predict_classification(model, far_x)
    assert (near.label == y).mean() > 0.95
    assert far.entropy.min() > np.quantile(near.entropy, 0.9)
    assert far.entropy.min() > 0.95 * np.log(3)  # nearly uniform far away
    kernels = [
        layer.layer.kernel.numpy() for layer in model.layers if isinstance(layer, SN)
    ]
    for kernel in kernels:  # within one optimizer step of the bound
        assert _spectral_norm(kernel) < 0.95 * 1.05


def test_keras_round_trip_keeps_the_covariance(sngp_blobs, tmp_path):
    model, x, _ = sngp_blobs
    gp = model.gaussian_process_layers()[0]
    path = str(tmp_path / "sngp.keras")
    model.save(path)  # saved stale: the covariance is computed after loading
    loaded = keras.models.load_model(path)
    assert type(loaded) is ku.sngp.SNGPModel
    gp2 = loaded.gaussian_process_layers()[0]
    np.testing.assert_array_equal(
        gp2.precision_matrix.numpy(), gp.precision_matrix.numpy()
    )
    np.testing.assert_allclose(
        loaded.predict(x[:50], verbose=0), model.predict(x[:50], verbose=0), atol=1e-6
    )
    model.update_covariance()
    model.save(path)  # saved with the cached covariance
    loaded = keras.models.load_model(path)
    gp3 = loaded.gaussian_process_layers()[0]
    assert gp3.covariance_stale.numpy() == 0.0
    np.testing.assert_array_equal(
        gp3.covariance_matrix.numpy(), gp.covariance_matrix.numpy()
    )
    sn = [layer for layer in loaded.layers if isinstance(layer, SN)][0]
    assert (sn.norm_multiplier, sn.power_iterations) == (0.95, 1)
    assert gp3.get_config()["num_inducing"] == 256


def test_export_serves_the_one_pass_prediction(sngp_blobs, tmp_path):
    model, x, _ = sngp_blobs
    path = ku.export(model, str(tmp_path / "sngp"), task="classification")
    served = tf.saved_model.load(path)
    out = served.serve(tf.constant(x[:7]))
    local = ku.predict_classification(model, x[:7])
    np.testing.assert_allclose(out["probs"].numpy(), local.probs, atol=1e-5)
    np.testing.assert_allclose(out["entropy"].numpy(), local.entropy, atol=1e-5)


# -- argument checks ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"norm_multiplier": 0}, "norm_multiplier"),
        ({"norm_multiplier": float("nan")}, "norm_multiplier"),
        ({"norm_multiplier": "1"}, "norm_multiplier"),
        ({"power_iterations": 0}, "power_iterations"),
        ({"power_iterations": 1.5}, "power_iterations"),
        ({"seed": -1}, "seed"),
    ],
)
def test_spectral_normalization_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"argument `{match}`"):
        SN(keras.layers.Dense(2), **kwargs)


def test_spectral_normalization_needs_a_layer_with_a_kernel():
    with pytest.raises(ValueError, match="argument `layer`.*keras.layers.Layer"):
        SN("dense")
    with pytest.raises(ValueError, match="with a `kernel`.*ReLU"):
        SN(keras.layers.ReLU())(np.ones((1, 2), "float32"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"units": 0}, "units"),
        ({"num_inducing": 0}, "num_inducing"),
        ({"gp_kernel_scale": 0.0}, "gp_kernel_scale"),
        ({"gp_cov_momentum": 0.0}, "gp_cov_momentum"),
        ({"gp_cov_momentum": 1.0}, "gp_cov_momentum"),
        ({"gp_cov_momentum": float("-inf")}, "gp_cov_momentum"),
        ({"gp_cov_ridge_penalty": -1.0}, "gp_cov_ridge_penalty"),
        ({"gp_cov_likelihood": "poisson"}, "gp_cov_likelihood"),
        ({"mean_field_factor": -0.1}, "mean_field_factor"),
        ({"activation": "relu"}, "activation"),
        ({"units": 1}, "units"),  # softmax needs two classes
        ({"normalize_input": 1}, "normalize_input"),
    ],
)
def test_gaussian_process_rejects_bad_arguments(kwargs, match):
    kwargs = {"units": 3, **kwargs}
    with pytest.raises(ValueError, match=f"argument `{match}`"):
        GP(**kwargs)


def test_gaussian_process_needs_2d_inputs_and_models_need_one():
    with pytest.raises(ValueError, match=r"2-D input.*\(None, 4, 4\)"):
        GP(3)(keras.Input((4, 4)))
    inputs = keras.Input((2,))
    with pytest.raises(ValueError, match="RandomFeatureGaussianProcess"):
        ku.sngp.SNGPModel(inputs, keras.layers.Dense(3)(inputs))
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    plain.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="SNGPCovarianceReset"):
        plain.fit(
            np.zeros((4, 2)),
            np.zeros(4),
            verbose=0,
            callbacks=[ku.sngp.SNGPCovarianceReset()],
        )


# -- regression head ----------------------------------------------------------


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
def test_regression_head_matches_bayesian_linear_regression(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, size=(64, 2)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.1 * rng.normal(size=(64, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    gp = GP(1, num_inducing=48, task="regression", seed=5)
    model = ku.sngp.SNGPModel(inputs, gp(inputs))
    model.compile(keras.optimizers.SGD(0.0), ku.losses.gaussian_nll)
    gp.log_noise_variance.assign([np.log(0.25)])
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        shuffle=False,
        verbose=0,
        callbacks=[ku.sngp.SNGPCovarianceReset()],
    )
    phi = _numpy_features(gp, x)
    precision = np.eye(48) + phi.T @ phi / 0.25
    np.testing.assert_allclose(
        gp.precision_matrix.numpy(), precision, rtol=1e-4, atol=1e-4
    )
    covariance = np.linalg.inv(precision.astype(np.float64))
    x_test = np.concatenate([x[:5], x[:5] + 6.0])
    phi_t = _numpy_features(gp, x_test)
    variance = np.einsum("nd,de,ne->n", phi_t, covariance, phi_t)
    mean = phi_t @ gp.beta.numpy()
    out = model.predict(x_test, verbose=0)
    np.testing.assert_allclose(out[:, :1], mean, atol=1e-5)
    np.testing.assert_allclose(np.exp(out[:, 1]), 0.25 + variance, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = ku.predict_regression(model, x_test)
        chunked = ku.predict_regression(model, x_test, max_rows_per_call=1)
    np.testing.assert_allclose(pred.mean, mean, atol=1e-5)
    np.testing.assert_allclose(pred.aleatoric_std, 0.5, rtol=1e-5)
    np.testing.assert_allclose(pred.epistemic_std[:, 0], np.sqrt(variance), rtol=1e-3)
    # Chunks change how the matrix kernels block their sums: the seed promise.
    np.testing.assert_allclose(
        chunked.epistemic_std, pred.epistemic_std, **ku.sampling.SEEDED_TOLERANCE
    )
    np.testing.assert_allclose(pred.std[:, 0], np.sqrt(0.25 + variance), rtol=1e-3)
    assert pred.epistemic_std[5:].min() > pred.epistemic_std[:5].max()
    assert ku.sample(model, x_test, num_samples=10).shape == (2, 10, 2)
    path = ku.export(model, str(tmp_path / "reg"), task="regression")
    served = tf.saved_model.load(path)
    out = served.serve(tf.constant(x_test))
    np.testing.assert_allclose(
        out["epistemic_std"].numpy(), pred.epistemic_std, rtol=1e-4
    )
    with pytest.raises(ValueError, match="argument `task`"):
        GP(2, task="ranking")


# -- the defaults (issue #37) -------------------------------------------------


def test_default_head_has_unscaled_features_and_unit_laplace_weights():
    # The defaults a user gets: phi = cos(h W + b) (no sqrt(2 / D)), and every
    # training row adds phi phi^T to the precision whatever its probability.
    x = np.random.default_rng(3).normal(size=(7, 5)).astype("float32")
    gp = GP(4, num_inducing=48, seed=0)
    assert not gp.scale_random_features
    assert gp.gp_cov_likelihood == "gaussian"
    gp(x, training=True)
    phi = np.cos(x @ gp.random_kernel.numpy() + gp.random_bias.numpy())
    np.testing.assert_allclose(gp.random_features(x).numpy(), phi, atol=1e-5)
    np.testing.assert_allclose(
        gp.precision_matrix.numpy(), np.eye(48) + phi.T @ phi, rtol=1e-5, atol=1e-4
    )
    # |phi|^2 is about D / 2: the prior variance far from the data.
    assert (phi**2).sum(-1).mean() == pytest.approx(24, rel=0.25)


def test_default_spectral_bound_is_095_on_every_wrapped_kernel():
    keras.utils.set_random_seed(0)
    wrapper = SN(keras.layers.Conv2D(4, 3))
    assert wrapper.norm_multiplier == 0.95
    assert SN.from_config(wrapper.get_config()).norm_multiplier == 0.95
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    wrapper(x)
    wrapper.layer.kernel.assign(wrapper.layer.kernel.numpy() * 20.0)
    for _ in range(30):
        wrapper(x, training=True)
    assert _spectral_norm(wrapper.layer.kernel.numpy()) <= 0.95 * (1 + 1e-3)


def _oriented_gratings(count, seed):
    """16x16 noisy gratings, 4 orientations 45 degrees apart (the class)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    theta = (labels + rng.uniform(-0.2, 0.2, count)) * np.pi / 4
    freq = rng.uniform(0.15, 0.3, count)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, count)[:, None, None]
    yy, xx = (g[None] for g in np.mgrid[0:16, 0:16] - 7.5)
    along = xx * np.cos(theta)[:, None, None] + yy * np.sin(theta)[:, None, None]
    images = np.cos(2 * np.pi * freq * along + phase)
    images = images + 1.5 * rng.normal(size=images.shape)
    return images[..., None].astype("float32"), labels


def _small_cnn(head):
    """A small CNN with a softmax head ("plain"), or as SNGP at the defaults
    ("sngp") or at those of 0.2 ("sngp_before")."""
    keras.utils.set_random_seed(0)
    wrap = (lambda layer: layer) if head == "plain" else SN
    inputs = keras.Input((16, 16, 1))
    h = wrap(keras.layers.Conv2D(16, 3, activation="relu"))(inputs)
    h = keras.layers.MaxPooling2D(2)(h)
    h = wrap(keras.layers.Conv2D(16, 3, activation="relu"))(h)
    h = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(h))
    h = wrap(keras.layers.Dense(32, activation="relu"))(h)
    if head == "plain":
        return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(h))
    before = {"scale_random_features": True, "gp_cov_likelihood": "logistic"}
    gp = GP(4, seed=0, **(before if head == "sngp_before" else {}))
    return ku.sngp.SNGPModel(inputs, gp(h))


@pytest.mark.slow
def test_sngp_at_its_defaults_trains_as_well_as_the_plain_network():
    x, y = _oriented_gratings(2400, seed=0)
    x_test, y_test = _oriented_gratings(600, seed=1)
    scores = {}
    for head in ("plain", "sngp", "sngp_before"):
        model = _small_cnn(head)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        callbacks = [] if head == "plain" else [ku.sngp.SNGPCovarianceReset()]
        model.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=callbacks)
        probs = model.predict(x_test, verbose=0)
        scores[head] = (
            (probs.argmax(-1) == y_test).mean(),
            ku.metrics.expected_calibration_error(y_test, probs),
        )
    (plain, plain_ece), (sngp, sngp_ece), (before, before_ece) = scores.values()
    assert plain > 0.7
    assert sngp >= plain - 0.02
    assert sngp_ece <= 0.05
    # The defaults of 0.2 (features times sqrt(2 / D)): far behind.
    assert before < plain - 0.1 or before_ece > 0.1
