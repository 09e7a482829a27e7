"""ku.laplace: exact on Bayesian linear regression, KFAC, predictives, engine."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize

import keras_uncertainty as ku

N, D = 60, 3


@pytest.fixture(scope="module")
def linear_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    w = rng.normal(size=(D, 2))
    y = (x @ w + 0.3 * rng.normal(size=(N, 2))).astype("float32")
    return x, y


def _design(x):
    return np.c_[x.astype(np.float64), np.ones(len(x))]


def _blr(x, y, delta, sigma):
    """Exact Bayesian linear regression, prior N(0, I / delta) on [w, b]."""
    phi = _design(x)
    precision = phi.T @ phi / sigma**2 + delta * np.eye(phi.shape[1])
    cov = np.linalg.inv(precision)
    mean = cov @ phi.T @ y.astype(np.float64) / sigma**2
    return mean, cov


def _evidence(x, y, delta, sigma):
    """log N(y | 0, sigma^2 I + Phi Phi^T / delta), summed over the columns."""
    phi = _design(x)
    cov = sigma**2 * np.eye(len(x)) + phi @ phi.T / delta
    y = y.astype(np.float64).reshape(len(x), -1)
    _, logdet = np.linalg.slogdet(cov)
    quad = np.sum(y * np.linalg.solve(cov, y))
    return -0.5 * quad - 0.5 * y.shape[1] * (logdet + len(x) * np.log(2 * np.pi))


def _linear_model(mean, outputs=1):
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(outputs)])
    mean = np.asarray(mean, np.float64).reshape(D + 1, outputs)
    model.layers[-1].set_weights([mean[:D], mean[D]])
    return model


@pytest.mark.parametrize("hessian", ["full", "kron", "diag"])
@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_linear_model_is_exact_bayesian_linear_regression(linear_data, subset, hessian):
    x, y = linear_data
    y = y[:, :1]
    delta, sigma = 2.0, 0.4
    mean, cov = _blr(x, y, delta, sigma)
    model = _linear_model(mean)
    la = ku.laplace.Laplace(
        model,
        "regression",
        subset=subset,
        hessian=hessian,
        prior_precision=delta,
        sigma_noise=sigma,
        fit_prior_precision=False,
    ).fit(x, y)
    # The mean is the network's float32 weights.
    np.testing.assert_allclose(la.posterior_mean_, mean.ravel(), rtol=1e-6)
    if hessian == "diag":  # the diagonal of the exact precision
        expected = np.diag(np.diag(np.linalg.inv(cov)))
        np.testing.assert_allclose(la.posterior_precision(), expected, rtol=1e-6)
        return
    np.testing.assert_allclose(la.posterior_covariance(), cov, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(
        la.posterior_precision(), np.linalg.inv(cov), rtol=1e-6, atol=1e-9
    )
    x_new = x[:7] * 2.0
    phi = _design(x_new)
    pred = la.predict(x_new)
    assert isinstance(pred, ku.RegressionPrediction)
    f_var = np.einsum("ni,ij,nj->n", phi, cov, phi)
    np.testing.assert_allclose(pred.mean[:, 0], phi @ mean[:, 0], rtol=1e-5)
    np.testing.assert_allclose(pred.epistemic_std[:, 0] ** 2, f_var, rtol=1e-6)
    np.testing.assert_allclose(pred.aleatoric_std, sigma, rtol=1e-12)
    np.testing.assert_allclose(pred.std[:, 0] ** 2, f_var + sigma**2, rtol=1e-6)
    # For a linear-Gaussian model the Laplace evidence is exact.
    np.testing.assert_allclose(
        la.log_marginal_likelihood_, _evidence(x, y, delta, sigma), rtol=1e-7
    )
    np.testing.assert_allclose(
        la.log_marginal_likelihood(3.0, 0.5),
        _evidence(x, y, 3.0, 0.5)
        + 0.0,  # theta* is not the posterior mean there: only close
        rtol=0.05,
    )


def test_two_outputs_kfac_is_the_exact_block_posterior(linear_data):
    x, y = linear_data
    delta, sigma = 1.5, 0.3
    mean, cov = _blr(x, y, delta, sigma)
    model = _linear_model(mean, outputs=2)
    la = ku.laplace.Laplace(
        model,
        "regression",
        hessian="kron",
        prior_precision=delta,
        sigma_noise=sigma,
        fit_prior_precision=False,
    ).fit(x, y)
    # Parameter i * k + c is W~[i, c]: Sigma = kron(cov, I_2).
    np.testing.assert_allclose(
        la.posterior_covariance(), np.kron(cov, np.eye(2)), rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(
        la.log_marginal_likelihood_, _evidence(x, y, delta, sigma), rtol=1e-7
    )


def test_fitted_prior_precision_and_noise_maximize_the_exact_evidence(linear_data):
    x, y = linear_data
    y = y[:, :1]

    def negative(u):
        return -_evidence(x, y, np.exp(u[0]), np.exp(u[1]))

    found = optimize.minimize(
        negative,
        [0.0, 0.0],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 4000},
    )
    delta, sigma = np.exp(found.x)
    # theta* at the evidence maximizer: there the Laplace evidence's
    # stationary point (theta* fixed) is the exact one (envelope theorem).
    mean, _ = _blr(x, y, delta, sigma)
    model = _linear_model(mean)
    for hessian in ("full", "kron"):
        la = ku.laplace.Laplace(model, "regression", hessian=hessian).fit(x, y)
        np.testing.assert_allclose(la.prior_precision_, delta, rtol=1e-4)
        np.testing.assert_allclose(la.sigma_noise_, sigma, rtol=1e-5)
        np.testing.assert_allclose(la.log_marginal_likelihood_, -found.fun, rtol=1e-8)
    # With sigma held, the maximizer in delta alone.
    la = ku.laplace.Laplace(
        model, "regression", hessian="full", sigma_noise=0.5, fit_sigma_noise=False
    ).fit(x, y)
    assert la.sigma_noise_ == 0.5
    best = optimize.minimize_scalar(
        lambda a: -la.log_marginal_likelihood(np.exp(a)),
        bounds=(-10, 10),
        method="bounded",
        options={"xatol": 1e-10},
    )
    np.testing.assert_allclose(la.prior_precision_, np.exp(best.x), rtol=1e-6)


@pytest.fixture(scope="module")
def classifier_data():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=300)
    x = rng.normal(size=(300, 4)).astype("float32") + labels[:, None] * 0.8
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=20, batch_size=100, verbose=0)
    return model, x.astype("float32"), labels


def test_kfac_approximates_the_full_last_layer_ggn(classifier_data):
    model, x, labels = classifier_data
    kw = dict(prior_precision=1.0, fit_prior_precision=False)
    full = ku.laplace.Laplace(model, "classification", hessian="full", **kw)
    kron = ku.laplace.Laplace(model, "classification", hessian="kron", **kw)
    full.fit(x, labels)
    kron.fit(x, labels)
    a, b = full.posterior_covariance(), kron.posterior_covariance()
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.5
    assert not np.allclose(a, b, rtol=1e-3)  # not exact for a softmax
    pa = full.predict(x[:50], seed=0).probs
    pb = kron.predict(x[:50], seed=0).probs
    assert np.max(np.abs(pa - pb)) < 0.03
    # Fitted by the evidence, it is a maximizer.
    fitted = ku.laplace.Laplace(model, "classification").fit(x, labels)
    delta = fitted.prior_precision_
    for factor in (0.9, 1.1):
        assert fitted.log_marginal_likelihood(delta * factor) < (
            fitted.log_marginal_likelihood_
        )
    # One-hot labels are read as labels.
    one_hot = ku.laplace.Laplace(model, "classification").fit(x, np.eye(3)[labels])
    np.testing.assert_allclose(one_hot.prior_precision_, delta, rtol=1e-12)


# Trains or draws thousands of samples: full suite only (not the fast tier).
@pytest.mark.slow
def test_probit_and_mc_glm_predictives_agree(classifier_data):
    model, x, labels = classifier_data
    la = ku.laplace.Laplace(model, "classification", hessian="full").fit(x, labels)
    x_new = x[:40]
    f_mean, f_var = la.predict_f(x_new)
    assert f_mean.shape == (40, 3) and f_var.shape == (40, 3, 3)
    np.testing.assert_allclose(f_var, np.swapaxes(f_var, 1, 2), atol=1e-12)
    t = 20000
    mc = la.predict(x_new, predictive="mc", num_samples=t, seed=0)
    probit = la.predict(x_new, predictive="probit", num_samples=t, seed=0)
    # MC: an independent numpy draw of the GLM logits.
    rng = np.random.default_rng(1)
    draws = np.stack(
        [rng.multivariate_normal(m, v, size=t) for m, v in zip(f_mean, f_var)], 1
    )
    probs = np.exp(draws - draws.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    se = probs.std(0) / np.sqrt(t)
    assert np.all(np.abs(mc.probs - probs.mean(0)) < 5 * np.sqrt(2) * se + 1e-6)
    # The probit approximation has a bias of the order of the logits'
    # variance (up to 4.5 at the fitted prior precision here): within 0.1.
    assert np.max(np.abs(probit.probs - mc.probs)) < 0.1
    # Where the variances are small (prior precision 100: below 0.07) it is
    # within the MC error of T draws plus a bias below 2e-3.
    tight = ku.laplace.Laplace(
        model,
        "classification",
        "last_layer",
        "full",
        100.0,
        fit_prior_precision=False,
    ).fit(x, labels)
    mc_tight = tight.predict(x_new, predictive="mc", num_samples=t, seed=0)
    probit_tight = tight.predict(x_new, num_samples=t, seed=0)
    assert np.max(np.diagonal(tight.predict_f(x_new)[1], axis1=1, axis2=2)) < 0.1
    se = np.sqrt(mc_tight.probs * (1 - mc_tight.probs) / t)
    assert np.all(np.abs(probit_tight.probs - mc_tight.probs) < 5 * se + 2e-3)
    # Entropy, expected entropy and MI are consistent.
    for pred in (mc, probit):
        assert isinstance(pred, ku.ClassificationPrediction)
        np.testing.assert_allclose(pred.probs.sum(-1), 1.0, rtol=1e-12)
        total = -np.sum(pred.probs * np.log(pred.probs), -1)
        np.testing.assert_allclose(pred.entropy, total, rtol=1e-10)
        np.testing.assert_allclose(
            pred.mutual_information,
            np.maximum(pred.entropy - pred.expected_entropy, 0),
            atol=1e-12,
        )
        assert np.all(pred.expected_entropy <= pred.entropy + 1e-3)
    np.testing.assert_allclose(mc.expected_entropy, probit.expected_entropy)
    assert np.all(mc.label == np.argmax(mc.probs, -1))


def test_engine_weight_sampling_matches_the_glm_predictive(linear_data):
    x, y = linear_data
    y = y[:, :1]
    mean, _ = _blr(x, y, 1.0, 0.3)
    model = _linear_model(mean)
    for hessian in ("kron", "full", "diag"):
        la = ku.laplace.Laplace(model, "regression", hessian=hessian).fit(x, y)
        sampled = la.as_model("weights")
        assert isinstance(sampled, ku.laplace.LaplaceModel)
        assert ku.has_variance_head(sampled)
        glm = la.predict(x[:20])
        t = 2000
        pred = ku.predict_regression(sampled, x[:20], num_samples=t, seed=0)
        se = glm.epistemic_std / np.sqrt(t)
        assert np.all(np.abs(pred.mean - glm.mean) < 5 * se + 1e-5)
        ratio = pred.epistemic_std / glm.epistemic_std
        assert np.all(np.abs(ratio - 1) < 5 / np.sqrt(2 * t))
        np.testing.assert_allclose(pred.aleatoric_std, la.sigma_noise_, rtol=1e-4)
        if hessian != "kron":
            continue
        # Same seed, same draws; each sample is one weight draw.
        samples = ku.sample(sampled, x[:3], num_samples=5, seed=1)
        again = ku.sample(sampled, x[:3], num_samples=5, seed=1)
        np.testing.assert_array_equal(samples, again)
        assert samples.shape == (5, 3, 2)
        np.testing.assert_allclose(
            samples[..., 1], 2 * np.log(la.sigma_noise_), rtol=1e-5
        )


def test_classification_sampling_and_export_serve(classifier_data, tmp_path):
    model, x, labels = classifier_data
    la = ku.laplace.Laplace(model, "classification").fit(x, labels)
    sampled = la.as_model("weights")
    pred = ku.predict_classification(sampled, x[:30], num_samples=2000, seed=0)
    mc = la.predict(x[:30], predictive="mc", num_samples=2000, seed=0)
    assert np.max(np.abs(pred.probs - mc.probs)) < 0.02
    np.testing.assert_allclose(
        pred.mutual_information, mc.mutual_information, atol=0.02
    )
    path = ku.export(
        sampled, str(tmp_path / "clf"), task="classification", num_samples=200
    )
    served = tf.saved_model.load(path)
    out = served.serve(tf.constant(x[:5]))
    assert out["probs"].shape == (5, 3)
    assert np.all(np.isfinite(out["mutual_information"].numpy()))
    seeded = served.serve_seeded(tf.constant(x[:5]), tf.constant(7, tf.int64))
    local = ku.predict_classification(sampled, x[:5], num_samples=200, seed=7)
    np.testing.assert_allclose(seeded["probs"].numpy(), local.probs, atol=1e-5)


def test_regression_export_and_variance_head(linear_data, tmp_path):
    x, y = linear_data
    y = y[:, :1]
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2)])
    model.compile(loss=ku.losses.gaussian_nll)  # a variance head
    kernel = np.array([[0.8, 0.2], [-0.5, 0.1], [0.3, -0.3]], np.float32)
    model.layers[-1].set_weights([kernel, np.array([0.1, -2.0], np.float32)])
    la = ku.laplace.Laplace(model, "regression", hessian="full").fit(x, y)
    assert la.sigma_noise_ is None and la.posterior_mean_.shape == (D + 1,)
    glm = la.predict(x[:10])
    log_var = (
        x[:10] @ model.layers[-1].kernel.numpy()[:, 1]
        + (model.layers[-1].bias.numpy()[1])
    )
    np.testing.assert_allclose(glm.aleatoric_std[:, 0], np.exp(log_var / 2), rtol=1e-5)
    # The GGN weights each example by the head's precision.
    phi = _design(x)
    prec = np.exp(
        -(
            phi
            @ np.r_[
                model.layers[-1].kernel.numpy()[:, 1], model.layers[-1].bias.numpy()[1]
            ]
        )
    )
    exact = phi.T @ (phi * prec[:, None]) + la.prior_precision_ * np.eye(D + 1)
    np.testing.assert_allclose(la.posterior_precision(), exact, rtol=1e-5)
    sampled = la.as_model()
    path = ku.export(sampled, str(tmp_path / "reg"), task="regression", num_samples=50)
    served = tf.saved_model.load(path)
    out = served.serve_seeded(tf.constant(x[:4]), tf.constant(3, tf.int64))
    local = ku.predict_regression(sampled, x[:4], num_samples=50, seed=3)
    for field in ("mean", "std", "aleatoric_std", "epistemic_std"):
        np.testing.assert_allclose(
            out[field].numpy(), getattr(local, field), rtol=1e-4, atol=1e-6
        )


def test_state_config_and_transform(linear_data):
    x, y = linear_data
    model = _linear_model(_blr(x, y[:, :1], 1.0, 0.3)[0])
    la = ku.laplace.Laplace(model, "regression").fit(x, y[:, :1])
    restored = ku.laplace.Laplace.from_config(la.get_config()).set_state(la.get_state())
    np.testing.assert_allclose(
        restored.predict(x[:5]).std, la.transform(x[:5]).std, rtol=1e-12
    )
    assert "Laplace(model=" in repr(la)
    fitted = ku.laplace.Laplace(model, "regression").fit_transform(x, y[:, :1])
    assert fitted.mean.shape == (N, 1)


def test_bad_inputs_and_not_fitted(linear_data, classifier_data):
    x, y = linear_data
    model = _linear_model(np.zeros(D + 1))
    la = ku.laplace.Laplace(model, "regression")
    for method in (
        lambda: la.predict(x),
        la.as_model,
        la.posterior_covariance,
        lambda: la.log_marginal_likelihood(1.0),
        la.optimize_prior_precision,
    ):
        with pytest.raises(ku.posthoc.NotFittedError, match="Laplace"):
            method()
    bad = [
        dict(likelihood="poisson"),
        dict(subset="some"),
        dict(prior_precision=0.0),
        dict(sigma_noise=-1.0),
        dict(batch_size=0),
        dict(fit_prior_precision="yes"),
        dict(likelihood="classification", variance_head=True),
    ]
    for kwargs in bad:
        args = {"likelihood": "regression", **kwargs}
        with pytest.raises(ValueError, match="Invalid value"):
            ku.laplace.Laplace(model, **args).fit(x, y[:, :1])
    with pytest.raises(ValueError, match="one row per input|rows"):
        ku.laplace.Laplace(model, "regression").fit(x, y[:10, :1])
    with pytest.raises(ValueError, match="targets of shape"):
        ku.laplace.Laplace(model, "regression").fit(x, y)
    with pytest.raises(ValueError, match="finite"):
        ku.laplace.Laplace(model, "regression").fit(np.full_like(x, np.nan), y[:, :1])
    with pytest.raises(ValueError, match="keras.Model"):
        ku.laplace.Laplace("model", "regression").fit(x, y[:, :1])
    no_dense = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(1), keras.layers.Activation("tanh")]
    )
    with pytest.raises(ValueError, match="final keras.layers.Dense"):
        ku.laplace.Laplace(no_dense, "regression").fit(x, y[:, :1])
    clf, xc, labels = classifier_data
    with pytest.raises(ValueError, match="activation"):
        ku.laplace.Laplace(clf, "regression").fit(xc, labels)
    with pytest.raises(ValueError, match="labels"):
        ku.laplace.Laplace(clf, "classification").fit(xc, labels + 3)
    fitted = ku.laplace.Laplace(
        clf, "classification", subset="all", hessian="diag"
    ).fit(xc[:50], labels[:50])
    assert fitted.predict(xc[:4]).probs.shape == (4, 3)
    with pytest.raises(ValueError, match="last_layer"):
        fitted.as_model()
    with pytest.raises(ValueError, match="predictive"):
        fitted.predict(xc[:4], predictive="exact")
    # The engine refuses non-finite inputs as it does for every model.
    sampled = ku.laplace.Laplace(clf, "classification").fit(xc, labels).as_model()
    with pytest.raises(ValueError, match="finite"):
        ku.predict_classification(sampled, np.full_like(xc[:3], np.nan))


@pytest.mark.parametrize(
    "task, hessian",
    [("classification", "kron"), ("regression", "diag"), ("head", "full")],
)
def test_sampled_model_round_trips_through_a_keras_file(
    linear_data, classifier_data, tmp_path, task, hessian
):
    if task == "classification":
        model, x, y = classifier_data
        la = ku.laplace.Laplace(model, "classification", hessian=hessian)
    else:
        x, y = linear_data
        y = y[:, :1]
        model = _linear_model(_blr(x, y, 1.0, 0.3)[0], outputs=1)
        if task == "head":  # a (mean, log-variance) head
            model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(2)])
            model.compile(loss=ku.losses.gaussian_nll)
        la = ku.laplace.Laplace(model, "regression", hessian=hessian)
    sampled = la.fit(x, y).as_model()
    sampled.save(tmp_path / "laplace.keras")
    loaded = keras.models.load_model(tmp_path / "laplace.keras")
    assert isinstance(loaded, ku.laplace.LaplaceModel)
    if task == "classification":
        before = ku.predict_classification(sampled, x[:8], num_samples=50, seed=4)
        after = ku.predict_classification(loaded, x[:8], num_samples=50, seed=4)
        np.testing.assert_array_equal(after.probs, before.probs)
        np.testing.assert_array_equal(
            after.mutual_information, before.mutual_information
        )
    else:
        assert ku.has_variance_head(loaded)
        before = ku.predict_regression(sampled, x[:8], num_samples=50, seed=4)
        after = ku.predict_regression(loaded, x[:8], num_samples=50, seed=4)
        for field in ("mean", "aleatoric_std", "epistemic_std"):
            np.testing.assert_array_equal(getattr(after, field), getattr(before, field))
        assert np.all(before.epistemic_std > 0)


def test_all_layer_kfac_is_kronecker_per_dense_layer(linear_data):
    """Two-layer tanh MLP, homoscedastic regression: the posterior precision
    is block-diagonal, each Dense block `kron(A / N, G)` from numpy backprop
    (Martens & Grosse's KFAC), the GLM variance `J Sigma J^T` with it."""
    x, y = linear_data
    y = y[:, :1]
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(4, activation="tanh"),
         keras.layers.Dense(1)]
    )  # fmt: skip
    delta, sigma = 1.5, 0.5
    la = ku.laplace.Laplace(
        model, "regression", subset="all", hessian="kron", prior_precision=delta,
        sigma_noise=sigma, fit_prior_precision=False,
    ).fit(x, y)  # fmt: skip
    w1, b1, w2, b2 = [np.asarray(v, np.float64) for v in model.get_weights()]
    x64 = x.astype(np.float64)
    h = np.tanh(x64 @ w1 + b1)
    a1, a2 = _design(x), np.c_[h, np.ones(N)]
    g1 = (1 - h**2) * w2[:, 0]  # d f / d z1, (N, 4)
    block1 = np.kron(a1.T @ a1 / N, g1.T @ g1)
    block2 = np.kron(a2.T @ a2 / N, np.array([[float(N)]]))  # g2 = 1
    ggn = np.zeros((21, 21))
    ggn[:16, :16], ggn[16:, 16:] = block1, block2
    expected = ggn / sigma**2 + delta * np.eye(21)
    np.testing.assert_allclose(la.posterior_precision(), expected, rtol=1e-5, atol=1e-8)
    # GLM predictive: J Sigma J^T with the per-example Jacobian [a1 (x) g1, a2].
    jac = np.c_[np.einsum("ni,nj->nij", a1, g1).reshape(N, -1), a2]
    f_var = np.einsum("np,pq,nq->n", jac, np.linalg.inv(expected), jac)
    pred = la.predict(x)
    np.testing.assert_allclose(pred.epistemic_std[:, 0] ** 2, f_var, rtol=1e-4)
    # Fitting the prior precision works on the same blocks.
    fitted = ku.laplace.Laplace(model, "regression", subset="all", hessian="kron").fit(
        x, y
    )
    assert np.isfinite(fitted.log_marginal_likelihood_) and fitted.prior_precision_ > 0
