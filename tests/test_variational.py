"""Variational layers (`ku.layers.DenseFlipout`, ...): the sampled
distribution against its analytic form, the KL against references, ELBO
training through `compile`/`fit`, the engine, serialization and bad inputs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

import keras_uncertainty as ku

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels

L = ku.layers
# Bounds in standard errors: every statistical check below is a sum or a
# mean whose standard error is computed, and a 5-sigma bound fails by chance
# with probability below 1e-6 (the draws are seeded, so a pass is stable).
Z = 5.0


def _one_layer_model(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def _set_posterior(layer, rng, scale_low=0.1, scale_high=0.5):
    """Random posterior means and scales (softplus(rho) in [low, high])."""
    for loc, rho in (
        (layer.kernel_loc, layer.kernel_rho),
        (layer.bias_loc, layer.bias_rho),
    ):
        if rho is None:
            continue
        loc.assign(rng.normal(size=loc.shape).astype("float32"))
        scale = rng.uniform(scale_low, scale_high, size=rho.shape)
        rho.assign(np.log(np.expm1(scale)).astype("float32"))


def _scales(layer):
    kernel = np.asarray(layer.kernel_scale, "float64")
    bias = None if layer.bias_rho is None else np.asarray(layer.bias_scale, "float64")
    return kernel, bias


# -- (1) the sampled output distribution -------------------------------------


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
@pytest.mark.parametrize(
    "layer_class",
    [
        L.DenseReparameterization,
        L.DenseFlipout,
        lambda units, **kw: L.DenseFlipout(units, sampling_signs="narrow", **kw),
    ],
    ids=["reparameterization", "flipout", "flipout_narrow_signs"],
)
def test_dense_sample_variance_matches_the_analytic_predictive(layer_class):
    # One input, T samples through ku.sample: each sample uses its own
    # weight draw, so the T outputs are i.i.d. N(x m + b_m, x^2 s^2 + b_s^2)
    # and (T - 1) S^2 / var is chi-square with T - 1 degrees of freedom:
    # relative standard error sqrt(2 / (T - 1)) = 2.2% per unit at T = 4000,
    # 0.8% pooled over 8 units.
    rng = np.random.default_rng(0)
    d, units, t = 16, 8, 4000
    layer = layer_class(units, seed=0)
    model = _one_layer_model(layer, (d,))
    _set_posterior(layer, rng)
    x = rng.normal(size=(1, d)).astype("float32")
    samples = ku.sample(model, x, t, seed=1, verbose=0)[:, 0, :].astype("float64")
    kernel_scale, bias_scale = _scales(layer)
    mean = x[0] @ np.asarray(layer.kernel_loc) + np.asarray(layer.bias_loc)
    var = (x[0].astype("float64") ** 2) @ kernel_scale**2 + bias_scale**2
    sample_var = samples.var(axis=0, ddof=1)
    ratio = sample_var / var
    assert np.all(np.abs(ratio - 1) < Z * math.sqrt(2 / (t - 1))), ratio
    pooled = stats.chi2.cdf((t - 1) * ratio.sum(), units * (t - 1))
    assert 1e-6 < pooled < 1 - 1e-6, pooled
    assert np.all(np.abs(samples.mean(axis=0) - mean) < Z * np.sqrt(var / t))
    # Independent samples: the lag-1 correlation is within its standard error.
    centred = (samples - mean) / np.sqrt(var)
    lag1 = (centred[1:] * centred[:-1]).mean(axis=0)
    assert np.all(np.abs(lag1) < Z / math.sqrt(t)), lag1


def test_dense_flipout_rows_of_a_direct_call_have_the_posterior_marginal():
    # Outside a sampling call all rows share one eps (decorrelated by their
    # signs); averaged over calls (one eps each) the per-row variance is the
    # analytic one. Per call the variance given eps fluctuates (d = 32 terms
    # per unit: relative sd ~ 0.25 per unit); 30 calls x 16 units pooled
    # gives a standard error near 0.02.
    rng = np.random.default_rng(1)
    d, units, rows, calls = 32, 16, 2000, 30
    layer = L.DenseFlipout(units, seed=3)
    layer.build((None, d))
    _set_posterior(layer, rng, 0.2, 0.2)
    x = np.repeat(rng.normal(size=(1, d)).astype("float32"), rows, axis=0)
    kernel_scale, bias_scale = _scales(layer)
    var = (x[0].astype("float64") ** 2) @ kernel_scale**2 + bias_scale**2
    ratios = [
        np.asarray(layer(x), "float64").var(axis=0, ddof=1) / var for _ in range(calls)
    ]
    assert abs(np.mean(ratios) - 1) < 0.1, np.mean(ratios)


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_conv_flipout_sample_variance_matches_the_analytic_predictive(data_format):
    # One input, T samples through ku.sample: each sample draws its own eps,
    # so at every position the T outputs are i.i.d. with the analytic
    # variance sum(window^2 s^2) + b_s^2 (chi-square bound per unit, as for
    # Dense) and uncorrelated from one sample to the next.
    rng = np.random.default_rng(2)
    steps, channels, filters, t = 6, 5, 8, 4000
    layer = L.Conv1DFlipout(filters, 3, data_format=data_format, seed=0)
    shape = (steps, channels) if data_format == "channels_last" else (channels, steps)
    model = _one_layer_model(layer, shape)
    _set_posterior(layer, rng)
    x = rng.normal(size=(1, steps, channels)).astype("float32")
    kernel_scale, bias_scale = _scales(layer)  # (3, C, F), (F,)
    windows = np.stack([x[0, p : p + 3] for p in range(steps - 2)]).astype("float64")
    var = np.einsum("pkc,kcf->pf", windows**2, kernel_scale**2) + bias_scale**2
    mean = np.einsum("pkc,kcf->pf", windows, np.asarray(layer.kernel_loc)) + np.asarray(
        layer.bias_loc
    )
    inputs = x if data_format == "channels_last" else np.transpose(x, (0, 2, 1))
    samples = ku.sample(model, inputs, t, seed=1, verbose=0)[:, 0].astype("float64")
    if data_format == "channels_first":
        samples = np.transpose(samples, (0, 2, 1))  # (T, positions, filters)
    ratio = samples.var(axis=0, ddof=1) / var
    assert np.all(np.abs(ratio - 1) < Z * math.sqrt(2 / (t - 1))), ratio
    assert np.all(np.abs(samples.mean(axis=0) - mean) < Z * np.sqrt(var / t))
    centred = (samples - mean) / np.sqrt(var)
    lag1 = (centred[1:] * centred[:-1]).mean(axis=0)
    assert np.all(np.abs(lag1) < Z / math.sqrt(t)), lag1
    # Chunked differently, the same seed gives the same samples.
    again = ku.sample(model, inputs, t, seed=1, verbose=0, max_rows_per_call=700)
    np.testing.assert_allclose(
        np.asarray(again)[:, 0], ku.sample(model, inputs, t, seed=1, verbose=0)[:, 0],
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


# -- (5) convolutions: shapes, padding, strides ------------------------------


@pytest.mark.parametrize(
    "layer_class, keras_class, shape, kwargs",
    [
        (L.Conv1DFlipout, keras.layers.Conv1D, (9, 3), {"padding": "same"}),
        (L.Conv1DFlipout, keras.layers.Conv1D, (9, 3), {"strides": 2}),
        (L.Conv1DFlipout, keras.layers.Conv1D, (9, 3), {"dilation_rate": 2}),
        (L.Conv2DFlipout, keras.layers.Conv2D, (7, 8, 2), {"strides": (2, 1)}),
        (
            L.Conv2DFlipout,
            keras.layers.Conv2D,
            (7, 8, 2),
            {"padding": "same", "strides": 2},
        ),
        (
            L.Conv2DFlipout,
            keras.layers.Conv2D,
            (2, 7, 8),
            {"data_format": "channels_first", "padding": "same"},
        ),
    ],
)
def test_conv_flipout_matches_keras_conv_at_zero_scale(
    layer_class, keras_class, shape, kwargs
):
    # With a vanishing posterior scale the layer is the Keras convolution
    # with the posterior means: same output shape and values.
    layer = layer_class(4, 3, posterior_scale_init=1e-20, seed=0, **kwargs)
    x = np.random.default_rng(0).normal(size=(5, *shape)).astype("float32")
    out = np.asarray(layer(x))
    # TensorFlow's CPU kernels convolve channels last only: the reference
    # convolves the transposed inputs (the layer must accept channels first
    # on any device).
    channels_first = kwargs.get("data_format") == "channels_first"
    last = {k: v for k, v in kwargs.items() if k != "data_format"}
    reference = keras_class(4, 3, data_format="channels_last", **last)
    x_last = np.moveaxis(x, 1, -1) if channels_first else x
    reference.build(x_last.shape)
    reference.set_weights([np.asarray(layer.kernel_loc), np.asarray(layer.bias_loc)])
    expected = np.asarray(reference(x_last))
    if channels_first:
        expected = np.moveaxis(expected, -1, 1)
    assert out.shape == expected.shape
    assert layer.compute_output_shape((None, *shape)) == (None, *expected.shape[1:])
    np.testing.assert_allclose(out, expected, atol=1e-5)
    samples = ku.sample(
        _one_layer_model(layer_class(4, 3, **kwargs), shape), x, 3, verbose=0
    )
    assert samples.shape == (3, *expected.shape)


# -- (2) KL divergence ---------------------------------------------------------


def _kl_by_quadrature(m, s, log_prior):
    """KL(N(m, s^2) || p) by numerical integration over +-12 sd."""

    def integrand(w):
        log_q = stats.norm.logpdf(w, m, s)
        return math.exp(log_q) * (log_q - log_prior(w))

    return integrate.quad(integrand, m - 12 * s, m + 12 * s, limit=200)[0]


def test_normal_prior_kl_is_the_closed_form():
    rng = np.random.default_rng(3)
    layer = L.DenseFlipout(2, prior_scale=0.7)
    layer.build((None, 3))
    _set_posterior(layer, rng, 0.05, 1.5)
    kernel_scale, bias_scale = _scales(layer)
    means = np.concatenate([np.ravel(layer.kernel_loc), np.ravel(layer.bias_loc)])
    scales = np.concatenate([np.ravel(kernel_scale), np.ravel(bias_scale)])
    reference = sum(
        _kl_by_quadrature(m, s, lambda w: stats.norm.logpdf(w, 0, 0.7))
        for m, s in zip(means, scales)
    )
    np.testing.assert_allclose(float(layer.kl_divergence()), reference, rtol=1e-5)


def test_scale_mixture_kl_estimate_is_unbiased():
    # The one-sample estimate log q(w) - log p(w) averaged over 4000 draws
    # against the KL integrated numerically, within 5 standard errors.
    rng = np.random.default_rng(4)
    pi, s1, s2 = 0.3, 1.0, 0.05
    layer = L.DenseReparameterization(
        1,
        prior="scale_mixture",
        prior_scale=s1,
        mixture_scale=s2,
        mixture_weight=pi,
        use_bias=False,
        seed=0,
    )
    layer.build((None, 2))
    _set_posterior(layer, rng, 0.02, 0.4)
    means = np.ravel(layer.kernel_loc)
    scales = np.ravel(_scales(layer)[0])

    def log_prior(w):
        return np.logaddexp(
            math.log(pi) + stats.norm.logpdf(w, 0, s1),
            math.log(1 - pi) + stats.norm.logpdf(w, 0, s2),
        )

    reference = sum(_kl_by_quadrature(m, s, log_prior) for m, s in zip(means, scales))
    # Noise with a leading axis of D draws gives the sum of D one-sample
    # estimates: 40 batches of 100 draws, their means' spread as the error.
    batches, draws = 40, 100
    noise = rng.normal(size=(batches, draws, 2, 1)).astype("float32")
    values = np.array([float(layer.kl_divergence([eps])) / draws for eps in noise])
    error = values.std(ddof=1) / math.sqrt(batches)
    assert abs(values.mean() - reference) < Z * error
    # Fresh draws (no noise given) are estimates of the same KL.
    fresh = np.array([float(layer.kl_divergence()) for _ in range(100)])
    assert abs(fresh.mean() - reference) < Z * error * math.sqrt(draws * batches / 100)


# -- (3) ELBO training through compile / fit -------------------------------------


def _regression_data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 1)).astype("float32")
    y = (np.sin(2 * x) + 0.1 * rng.normal(size=x.shape)).astype("float32")
    return x, y


def _flipout_regressor(n, prior="normal"):
    inputs = keras.Input((1,))
    h = L.DenseFlipout(32, activation="relu", kl_weight=1 / n, prior=prior, seed=1)(
        inputs
    )
    h = L.DenseReparameterization(32, activation="relu", kl_weight=1 / n, seed=2)(h)
    outputs = L.DenseFlipout(2, kl_weight=1 / n, seed=3)(h)  # mean, log-variance
    return keras.Model(inputs, outputs)


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
def test_elbo_training_decreases_the_loss_and_adds_the_weighted_kl():
    x, y = _regression_data()
    n = len(x)
    keras.utils.set_random_seed(0)
    model = _flipout_regressor(n)
    model.compile(keras.optimizers.Adam(0.01), ku.losses.gaussian_nll)
    history = model.fit(x, y, epochs=20, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] - 1.0, losses
    # The losses of a call are kl_weight * KL, one per layer.
    variational = [
        layer
        for layer in model.layers
        if isinstance(layer, L.DenseFlipout | L.DenseReparameterization)
    ]
    model(x, training=True)
    expected = [layer.kl_weight * float(layer.kl_divergence()) for layer in variational]
    np.testing.assert_allclose([float(v) for v in model.losses], expected, rtol=1e-5)
    # The loss Keras reports holds them: changing the weight after compile
    # (no recompile, no retrace of the test step) moves evaluate's loss by
    # the change times the KL. The data term differs between the two
    # calls only by the sampling noise of the outputs.
    kl = sum(float(layer.kl_divergence()) for layer in variational)
    before = model.evaluate(x, y, verbose=0, batch_size=n)
    assert L.set_kl_weight(model, 10 / n) == 3
    after = model.evaluate(x, y, verbose=0, batch_size=n)
    np.testing.assert_allclose(after - before, 9 / n * kl, rtol=0.05)
    assert all(layer.kl_weight == pytest.approx(10 / n) for layer in variational)


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
def test_scale_mixture_prior_trains():
    # Its one-sample KL estimate is differentiable: fit moves the means and
    # the scales, with finite losses.
    x, y = _regression_data(64, seed=1)
    layer = L.DenseFlipout(2, kl_weight=1 / 64, prior="scale_mixture", seed=0)
    model = keras.Sequential([keras.Input((1,)), layer])
    model.compile(keras.optimizers.Adam(0.01), ku.losses.gaussian_nll)
    start = [np.asarray(w) for w in (layer.kernel_loc, layer.kernel_rho)]
    losses = model.fit(x, y, epochs=3, batch_size=32, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)), losses
    for before, after in zip(start, (layer.kernel_loc, layer.kernel_rho)):
        assert np.all(before != np.asarray(after))


# -- (4) the engine: predict_regression, seeds, export -------------------------------


@pytest.fixture(scope="module")
def regressor():
    x, _ = _regression_data(32)
    model = _flipout_regressor(1000)
    for layer in model.layers[1:]:
        _set_posterior(layer, np.random.default_rng(5), 0.05, 0.1)
    return model, x


def test_predict_regression_is_finite_and_seeded(regressor):
    model, x = regressor
    first = ku.predict_regression(model, x, 50, seed=0, variance_head=True)
    again = ku.predict_regression(model, x, 50, seed=0, variance_head=True)
    other = ku.predict_regression(model, x, 50, seed=1, variance_head=True)
    for value in (first.mean, first.std, first.aleatoric_std, first.epistemic_std):
        assert value.shape == (len(x), 1) and np.all(np.isfinite(value))
    assert np.all(first.epistemic_std > 0)
    np.testing.assert_array_equal(first.mean, again.mean)
    np.testing.assert_array_equal(first.std, again.std)
    assert not np.allclose(first.mean, other.mean)
    # The same samples whatever the chunking, also when the samples of an
    # input are split over several compiled calls (DenseFlipout keys each
    # sample's perturbation by the sample's global index).
    split = ku.sample(model, x[:4], 20, seed=2, max_rows_per_call=8, verbose=0)
    whole = ku.sample(model, x[:4], 20, seed=2, batch_size=1, verbose=0)
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)


def test_export_serves_the_seeded_prediction(regressor, tmp_path):
    model, x = regressor
    path = ku.export(
        model, tmp_path / "1", task="regression", num_samples=50, variance_head=True
    )
    served = tf.saved_model.load(str(path))
    out = served.serve_seeded(tf.constant(x), tf.constant(0, tf.int64))
    expected = ku.predict_regression(model, x, 50, seed=0, variance_head=True)
    np.testing.assert_allclose(out["mean"], expected.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["std"], expected.std, rtol=1e-4, atol=1e-5)
    fresh = served.serve(tf.constant(x))
    assert np.all(np.isfinite(fresh["epistemic_std"]))


# -- (6) contract and serialization -------------------------------------------


@pytest.mark.parametrize(
    "layer, shape",
    [
        (L.DenseReparameterization(3, seed=1), (4,)),
        (L.DenseFlipout(3, variational_bias=False, seed=1), (4,)),
        (L.DenseFlipout(3, sampling_signs="narrow", seed=1), (4,)),
        (L.Conv1DFlipout(2, 3, padding="same", seed=1), (5, 2)),
        (L.Conv2DFlipout(2, 2, prior="scale_mixture", seed=1), (4, 4, 1)),
    ],
)
def test_layers_meet_the_mc_layer_contract(layer, shape):
    ku.testing.check_mc_layer(layer, input_shape=shape)


def test_keras_file_round_trip_keeps_weights_config_and_samples(tmp_path):
    inputs = keras.Input((6, 6, 1))
    h = L.Conv2DFlipout(3, 3, activation="relu", kl_weight=1e-3, seed=1)(inputs)
    h = keras.layers.Flatten()(h)
    h = L.DenseReparameterization(
        8, activation="relu", prior="scale_mixture", mixture_weight=0.25, seed=2
    )(h)
    outputs = L.DenseFlipout(2, variational_bias=False, prior_scale=0.5, seed=3)(h)
    model = keras.Model(inputs, outputs)
    L.set_kl_weight(model, 0.01)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model.layers, loaded.layers):
        assert type(a) is type(b) and a.get_config() == b.get_config()
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loaded.layers[-1].kl_weight == pytest.approx(0.01)
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype("float32")
    np.testing.assert_allclose(
        ku.sample(model, x, 5, seed=4, verbose=0),
        ku.sample(loaded, x, 5, seed=4, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_initialization_starts_near_the_deterministic_network():
    layer = L.DenseFlipout(4)
    layer.build((None, 3))
    np.testing.assert_allclose(np.asarray(layer.kernel_scale), 1e-3, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(layer.bias_scale), 1e-3, rtol=1e-4)
    assert np.std(np.asarray(layer.kernel_loc)) > 0.1  # glorot, not zeros
    np.testing.assert_array_equal(np.asarray(layer.bias_loc), 0)
    assert layer.non_trainable_weights == [layer.kl_weight_variable]


# -- (7) bad inputs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"units": 0}, "units"),
        ({"units": 2.5}, "units"),
        ({"prior_scale": 0}, "prior_scale"),
        ({"prior_scale": -1.0}, "prior_scale"),
        ({"prior_scale": float("inf")}, "prior_scale"),
        ({"kl_weight": -1e-3}, "kl_weight"),
        ({"kl_weight": float("nan")}, "kl_weight"),
        ({"kl_weight": "1"}, "kl_weight"),
        ({"posterior_scale_init": 0.0}, "posterior_scale_init"),
        ({"mixture_scale": 0.0}, "mixture_scale"),
        ({"mixture_weight": 0.0}, "mixture_weight"),
        ({"mixture_weight": 1.5}, "mixture_weight"),
        ({"prior": "laplace"}, "prior"),
        ({"use_bias": 1}, "use_bias"),
        ({"variational_bias": None}, "variational_bias"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_dense_arguments_name_the_argument(kwargs, name):
    kwargs = {"units": 3, **kwargs}
    for layer_class in (L.DenseFlipout, L.DenseReparameterization):
        with pytest.raises(ValueError, match=rf"`{name}`.*Expected.*Received: {name}="):
            layer_class(**kwargs)
    with pytest.raises(ValueError, match="`sampling_signs`.*Received: sampling_signs="):
        L.DenseFlipout(3, sampling_signs="input")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"filters": -1}, "filters"),
        ({"kernel_size": (3,)}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"strides": (1, 0)}, "strides"),
        ({"padding": "causal"}, "padding"),
        ({"data_format": "nhwc"}, "data_format"),
        ({"dilation_rate": (2, 2), "strides": 2}, "strides"),
    ],
)
def test_bad_conv_arguments_name_the_argument(kwargs, name):
    kwargs = {"filters": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=rf"`{name}`.*Expected.*Received: "):
        L.Conv2DFlipout(**kwargs)


def test_bad_inputs_and_set_kl_weight_arguments():
    with pytest.raises(ValueError, match="Expected a tensor of rank 4"):
        L.Conv2DFlipout(2, 3)(np.ones((2, 5, 5), "float32"))
    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`model`.*has none"):
        L.set_kl_weight(plain, 0.1)
    with pytest.raises(ValueError, match="`model`"):
        L.set_kl_weight("model", 0.1)
    model = keras.Sequential([keras.Input((2,)), L.DenseFlipout(1)])
    with pytest.raises(ValueError, match="`kl_weight`.*Received: kl_weight=-1"):
        L.set_kl_weight(model, -1)
