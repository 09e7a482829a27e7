"""Sibling classes take the same inputs: every conformal regressor a
prediction or its arrays by keyword, every classification calibrator a
prediction, probabilities or logits with one explicit `from_logits`;
`ClassificationPrediction.from_probs` / `from_logits`; `ku.metrics.sharpness`;
one array check and one log-softmax. References: closed forms, scipy, MAPIE."""

import math
import warnings

import numpy as np
import pytest
from scipy import optimize, special, stats

import keras_uncertainty as ku
from keras_uncertainty import conformal
from keras_uncertainty.calibration import (
    HistogramBinning,
    IsotonicCalibration,
    TemperatureScaling,
    VectorScaling,
)
from keras_uncertainty.sampling import formulas

ALPHA = 0.1


def _regression(rng, n):
    mean = rng.normal(size=n)
    std = rng.uniform(0.5, 2.0, size=n)
    y = mean + std * rng.normal(size=n)
    band = np.stack([mean - 1.5 * std, mean + 1.5 * std], 1)
    return mean, std, y, band


def _prediction(mean, std):
    return ku.RegressionPrediction(
        mean=mean, std=std, aleatoric_std=std, epistemic_std=np.zeros_like(std)
    )


def _conformal_q(scores, alpha=ALPHA):
    """The ceil((n + 1)(1 - alpha))-th smallest score."""
    n = len(scores)
    return np.sort(scores)[math.ceil((n + 1) * (1 - alpha)) - 1]


def _no_warnings(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


# Conformal regressors --------------------------------------------------------


def test_split_conformal_reads_every_form_alike_and_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mean, std, y, _ = _regression(rng, 300)
    new_mean, new_std, _, _ = _regression(rng, 50)
    q = _conformal_q(np.abs(y - mean))
    forms = {
        "prediction": ((_prediction(mean, std),), (_prediction(new_mean, new_std),)),
        "pair": (((mean, std),), ((new_mean, new_std),)),
        "array": ((mean,), (new_mean,)),
    }
    for name, (cal, new) in forms.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            method = conformal.SplitConformalRegressor(ALPHA).fit(*cal, y)
            interval = method.predict_interval(*new)
        np.testing.assert_array_equal(interval.lower, new_mean - q, err_msg=name)
        np.testing.assert_array_equal(interval.upper, new_mean + q, err_msg=name)
    keyword = conformal.SplitConformalRegressor(ALPHA).fit(mean=mean, y=y)
    interval = keyword.predict_interval(mean=new_mean)
    np.testing.assert_array_equal(interval.lower, new_mean - q)
    np.testing.assert_array_equal(keyword.transform(mean=new_mean).upper, new_mean + q)


def test_normalized_conformal_reads_every_form_alike_and_matches_the_closed_form():
    rng = np.random.default_rng(1)
    mean, std, y, _ = _regression(rng, 300)
    new_mean, new_std, _, _ = _regression(rng, 50)
    q = _conformal_q(np.abs(y - mean) / std)
    fitted = [
        conformal.NormalizedConformalRegressor(ALPHA).fit(_prediction(mean, std), y),
        conformal.NormalizedConformalRegressor(ALPHA).fit((mean, std), y),
        conformal.NormalizedConformalRegressor(ALPHA).fit(mean=mean, std=std, y=y),
    ]
    for method in fitted:
        for interval in (
            method.predict_interval(_prediction(new_mean, new_std)),
            method.predict_interval((new_mean, new_std)),
            method.predict_interval(mean=new_mean, std=new_std),
        ):
            np.testing.assert_allclose(interval.lower, new_mean - q * new_std)
            np.testing.assert_allclose(interval.upper, new_mean + q * new_std)


def test_cqr_reads_every_form_alike_and_its_pair_is_deprecated():
    rng = np.random.default_rng(2)
    _, _, y, band = _regression(rng, 300)
    _, _, _, new_band = _regression(rng, 50)
    q = _conformal_q(np.maximum(band[:, 0] - y, y - band[:, 1]))
    lower, upper = band[:, :1], band[:, 1:]
    forms = [
        lambda m, b: m.fit(conformal.QuantilePrediction(b[:, :1], b[:, 1:]), y),
        lambda m, b: m.fit(lower=b[:, :1], upper=b[:, 1:], y=y),
        lambda m, b: m.fit(b, y),  # the head's (N, 2k) output
        lambda m, b: m.fit(_prediction(b, np.ones_like(b)), y),  # averaged head
    ]
    for form in forms:
        method = _no_warnings(
            lambda form=form: form(
                conformal.ConformalizedQuantileRegressor(ALPHA), band
            )
        )
        interval = method.predict_interval(lower=new_band[:, :1], upper=new_band[:, 1:])
        np.testing.assert_allclose(interval.lower[:, 0], new_band[:, 0] - q)
        np.testing.assert_allclose(interval.upper[:, 0], new_band[:, 1] + q)
    with pytest.warns(
        DeprecationWarning, match=r"pair is deprecated.*lower="
    ) as record:
        old = conformal.ConformalizedQuantileRegressor(ALPHA).fit((lower, upper), y)
    assert record[0].filename == __file__
    np.testing.assert_allclose(old.quantile_[0, 0], q)


@pytest.mark.parametrize(
    "cls",
    [
        conformal.SplitConformalRegressor,
        conformal.NormalizedConformalRegressor,
        conformal.ConformalizedQuantileRegressor,
    ],
)
def test_every_conformal_regressor_takes_a_regression_prediction_and_keywords(cls):
    rng = np.random.default_rng(3)
    mean, std, y, band = _regression(rng, 100)
    if cls is conformal.ConformalizedQuantileRegressor:
        prediction = _prediction(band, np.ones_like(band))
        arrays = {"lower": band[:, :1], "upper": band[:, 1:]}
    else:
        prediction = _prediction(mean, std)
        arrays = {"mean": mean}
        if cls is conformal.NormalizedConformalRegressor:
            arrays["std"] = std
    if cls is conformal.ConformalizedQuantileRegressor:
        y = y[:, None]
    by_prediction = cls(ALPHA).fit_transform(prediction, y)
    by_keyword = cls(ALPHA).fit_transform(y=y, **arrays)
    np.testing.assert_array_equal(by_prediction.lower, by_keyword.lower)
    np.testing.assert_array_equal(by_prediction.upper, by_keyword.upper)
    # Errors name the argument, what was expected and what was received.
    with pytest.raises(ValueError, match=r"`prediction`. Expected None when .*"):
        cls(ALPHA).fit(prediction, y, **arrays)
    with pytest.raises(ValueError, match=r"`prediction`. Expected a prediction.*=None"):
        cls(ALPHA).fit(y=y)
    with pytest.raises(ValueError, match=r"argument `y`. Expected an array.*y=None"):
        cls(ALPHA).fit(**arrays)
    unused = "lower" if "mean" in arrays else "mean"
    with pytest.raises(ValueError, match=rf"`{unused}`. Expected None: {cls.__name__}"):
        cls(ALPHA).fit(y=y, **arrays, **{unused: mean})
    if len(arrays) > 1:
        needed = sorted(arrays)[-1]
        rest = {k: v for k, v in arrays.items() if k != needed}
        with pytest.raises(
            ValueError, match=rf"`{needed}`. Expected an array.*{needed}=None"
        ):
            cls(ALPHA).fit(y=y, **rest)


def test_normalized_refuses_bare_means_and_split_refuses_a_quantile_prediction():
    rng = np.random.default_rng(4)
    mean, _, y, band = _regression(rng, 50)
    with pytest.raises(ValueError, match=r"`prediction`. Expected a Regression"):
        conformal.NormalizedConformalRegressor(ALPHA).fit(mean, y)
    quantiles = conformal.QuantilePrediction(band[:, 0], band[:, 1])
    with pytest.raises(ValueError, match=r"`prediction`.*Received: QuantilePrediction"):
        conformal.SplitConformalRegressor(ALPHA).fit(quantiles, y)
    with pytest.raises(ValueError, match=r"`std`. Expected standard deviations > 0"):
        conformal.NormalizedConformalRegressor(ALPHA).fit(mean=mean, std=-mean, y=y)


# Classification calibrators --------------------------------------------------


def _logits(seed=5, n=600, c=4):
    rng = np.random.default_rng(seed)
    true = rng.normal(scale=2.0, size=(n, c))
    probs = special.softmax(true, -1)
    labels = (rng.random((n, 1)) > probs.cumsum(-1)).sum(-1)
    return 2.5 * true, np.minimum(labels, c - 1)  # over-confident


CALIBRATORS = [TemperatureScaling, VectorScaling, HistogramBinning, IsotonicCalibration]


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_every_calibrator_reads_a_prediction_probabilities_and_logits(cls):
    logits, labels = _logits()
    probs = special.softmax(logits, -1)
    prediction = ku.ClassificationPrediction.from_probs(probs)
    from_prediction = _no_warnings(lambda: cls().fit(prediction, labels))
    from_probs = _no_warnings(lambda: cls().fit(probs, labels, from_logits=False))
    from_logits = _no_warnings(lambda: cls().fit(logits, labels, from_logits=True))
    expected = from_prediction.transform(prediction)
    assert isinstance(expected, ku.ClassificationPrediction)
    same = from_probs.transform(probs, from_logits=False)
    assert isinstance(same, ku.ClassificationPrediction)
    np.testing.assert_allclose(same.probs, expected.probs, rtol=1e-12, atol=1e-15)
    by_logits = from_logits.transform(logits, from_logits=True)
    assert isinstance(by_logits, ku.ClassificationPrediction)
    if cls is not VectorScaling:  # the others depend on the probabilities only
        np.testing.assert_allclose(by_logits.probs, expected.probs, atol=1e-8)
    np.testing.assert_allclose(by_logits.probs.sum(-1), 1.0)
    fit_transformed = cls().fit_transform(logits, labels, from_logits=True)
    np.testing.assert_allclose(fit_transformed.probs, by_logits.probs)
    with pytest.raises(ValueError, match=r"`from_logits`. Expected None with a Class"):
        cls().fit(prediction, labels, from_logits=True)
    with pytest.raises(ValueError, match=r"`from_logits`. Expected None with a Class"):
        from_prediction.transform(prediction, from_logits=False)


def test_temperature_from_logits_is_scipys_nll_minimiser():
    logits, labels = _logits(seed=6, n=2000)
    scaler = TemperatureScaling().fit(logits, labels, from_logits=True)

    def nll(log_t):
        scaled = special.log_softmax(logits / math.exp(log_t), -1)
        return -np.mean(scaled[np.arange(len(labels)), labels])

    best = optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded")
    assert scaler.temperature_ == pytest.approx(math.exp(best.x), rel=1e-4)
    calibrated = scaler.transform(logits, from_logits=True)
    np.testing.assert_allclose(
        calibrated.probs, special.softmax(logits / scaler.temperature_, -1), rtol=1e-10
    )
    np.testing.assert_allclose(
        calibrated.entropy, stats.entropy(calibrated.probs, axis=1)
    )
    assert np.all(calibrated.mutual_information == 0) and calibrated.votes is None


def test_temperature_without_from_logits_guesses_logits_and_says_how_to_state_it():
    logits, labels = _logits(seed=7)
    with pytest.warns(DeprecationWarning) as record:
        old = TemperatureScaling().fit(logits, labels)
    assert len(record) == 1
    message = str(record[0].message)
    assert "from_logits=True" in message and "from_logits=False" in message
    assert "read as logits" in message
    new = TemperatureScaling().fit(logits, labels, from_logits=True)
    assert old.temperature_ == new.temperature_
    with pytest.raises(ValueError, match=r"`from_probs`. Expected None with `from_"):
        TemperatureScaling().fit(logits, labels, from_logits=True, from_probs=True)


def test_calibrators_refuse_an_array_without_from_logits_naming_it():
    logits, labels = _logits(seed=8)
    for cls in (VectorScaling, HistogramBinning, IsotonicCalibration):
        with pytest.raises(ValueError, match=r"`from_logits`. Expected True .*None"):
            cls().fit(logits, labels)


# ClassificationPrediction.from_probs / from_logits ---------------------------


def test_from_probs_and_from_logits_are_one_sample_predictions():
    rng = np.random.default_rng(9)
    logits = rng.normal(scale=3.0, size=(20, 5))
    logits[0] = [800.0, -800.0, 0.0, 1.0, 2.0]  # no overflow
    probs = special.softmax(logits, -1)
    by_logits = ku.ClassificationPrediction.from_logits(logits)
    by_probs = ku.ClassificationPrediction.from_probs(probs)
    old = ku.ClassificationPrediction.from_moments(
        probs, stats.entropy(probs, axis=1), None, 1
    )
    for pred in (by_logits, by_probs):
        np.testing.assert_allclose(pred.probs, probs, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(pred.entropy, stats.entropy(probs, axis=1))
        np.testing.assert_allclose(pred.expected_entropy, pred.entropy)
        np.testing.assert_array_equal(pred.mutual_information, 0.0)
        np.testing.assert_array_equal(pred.label, probs.argmax(-1))
        assert pred.votes is None
        np.testing.assert_allclose(pred.entropy, old.entropy, atol=1e-12)


@pytest.mark.parametrize(
    "probs, match",
    [
        (
            np.array([0.2, 0.8]),
            r"`probs`. Expected shape \(N, C\). Received: shape \(2,\)",
        ),
        (np.array([[0.2, 0.9]]), r"`probs`. Expected non-negative rows that sum to 1"),
        (np.array([[-0.1, 1.1]]), r"`probs`.*smallest entry -0.1"),
        (
            np.array([[np.nan, 1.0]]),
            r"`probs`. Expected finite values. Received: 1 NaN",
        ),
        (None, r"`probs`. Expected an array. Received: probs=None"),
    ],
)
def test_from_probs_refuses_what_is_not_a_distribution(probs, match):
    with pytest.raises(ValueError, match=match):
        ku.ClassificationPrediction.from_probs(probs)


def test_from_logits_refuses_bad_logits_naming_them():
    with pytest.raises(ValueError, match=r"`logits`. Expected shape \(N, C\)"):
        ku.ClassificationPrediction.from_logits(np.zeros(3))
    with pytest.raises(ValueError, match=r"`logits`. Expected finite values"):
        ku.ClassificationPrediction.from_logits(np.array([[0.0, np.inf]]))


def test_log_softmax_is_scipys():
    rng = np.random.default_rng(10)
    logits = rng.normal(scale=50.0, size=(30, 7))
    logits[0] = [1e3, -1e3, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(
        formulas.log_softmax(logits), special.log_softmax(logits, -1), rtol=1e-12
    )
    np.testing.assert_allclose(
        formulas.log_softmax(logits, axis=0), special.log_softmax(logits, 0), rtol=1e-12
    )


# Metrics ---------------------------------------------------------------------


def test_sharpness_is_the_root_mean_predicted_variance():
    rng = np.random.default_rng(11)
    std = rng.uniform(0.1, 3.0, size=(200, 2))
    # uncertainty-toolbox's metrics_calibration.sharpness: sqrt(mean(y_std**2)).
    expected = math.sqrt(sum(s * s for s in std.ravel()) / std.size)
    assert ku.metrics.sharpness(std) == pytest.approx(expected, rel=1e-12)
    prediction = _prediction(std[:, 0], std[:, 0])
    assert ku.metrics.sharpness(prediction) == ku.metrics.sharpness(std[:, 0])
    assert ku.metrics.sharpness(np.full(3, 2.0)) == 2.0  # constant: that std
    assert ku.metrics.sharpness(np.zeros(3)) == 0.0  # a point prediction
    assert ku.metrics.sharpness(np.full(4, 1e200)) == pytest.approx(1e200)
    with pytest.raises(ValueError, match=r"`std`. Expected standard deviations >= 0"):
        ku.metrics.sharpness(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"`std`. Expected finite values"):
        ku.metrics.sharpness(np.array([1.0, np.inf]))


def test_gaussian_pit_is_scipys_normal_cdf():
    rng = np.random.default_rng(12)
    mean, std, y, _ = _regression(rng, 100)
    np.testing.assert_allclose(
        ku.metrics.gaussian_pit(y, mean, std),
        stats.norm.cdf(y, mean, std),
        rtol=1e-12,
    )
    assert ku.metrics.gaussian_pit([-40.0], [0.0], [1.0])[0] == pytest.approx(
        stats.norm.cdf(-40.0), rel=1e-12
    )


# One array check -------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.arange(4.0) + 1j, r"Expected an array of real numbers. Received: complex"),
        (["a", "b", "c", "d"], r"Expected an array of real numbers. Received: dtype"),
        (np.array([]), r"Expected a non-empty array. Received: shape \(0,\)"),
        (np.array([1.0, np.nan, 2, 3]), r"Expected finite values. Received: 1 NaN"),
    ],
)
def test_metrics_and_conformal_check_arrays_alike(bad, match):
    good = np.arange(4.0)
    with pytest.raises(ValueError, match=match.format(name="mean")) as metric:
        ku.metrics.rmse(good, bad)
    with pytest.raises(ValueError, match=match.format(name="mean")) as method:
        conformal.SplitConformalRegressor(ALPHA).fit(mean=bad, y=good)
    assert str(metric.value) == str(method.value)


# MAPIE's APS -----------------------------------------------------------------


def test_mapies_aps_calibration_scores_are_our_randomized_ones():
    """MAPIE's APS subtracts `u p_y` from the cumulated mass at calibration
    (always randomized): our randomized score with `1 - u`."""
    aps = pytest.importorskip("mapie.conformity_scores").APSConformityScore
    rng = np.random.default_rng(13)
    probs = rng.dirichlet(np.ones(5), size=80)
    labels = rng.integers(0, 5, size=80)
    score = aps()
    score.set_external_attributes(classes=np.arange(5), random_state=3)
    expected = score.get_conformity_scores(labels, probs, y_enc=labels)
    u = np.random.RandomState(3).uniform(size=80)
    ours = conformal.ConformalClassifier(score="aps", randomized=True)
    mine = np.take_along_axis(ours.scores(probs, u=1.0 - u), labels[:, None], 1)
    np.testing.assert_allclose(mine.ravel(), np.ravel(expected), atol=1e-12)
    plain = conformal.ConformalClassifier(score="aps").scores(probs)
    plain = np.take_along_axis(plain, labels[:, None], 1).ravel()
    assert np.all(plain >= np.ravel(expected) - 1e-12)  # ours are not randomized
    assert np.any(plain > np.ravel(expected) + 1e-3)
