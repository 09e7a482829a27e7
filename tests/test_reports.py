"""`ku.metrics.regression_report` and `classification_report`: every value is
the metric function's and an independent reference's (scipy, scikit-learn,
numpy); the keys are stable; bad inputs fail with precise messages."""

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp
from sklearn import metrics as skm

import keras_uncertainty as ku

m = ku.metrics
N, T, C = 300, 8, 4


def _regression_samples(seed=0, n=N, t=T):
    """Means and stds `(t, n)` of t Gaussians per point, and targets `(n,)`."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=n)
    y = np.sin(x) + rng.normal(scale=0.3, size=n)
    means = np.sin(x) + rng.normal(scale=0.15, size=(t, n))
    stds = rng.uniform(0.15, 0.45, size=(t, n))
    return y, means, stds


def _regression_prediction(means, stds):
    """The `RegressionPrediction` of the samples' mixture (numpy moments)."""
    mean = means.mean(0)
    aleatoric = np.sqrt(np.mean(stds**2, 0))
    epistemic = means.std(0)
    return ku.RegressionPrediction(
        mean=mean,
        std=np.sqrt(aleatoric**2 + epistemic**2),
        aleatoric_std=aleatoric,
        epistemic_std=epistemic,
    )


def _classification_samples(seed=0, n=N, t=T, c=C):
    """Probabilities `(t, n, c)` of t samples, and labels `(n,)`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    shared = rng.normal(size=(n, c)) + 1.2 * np.eye(c)[labels]
    logits = shared + 0.8 * rng.normal(size=(t, n, c))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probs


def _classification_prediction(probs):
    entropies = stats.entropy(probs, axis=-1)  # (t, n)
    return ku.ClassificationPrediction.from_moments(
        probs.sum(0), entropies.sum(0), None, len(probs)
    )


REGRESSION_KEYS = {
    "calibration_error",
    "coverage_50",
    "coverage_90",
    "coverage_95",
    "crps",
    "gaussian_nll",
    "interval_score_50",
    "interval_score_90",
    "interval_score_95",
    "mean_aleatoric_std",
    "mean_epistemic_std",
    "mean_std",
    "rmse",
    "width_50",
    "width_90",
    "width_95",
}
CLASSIFICATION_KEYS = {
    "accuracy",
    "aurc",
    "brier",
    "ece",
    "error_auroc",
    "mce",
    "mean_entropy",
    "mean_expected_entropy",
    "mean_mutual_information",
    "nll",
}


# Regression -------------------------------------------------------------------


def test_regression_report_has_the_documented_keys_sorted_as_floats():
    y, means, stds = _regression_samples()
    report = m.regression_report(y, _regression_prediction(means, stds))
    assert set(report) == REGRESSION_KEYS
    assert list(report) == sorted(report)
    assert all(type(v) is float and math.isfinite(v) for v in report.values())


def test_regression_report_values_are_the_metric_functions():
    y, means, stds = _regression_samples()
    pred = _regression_prediction(means, stds)
    report = m.regression_report(y, pred, levels=(0.8, 0.975), num_levels=11)
    mean, std = pred.mean, pred.std
    expected = {
        "calibration_error": m.regression_calibration_error(y, mean, std, 11),
        "crps": m.crps_gaussian(y, mean, std),
        "gaussian_nll": m.gaussian_nll(y, mean, std),
        "mean_aleatoric_std": pred.aleatoric_std.mean(),
        "mean_epistemic_std": pred.epistemic_std.mean(),
        "mean_std": std.mean(),
        "rmse": m.rmse(y, mean),
    }
    for level, name in ((0.8, "80"), (0.975, "97.5")):
        coverage, width = m.interval_coverage(y, mean, std, level)
        expected[f"coverage_{name}"] = coverage
        expected[f"width_{name}"] = width
        expected[f"interval_score_{name}"] = m.interval_score(y, mean, std, level)
    assert report == pytest.approx(expected, rel=1e-12)


def test_regression_report_matches_scipy_and_numpy_references():
    y, means, stds = _regression_samples(seed=1)
    pred = _regression_prediction(means, stds)
    mean, std = pred.mean, pred.std
    report = m.regression_report(y, pred)
    z = (y - mean) / std
    reference = {
        "rmse": np.sqrt(np.mean((y - mean) ** 2)),
        "gaussian_nll": -np.mean(stats.norm.logpdf(y, mean, std)),
        "crps": np.mean(
            std
            * (
                z * (2 * stats.norm.cdf(z) - 1)
                + 2 * stats.norm.pdf(z)
                - 1 / np.sqrt(np.pi)
            )
        ),
    }
    for level in (0.5, 0.9, 0.95):
        lower, upper = stats.norm.interval(level, mean, std)
        name = f"{100 * level:g}"
        alpha = 1 - level
        score = (
            (upper - lower)
            + (2 / alpha) * (lower - y) * (y < lower)
            + (2 / alpha) * (y - upper) * (y > upper)
        )
        reference[f"coverage_{name}"] = np.mean((lower <= y) & (y <= upper))
        reference[f"width_{name}"] = np.mean(upper - lower)
        reference[f"interval_score_{name}"] = np.mean(score)
    for key, value in reference.items():
        np.testing.assert_allclose(report[key], value, rtol=1e-9, err_msg=key)


def test_regression_calibration_error_is_the_mean_gap_of_observed_coverage():
    y, means, stds = _regression_samples(seed=2)
    pred = _regression_prediction(means, stds)
    report = m.regression_report(y, pred, num_levels=5)
    expected = np.linspace(0, 1, 5)
    needed = 2 * stats.norm.cdf(np.abs((y - pred.mean) / pred.std)) - 1
    observed = np.array([np.mean(needed <= p) for p in expected])
    observed[-1] = 1.0
    np.testing.assert_allclose(
        report["calibration_error"], np.mean(np.abs(observed - expected)), rtol=1e-12
    )


def _mixture_reference(y, means, stds):
    log_density = stats.norm.logpdf(y, means, stds)  # (t, n)
    return -np.mean(logsumexp(log_density, axis=0) - np.log(len(means)))


def test_mixture_nll_from_samples_is_the_mixtures_test_log_likelihood():
    y, means, stds = _regression_samples(seed=3)
    pred = _regression_prediction(means, stds)
    report = m.regression_report(y, pred, sample_means=means, sample_stds=stds)
    assert set(report) == REGRESSION_KEYS | {"mixture_nll"}
    np.testing.assert_allclose(
        report["mixture_nll"], _mixture_reference(y, means, stds), rtol=1e-12
    )
    # A homoscedastic model's scalar noise std is broadcast.
    scalar = m.regression_report(y, pred, (), sample_means=means, sample_stds=0.3)
    np.testing.assert_allclose(
        scalar["mixture_nll"],
        _mixture_reference(y, means, np.full_like(means, 0.3)),
        rtol=1e-12,
    )


def test_a_streamed_mixture_score_gives_the_mixture_nll_of_its_samples():
    y, means, stds = _regression_samples(seed=4, n=64)
    samples = np.stack([means, 2 * np.log(stds)], -1).astype(np.float32)
    reducer = ku.sampling.MixtureNLL(variance_head=True)
    state = tuple(np.asarray(v) for v in reducer.reduce(samples, y))
    score = reducer.finalize(state, T)  # a MixtureScore, (n, 1) fields
    report = m.regression_report(y, score)  # (n,) targets meet (n, 1)
    assert set(report) == REGRESSION_KEYS | {"mixture_nll"}
    assert report["mixture_nll"] == score.nll
    np.testing.assert_allclose(
        report["mixture_nll"], _mixture_reference(y, means, stds), rtol=1e-5
    )
    plain = m.regression_report(y, score.prediction)
    assert plain == {k: v for k, v in report.items() if k != "mixture_nll"}


def test_a_mixture_log_likelihood_of_minus_infinity_scores_infinity():
    y, means, stds = _regression_samples(n=10)
    pred = _regression_prediction(means, stds)
    log_likelihood = np.zeros(10)
    log_likelihood[3] = -np.inf  # a density below float64
    score = ku.sampling.MixtureScore(prediction=pred, log_likelihood=log_likelihood)
    assert m.regression_report(y, score)["mixture_nll"] == np.inf


def test_regression_report_keys_follow_levels_and_prefix():
    y, means, stds = _regression_samples(n=50)
    pred = _regression_prediction(means, stds)
    report = m.regression_report(y, pred, levels=(0.975, 0.68), prefix="val_")
    assert "val_coverage_97.5" in report and "val_width_68" in report
    assert "val_coverage_95" not in report
    assert all(k.startswith("val_") for k in report)
    assert list(report) == sorted(report)
    bare = m.regression_report(y, pred, levels=())
    assert not any(k.startswith(("coverage", "width", "interval")) for k in bare)


def test_regression_report_takes_k_targets_and_tensors():
    import tensorflow as tf

    y, means, stds = _regression_samples(n=40)
    pred = _regression_prediction(means, stds)
    two = ku.RegressionPrediction(
        *(
            np.stack([v, v], -1)
            for v in (pred.mean, pred.std, pred.aleatoric_std, pred.epistemic_std)
        )
    )
    report = m.regression_report(tf.constant(np.stack([y, y], -1)), two)
    assert report == pytest.approx(m.regression_report(y, pred), rel=1e-12)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(y=np.zeros(N - 1)),
            r"`y_true` and `prediction.mean` .* same number of rows",
        ),
        (dict(y=np.full(N, np.nan)), r"`y_true`.* 300 NaN or infinite"),
        (dict(std=np.full(N, np.nan)), r"`prediction.std`.* NaN"),
        (dict(std=np.zeros(N)), r"`std`.* > 0"),
        (dict(y=np.zeros((N, 2))), r"`y_true` and `prediction.mean` .* same shape"),
        (dict(prediction=np.zeros(N)), r"ndarray without mean, std"),
        (dict(levels=(0.9, 1.0)), r"`levels`.* \(0, 1\)"),
        (dict(levels=0.9), r"`levels`.* a sequence"),
        (dict(levels=(0.95, 0.95)), r"distinct levels"),
        (dict(prefix=1), r"`prefix`"),
        (dict(sample_means=np.zeros((T, N))), r"both .* or neither"),
        (
            dict(sample_means=np.zeros((T, 5)), sample_stds=1.0),
            r"shape \(T, \*\(300,\)\)",
        ),
        (dict(num_levels=1), r"`num_levels`"),
        (dict(y=1.0), r"`y_true`.* a scalar"),
    ],
)
def test_regression_report_refuses_bad_inputs(change, match):
    y, means, stds = _regression_samples()
    pred = _regression_prediction(means, stds)
    y = change.pop("y", y)
    if "std" in change:
        pred = ku.RegressionPrediction(
            pred.mean, change.pop("std"), pred.aleatoric_std, pred.epistemic_std
        )
    prediction = change.pop("prediction", pred)
    with pytest.raises(ValueError, match=match):
        m.regression_report(y, prediction, **change)


def test_a_mixture_score_refuses_nan_log_likelihoods_and_extra_samples():
    y, means, stds = _regression_samples(n=10)
    pred = _regression_prediction(means, stds)
    bad = ku.sampling.MixtureScore(pred, np.full(10, np.nan))
    with pytest.raises(ValueError, match=r"log_likelihood.* 10 NaN or \+inf"):
        m.regression_report(y, bad)
    short = ku.sampling.MixtureScore(pred, np.zeros(9))
    with pytest.raises(ValueError, match=r"prediction.log_likelihood` to have the"):
        m.regression_report(y, short)
    good = ku.sampling.MixtureScore(pred, np.zeros(10))
    with pytest.raises(ValueError, match=r"either a MixtureScore or samples"):
        m.regression_report(y, good, sample_means=means, sample_stds=stds)


# Classification ---------------------------------------------------------------


def test_classification_report_has_the_documented_keys_sorted_as_floats():
    labels, probs = _classification_samples()
    report = m.classification_report(labels, _classification_prediction(probs))
    assert set(report) == CLASSIFICATION_KEYS
    assert list(report) == sorted(report)
    assert all(type(v) is float and math.isfinite(v) for v in report.values())


def test_classification_report_values_are_the_metric_functions():
    labels, probs = _classification_samples(seed=1)
    pred = _classification_prediction(probs)
    p = pred.probs
    report = m.classification_report(labels, pred, num_bins=10, adaptive=True)
    errors = p.argmax(-1) != labels
    expected = {
        "accuracy": m.accuracy(labels, p),
        "aurc": m.aurc(labels, p, pred.entropy),
        "brier": m.brier_score(labels, p),
        "ece": m.expected_calibration_error(labels, p, 10, adaptive=True),
        "error_auroc": m.auroc(errors, pred.entropy),
        "mce": m.max_calibration_error(labels, p, 10, adaptive=True),
        "mean_entropy": pred.entropy.mean(),
        "mean_expected_entropy": pred.expected_entropy.mean(),
        "mean_mutual_information": pred.mutual_information.mean(),
        "nll": m.classification_nll(labels, p),
    }
    assert report == pytest.approx(expected, rel=1e-12)


def test_classification_report_matches_sklearn_scipy_and_numpy_references():
    labels, probs = _classification_samples(seed=2)
    pred = _classification_prediction(probs)
    p = pred.probs
    report = m.classification_report(labels, pred)
    onehot = np.eye(C)[labels]
    errors = p.argmax(-1) != labels
    entropy = stats.entropy(p, axis=-1)
    expected_entropy = stats.entropy(probs, axis=-1).mean(0)
    # The error rate of the k most certain points, averaged over k.
    order = np.argsort(entropy, kind="stable")
    risk = np.cumsum(errors[order]) / np.arange(1, N + 1)
    reference = {
        "accuracy": skm.accuracy_score(labels, p.argmax(-1)),
        "nll": skm.log_loss(labels, p, labels=range(C)),
        # Multiclass Brier: the one-vs-rest binary Brier scores, summed.
        "brier": sum(skm.brier_score_loss(onehot[:, c], p[:, c]) for c in range(C)),
        "error_auroc": skm.roc_auc_score(errors, entropy),
        "aurc": risk.mean(),
        "mean_entropy": entropy.mean(),
        "mean_expected_entropy": expected_entropy.mean(),
        "mean_mutual_information": np.maximum(entropy - expected_entropy, 0).mean(),
    }
    for key, value in reference.items():
        np.testing.assert_allclose(report[key], value, rtol=1e-9, err_msg=key)


def test_the_ece_is_the_weighted_gap_of_equal_width_confidence_bins():
    labels, probs = _classification_samples(seed=3)
    p = _classification_prediction(probs).probs
    report = m.classification_report(labels, _classification_prediction(probs))
    confidence, correct = p.max(-1), p.argmax(-1) == labels
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    gaps = [
        abs(correct[bins == b].mean() - confidence[bins == b].mean())
        for b in range(15)
        if np.any(bins == b)
    ]
    weights = [np.mean(bins == b) for b in range(15) if np.any(bins == b)]
    np.testing.assert_allclose(report["ece"], np.dot(weights, gaps), rtol=1e-12)
    np.testing.assert_allclose(report["mce"], max(gaps), rtol=1e-12)


def test_aurc_and_error_auroc_rank_by_the_chosen_uncertainty():
    labels, probs = _classification_samples(seed=4)
    pred = _classification_prediction(probs)
    errors = pred.probs.argmax(-1) != labels
    by_mi = m.classification_report(labels, pred, uncertainty="mutual_information")
    assert by_mi["aurc"] == m.aurc(labels, pred.probs, pred.mutual_information)
    assert by_mi["error_auroc"] == m.auroc(errors, pred.mutual_information)
    scores = np.random.default_rng(0).uniform(size=N)
    by_array = m.classification_report(labels, pred, uncertainty=scores, prefix="t_")
    assert by_array["t_error_auroc"] == pytest.approx(
        skm.roc_auc_score(errors, scores), rel=1e-12
    )
    # The other keys do not depend on the ranking.
    base = m.classification_report(labels, pred)
    assert by_mi["nll"] == base["nll"] and by_array["t_ece"] == base["ece"]


def test_error_auroc_is_nan_when_no_point_is_misclassified():
    labels, probs = _classification_samples(n=20)
    pred = _classification_prediction(probs)
    report = m.classification_report(pred.probs.argmax(-1), pred)
    assert report["accuracy"] == 1.0 and report["aurc"] == 0.0
    assert math.isnan(report["error_auroc"])


def test_classification_scores_stream_the_reports_figures():
    """The streamed reducer of the callback is the report's counterpart."""
    labels, probs = _classification_samples(seed=5)
    reducer = ku.sampling.ClassificationScores(from_logits=False)
    state = tuple(
        np.asarray(v) for v in reducer.reduce(probs.astype("float32"), labels)
    )
    score = reducer.finalize(state, T)
    report = m.classification_report(labels, _classification_prediction(probs))
    pairs = {
        "nll": "nll",
        "accuracy": "accuracy",
        "ece": "ece",
        "brier": "brier",
        "mutual_information": "mean_mutual_information",
    }
    for field, key in pairs.items():
        np.testing.assert_allclose(getattr(score, field), report[key], rtol=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(labels=np.zeros(N - 1, int)),
            r"`labels` and `prediction.probs` .* same number of rows",
        ),
        (dict(labels=np.full(N, 0.5)), r"`labels`.* integer"),
        (dict(labels=np.full(N, C)), r"`labels`.* \[0, 3\]"),
        (dict(nan="probs"), r"`prediction.probs`.* NaN"),
        (dict(nan="entropy"), r"`prediction.entropy`.* NaN"),
        (
            dict(prediction=np.zeros((N, C))),
            r"ClassificationPrediction .* without probs",
        ),
        (dict(uncertainty="variance"), r"`uncertainty`.* one of"),
        (dict(uncertainty=np.zeros(N - 1)), r"`uncertainty`.* shape \(300,\)"),
        (dict(num_bins=0), r"`num_bins`"),
        (dict(labels=2), r"`labels`.* a scalar"),
        (dict(adaptive="yes"), r"`adaptive`"),
        (dict(prefix=None), r"`prefix`"),
    ],
)
def test_classification_report_refuses_bad_inputs(change, match):
    labels, probs = _classification_samples()
    pred = _classification_prediction(probs)
    labels = change.pop("labels", labels)
    if "nan" in change:
        field = change.pop("nan")
        values = getattr(pred, field).copy()
        values[0] = np.nan
        pred = ku.ClassificationPrediction(
            **{
                **{f: getattr(pred, f) for f in pred.__dataclass_fields__},
                field: values,
            }
        )
    prediction = change.pop("prediction", pred)
    with pytest.raises(ValueError, match=match):
        m.classification_report(labels, prediction, **change)


def test_a_field_of_the_wrong_length_is_named():
    labels, probs = _classification_samples(n=30)
    pred = _classification_prediction(probs)
    short = ku.ClassificationPrediction(
        pred.probs,
        pred.label,
        pred.entropy,
        pred.expected_entropy[:-1],
        pred.mutual_information,
        None,
    )
    with pytest.raises(ValueError, match=r"`prediction.expected_entropy`.* 29 rows"):
        m.classification_report(labels, short)


# The package's scoring paths ----------------------------------------------------


def test_the_uci_protocol_scores_a_group_whose_std_overflows_by_its_likelihood():
    """An outlier input's log-variance can be far beyond float32's variances;
    the group is scored from its mean and its (finite) log-likelihoods, and
    only a non-finite mean or log-likelihood, or a diverged flag, is NaN."""
    from keras_uncertainty.experiments import uci

    y, means, stds = _regression_samples(n=12)
    pred = _regression_prediction(means, stds)
    two = {
        f: np.stack([getattr(pred, f)] * 2, -1)
        for f in ("mean", "std", "aleatoric_std", "epistemic_std")
    }
    two["std"][5, 1] = np.inf  # float32 moments out of range in group 1
    log_likelihood = -np.abs(np.random.default_rng(0).normal(size=(12, 2)))
    score = ku.sampling.MixtureScore(ku.RegressionPrediction(**two), log_likelihood)
    rmse, nll = uci.scored_group(score, [False, False], y, 1)
    assert rmse == m.rmse(y, pred.mean) and nll == -log_likelihood[:, 1].mean()
    # Group 0 on its first 10 rows.
    rmse, nll = uci.scored_group(score, [False, False], y[:10], 0)
    assert nll == pytest.approx(-log_likelihood[:10, 0].mean())
    assert np.isnan(uci.scored_group(score, [True, False], y, 0)).all()
    log_likelihood[3, 0] = -np.inf
    assert np.isnan(uci.scored_group(score, [False, False], y, 0)).all()
    two["mean"][2, 1] = np.nan
    score = ku.sampling.MixtureScore(ku.RegressionPrediction(**two), log_likelihood)
    assert np.isnan(uci.scored_group(score, [False, False], y, 1)).all()
