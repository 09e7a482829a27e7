"""One verb: a fitted Laplace through ku.predict_*, ku.sample and ku.export,
and one resolution of the model's adapter and output spec per call."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.sampling import contract
from keras_uncertainty.sampling import outputs as spec_module

D = 4


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=240)
    x = (rng.normal(size=(240, D)) + labels[:, None] * 0.9).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=15, batch_size=80, verbose=0)
    return model, x, labels


@pytest.fixture(scope="module")
def regressor():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, D)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.2 * rng.normal(size=(200, 1))).astype("float32")
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(16, "tanh"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=15, batch_size=50, verbose=0)
    return model, x, y


def _probit_reference(la, x):
    """The probit predictive from `predict_f` (the numpy float64 path)."""
    f_mean, f_var = la.predict_f(x)
    kappa = 1.0 / np.sqrt(1.0 + np.pi / 8.0 * np.diagonal(f_var, axis1=1, axis2=2))
    z = f_mean * kappa
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("hessian", ["kron", "full", "diag"])
def test_predict_classification_of_a_fitted_laplace_is_its_glm_predictive(
    classifier, hessian
):
    model, x, labels = classifier
    la = ku.laplace.Laplace(model, "classification", hessian=hessian).fit(x, labels)
    got = ku.predict_classification(la, x[:50], seed=3)
    want = la.predict(x[:50], seed=3)
    for field in ("probs", "entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    # The probit probabilities are deterministic and equal the closed form
    # computed from `predict_f`, whatever the seed and the batch size.
    reference = _probit_reference(la, x[:50])
    unseeded = ku.predict_classification(la, x[:50])
    np.testing.assert_allclose(got.probs, reference, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(unseeded.probs, reference, rtol=1e-10, atol=1e-12)
    assert np.all(got.mutual_information >= 0)
    np.testing.assert_allclose(
        got.mutual_information, got.entropy - got.expected_entropy, atol=1e-12
    )


def test_predict_regression_of_a_fitted_laplace_is_the_linearized_gaussian(
    regressor,
):
    model, x, y = regressor
    la = ku.laplace.Laplace(model, "regression").fit(x, y)
    got = ku.predict_regression(la, x[:40])
    want = la.predict(x[:40])
    for field in ("mean", "std", "aleatoric_std", "epistemic_std"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    f_mean, f_var = la.predict_f(x[:40])
    np.testing.assert_allclose(got.mean, f_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.epistemic_std[:, 0] ** 2, f_var[:, 0, 0], rtol=1e-8)
    np.testing.assert_allclose(got.aleatoric_std, la.sigma_noise_, rtol=1e-12)
    # Deterministic: num_samples does not matter (two sigma points).
    again = ku.predict_regression(la, x[:40], num_samples=7, seed=1)
    np.testing.assert_allclose(again.std, got.std, rtol=1e-12)
    samples = ku.sample(la, x[:5])
    assert samples.shape == (2, 5, 2)  # the two sigma points


def test_a_fitted_laplace_exports_and_serves_its_glm_predictive(classifier, tmp_path):
    model, x, labels = classifier
    la = ku.laplace.Laplace(model, "classification").fit(x, labels)
    path = ku.export(la, str(tmp_path / "la"), task="classification", num_samples=64)
    served = tf.saved_model.load(path)
    out = served.serve_seeded(tf.constant(x[:6]), tf.constant(5, tf.int64))
    local = ku.predict_classification(la, x[:6], num_samples=64, seed=5)
    np.testing.assert_allclose(out["probs"].numpy(), local.probs, rtol=1e-6)
    np.testing.assert_allclose(
        out["expected_entropy"].numpy(), local.expected_entropy, rtol=1e-5
    )


def test_weight_sampling_stays_an_option_and_the_glm_model_round_trips(
    classifier, tmp_path
):
    model, x, labels = classifier
    la = ku.laplace.Laplace(model, "classification").fit(x, labels)
    weights = la.as_model("weights")
    samples = ku.sample(weights, x[:4], num_samples=6, seed=0)
    assert samples.shape == (6, 4, 3) and np.ptp(samples, axis=0).max() > 0
    assert la.as_model() is la.as_model("probit")  # built once per fit
    glm = la.as_model()
    glm.save(tmp_path / "glm.keras")
    loaded = keras.models.load_model(tmp_path / "glm.keras")
    before = ku.predict_classification(glm, x[:8], seed=2)
    after = ku.predict_classification(loaded, x[:8], seed=2)
    np.testing.assert_array_equal(after.probs, before.probs)
    np.testing.assert_array_equal(after.expected_entropy, before.expected_entropy)
    with pytest.raises(ValueError, match="predictive"):
        la.as_model("exact")
    with pytest.raises(ValueError, match="`votes`"):
        ku.predict_classification(la, x[:4], votes=True)
    with pytest.raises(ValueError, match="`task`"):
        ku.predict_regression(la, x[:4])


def test_laplace_is_a_fitted_method_not_a_post_hoc_transform(classifier):
    model, x, labels = classifier
    la = ku.laplace.Laplace(model, "classification")
    assert isinstance(la, ku.posthoc.FittedMethod)
    assert not isinstance(la, ku.posthoc.PostHocMethod)
    with pytest.raises(ku.posthoc.NotFittedError, match="training inputs"):
        ku.predict_classification(la, x[:4])
    la.fit(x, labels)
    with pytest.warns(DeprecationWarning, match="predict"):
        old = la.transform(x[:4])
    np.testing.assert_array_equal(old.probs, la.predict(x[:4]).probs)


def _counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("task", ["classification", "regression", "both"])
def test_one_call_resolves_the_adapter_once_and_builds_the_spec_once(monkeypatch, task):
    inputs = keras.Input((3,))
    hidden = ku.layers.MCDropout(0.2)(keras.layers.Dense(8, "relu")(inputs))
    kind = keras.layers.Dense(2, activation="softmax", name="kind")(hidden)
    price = keras.layers.Dense(2, name="price")(hidden)
    if task == "both":
        model = keras.Model(inputs, {"kind": kind, "price": price})
    else:
        model = keras.Model(inputs, kind if task == "classification" else price)
        model.compile(
            loss=(
                "sparse_categorical_crossentropy"
                if task == "classification"
                else ku.losses.gaussian_nll
            )
        )
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    ku.sample(model, x, num_samples=2)  # builds and caches the adapter
    resolutions = _counting(monkeypatch, contract, "_layer_ids")
    specs = _counting(monkeypatch, spec_module, "_spec")
    if task == "classification":
        ku.predict_classification(model, x, num_samples=4)
    elif task == "regression":
        ku.predict_regression(model, x, num_samples=4)
    else:
        ku.predict(
            model,
            x,
            tasks={
                "kind": "classification",
                "price": {"task": "regression", "variance_head": True},
            },
            num_samples=4,
        )
    assert len(resolutions) == 1
    assert len(specs) == (2 if task == "both" else 1)


def test_the_output_spec_says_what_each_output_means():
    inputs = keras.Input((3,))
    logits = keras.layers.Dense(4)(inputs)
    model = keras.Model(inputs, logits)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    spec = ku.sampling.output_spec(model, "classification")
    assert (spec.task, spec.layout, spec.source) == ("classification", "logits", "loss")
    assert spec.from_logits and not spec.variance_head
    # The loss's from_logits is read by predict_classification too.
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    with pytest.warns(UserWarning, match="no layer that is stochastic"):
        pred = ku.predict_classification(model, x)
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, rtol=1e-6)
    stated = ku.sampling.output_spec(model, "classification", from_logits=False)
    assert (stated.layout, stated.source) == ("probabilities", "arguments")
    head = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    head.compile(loss=ku.losses.gaussian_nll)
    spec = ku.sampling.output_spec(head, "regression")
    assert spec.layout == "means_log_vars" and spec.variance_head
    assert spec.reducer.variance_head
    quantile_head = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    quantile_head.compile(loss=ku.losses.PinballLoss((0.1, 0.9)))
    spec = ku.sampling.output_spec(quantile_head, "regression")
    assert (spec.layout, spec.source) == ("quantiles", "loss")
    assert not spec.reducer.variance_head  # each quantile read as a mean
    uncompiled = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.warns(UserWarning, match="variance_head"):
        guessed = ku.sampling.output_spec(uncompiled, "regression")
    assert (guessed.layout, guessed.source) == ("means_log_vars", "shape")


def test_an_evidential_head_declares_its_output_compiled_or_not():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, "relu")(inputs)
    classifier = keras.Model(inputs, ku.evidential.DirichletHead(4)(hidden))
    regressor = keras.Model(inputs, ku.evidential.NormalInverseGammaHead(2)(hidden))
    x = np.random.default_rng(0).normal(size=(7, 3)).astype("float32")
    got = ku.predict_classification(classifier, x)  # uncompiled: the head says
    assert isinstance(got, ku.evidential.EvidentialClassificationPrediction)
    with pytest.warns(DeprecationWarning, match="ku.predict_classification"):
        old = ku.evidential.predict_classification(classifier, x, verbose=0)
    np.testing.assert_array_equal(got.probs, old.probs)
    np.testing.assert_array_equal(got.vacuity, old.vacuity)
    reg = ku.predict_regression(regressor, x)
    with pytest.warns(DeprecationWarning, match="ku.predict_regression"):
        old = ku.evidential.predict_regression(regressor, x, verbose=0)
    np.testing.assert_array_equal(reg.epistemic_std, old.epistemic_std)
    assert ku.sampling.output_spec(regressor, "regression").layout == "declared"


@pytest.mark.parametrize("hessian", ["kron", "full", "diag"])
def test_an_all_layer_laplace_goes_through_the_same_verb(classifier, hessian):
    model, x, labels = classifier
    la = ku.laplace.Laplace(model, "classification", subset="all", hessian=hessian)
    la.fit(x[:120], labels[:120])
    got = ku.predict_classification(la, x[:30], seed=4)
    want = la.predict(x[:30], seed=4)
    np.testing.assert_array_equal(got.probs, want.probs)
    np.testing.assert_array_equal(got.expected_entropy, want.expected_entropy)
    # The in-graph Jacobians agree with predict_f's batch-by-batch numpy path.
    np.testing.assert_allclose(got.probs, _probit_reference(la, x[:30]), rtol=1e-6)
    with pytest.raises(ValueError, match="last_layer"):
        la.as_model()  # no Keras model of it to save; the verb needs none


def test_an_all_layer_regression_laplace_is_exact_through_the_verb(regressor, tmp_path):
    model, x, y = regressor
    la = ku.laplace.Laplace(model, "regression", subset="all", hessian="full")
    la.fit(x[:100], y[:100])
    got = ku.predict_regression(la, x[:20])
    f_mean, f_var = la.predict_f(x[:20])
    np.testing.assert_allclose(got.mean, f_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.epistemic_std[:, 0] ** 2, f_var[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(got.aleatoric_std, la.sigma_noise_, rtol=1e-12)
    path = ku.export(la, str(tmp_path / "all"), task="regression")
    served = tf.saved_model.load(path)
    out = served.serve(tf.constant(x[:5]))
    np.testing.assert_allclose(out["std"].numpy(), got.std[:5], rtol=1e-5)


def test_a_fitted_laplace_serves_conformal_intervals(regressor, tmp_path):
    model, x, y = regressor
    la = ku.laplace.Laplace(model, "regression").fit(x[:120], y[:120])
    calibration = ku.predict_regression(la, x[120:180])
    conformal = ku.conformal.NormalizedConformalRegressor(alpha=0.1)
    conformal.fit(calibration, y[120:180])
    path = ku.export(la, str(tmp_path / "la"), task="regression", conformal=conformal)
    served = tf.saved_model.load(path)
    out = served.serve(tf.constant(x[180:190]))
    interval = conformal.predict_interval(ku.predict_regression(la, x[180:190]))
    lower, upper = interval.lower, interval.upper
    np.testing.assert_allclose(out["lower"].numpy(), lower, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["upper"].numpy(), upper, rtol=1e-5, atol=1e-6)
