"""`ku.ood` scores and `ku.metrics` OOD metrics, against scikit-learn and scipy."""

import dataclasses
import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.spatial.distance import mahalanobis
from scipy.special import logsumexp
from scipy.stats import entropy as scipy_entropy
from scipy.stats import multivariate_normal
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import keras_uncertainty as ku
from keras_uncertainty.posthoc import NotFittedError

# --------------------------------------------------------------------------
# Data


def _tied_scores(rng, num_in, num_out, levels=6):
    """Integer-valued scores: many ties, within and across the two groups."""
    in_scores = rng.integers(0, levels, num_in).astype(float)
    out_scores = rng.integers(1, levels + 1, num_out).astype(float)
    return in_scores, out_scores


def _pooled(in_scores, out_scores):
    is_out = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))].astype(int)
    return is_out, np.r_[in_scores, out_scores]


def _probs(rng, n, c, sharpness=3.0):
    logits = sharpness * rng.normal(size=(n, c))
    return np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))


def _prediction(samples, votes=True):
    """A `ClassificationPrediction` from `(T, N, C)` sampled probabilities."""
    t, _, c = samples.shape
    sum_entropy = scipy_entropy(samples, axis=-1).sum(0)
    counts = None
    if votes:
        counts = np.eye(c, dtype=np.int64)[samples.argmax(-1)].sum(0)
    return ku.ClassificationPrediction.from_moments(
        samples.sum(0), sum_entropy, counts, t
    )


def _blobs(rng, num_classes=3, dim=8, per_class=200, spread=4.0):
    means = spread * rng.normal(size=(num_classes, dim))
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    labels = np.repeat(np.arange(num_classes), per_class)
    features = means[labels] + rng.normal(size=(len(labels), dim)) @ mixing
    return features, labels, means, mixing


# --------------------------------------------------------------------------
# Metrics against scikit-learn


@pytest.mark.parametrize("seed", range(5))
def test_aupr_in_and_out_equal_sklearn_average_precision_on_tied_scores(seed):
    rng = np.random.default_rng(seed)
    in_scores, out_scores = _tied_scores(rng, 57, 31)
    is_out, scores = _pooled(in_scores, out_scores)
    assert ku.metrics.aupr_out(in_scores, out_scores) == pytest.approx(
        average_precision_score(is_out, scores), abs=1e-12
    )
    assert ku.metrics.aupr_in(in_scores, out_scores) == pytest.approx(
        average_precision_score(1 - is_out, -scores), abs=1e-12
    )
    assert ku.metrics.average_precision(is_out, scores) == pytest.approx(
        average_precision_score(is_out, scores), abs=1e-12
    )


def test_average_precision_equals_sklearn_on_continuous_and_small_cases():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 500):
        labels = rng.integers(0, 2, n)
        labels[0] = 1  # at least one positive
        scores = rng.normal(size=n)
        assert ku.metrics.average_precision(labels, scores) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12
        )


@pytest.mark.parametrize("tpr", [0.95, 0.5, 0.8, 0.99, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_fpr_at_tpr_is_the_first_roc_point_reaching_the_tpr(seed, tpr):
    rng = np.random.default_rng(seed)
    sizes = [(20, 13), (101, 50), (7, 300)][seed % 3]
    in_scores, out_scores = _tied_scores(rng, *sizes, levels=4 + seed)
    is_out, scores = _pooled(in_scores, out_scores)
    # In-distribution positive, ranked by confidence -score; every threshold.
    fpr, true_pos_rate, _ = roc_curve(1 - is_out, -scores, drop_intermediate=False)
    expected = fpr[np.argmax(true_pos_rate >= tpr)]
    assert ku.metrics.fpr_at_tpr(in_scores, out_scores, tpr) == pytest.approx(
        expected, abs=1e-12
    )


def test_fpr95_counts_ood_inputs_tied_with_the_threshold_as_accepted():
    in_scores = np.arange(20.0)  # 19 of 20 (95%) accepted at threshold 18
    out_scores = np.array([18.0, 18.0, 18.5, 30.0])
    assert ku.metrics.fpr_at_tpr(in_scores, out_scores) == 0.5
    # 20 * 0.95 = 19 exactly: the threshold is the 19th score, not the 20th.
    assert ku.metrics.fpr_at_tpr(in_scores, np.array([18.5])) == 0.0


def test_ood_report_matches_sklearn_and_counts_the_inputs():
    rng = np.random.default_rng(7)
    in_scores, out_scores = _tied_scores(rng, 80, 40)
    is_out, scores = _pooled(in_scores, out_scores)
    report = ku.metrics.ood_report(in_scores, out_scores)
    fpr, tpr, _ = roc_curve(1 - is_out, -scores, drop_intermediate=False)
    assert report.auroc == pytest.approx(roc_auc_score(is_out, scores), abs=1e-12)
    assert report.aupr_in == pytest.approx(
        average_precision_score(1 - is_out, -scores), abs=1e-12
    )
    assert report.aupr_out == pytest.approx(
        average_precision_score(is_out, scores), abs=1e-12
    )
    assert report.fpr95 == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    assert (report.num_in, report.num_out) == (80, 40)
    assert report.as_dict() == dataclasses.asdict(report)
    assert set(report.as_dict()) == {
        "auroc",
        "aupr_in",
        "aupr_out",
        "fpr95",
        "num_in",
        "num_out",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.auroc = 1.0


def test_ood_report_of_perfectly_separated_scores_is_perfect():
    report = ku.metrics.ood_report([0.1, 0.2, 0.3], [1.0, 2.0])
    assert (report.auroc, report.aupr_in, report.aupr_out, report.fpr95) == (
        1.0,
        1.0,
        1.0,
        0.0,
    )


def test_ood_metrics_accept_tensors_and_lists():
    in_scores, out_scores = [0.1, 0.5, 0.2], [0.4, 0.9]
    expected = ku.metrics.ood_report(in_scores, out_scores)
    assert ku.metrics.ood_report(tf.constant(in_scores), np.array(out_scores)) == (
        expected
    )
    assert ku.metrics.ood_report(
        keras.ops.convert_to_tensor(in_scores), tf.constant(out_scores)
    ) == (expected)


@pytest.mark.parametrize(
    "in_scores, out_scores, match",
    [
        ([], [1.0], "in_scores.*at least one in-distribution"),
        (None, [1.0], "in_scores.*at least one in-distribution"),
        (np.zeros(0), [1.0], "in_scores"),
        ([1.0], [], "out_scores.*at least one out-of-distribution"),
        ([1.0, np.nan], [1.0], "in_scores.*finite.*1 NaN"),
        ([1.0], [np.inf], "out_scores.*finite"),
        (np.ones((2, 2)), [1.0], "in_scores.*1-D.*shape \\(2, 2\\)"),
    ],
)
def test_ood_metrics_refuse_an_evaluation_without_both_kinds_or_with_bad_scores(
    in_scores, out_scores, match
):
    for metric in (
        ku.metrics.ood_report,
        ku.metrics.aupr_in,
        ku.metrics.aupr_out,
        ku.metrics.fpr_at_tpr,
    ):
        with pytest.raises(ValueError, match=match):
            metric(in_scores, out_scores)


@pytest.mark.parametrize("tpr", [0, -0.1, 1.01, True, "0.95", float("nan")])
def test_fpr_at_tpr_refuses_a_tpr_outside_0_1(tpr):
    with pytest.raises(ValueError, match=r"`tpr`.*\(0, 1\].*Received: tpr="):
        ku.metrics.fpr_at_tpr([0.0], [1.0], tpr)


def test_average_precision_refuses_labels_without_a_positive_or_not_binary():
    with pytest.raises(ValueError, match="at least one positive"):
        ku.metrics.average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="is_positive.*0 or 1"):
        ku.metrics.average_precision([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        ku.metrics.average_precision([0, 1], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------
# Scores against direct formulas


def test_msp_is_the_negated_top_probability_of_probs_or_a_prediction():
    rng = np.random.default_rng(0)
    samples = np.stack([_probs(rng, 30, 5) for _ in range(7)])
    prediction = _prediction(samples)
    np.testing.assert_allclose(
        ku.ood.msp(prediction), -samples.mean(0).max(-1), rtol=1e-12
    )
    probs = _probs(rng, 30, 5)
    np.testing.assert_array_equal(ku.ood.msp(probs), -probs.max(-1))
    np.testing.assert_array_equal(ku.ood.msp(tf.constant(probs)), -probs.max(-1))


def test_max_logit_is_the_negated_top_logit():
    logits = np.random.default_rng(1).normal(size=(40, 6)) * 5
    np.testing.assert_array_equal(ku.ood.max_logit(logits), -logits.max(-1))
    np.testing.assert_allclose(
        ku.ood.max_logit(tf.constant(logits, tf.float32)), -logits.max(-1), rtol=1e-6
    )


@pytest.mark.parametrize("temperature", [1.0, 0.1, 2.5, 1000.0])
def test_energy_is_minus_t_logsumexp_of_logits_over_t(temperature):
    logits = np.random.default_rng(2).normal(size=(50, 10)) * 4
    expected = -temperature * logsumexp(logits / temperature, axis=-1)
    np.testing.assert_allclose(
        ku.ood.energy(logits, temperature=temperature), expected, rtol=1e-12
    )


def test_energy_stays_finite_for_huge_logits_and_tends_to_the_max_logit_score():
    logits = np.array([[1e4, 0.0, -1e4], [-1e305, -1e305, 0.0], [1e300, 1e300, 0.0]])
    scores = ku.ood.energy(logits)
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores[:2], [-1e4, 0.0], rtol=1e-12)
    np.testing.assert_allclose(scores[2], -1e300, rtol=1e-12)  # + log 2 is lost
    np.testing.assert_allclose(
        ku.ood.energy(logits[:1]), logsumexp(logits[:1], axis=-1) * -1
    )


def test_entropy_equals_scipy_for_probs_and_a_predictions_field():
    rng = np.random.default_rng(3)
    probs = _probs(rng, 25, 4)
    probs[0] = [1.0, 0.0, 0.0, 0.0]  # 0 log 0 = 0
    np.testing.assert_allclose(
        ku.ood.entropy(probs), scipy_entropy(probs, axis=-1), rtol=1e-12, atol=0
    )
    assert ku.ood.entropy(probs)[0] == 0.0
    samples = np.stack([_probs(rng, 25, 4) for _ in range(5)])
    np.testing.assert_allclose(
        ku.ood.entropy(_prediction(samples)),
        scipy_entropy(samples.mean(0), axis=-1),
        rtol=1e-12,
    )


def test_mutual_information_is_entropy_of_mean_minus_mean_entropy():
    rng = np.random.default_rng(4)
    samples = np.stack([_probs(rng, 30, 5) for _ in range(9)])
    expected = scipy_entropy(samples.mean(0), axis=-1) - np.mean(
        scipy_entropy(samples, axis=-1), axis=0
    )
    np.testing.assert_allclose(
        ku.ood.mutual_information(samples), expected, rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(
        ku.ood.mutual_information(_prediction(samples)), expected, atol=1e-12
    )
    # One sample, or identical samples: no disagreement, no epistemic part.
    assert np.all(ku.ood.mutual_information(samples[:1]) == 0.0)
    identical = ku.ood.mutual_information(np.stack([samples[0]] * 3))
    np.testing.assert_allclose(identical, 0.0, atol=1e-15)


def test_variation_ratio_is_one_minus_the_modes_share_of_votes():
    votes = np.array([[5, 0, 0], [2, 2, 1], [1, 3, 1], [0, 0, 4]])
    expected = 1 - votes.max(-1) / votes.sum(-1)
    np.testing.assert_allclose(ku.ood.variation_ratio(votes), expected, rtol=1e-15)
    rng = np.random.default_rng(5)
    samples = np.stack([_probs(rng, 40, 3, sharpness=0.5) for _ in range(11)])
    prediction = _prediction(samples)
    modes = np.apply_along_axis(
        lambda column: np.bincount(column, minlength=3).max(), 0, samples.argmax(-1)
    )
    np.testing.assert_allclose(
        ku.ood.variation_ratio(prediction), 1 - modes / 11, rtol=1e-15
    )


def test_scores_rank_an_uncertain_input_above_a_confident_one():
    confident = np.array([[0.97, 0.01, 0.01, 0.01]])
    uniform = np.full((1, 4), 0.25)
    probs = np.r_[confident, uniform]
    for score in (ku.ood.msp, ku.ood.entropy):
        low, high = score(probs)
        assert high > low, score.__name__
    logits = np.array([[8.0, 0.0, 0.0], [0.5, 0.4, 0.3]])
    for score in (ku.ood.max_logit, ku.ood.energy):
        low, high = score(logits)
        assert high > low, score.__name__
    low, high = ku.ood.variation_ratio(np.array([[10, 0], [5, 5]]))
    assert high > low


def test_scores_from_prediction_returns_every_supported_score():
    rng = np.random.default_rng(6)
    samples = np.stack([_probs(rng, 20, 3) for _ in range(4)])
    logits = rng.normal(size=(20, 3))
    no_votes = ku.ood.scores_from_prediction(_prediction(samples, votes=False))
    assert list(no_votes) == ["msp", "entropy", "mutual_information"]
    prediction = _prediction(samples)
    every = ku.ood.scores_from_prediction(prediction, logits=logits, temperature=2.0)
    assert list(every) == [
        "msp",
        "entropy",
        "mutual_information",
        "variation_ratio",
        "max_logit",
        "energy",
    ]
    np.testing.assert_array_equal(every["msp"], ku.ood.msp(prediction))
    np.testing.assert_array_equal(every["energy"], ku.ood.energy(logits, 2.0))
    for values in every.values():
        assert values.shape == (20,) and values.dtype == np.float64
    with pytest.raises(ValueError, match="logits.*shape of `prediction.probs`"):
        ku.ood.scores_from_prediction(prediction, logits=logits[:5])
    with pytest.raises(ValueError, match="prediction.*ClassificationPrediction"):
        ku.ood.scores_from_prediction(samples.mean(0))


def test_scores_from_a_real_mc_dropout_prediction():
    keras.utils.set_random_seed(0)
    model = ku.models.mlp(
        4, 3, hidden_units=(16,), dropout_rate=0.3, output_activation="softmax"
    )
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
    prediction = ku.predict_classification(model, x, 8, votes=True, seed=0)
    scores = ku.ood.scores_from_prediction(prediction)
    assert sorted(scores) == ["entropy", "msp", "mutual_information", "variation_ratio"]
    np.testing.assert_allclose(scores["msp"], -prediction.probs.max(-1))
    np.testing.assert_allclose(
        scores["variation_ratio"], 1 - prediction.votes.max(-1) / 8
    )


def test_score_functions_refuse_bad_inputs_naming_the_argument():
    with pytest.raises(ValueError, match="`probs`.*sum to 1"):
        ku.ood.msp(np.array([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="`probs`.*shape \\(N, C\\).*\\(3,\\)"):
        ku.ood.entropy(np.array([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match="`logits`.*finite"):
        ku.ood.max_logit(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="`temperature`.*> 0.*Received: temperature=0"):
        ku.ood.energy(np.zeros((2, 2)), temperature=0)
    with pytest.raises(ValueError, match="`samples`.*\\(T, N, C\\)"):
        ku.ood.mutual_information(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="`votes`.*whole-number"):
        ku.ood.variation_ratio(np.array([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="`votes`.*at least one vote"):
        ku.ood.variation_ratio(np.array([[0, 0], [1, 1]]))
    rng = np.random.default_rng(0)
    without = _prediction(np.stack([_probs(rng, 3, 2)] * 2), votes=False)
    with pytest.raises(ValueError, match="votes=True"):
        ku.ood.variation_ratio(without)


# --------------------------------------------------------------------------
# Mahalanobis and the DDU feature density


def _regularized(covariance, ridge):
    dim = len(covariance)
    return covariance + ridge * np.trace(covariance) / dim * np.eye(dim)


def test_mahalanobis_covariance_is_the_tied_within_class_covariance_of_lda():
    rng = np.random.default_rng(0)
    features, labels, _, _ = _blobs(rng, num_classes=4, dim=6)
    labels = labels[::-1].copy()  # classes not in order of the rows
    detector = ku.ood.Mahalanobis().fit(features, labels)
    lda = LinearDiscriminantAnalysis(solver="lsqr", store_covariance=True)
    lda.fit(features, labels)
    np.testing.assert_allclose(detector.covariance_, lda.covariance_, atol=1e-12)
    np.testing.assert_allclose(detector.means_, lda.means_, atol=1e-12)
    np.testing.assert_array_equal(detector.classes_, lda.classes_)
    # The explicit formula: (1/N) sum_c sum_i (f_i - mu_c)(f_i - mu_c)^T.
    centered = features - detector.means_[np.searchsorted(detector.classes_, labels)]
    np.testing.assert_allclose(
        detector.covariance_, centered.T @ centered / len(features), atol=1e-12
    )


@pytest.mark.parametrize("ridge", [0.0, 1e-6, 0.1])
def test_mahalanobis_distances_equal_scipys_with_the_regularized_covariance(ridge):
    rng = np.random.default_rng(1)
    features, labels, _, _ = _blobs(rng, num_classes=3, dim=5, per_class=60)
    detector = ku.ood.Mahalanobis(ridge=ridge).fit(features, labels)
    test = rng.normal(size=(25, 5)) * 6
    inverse = np.linalg.inv(_regularized(detector.covariance_, ridge))
    expected = np.array(
        [[mahalanobis(f, mu, inverse) ** 2 for mu in detector.means_] for f in test]
    )
    np.testing.assert_allclose(detector.class_distances(test), expected, rtol=1e-9)
    np.testing.assert_allclose(detector.transform(test), expected.min(1), rtol=1e-9)


def test_mahalanobis_scores_do_not_depend_on_the_scale_or_offset_of_features():
    rng = np.random.default_rng(2)
    features, labels, _, _ = _blobs(rng, dim=6)
    test = rng.normal(size=(30, 6)) * 5
    base = ku.ood.Mahalanobis().fit(features, labels).transform(test)
    moved = ku.ood.Mahalanobis().fit(1e3 * features + 1e4, labels)
    np.testing.assert_allclose(moved.transform(1e3 * test + 1e4), base, rtol=1e-6)


def test_feature_density_covariances_and_log_densities_equal_numpy_and_scipy():
    rng = np.random.default_rng(3)
    features, labels, _, _ = _blobs(rng, num_classes=3, dim=4, per_class=50)
    labels[:10] = 2  # unequal priors
    density = ku.ood.FeatureDensity(ridge=1e-3).fit(features, labels)
    test = rng.normal(size=(20, 4)) * 4
    expected_log = []
    for c, label in enumerate(density.classes_):
        rows = features[labels == label]
        np.testing.assert_allclose(
            density.covariances_[c], np.cov(rows.T, ddof=1), atol=1e-12
        )
        assert density.priors_[c] == np.mean(labels == label)
        gaussian = multivariate_normal(rows.mean(0), _regularized(np.cov(rows.T), 1e-3))
        expected_log.append(gaussian.logpdf(test))
    expected_log = np.stack(expected_log, axis=1)
    np.testing.assert_allclose(
        density.class_log_densities(test), expected_log, rtol=1e-10
    )
    mixture = logsumexp(expected_log + np.log(density.priors_), axis=1)
    np.testing.assert_allclose(density.log_density(test), mixture, rtol=1e-10)
    np.testing.assert_allclose(density.transform(test), -mixture, rtol=1e-10)


def test_feature_density_is_finite_far_from_every_class():
    rng = np.random.default_rng(4)
    features, labels, _, _ = _blobs(rng)
    density = ku.ood.FeatureDensity().fit(features, labels)
    scores = density.transform(np.full((2, 8), 1e5))
    assert np.all(np.isfinite(scores)) and np.all(scores > 1e6)


@pytest.mark.parametrize("method", [ku.ood.Mahalanobis, ku.ood.FeatureDensity])
def test_points_far_from_the_training_blobs_score_higher(method):
    rng = np.random.default_rng(5)
    features, labels, means, mixing = _blobs(rng, num_classes=4, dim=10, spread=3.0)
    detector = method().fit(features, labels)
    test_labels = rng.integers(0, 4, 300)
    in_test = means[test_labels] + rng.normal(size=(300, 10)) @ mixing
    # OOD: around points 3 spreads away from every class mean.
    far = 9.0 * rng.normal(size=(300, 10)) + 9.0
    out_test = far + rng.normal(size=(300, 10)) @ mixing
    report = ku.metrics.ood_report(
        detector.transform(in_test), detector.transform(out_test)
    )
    assert report.auroc > 0.95
    assert report.fpr95 < 0.2


@pytest.mark.parametrize("method", [ku.ood.Mahalanobis, ku.ood.FeatureDensity])
def test_feature_scorers_follow_the_post_hoc_habits(method):
    rng = np.random.default_rng(6)
    features, labels, _, _ = _blobs(rng, dim=4, per_class=20)
    before = features.copy()
    scorer = method(ridge=1e-4)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        scorer.transform(features)
    assert scorer.fit(features, labels) is scorer
    np.testing.assert_array_equal(features, before)  # the input is untouched
    assert scorer.is_fitted and all(name.endswith("_") for name in scorer.get_state())
    assert scorer.get_config() == {"ridge": 1e-4}
    assert repr(scorer) == f"{method.__name__}(ridge=0.0001)"
    rebuilt = method.from_config(scorer.get_config()).set_state(scorer.get_state())
    np.testing.assert_array_equal(
        rebuilt.transform(features), scorer.transform(features)
    )
    tensor_scores = scorer.transform(tf.constant(features, tf.float64))
    np.testing.assert_array_equal(tensor_scores, scorer.transform(features))


@pytest.mark.parametrize("method", [ku.ood.Mahalanobis, ku.ood.FeatureDensity])
def test_feature_scorers_refuse_bad_arguments_naming_them(method):
    features = np.random.default_rng(7).normal(size=(12, 3))
    labels = np.repeat([0, 1, 2], 4)
    for ridge in (-1.0, float("nan"), "1e-6", True):
        with pytest.raises(ValueError, match="`ridge`.*>= 0.*Received: ridge="):
            method(ridge=ridge)
    scorer = method()
    scorer.ridge = -1  # checked again by fit
    with pytest.raises(ValueError, match="`ridge`"):
        scorer.fit(features, labels)
    scorer = method()
    with pytest.raises(ValueError, match="`features`.*\\(N, D\\).*\\(12, 3, 1\\)"):
        scorer.fit(features[..., None], labels)
    with pytest.raises(ValueError, match="`labels`.*integer.*\\(12,\\).*float64"):
        scorer.fit(features, labels.astype(float))
    with pytest.raises(ValueError, match="`labels`.*\\(12,\\).*shape \\(11,\\)"):
        scorer.fit(features, labels[:11])
    with pytest.raises(ValueError, match="`features`.*finite"):
        scorer.fit(np.where(features > 1, np.nan, features), labels)
    scorer.fit(features, labels)
    with pytest.raises(ValueError, match="`features`.*3 features.*\\(2, 4\\)"):
        scorer.transform(np.zeros((2, 4)))


def test_feature_density_needs_two_rows_per_class():
    features = np.random.default_rng(8).normal(size=(5, 2))
    with pytest.raises(ValueError, match="`labels`.*at least 2 rows.*\\[7\\]"):
        ku.ood.FeatureDensity().fit(features, np.array([0, 0, 0, 0, 7]))


@pytest.mark.parametrize("method", [ku.ood.Mahalanobis, ku.ood.FeatureDensity])
def test_a_singular_covariance_without_ridge_asks_for_a_ridge(method):
    rng = np.random.default_rng(9)
    features = np.c_[rng.normal(size=(20, 2)), np.zeros(20)]  # a flat direction
    labels = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="not positive definite.*larger `ridge`"):
        method(ridge=0.0).fit(features, labels)
    method().fit(features, labels)  # the default ridge makes it definite
    with pytest.raises(ValueError, match="`ridge`"):
        method().fit(np.ones((20, 3)), labels)  # no spread at all


# --------------------------------------------------------------------------
# Features from a layer of a Keras model


def _functional_model():
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    penultimate = keras.layers.Dense(4, activation="tanh", name="penultimate")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(penultimate)
    return keras.Model(inputs, outputs)


def test_layer_features_are_the_named_layers_output():
    keras.utils.set_random_seed(1)
    model = _functional_model()
    x = np.random.default_rng(0).normal(size=(10, 5)).astype("float32")
    reference = keras.Model(model.inputs, model.get_layer("penultimate").output)
    features = ku.ood.layer_features(model, x, "penultimate", batch_size=4)
    np.testing.assert_allclose(features, reference.predict(x, verbose=0), rtol=1e-6)
    by_index = ku.ood.layer_features(model, x, -2)
    np.testing.assert_allclose(by_index, features, rtol=1e-6)
    extractor = ku.ood.feature_extractor(model, "hidden")
    assert extractor.output.shape == (None, 8)
    sequential = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(6, name="inner"), keras.layers.Dense(2)]
    )
    assert ku.ood.layer_features(sequential, x, "inner").shape == (10, 6)


def test_feature_extractor_refuses_unknown_layers_and_models_without_inputs():
    model = _functional_model()
    with pytest.raises(ValueError, match="`layer`.*'hidden'.*Received: layer='nope'"):
        ku.ood.feature_extractor(model, "nope")
    with pytest.raises(ValueError, match="`layer`.*Received: layer=99"):
        ku.ood.feature_extractor(model, 99)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="`model`.*keras.Input"):
        ku.ood.feature_extractor(Subclassed(), 0)
    with pytest.raises(ValueError, match="`model`.*keras.Model"):
        ku.ood.feature_extractor("model", 0)
    with pytest.raises(ValueError, match="`batch_size`"):
        ku.ood.layer_features(model, np.zeros((2, 5)), "hidden", batch_size=0)


# --------------------------------------------------------------------------
# Public API


def test_ood_is_a_lazy_public_name_and_its_names_have_full_docstrings():
    assert "ood" in ku.__all__ and ku._LAZY["ood"] == "keras_uncertainty.ood"
    spec = importlib.util.spec_from_file_location(
        "docs_hooks", Path(ku.__file__).parents[1] / "docs" / "hooks.py"
    )
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    problems = []
    for name in ku.ood.__all__:
        problems += hooks._problems_of(f"ku.ood.{name}", getattr(ku.ood, name))
    for name in ("OODReport", "aupr_in", "aupr_out", "fpr_at_tpr", "ood_report"):
        assert name in ku.metrics.__all__
    assert problems == []
