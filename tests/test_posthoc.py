"""`ku.posthoc.PostHocMethod` and the calibrators built on it."""

import dataclasses
import importlib.util
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, special

import keras_uncertainty as ku
from keras_uncertainty import posthoc
from keras_uncertainty.calibration import TemperatureScaling, VarianceScaling
from keras_uncertainty.posthoc import NotFittedError, PostHocMethod


class ShiftMean(PostHocMethod):
    """A toy method: moves the mean by `fraction` of the mean residual."""

    def __init__(self, fraction=1.0, name="shift"):
        self.fraction = fraction
        self.name = name

    def _check_params(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(
                "Invalid value received for argument `fraction`. Expected a "
                f"number in (0, 1]. Received: fraction={self.fraction!r}"
            )

    def _fit(self, prediction, y):
        self.shift_ = self.fraction * float(np.mean(y - prediction.mean))

    def _transform(self, prediction):
        return dataclasses.replace(prediction, mean=prediction.mean + self.shift_)


def regression_prediction(seed=0, n=500):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, 1))
    aleatoric = rng.uniform(0.2, 1.0, size=(n, 1))
    epistemic = rng.uniform(0.1, 0.5, size=(n, 1))
    std = np.sqrt(aleatoric**2 + epistemic**2)
    y = mean + 2.0 * std * rng.normal(size=(n, 1)) + 0.3
    return ku.RegressionPrediction(mean, std, aleatoric, epistemic), y


def classification_prediction(seed=0, n=2000, classes=4, samples=5, sharpen=2.5):
    """An over-confident MC classifier: T samples around true logits."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(scale=1.5, size=(n, classes))
    labels = np.array(
        [rng.choice(classes, p=p) for p in special.softmax(true_logits, -1)]
    )
    noise = rng.normal(scale=0.3, size=(samples, n, classes))
    sample_probs = special.softmax(sharpen * (true_logits + noise), -1)
    votes = np.eye(classes)[sample_probs.argmax(-1)].sum(0)
    sample_entropy = -np.sum(sample_probs * np.log(sample_probs), -1)
    prediction = ku.ClassificationPrediction.from_moments(
        sample_probs.sum(0), sample_entropy.sum(0), votes, samples
    )
    return prediction, labels


def copies(prediction):
    return {
        f.name: None if (v := getattr(prediction, f.name)) is None else v.copy()
        for f in dataclasses.fields(prediction)
    }


def assert_unchanged(prediction, before):
    for name, value in before.items():
        if value is None:
            assert getattr(prediction, name) is None
        else:
            np.testing.assert_array_equal(getattr(prediction, name), value)


# The base contract, through a subclass defined here -------------------------


def test_a_subclass_gets_the_whole_contract_from_the_base():
    prediction, y = regression_prediction()
    before = copies(prediction)
    method = ShiftMean(fraction=0.5)
    assert not method.is_fitted
    assert method.fit(prediction, y) is method
    assert method.is_fitted
    assert method.shift_ == pytest.approx(0.5 * np.mean(y - prediction.mean))
    shifted = method.transform(prediction)
    assert isinstance(shifted, ku.RegressionPrediction) and shifted is not prediction
    np.testing.assert_allclose(shifted.mean, prediction.mean + method.shift_)
    assert_unchanged(prediction, before)
    again = ShiftMean(fraction=0.5).fit_transform(prediction, y)
    np.testing.assert_array_equal(again.mean, shifted.mean)


def test_transform_before_fit_names_the_class_and_fit():
    prediction, _ = regression_prediction()
    with pytest.raises(NotFittedError) as info:
        ShiftMean().transform(prediction)
    assert isinstance(info.value, ValueError)  # as scikit-learn's
    message = str(info.value)
    assert "This ShiftMean instance is not fitted yet" in message
    assert "call `fit`" in message and "`transform`" in message
    with pytest.raises(NotFittedError, match="before `get_state`"):
        ShiftMean().get_state()


def test_config_round_trip_and_repr():
    method = ShiftMean(fraction=0.25, name="half")
    config = method.get_config()
    assert config == {"fraction": 0.25, "name": "half"}
    rebuilt = ShiftMean.from_config(config)
    assert type(rebuilt) is ShiftMean and rebuilt.get_config() == config
    assert not rebuilt.is_fitted  # a config holds no fitted state
    assert repr(method) == "ShiftMean(fraction=0.25, name='half')"
    assert repr(ShiftMean()) == "ShiftMean(fraction=1.0, name='shift')"  # all args
    assert eval(repr(method)).get_config() == config


def test_state_round_trip_restores_a_fitted_method():
    prediction, y = regression_prediction()
    fitted = ShiftMean(fraction=0.5).fit(prediction, y)
    state = fitted.get_state()
    assert state == {"shift_": fitted.shift_}
    restored = ShiftMean.from_config(fitted.get_config()).set_state(state)
    np.testing.assert_array_equal(
        restored.transform(prediction).mean, fitted.transform(prediction).mean
    )
    for bad in ({"shift": 1.0}, {"_shift_": 1.0}, [("shift_", 1.0)]):
        with pytest.raises(ValueError, match="`state`.*names ending in `_`"):
            ShiftMean().set_state(bad)


def test_fit_checks_the_parameters_again():
    prediction, y = regression_prediction()
    method = ShiftMean()
    method.fraction = 2.0  # changed after construction
    with pytest.raises(ValueError, match=r"`fraction`.*Received: fraction=2.0"):
        method.fit(prediction, y)
    assert not method.is_fitted


def test_a_subclass_without_hooks_or_with_var_args_says_what_is_missing():
    class Empty(PostHocMethod):
        pass

    prediction, y = regression_prediction()
    assert Empty().get_config() == {} and repr(Empty()) == "Empty()"
    with pytest.raises(NotImplementedError, match=r"Empty must implement `_fit"):
        Empty().fit(prediction, y)

    class Loose(PostHocMethod):
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    with pytest.raises(TypeError, match=r"\*args or \*\*kwargs"):
        Loose().get_config()


def test_public_names_have_their_docstring_sections():
    hooks_path = Path(__file__).resolve().parents[1] / "docs" / "hooks.py"
    spec = importlib.util.spec_from_file_location("docs_hooks", hooks_path)
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert posthoc.__doc__
    problems = []
    for name in posthoc.__all__:
        problems += hooks._problems_of(f"posthoc.{name}", getattr(posthoc, name))
    assert problems == []
    for method in ("fit", "transform", "fit_transform", "from_config", "set_state"):
        doc = getattr(PostHocMethod, method).__doc__
        assert "Args:" in doc and "Returns:" in doc, method


# Temperature scaling -------------------------------------------------------


def reference_temperature(probs, labels):
    """The NLL-optimal T, by scipy on log T (independent of the golden search)."""
    log_p = np.log(probs)
    rows = np.arange(len(labels))

    def nll(log_t):
        return -np.mean(special.log_softmax(log_p / math.exp(log_t), -1)[rows, labels])

    result = optimize.minimize_scalar(
        nll,
        bounds=(math.log(1e-2), math.log(1e2)),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return math.exp(result.x)


def test_temperature_scaling_on_a_classification_prediction():
    prediction, labels = classification_prediction()
    before = copies(prediction)
    scaler = TemperatureScaling()
    assert scaler.fit(prediction, labels) is scaler
    expected_t = reference_temperature(prediction.probs, labels)
    assert expected_t > 1.5  # the samples were over-confident
    assert scaler.temperature_ == pytest.approx(expected_t, rel=1e-5)

    calibrated = scaler.transform(prediction)
    assert isinstance(calibrated, ku.ClassificationPrediction)
    assert_unchanged(prediction, before)
    expected_probs = special.softmax(np.log(prediction.probs) / scaler.temperature_, -1)
    np.testing.assert_allclose(calibrated.probs, expected_probs, rtol=1e-12)
    np.testing.assert_allclose(
        calibrated.entropy, -np.sum(expected_probs * np.log(expected_probs), -1)
    )
    assert np.all(calibrated.entropy > prediction.entropy)  # softened
    # The argmax moves nowhere; the sample-based epistemic fields stay.
    np.testing.assert_array_equal(calibrated.label, prediction.label)
    np.testing.assert_array_equal(calibrated.votes, prediction.votes)
    np.testing.assert_array_equal(
        calibrated.expected_entropy, prediction.expected_entropy
    )
    np.testing.assert_array_equal(
        calibrated.mutual_information, prediction.mutual_information
    )
    assert ku.metrics.classification_nll(labels, calibrated.probs) < (
        ku.metrics.classification_nll(labels, prediction.probs)
    )


def test_temperature_scaling_config_repr_and_state():
    scaler = TemperatureScaling(bounds=[0.1, 10], tol=1e-4)
    assert (
        repr(scaler)
        == "TemperatureScaling(bounds=(0.1, 10.0), tol=0.0001, max_iter=200)"
    )
    assert repr(TemperatureScaling()) == (
        "TemperatureScaling(bounds=(0.01, 100.0), tol=1e-06, max_iter=200)"
    )
    rebuilt = TemperatureScaling.from_config(scaler.get_config())
    assert rebuilt.get_config() == {"bounds": (0.1, 10.0), "tol": 1e-4, "max_iter": 200}
    prediction, labels = classification_prediction(n=300)
    scaler.fit(prediction, labels)
    assert set(scaler.get_state()) == {"temperature_"}
    rebuilt.set_state(scaler.get_state())
    np.testing.assert_array_equal(
        rebuilt.transform(prediction).probs, scaler.transform(prediction).probs
    )
    scaler.tol = 0
    with pytest.raises(ValueError, match="`tol`"):
        scaler.fit(prediction, labels)


def test_temperature_on_a_bound_warns_at_the_callers_line():
    prediction, _ = classification_prediction(n=300)
    with pytest.warns(UserWarning, match="sits on the bound 0.01") as record:
        TemperatureScaling().fit(prediction, prediction.label)  # all right
    assert record[0].filename == __file__


def test_temperature_scaling_refuses_what_it_cannot_read():
    prediction, labels = classification_prediction(n=50)
    regression, _ = regression_prediction()
    with pytest.raises(ValueError, match="Expected a ClassificationPrediction"):
        TemperatureScaling().fit(regression, labels)
    with pytest.raises(ValueError, match="`from_probs`"):
        TemperatureScaling().fit(prediction, labels, from_probs=False)
    with pytest.raises(ValueError, match="`labels`"):
        TemperatureScaling().fit(prediction, labels[:-1])
    with pytest.raises(NotFittedError, match="TemperatureScaling instance"):
        TemperatureScaling().transform(prediction)


# Variance scaling ----------------------------------------------------------


def test_variance_scaling_on_a_regression_prediction_is_the_closed_form():
    prediction, y = regression_prediction()
    before = copies(prediction)
    scaler = VarianceScaling()
    assert scaler.fit(prediction, y) is scaler
    expected = math.sqrt(np.mean(((y - prediction.mean) / prediction.std) ** 2))
    assert scaler.scale_ == pytest.approx(expected, rel=1e-12)
    assert scaler.scale_ > 1.5

    calibrated = scaler.transform(prediction)
    assert isinstance(calibrated, ku.RegressionPrediction)
    assert_unchanged(prediction, before)
    np.testing.assert_array_equal(calibrated.mean, prediction.mean)
    for field in ("std", "aleatoric_std", "epistemic_std"):
        np.testing.assert_allclose(
            getattr(calibrated, field), expected * getattr(prediction, field)
        )
    np.testing.assert_allclose(  # the decomposition still adds up
        calibrated.std**2, calibrated.aleatoric_std**2 + calibrated.epistemic_std**2
    )
    assert repr(scaler) == "VarianceScaling()" and scaler.get_config() == {}
    assert VarianceScaling().set_state(scaler.get_state()).scale_ == scaler.scale_


def test_variance_scaling_refuses_a_classification_prediction():
    prediction, labels = classification_prediction(n=50)
    regression, y = regression_prediction()
    scaler = VarianceScaling().fit(regression, y)
    with pytest.raises(ValueError, match="Expected a RegressionPrediction"):
        scaler.transform(prediction)
    with pytest.raises(NotFittedError, match="VarianceScaling instance"):
        VarianceScaling().transform(regression)


# The deprecated array forms ------------------------------------------------


def deprecations(call):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = call()
    found = [w for w in record if issubclass(w.category, DeprecationWarning)]
    return result, found


def test_deprecated_temperature_arrays_warn_once_and_agree():
    prediction, labels = classification_prediction()
    new = TemperatureScaling().fit(prediction, labels)
    logits = np.log(prediction.probs) + 3.0  # logits up to a constant per row

    old, found = deprecations(lambda: TemperatureScaling().fit(logits, labels))
    assert len(found) == 1
    message = str(found[0].message)
    assert "TemperatureScaling.fit" in message and "removed in 0.4" in message
    assert "pass a ClassificationPrediction" in message
    assert found[0].filename == __file__
    assert old.temperature_ == pytest.approx(new.temperature_, rel=1e-6)

    probs, found = deprecations(lambda: new.transform(logits))
    assert len(found) == 1 and "TemperatureScaling.transform" in str(found[0].message)
    np.testing.assert_allclose(probs, new.transform(prediction).probs, rtol=1e-10)

    from_probs, found = deprecations(
        lambda: TemperatureScaling().fit(prediction.probs, labels, from_probs=True)
    )
    assert len(found) == 1
    assert from_probs.temperature_ == pytest.approx(new.temperature_, rel=1e-6)
    probs, found = deprecations(
        lambda: new.transform(prediction.probs, from_probs=True)
    )
    assert len(found) == 1
    np.testing.assert_allclose(probs, new.transform(prediction).probs, rtol=1e-10)


def test_deprecated_variance_array_warns_once_and_agrees():
    prediction, y = regression_prediction()
    scaler = VarianceScaling().fit(prediction, y)
    std, found = deprecations(lambda: scaler.transform(prediction.std))
    assert len(found) == 1
    message = str(found[0].message)
    assert "VarianceScaling.transform(std)" in message and "removed in 0.4" in message
    assert "pass a RegressionPrediction" in message
    np.testing.assert_array_equal(std, scaler.transform(prediction).std)
    # The (mean, std) pair stays a supported way to fit: no warning.
    pair, found = deprecations(
        lambda: VarianceScaling().fit((prediction.mean, prediction.std), y)
    )
    assert found == [] and pair.scale_ == scaler.scale_


def test_deprecated_array_forms_still_need_fit_first():
    with pytest.raises(NotFittedError, match="not fitted"):
        TemperatureScaling().transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError, match="not fitted"):
        VarianceScaling().transform(np.ones(3))
