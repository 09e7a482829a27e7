"""`ku.conformal`: coverage proven statistically over many calibration/test
splits, equality with MAPIE where it has the method, the exact finite-sample
quantile, the pinball loss, the metrics, and intervals and sets served by
`ku.export` to a process that imports only TensorFlow."""

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

import keras_uncertainty as ku

conformal = ku.conformal
# MAPIE cannot tell that the prefit stand-ins below are fitted.
pytestmark = pytest.mark.filterwarnings("ignore:Estimator does not appear fitted")
ALPHA = 0.1
N_CAL, N_TEST, SPLITS = 100, 200, 1000


# Synthetic data -------------------------------------------------------------


def _regression(rng, size):
    """Heteroscedastic 1-D data and a slightly wrong model of it: the mean
    is biased, the std and the quantile band are mis-scaled."""
    x = rng.uniform(-3, 3, size)
    noise = 0.1 + 0.3 * np.abs(x)
    y = np.sin(x) + noise * rng.standard_normal(size)
    mean = np.sin(x) + 0.05
    std = 0.7 * noise + 0.05
    band = np.stack([mean - 1.2 * noise, mean + 0.9 * noise], -1)
    group = (x > 0).astype(np.int64) + (x > 1.5)
    return {"y": y, "mean": mean, "std": std, "band": band, "group": group}


def _classification(rng, size, num_classes=5):
    """Probabilities of an over-confident model and labels drawn from the
    true (softer) distribution, by inverse CDF."""
    logits = 2.0 * rng.standard_normal((size, num_classes))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    true = np.exp(0.6 * (logits - logits.max(-1, keepdims=True)))
    true /= true.sum(-1, keepdims=True)
    u = rng.uniform(size=(size, 1))
    labels = np.minimum((u > np.cumsum(true, -1)).sum(-1), num_classes - 1)
    return probs, labels


def _take(data, rows):
    return {key: value[rows] for key, value in data.items()}


REGRESSORS = {
    "split": (conformal.SplitConformalRegressor, lambda d: d["mean"]),
    "normalized": (
        conformal.NormalizedConformalRegressor,
        lambda d: (d["mean"], d["std"]),
    ),
    "cqr": (
        conformal.ConformalizedQuantileRegressor,
        lambda d: conformal.QuantilePrediction(d["band"][:, 0], d["band"][:, 1]),
    ),
}

CLASSIFIERS = [
    {"score": "lac"},
    {"score": "aps"},
    {"score": "aps", "randomized": True},
    {"score": "raps"},
    {"score": "raps", "randomized": True},
    {"score": "raps", "penalty": 0.2, "k_reg": 2},
]


def _assert_coverage(coverages, n, alpha=ALPHA, n_test=N_TEST):
    """Mean coverage over independent splits lies in
    [1 - alpha, 1 - alpha + 1/(n + 1)] within 4.5 standard errors.

    One split's coverage has variance Var(Beta(k, n + 1 - k)) (the
    calibration draw; k = ceil((n + 1)(1 - alpha))) plus at most
    c(1 - c)/n_test (the test draw), so 4.5 standard errors of the mean
    leave a false failure below 1e-5."""
    coverages = np.asarray(coverages)
    k = math.ceil((n + 1) * (1 - alpha))
    c = k / (n + 1)
    var = c * (1 - c) / (n + 2) + c * (1 - c) / n_test
    tolerance = 4.5 * math.sqrt(var / len(coverages))
    mean = float(np.mean(coverages))
    assert 1 - alpha - tolerance <= mean <= 1 - alpha + 1 / (n + 1) + tolerance, (
        mean,
        tolerance,
    )


# Statistical coverage --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_regression_interval_coverage_is_between_one_minus_alpha_and_its_bound(name):
    cls, read = REGRESSORS[name]
    data = _regression(np.random.default_rng(0), SPLITS * (N_CAL + N_TEST))
    coverages = []
    for split in range(SPLITS):
        start = split * (N_CAL + N_TEST)
        cal = _take(data, slice(start, start + N_CAL))
        test = _take(data, slice(start + N_CAL, start + N_CAL + N_TEST))
        method = cls(alpha=ALPHA).fit(read(cal), cal["y"])
        interval = method.predict_interval(read(test))
        coverages.append(ku.metrics.empirical_coverage(test["y"], interval))
    _assert_coverage(coverages, N_CAL)


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_mondrian_regression_covers_within_every_group(name):
    # Three groups of fixed sizes per split: the quantile of each group is
    # its own, so the bound holds with that group's n.
    cls, read = REGRESSORS[name]
    rng = np.random.default_rng(1)
    sizes = (120, 60, 60)  # in proportion to the groups' probabilities
    splits = 400
    data = _regression(rng, int(1.2 * splits * 2 * sum(sizes)))
    order = np.argsort(data["group"], kind="stable")
    data = _take(data, order)
    counts = np.bincount(data["group"])
    per_group = [
        _take(data, slice(start, start + count))
        for start, count in zip(np.cumsum(counts) - counts, counts)
    ]
    coverages = {g: [] for g in range(3)}
    marginal = []
    for split in range(splits):
        cal_parts, test_parts = [], []
        for g, size in enumerate(sizes):
            rows = slice(2 * split * size, 2 * split * size + 2 * size)
            part = _take(per_group[g], rows)
            cal_parts.append(_take(part, slice(0, size)))
            test_parts.append(_take(part, slice(size, 2 * size)))
        cal = {k: np.concatenate([p[k] for p in cal_parts]) for k in cal_parts[0]}
        test = {k: np.concatenate([p[k] for p in test_parts]) for k in test_parts[0]}
        method = cls(alpha=ALPHA).fit(read(cal), cal["y"], groups=cal["group"])
        interval = method.predict_interval(read(test), groups=test["group"])
        inside = (interval.lower <= test["y"]) & (test["y"] <= interval.upper)
        for g in range(3):
            coverages[g].append(np.mean(inside[test["group"] == g]))
        marginal.append(np.mean(inside))
        assert method.quantile_.shape == (3, 1)
    for g, size in enumerate(sizes):
        _assert_coverage(coverages[g], size, n_test=size)
    assert np.mean(marginal) >= 1 - ALPHA - 0.01


def test_without_groups_the_noisy_group_is_under_covered_and_mondrian_fixes_it():
    rng = np.random.default_rng(2)
    data = _regression(rng, 40_000)
    cal, test = _take(data, slice(0, 20_000)), _take(data, slice(20_000, None))
    noisy = test["group"] == 2
    plain = conformal.SplitConformalRegressor(ALPHA).fit(cal["mean"], cal["y"])
    covered = ku.metrics.empirical_coverage
    iv = plain.predict_interval(test["mean"])
    assert covered(test["y"][noisy], iv.lower[noisy], iv.upper[noisy]) < 0.85
    mondrian = conformal.SplitConformalRegressor(ALPHA)
    mondrian.fit(cal["mean"], cal["y"], groups=cal["group"])
    iv = mondrian.predict_interval(test["mean"], groups=test["group"])
    assert covered(test["y"][noisy], iv.lower[noisy], iv.upper[noisy]) >= 0.89


@pytest.mark.parametrize(
    "options", CLASSIFIERS, ids=lambda o: "-".join(f"{v}" for v in o.values())
)
def test_classification_set_coverage_is_between_one_minus_alpha_and_its_bound(
    options,
):
    probs, labels = _classification(np.random.default_rng(3), SPLITS * (N_CAL + N_TEST))
    coverages = []
    method = conformal.ConformalClassifier(alpha=ALPHA, seed=0, **options)
    for split in range(SPLITS):
        start = split * (N_CAL + N_TEST)
        cal = slice(start, start + N_CAL)
        test = slice(start + N_CAL, start + N_CAL + N_TEST)
        method.fit(probs[cal], labels[cal])
        sets = method.predict_set(probs[test])
        coverages.append(ku.metrics.set_coverage(labels[test], sets))
    _assert_coverage(coverages, N_CAL)


@pytest.mark.parametrize(
    "score, randomized",
    [("lac", False), ("aps", False), ("aps", True), ("raps", False), ("raps", True)],
)
def test_class_conditional_sets_cover_within_every_class(score, randomized):
    rng = np.random.default_rng(4)
    splits, n = 300, 400
    probs, labels = _classification(rng, splits * 2 * n, num_classes=3)
    per_class = {c: [] for c in range(3)}
    method = conformal.ConformalClassifier(
        ALPHA, score=score, randomized=randomized, class_conditional=True, seed=0
    )
    for split in range(splits):
        cal = slice(2 * split * n, (2 * split + 1) * n)
        test = slice((2 * split + 1) * n, (2 * split + 2) * n)
        method.fit(probs[cal], labels[cal])
        sets = method.predict_set(probs[test])
        hit = sets[np.arange(n), labels[test]]
        for c in range(3):
            per_class[c].append(np.mean(hit[labels[test] == c]))
    for c in range(3):
        # The per-class n varies between splits; check the lower bound, the
        # guarantee, within 4.5 standard errors.
        values = np.asarray(per_class[c])
        tolerance = 4.5 * values.std() / np.sqrt(len(values))
        assert values.mean() >= 1 - ALPHA - tolerance, (c, values.mean())


def test_aps_sets_grow_with_uncertainty_and_raps_trims_their_tail():
    probs, labels = _classification(np.random.default_rng(5), 20_000, num_classes=10)
    cal, test = slice(0, 10_000), slice(10_000, None)
    sizes = {}
    for score in ("aps", "raps"):
        method = conformal.ConformalClassifier(ALPHA, score=score, penalty=0.1)
        sets = method.fit(probs[cal], labels[cal]).predict_set(probs[test])
        sizes[score] = sets.sum(1)
        # APS and RAPS sets are the top classes: no gap in the ranking.
        ranked = np.take_along_axis(sets, np.argsort(-probs[test], axis=1), axis=1)
        assert np.all(ranked[:, :-1] >= ranked[:, 1:])
    confident = probs[test].max(1) > 0.9
    assert sizes["aps"][confident].mean() < sizes["aps"][~confident].mean()
    assert sizes["raps"].max() < sizes["aps"].max()


@pytest.mark.parametrize("score, alpha", [("lac", 0.6), ("aps", 0.2), ("raps", 0.2)])
def test_without_empty_sets_the_top_class_fills_every_empty_set(score, alpha):
    import tensorflow as tf

    from keras_uncertainty.conformal import serving

    # APS and RAPS empty the sets of the surest inputs, LAC those of the
    # least sure (here 1% to 28% of the sets).
    probs, labels = _classification(np.random.default_rng(21), 8000, num_classes=5)
    cal, test = slice(0, 4000), slice(4000, None)
    exact = conformal.ConformalClassifier(alpha, score=score).fit(
        probs[cal], labels[cal]
    )
    filled = conformal.ConformalClassifier(
        alpha, score=score, allow_empty_sets=False
    ).fit(probs[cal], labels[cal])
    loose, tight = exact.predict_set(probs[test]), filled.predict_set(probs[test])
    empty = ~loose.any(axis=1)
    assert empty.any()  # the case the option is for
    assert tight.any(axis=1).all()
    expected = loose.copy()
    expected[empty, np.argmax(probs[test][empty], axis=1)] = True
    np.testing.assert_array_equal(tight, expected)
    assert ku.metrics.set_coverage(labels[test], tight) >= ku.metrics.set_coverage(
        labels[test], loose
    )
    served = serving.serving_outputs(filled, {"probs": tf.constant(probs[test])})
    np.testing.assert_array_equal(served["sets"].numpy(), tight)


# The quantile ----------------------------------------------------------------


@pytest.mark.parametrize("n, alpha, rank", [(19, 0.1, 18), (9, 0.1, 9), (99, 0.05, 95)])
def test_the_quantile_is_exactly_the_ceil_n_plus_one_times_one_minus_alpha_th_score(
    n, alpha, rank
):
    # (n + 1)(1 - alpha) = 18.0, 9.0 and 95.00000000000001 in floats: the
    # rank is the integer, not one more.
    rng = np.random.default_rng(6)
    residuals = rng.permutation(np.arange(1, n + 1) * 0.5)
    method = conformal.SplitConformalRegressor(alpha).fit(np.zeros(n), residuals)
    assert method.quantile_[0, 0] == 0.5 * rank
    interval = method.predict_interval(np.array([1.0]))
    assert interval.lower[0] == 1.0 - 0.5 * rank
    assert interval.upper[0] == 1.0 + 0.5 * rank


def test_too_few_calibration_points_give_infinite_bounds_and_full_sets_and_warn():
    with pytest.warns(UserWarning, match="too few points for alpha=0.1"):
        method = conformal.SplitConformalRegressor(0.1).fit(np.zeros(8), np.ones(8))
    with pytest.warns(UserWarning, match="too few points"):  # at every use
        interval = method.predict_interval(np.zeros(3))
    assert np.all(interval.lower == -np.inf) and np.all(interval.upper == np.inf)
    assert ku.metrics.mean_interval_width(interval) == np.inf
    # At alpha = 0.2, 8 points suffice: no warning, a finite quantile.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(method.quantile(0.2)).all()
    probs = np.full((4, 3), 1 / 3)
    with pytest.warns(UserWarning, match="1 class"):
        clf = conformal.ConformalClassifier(0.1, class_conditional=True)
        clf.fit(np.tile(probs, (10, 1)), np.array([0, 1] * 20))
    assert np.isinf(clf.quantile_[2])
    with pytest.warns(UserWarning, match="1 class"):
        assert clf.predict_set(probs)[:, 2].all()


def test_each_target_of_a_multi_target_prediction_gets_its_own_quantile():
    rng = np.random.default_rng(15)
    mean = rng.normal(size=(4000, 2))
    y = mean + np.array([0.1, 3.0]) * rng.standard_normal((4000, 2))
    method = conformal.SplitConformalRegressor(ALPHA).fit(mean[:2000], y[:2000])
    assert method.quantile_.shape == (1, 2)
    assert method.quantile_[0, 1] > 20 * method.quantile_[0, 0]
    interval = method.predict_interval(mean[2000:])
    assert interval.lower.shape == (2000, 2)
    for k in range(2):
        covered = ku.metrics.empirical_coverage(
            y[2000:, k], interval.lower[:, k], interval.upper[:, k]
        )
        assert 0.88 <= covered <= 0.92


def test_an_alpha_changed_after_fit_is_the_one_used():
    data = _regression(np.random.default_rng(16), 1000)
    method = conformal.SplitConformalRegressor(0.1).fit(data["mean"], data["y"])
    method.alpha = 0.3
    assert method.quantile() == method.quantile(0.3) < method.quantile(0.1)


def test_alpha_given_at_call_time_overrides_the_constructor_one():
    data = _regression(np.random.default_rng(7), 2000)
    method = conformal.SplitConformalRegressor(0.1).fit(data["mean"], data["y"])
    wide = method.predict_interval(data["mean"], alpha=0.01)
    narrow = method.predict_interval(data["mean"])
    assert np.all(wide.width > narrow.width)
    assert np.array_equal(method.transform(data["mean"]).lower, narrow.lower)
    assert method.quantile(0.1) == method.quantile_


# MAPIE as the reference ------------------------------------------------------


class _Column(RegressorMixin, BaseEstimator):
    """A prefit regressor that reads its prediction (and std) from X."""

    def __init__(self, column=0, std_column=None):
        self.column = column
        self.std_column = std_column

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def predict(self, X, return_std=False):
        X = np.asarray(X)
        if return_std:
            return X[:, self.column], X[:, self.std_column]
        return X[:, self.column]


class _Probs(ClassifierMixin, BaseEstimator):
    """A prefit classifier whose probabilities are X."""

    def __init__(self, num_classes=5):
        self.num_classes = num_classes

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    @property
    def classes_(self):
        return np.arange(self.num_classes)

    def predict_proba(self, X):
        return np.asarray(X)

    def predict(self, X):
        return np.argmax(X, 1)


@pytest.fixture(scope="module")
def mapie():
    return pytest.importorskip("mapie")


@pytest.fixture(scope="module")
def reference_data():
    rng = np.random.default_rng(8)
    regression = _regression(rng, 700)
    probs, labels = _classification(rng, 700)
    return regression, probs, labels


def _mapie_bounds(intervals):
    return intervals[:, 0, 0], intervals[:, 1, 0]


def test_split_conformal_equals_mapies_absolute_score(mapie, reference_data):
    from mapie.regression import SplitConformalRegressor

    data, _, _ = reference_data
    X = data["mean"][:, None]
    ref = SplitConformalRegressor(_Column(0), confidence_level=0.9, prefit=True)
    lower, upper = _mapie_bounds(
        ref.conformalize(X[:200], data["y"][:200]).predict_interval(X[200:])[1]
    )
    mine = conformal.SplitConformalRegressor(0.1).fit(
        data["mean"][:200], data["y"][:200]
    )
    interval = mine.predict_interval(data["mean"][200:])
    np.testing.assert_array_equal(interval.lower, lower)
    np.testing.assert_array_equal(interval.upper, upper)


def test_normalized_conformal_equals_mapies_std_score(mapie, reference_data):
    from mapie.conformity_scores import StdConformityScore
    from mapie.regression import SplitConformalRegressor

    data, _, _ = reference_data
    X = np.stack([data["mean"], data["std"]], 1)
    ref = SplitConformalRegressor(
        _Column(0, 1),
        confidence_level=0.9,
        conformity_score=StdConformityScore(),
        prefit=True,
    )
    _, upper = _mapie_bounds(
        ref.conformalize(X[:200], data["y"][:200]).predict_interval(X[200:])[1]
    )
    mine = conformal.NormalizedConformalRegressor(0.1)
    mine.fit((data["mean"][:200], data["std"][:200]), data["y"][:200])
    interval = mine.predict_interval((data["mean"][200:], data["std"][200:]))
    # MAPIE 1.x takes the lower bound's quantile one rank lower
    # ((n + 1) - ceil((n + 1) alpha) = 180th of 200, against the 181st for
    # the upper bound); the interval is symmetric, so the upper bound, the
    # ceil((n + 1)(1 - alpha))-th score, is the one to compare.
    np.testing.assert_allclose(interval.upper, upper, rtol=1e-12)
    np.testing.assert_allclose(
        interval.upper - data["mean"][200:], data["mean"][200:] - interval.lower
    )


def test_cqr_equals_mapies_symmetric_conformalized_quantile_regression(
    mapie, reference_data
):
    from mapie.regression import ConformalizedQuantileRegressor

    data, _, _ = reference_data
    X = np.concatenate([data["band"], data["mean"][:, None]], 1)
    ref = ConformalizedQuantileRegressor(
        [_Column(0), _Column(1), _Column(2)], confidence_level=0.9, prefit=True
    ).conformalize(X[:200], data["y"][:200])
    lower, upper = _mapie_bounds(
        ref.predict_interval(X[200:], symmetric_correction=True)[1]
    )
    mine = conformal.ConformalizedQuantileRegressor(0.1)
    interval = mine.fit(data["band"][:200], data["y"][:200]).predict_interval(
        data["band"][200:]
    )
    np.testing.assert_allclose(interval.lower.ravel(), lower, rtol=1e-12)
    np.testing.assert_allclose(interval.upper.ravel(), upper, rtol=1e-12)


def test_lac_sets_equal_mapies(mapie, reference_data):
    from mapie.classification import SplitConformalClassifier

    _, probs, labels = reference_data
    ref = SplitConformalClassifier(
        _Probs(5), confidence_level=0.9, conformity_score="lac", prefit=True
    ).conformalize(probs[:300], labels[:300])
    expected = ref.predict_set(probs[300:])[1][:, :, 0]
    mine = conformal.ConformalClassifier(0.1, score="lac").fit(
        probs[:300], labels[:300]
    )
    np.testing.assert_array_equal(mine.predict_set(probs[300:]), expected)


def test_aps_scores_equal_mapies_cumulated_true_label_probability(
    mapie, reference_data
):
    from mapie.conformity_scores import APSConformityScore

    _, probs, labels = reference_data
    expected, _ = APSConformityScore().get_true_label_cumsum_proba(
        labels, probs, np.arange(5)
    )
    scores = conformal.ConformalClassifier(score="aps").scores(probs)
    own = np.take_along_axis(scores, labels[:, None], axis=1)
    np.testing.assert_allclose(own.ravel(), np.ravel(expected), rtol=1e-12)


def test_default_score_is_lac_the_smallest_sets_at_valid_coverage():
    # A 90%-accurate 10-class classifier at alpha 0.05: LAC's sets hold about
    # one class, APS's several, both covering at least 95%.
    rng = np.random.default_rng(7)
    n, classes = 8000, 10
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 3.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cal, test = slice(0, 4000), slice(4000, None)
    assert 0.85 < np.mean(probs[test].argmax(1) == labels[test]) < 0.95
    default = conformal.ConformalClassifier(alpha=0.05)
    assert default.score == "lac"
    sizes, covered = {}, {}
    for name, method in {
        "lac": default,
        "aps": conformal.ConformalClassifier(alpha=0.05, score="aps"),
    }.items():
        sets = method.fit(probs[cal], labels[cal]).predict_set(probs[test])
        sizes[name] = sets.sum(1).mean()
        covered[name] = ku.metrics.set_coverage(labels[test], sets)
    assert min(covered.values()) >= 0.94  # 0.95 within the test's noise
    assert sizes["lac"] < 2.0 < sizes["aps"]


def test_raps_and_randomized_scores_follow_their_formulas():
    probs = np.array([[0.5, 0.1, 0.3, 0.1]])
    # Ranks by decreasing probability (ties by index): 0, 2, 1, 3.
    aps = conformal.ConformalClassifier(score="aps").scores(probs)
    np.testing.assert_allclose(aps, [[0.5, 0.9, 0.8, 1.0]])
    raps = conformal.ConformalClassifier(score="raps", penalty=0.1, k_reg=1)
    np.testing.assert_allclose(raps.scores(probs), [[0.5, 1.1, 0.9, 1.3]])
    randomized = conformal.ConformalClassifier(
        score="raps", randomized=True, penalty=0.1
    )
    np.testing.assert_allclose(
        randomized.scores(probs, u=np.array([0.5])), [[0.25, 1.05, 0.75, 1.25]]
    )
    lac = conformal.ConformalClassifier(score="lac").scores(probs)
    np.testing.assert_allclose(lac, 1 - probs)


# Pinball loss ----------------------------------------------------------------


def test_pinball_loss_is_the_mean_of_the_check_function_over_levels_and_targets():
    rng = np.random.default_rng(9)
    y = rng.normal(size=(6, 2)).astype("float32")
    pred = rng.normal(size=(6, 4)).astype("float32")
    levels = (0.1, 0.8)
    expected = np.zeros(6)
    for i, tau in enumerate(levels):
        error = y - pred[:, 2 * i : 2 * i + 2]
        expected += np.maximum(tau * error, (tau - 1) * error).mean(1) / 2
    loss = ku.losses.PinballLoss(levels, reduction=None)
    np.testing.assert_allclose(np.asarray(loss(y, pred)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(ku.losses.pinball_loss(y, pred, levels)), expected, rtol=1e-6
    )


def test_pinball_loss_is_minimised_at_its_quantiles():
    rng = np.random.default_rng(10)
    y = rng.normal(size=512).astype("float32")
    grid = np.linspace(-2, 2, 401).astype("float32")
    # Every (constant) candidate for the (0.1, 0.9) quantiles at once.
    y_true = np.tile(y, len(grid))[:, None]
    y_pred = np.repeat(np.stack([grid, grid], 1), len(y), axis=0)
    loss = ku.losses.PinballLoss((0.1, 0.9), reduction=None)
    per_level = []
    for level in (0.1, 0.9):
        one = ku.losses.PinballLoss((level,), reduction=None)
        values = np.asarray(one(y_true, y_pred[:, :1])).reshape(len(grid), -1)
        per_level.append(grid[np.argmin(values.mean(1))])
    assert abs(per_level[0] - np.quantile(y, 0.1)) <= 0.02
    assert abs(per_level[1] - np.quantile(y, 0.9)) <= 0.02
    assert np.asarray(loss(y_true, y_pred)).shape == (len(y_true),)


def test_a_quantile_head_compiles_with_pinball_loss_and_saves_with_it(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(11).normal(size=(64, 1)).astype("float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    model.compile("adam", loss=ku.losses.PinballLoss((0.1, 0.9)))
    history = model.fit(x, x, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "quantile.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, ku.losses.PinballLoss)
    assert loaded.loss.quantiles == (0.1, 0.9)
    config = keras.saving.serialize_keras_object(ku.losses.pinball_loss)
    assert keras.saving.deserialize_keras_object(config) is ku.losses.pinball_loss


# Post-hoc contract, metrics and validation ---------------------------------


def test_fitted_state_round_trips_through_config_and_state():
    data = _regression(np.random.default_rng(11), 500)
    method = conformal.NormalizedConformalRegressor(0.2)
    method.fit((data["mean"], data["std"]), data["y"], groups=data["group"])
    clone = conformal.NormalizedConformalRegressor.from_config(method.get_config())
    clone.set_state(method.get_state())
    args = ((data["mean"], data["std"]),)
    a = method.predict_interval(*args, groups=data["group"])
    b = clone.predict_interval(*args, groups=data["group"])
    np.testing.assert_array_equal(a.lower, b.lower)
    assert repr(method) == "NormalizedConformalRegressor(alpha=0.2)"
    with pytest.raises(ku.posthoc.NotFittedError):
        conformal.ConformalClassifier().predict_set(np.full((2, 2), 0.5))


def test_metrics_follow_their_formulas():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    lower, upper = np.array([-1.0, 1.5, 1.0, 3.0]), np.array([1.0, 2.0, 2.0, np.inf])
    assert ku.metrics.empirical_coverage(y, lower, upper) == 0.75
    interval = conformal.Interval(lower[:3], upper[:3])
    assert ku.metrics.empirical_coverage(y[:3], interval) == 2 / 3
    assert ku.metrics.mean_interval_width(interval) == (2 + 0.5 + 1) / 3
    sets = np.array([[True, False, True], [False, False, False]])
    assert ku.metrics.set_coverage(np.array([2, 0]), sets) == 0.5
    assert ku.metrics.mean_set_size(sets) == 1.0


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: conformal.SplitConformalRegressor(alpha=0), "`alpha`"),
        (lambda: conformal.SplitConformalRegressor(alpha=1.0), "`alpha`"),
        (lambda: conformal.ConformalClassifier(alpha=True), "`alpha`"),
        (lambda: conformal.ConformalClassifier(score="thr"), "`score`"),
        (
            lambda: conformal.ConformalClassifier(score="lac", randomized=True),
            "`randomized`",
        ),
        (lambda: conformal.ConformalClassifier(penalty=-1.0), "`penalty`"),
        (
            lambda: conformal.SplitConformalRegressor().fit(np.zeros(5), np.zeros(4)),
            "`y`",
        ),
        (
            lambda: conformal.SplitConformalRegressor().fit(
                np.array([0.0, np.nan]), np.zeros(2)
            ),
            "`prediction`",
        ),
        (
            lambda: conformal.NormalizedConformalRegressor().fit(
                (np.zeros(3), np.array([1.0, 0.0, 1.0])), np.zeros(3)
            ),
            "`std`",
        ),
        (
            lambda: conformal.SplitConformalRegressor().fit(np.zeros(0), np.zeros(0)),
            "non-empty",
        ),
        (
            lambda: (
                conformal.SplitConformalRegressor()
                .fit(np.zeros(20), np.ones(20), groups=np.arange(20) % 2)
                .predict_interval(np.zeros(2), groups=np.array([0, 7]))
            ),
            "unseen groups \\[7\\]",
        ),
        (
            lambda: (
                conformal.SplitConformalRegressor()
                .fit(np.zeros(20), np.ones(20), groups=np.arange(20) % 2)
                .predict_interval(np.zeros(2))
            ),
            "`groups`",
        ),
        (
            lambda: (
                conformal.SplitConformalRegressor()
                .fit(np.zeros(20), np.ones(20))
                .predict_interval(np.zeros(2), alpha=1.5)
            ),
            "`alpha`",
        ),
        (
            lambda: conformal.ConformalClassifier().fit(
                np.full((4, 2), 0.5), np.array([0, 1, 2, 0])
            ),
            "`labels`",
        ),
        (
            lambda: (
                conformal.ConformalClassifier()
                .fit(np.full((20, 2), 0.5), np.arange(20) % 2)
                .predict_set(np.full((2, 3), 1 / 3))
            ),
            "2 classes",
        ),
        (lambda: ku.losses.PinballLoss((0.1, 1.0)), "`quantiles`"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# Served intervals and sets ---------------------------------------------------

_SERVER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    out_path, *pairs = sys.argv[1:]
    results = {}
    for path, x_path in zip(pairs[::2], pairs[1::2]):
        x = np.load(x_path)
        served = tf.saved_model.load(path)
        out = served.serve_seeded(tf.constant(x), tf.constant(5, tf.int64))
        default = served.signatures["serving_default"](tf.constant(x))
        results[path] = {k: v.numpy().tolist() for k, v in out.items()}
        results[path]["default_keys"] = sorted(default)
    assert "keras_uncertainty" not in sys.modules
    with open(out_path, "w") as f:
        json.dump(results, f)
    """
)


def _two_regression_heads():
    """MC dropout trunk, a (mean, log-variance) head `reg` and a (lower,
    upper) quantile head `band`."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((1,), name="x")
    hidden = ku.layers.MCDropout(0.1)(keras.layers.Dense(8, "relu")(inputs))
    reg = keras.layers.Dense(2, name="reg")(hidden)
    band = keras.layers.Dense(2, name="band")(hidden)
    return keras.Model(inputs, {"reg": reg, "band": band})


# A subprocess end to end: the slow tier (CI runs it).
@pytest.mark.slow
def test_served_intervals_and_sets_equal_the_in_process_ones(
    classifier, class_inputs, tmp_path
):
    # The fitted state is all that is served, so the calibration data can
    # be synthetic; the served bounds and sets must equal predict_interval /
    # predict_set on the served mean, std and probs.
    data = _regression(np.random.default_rng(12), 300)
    normalized = conformal.NormalizedConformalRegressor(0.1)
    normalized.fit((data["mean"][:, None], data["std"][:, None]), data["y"])
    cqr = conformal.ConformalizedQuantileRegressor(0.1).fit(data["band"], data["y"])
    probs, labels = _classification(np.random.default_rng(13), 300, num_classes=3)
    raps = conformal.ConformalClassifier(0.2, score="raps", class_conditional=True)
    raps.fit(probs, labels)

    two_heads = ku.export(
        _two_regression_heads(),
        tmp_path / "heads",
        {
            "reg": {"task": "regression", "variance_head": True},
            "band": {"task": "regression", "variance_head": False},
        },
        50,
        conformal={"reg": normalized, "band": cqr},
    )
    one_head = ku.export(
        classifier, tmp_path / "raps", "classification", 50, conformal=raps
    )
    queries = np.random.default_rng(14).normal(size=(64, 8)).astype("float32")
    queries[[3, 40]] = np.nan  # NaN rows stay NaN, their sets empty
    np.save(tmp_path / "x.npy", queries[:, :1])
    np.save(tmp_path / "xc.npy", queries)
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    out = tmp_path / "served.json"
    pairs = [two_heads, tmp_path / "x.npy", one_head, tmp_path / "xc.npy"]
    result = subprocess.run(
        [sys.executable, str(script), str(out), *map(str, pairs)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(out.read_text())
    finite = np.ones(len(queries), bool)
    finite[[3, 40]] = False

    def close(actual, expected):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)

    out = {k: np.asarray(v) for k, v in served[str(two_heads)].items()}
    for key in ("reg_lower", "reg_upper", "band_lower", "band_upper"):
        assert key in out["default_keys"]
        assert np.isnan(out[key][~finite]).all()
    mean, std = out["reg_mean"][finite], out["reg_std"][finite]
    expected = normalized.predict_interval((mean.astype(float), std.astype(float)))
    close(out["reg_lower"][finite], expected.lower)
    close(out["reg_upper"][finite], expected.upper)
    expected = cqr.predict_interval(out["band_mean"][finite].astype(float))
    close(out["band_lower"][finite], expected.lower)
    close(out["band_upper"][finite], expected.upper)

    out = {k: np.asarray(v) for k, v in served[str(one_head)].items()}
    assert "sets" in out["default_keys"] and out["sets"].dtype == bool
    expected = raps.predict_set(out["probs"][finite].astype(np.float64))
    np.testing.assert_array_equal(out["sets"][finite], expected)
    assert not out["sets"][~finite].any()


def test_export_refuses_conformal_methods_it_cannot_serve(classifier, tmp_path):
    probs = np.full((40, 3), 1 / 3)
    labels = np.arange(40) % 3
    randomized = conformal.ConformalClassifier(score="aps", randomized=True)
    mondrian = conformal.SplitConformalRegressor().fit(
        np.zeros(40), np.ones(40), groups=labels
    )
    cases = [
        (randomized.fit(probs, labels), "randomized"),
        (conformal.ConformalClassifier(), "fitted"),
        (mondrian, "groups"),
        (
            conformal.SplitConformalRegressor().fit(np.zeros(40), np.ones(40)),
            "regression",
        ),
        ("aps", "ku.conformal"),
    ]
    for method, message in cases:
        with pytest.raises(ValueError, match=message):
            ku.export(classifier, tmp_path / "x", "classification", conformal=method)
    assert not (tmp_path / "x").exists()
