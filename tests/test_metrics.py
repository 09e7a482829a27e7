import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

import keras_uncertainty as ku
from keras_uncertainty import metrics


@pytest.fixture(scope="module")
def reg():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=200)
    std = rng.uniform(0.5, 2.0, size=200)
    y = mean + std * rng.normal(size=200)
    return y, mean, std


def test_rmse(reg):
    y, mean, _ = reg
    assert metrics.rmse(y, mean) == pytest.approx(np.sqrt(np.mean((y - mean) ** 2)))


def test_gaussian_nll_matches_scipy(reg):
    y, mean, std = reg
    expected = -stats.norm.logpdf(y, mean, std).mean()
    assert metrics.gaussian_nll(y, mean, std) == pytest.approx(expected, rel=1e-12)


def test_metrics_accept_tensors_and_column_targets(reg):
    y, mean, std = reg
    value = metrics.gaussian_nll(
        tf.constant(y), tf.constant(mean[:, None]), std[:, None]
    )
    assert value == pytest.approx(metrics.gaussian_nll(y, mean, std))


def test_mixture_of_identical_components_is_the_single_gaussian(reg):
    y, mean, std = reg
    means, stds = np.stack([mean, mean, mean]), np.stack([std, std, std])
    assert metrics.mixture_nll(y, means, stds) == pytest.approx(
        metrics.gaussian_nll(y, mean, std), rel=1e-12
    )


def test_mixture_nll_matches_direct_density():
    rng = np.random.default_rng(1)
    means = rng.normal(size=(5, 30))
    stds = rng.uniform(0.3, 1.0, size=(5, 30))
    y = rng.normal(size=30)
    density = stats.norm.pdf(y[None], means, stds).mean(0)
    assert metrics.mixture_nll(y, means, stds) == pytest.approx(
        -np.log(density).mean(), rel=1e-10
    )
    # Far-away points: logsumexp keeps it finite where the density underflows.
    assert np.isfinite(metrics.mixture_nll(y + 200.0, means, stds * 0.01))


def test_mixture_nll_homoscedastic_tau_matches_the_papers_formula():
    rng = np.random.default_rng(2)
    means, y, tau = rng.normal(size=(10, 20)), rng.normal(size=20), 4.0
    ll = (
        np.log(np.exp(-0.5 * tau * (y[None] - means) ** 2).sum(0))
        - np.log(10)
        - 0.5 * np.log(2 * np.pi)
        + 0.5 * np.log(tau)
    )
    assert metrics.mixture_nll(y, means, 1 / math.sqrt(tau)) == pytest.approx(
        -ll.mean(), rel=1e-10
    )


def test_crps_matches_numerical_integration(reg):
    y, mean, std = reg

    def crps_one(yi, mi, si):
        below = integrate.quad(lambda t: stats.norm.cdf(t, mi, si) ** 2, -np.inf, yi)[0]
        above = integrate.quad(
            lambda t: (1 - stats.norm.cdf(t, mi, si)) ** 2, yi, np.inf
        )[0]
        return below + above

    expected = np.mean([crps_one(*v) for v in zip(y[:20], mean[:20], std[:20])])
    assert metrics.crps_gaussian(y[:20], mean[:20], std[:20]) == pytest.approx(
        expected, rel=1e-6
    )


def test_interval_coverage_and_score():
    y = np.array([0.0, 1.0, 3.0, -5.0])
    mean, std = np.zeros(4), np.ones(4)
    z = stats.norm.ppf(0.975)
    coverage, width = metrics.interval_coverage(y, mean, std, level=0.95)
    assert coverage == 0.5 and width == pytest.approx(2 * z)
    expected = np.mean([2 * z, 2 * z, 2 * z + 40 * (3 - z), 2 * z + 40 * (5 - z)])
    assert metrics.interval_score(y, mean, std, 0.95) == pytest.approx(expected)


def test_calibrated_gaussian_has_diagonal_calibration_curve():
    rng = np.random.default_rng(3)
    mean, std = rng.normal(size=20000), rng.uniform(0.5, 2, size=20000)
    y = mean + std * rng.normal(size=20000)
    expected, observed = metrics.regression_calibration_curve(y, mean, std, 11)
    np.testing.assert_allclose(observed, expected, atol=0.015)
    assert metrics.regression_calibration_error(y, mean, std) < 0.01
    # Over-confident: stds halved, coverage falls short of the levels.
    assert metrics.regression_calibration_error(y, mean, std / 2) > 0.15


def test_classification_scores_on_a_small_known_case():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert metrics.accuracy(labels, probs) == 0.75  # argmax ties go to class 0
    assert metrics.classification_nll(labels, probs) == pytest.approx(
        -np.mean(np.log([0.9, 0.8, 0.4, 0.5]))
    )
    assert metrics.brier_score(labels, probs) == pytest.approx(
        np.mean([0.02, 0.08, 0.72, 0.5])
    )


def test_ece_by_hand():
    # Bins of width 0.5: confidences 0.6, 0.7 (bin 2) and 0.9, 1.0 ... with
    # num_bins=2: bin (0.5, 1.0] holds all four; accuracy 0.5, confidence 0.8.
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [1.0, 0.0]])
    assert metrics.expected_calibration_error(labels, probs, 2) == pytest.approx(0.3)
    # 10 bins: (0.5, 0.6] acc 1 conf .6; (0.6, 0.7] acc 1 conf .7;
    # (0.8, 0.9] acc 0 conf .9; (0.9, 1.0] acc 0 conf 1.
    expected = 0.25 * (0.4 + 0.3 + 0.9 + 1.0)
    assert metrics.expected_calibration_error(labels, probs, 10) == pytest.approx(
        expected
    )
    assert metrics.max_calibration_error(labels, probs, 10) == pytest.approx(1.0)
    adaptive = metrics.expected_calibration_error(labels, probs, 2, adaptive=True)
    assert adaptive == pytest.approx(0.5 * abs(1 - 0.65) + 0.5 * abs(0 - 0.95))


def test_auroc_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    positive = rng.integers(0, 2, size=300)
    scores = np.round(rng.normal(size=300) + positive, 1)  # with ties
    assert metrics.auroc(positive, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(positive, scores), rel=1e-12
    )


def test_retention_curve_with_random_and_oracle_baselines():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.eye(2)[[0, 0, 0, 1, 1, 1, 0, 1]]  # errors at 3 and 6
    uncertainty = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.8, 0.6])
    curve = metrics.retention_curve(labels, probs, uncertainty, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(curve.accuracy, [1.0, 1.0, 0.75])
    np.testing.assert_allclose(curve.random_accuracy, 0.75)
    np.testing.assert_allclose(curve.oracle_accuracy, [1.0, 1.0, 0.75])
    # Uncertainty that ranks the errors first is the worst case.
    worst = metrics.retention_curve(labels, probs, -uncertainty, [0.25, 1.0])
    np.testing.assert_allclose(worst.accuracy, [0.0, 0.75])
    assert curve.auc > worst.auc
    default = metrics.retention_curve(labels, probs, uncertainty)
    np.testing.assert_allclose(default.retained_fraction, np.linspace(0.5, 1, 11))


def test_aurc():
    labels = np.array([0, 0, 1, 1])
    probs = np.eye(2)[[0, 1, 1, 0]]  # errors at 1 and 3
    perfect = metrics.aurc(labels, probs, np.array([0.0, 0.9, 0.1, 0.8]))
    assert perfect == pytest.approx(np.mean([0, 0, 1 / 3, 2 / 4]))
    worst = metrics.aurc(labels, probs, np.array([0.9, 0.0, 0.8, 0.1]))
    assert worst > perfect


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.rmse([1.0, 2.0], [1.0]), "same shape"),
        (lambda: metrics.gaussian_nll([1.0], [1.0], [0.0]), r"`std`.*> 0"),
        (lambda: metrics.gaussian_nll([np.nan], [1.0], [1.0]), "`y_true`.*finite"),
        (lambda: metrics.interval_coverage([1.0], [1.0], [1.0], 1.0), "`level`"),
        (lambda: metrics.interval_score([1.0], [1.0], [1.0], 0), "`level`"),
        (lambda: metrics.rmse([], []), "non-empty"),
        (lambda: metrics.accuracy([0], [[0.5, 0.6]]), "sum to 1"),
        (lambda: metrics.brier_score([0], [[-0.1, 1.1]]), "non-negative"),
        (lambda: metrics.accuracy([0, 1], [[0.5, 0.5]]), "`labels`"),
        (lambda: metrics.accuracy([2], [[0.5, 0.5]]), r"indices in \[0, 1\]"),
        (
            lambda: metrics.retention_curve([0], [[1.0, 0.0]], [0.1], [1.5]),
            r"`fractions`.*\[0, 1\]",
        ),
        (lambda: metrics.auroc([1, 1], [0.1, 0.2]), "both classes"),
        (
            lambda: metrics.auroc([0, 2, 5], [0.1, 0.2, 0.3]),
            r"`is_positive`.*all 0 or 1.*\[0, 2, 5\]",
        ),
        (lambda: metrics.auroc(["yes", "no"], [0.1, 0.2]), r"all 0 or 1.*'no', 'yes'"),
        (
            lambda: metrics.expected_calibration_error([0], [[1.0, 0.0]], 0),
            "`num_bins`",
        ),
    ],
)
def test_bad_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(5)
    true_logits = rng.normal(scale=2.0, size=(5000, 5))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(-1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    overconfident = true_logits * 2.5  # the right temperature is 2.5
    with pytest.warns(DeprecationWarning, match="removed in 0.4"):
        scaler = ku.calibration.TemperatureScaling().fit(overconfident, labels)
    assert scaler.temperature_ == pytest.approx(2.5, rel=0.05)
    raw = np.exp(overconfident) / np.exp(overconfident).sum(-1, keepdims=True)
    with pytest.warns(DeprecationWarning, match="removed in 0.4"):
        calibrated = scaler.transform(overconfident)
    assert metrics.classification_nll(labels, calibrated) < metrics.classification_nll(
        labels, raw
    )
    np.testing.assert_array_equal(calibrated.argmax(-1), raw.argmax(-1))
    with pytest.warns(DeprecationWarning, match="removed in 0.4"):
        from_probs = ku.calibration.TemperatureScaling().fit(
            raw, labels, from_probs=True
        )
    assert from_probs.temperature_ == pytest.approx(scaler.temperature_, rel=1e-3)
    with pytest.warns(DeprecationWarning, match="removed in 0.4"):
        recalibrated = from_probs.transform(raw, from_probs=True)
    np.testing.assert_allclose(recalibrated, calibrated, atol=1e-3)


def test_variance_scaling_maximises_the_likelihood():
    rng = np.random.default_rng(6)
    mean, std = rng.normal(size=2000), rng.uniform(0.5, 1.5, size=2000)
    y = mean + 3.0 * std * rng.normal(size=2000)  # the model is 3x too sure
    scaler = ku.calibration.VarianceScaling().fit((mean, std), y)
    assert scaler.scale_ == pytest.approx(3.0, rel=0.05)
    prediction = ku.RegressionPrediction(mean, std, std, 0 * std)
    assert ku.calibration.VarianceScaling().fit(prediction, y).scale_ == scaler.scale_
    with pytest.warns(DeprecationWarning, match=r"fit\(\(mean, std\), y_true\)"):
        old_order = ku.calibration.VarianceScaling().fit(y, mean, std)
    assert old_order.scale_ == scaler.scale_
    with pytest.warns(DeprecationWarning, match="removed in 0.4"):
        scaled = scaler.transform(std)
    best = metrics.gaussian_nll(y, mean, scaled)
    for factor in (0.9, 1.1):
        assert best < metrics.gaussian_nll(y, mean, factor * scaled)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tol": -1}, "`tol`.*> 0"),
        ({"tol": float("nan")}, "`tol`"),
        ({"tol": 0}, "`tol`"),
        ({"bounds": (0.01, float("inf"))}, "`bounds`.*finite"),
        ({"bounds": (1.0, 0.5)}, "`bounds`"),
        ({"bounds": "wide"}, "`bounds`"),
        ({"max_iter": 0}, "`max_iter`"),
    ],
)
def test_temperature_scaling_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ku.calibration.TemperatureScaling(**kwargs)


def test_a_temperature_on_a_bound_warns():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(200, 3))
    right = logits.argmax(-1)  # every prediction right: T -> 0
    with (
        pytest.warns(DeprecationWarning, match="removed in 0.4"),
        pytest.warns(UserWarning, match="sits on the bound 0.01"),
    ):
        ku.calibration.TemperatureScaling().fit(logits, right)
    with (
        pytest.warns(DeprecationWarning, match="removed in 0.4"),
        pytest.warns(UserWarning, match="sits on the bound 100"),
    ):
        ku.calibration.TemperatureScaling().fit(logits * 50, rng.integers(0, 3, 200))


def test_variance_scaling_refuses_a_prediction_it_cannot_read():
    with pytest.raises(ValueError, match="`prediction`.*pair"):
        ku.calibration.VarianceScaling().fit(np.ones(3), np.ones(3))


def test_calibrators_must_be_fitted_first():
    with pytest.raises(ValueError, match="not fitted"):
        ku.calibration.TemperatureScaling().transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        ku.calibration.VarianceScaling().transform(np.ones(3))
