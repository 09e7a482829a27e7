"""Recalibration beyond one scalar: `ku.calibration.VectorScaling`,
`HistogramBinning`, `IsotonicCalibration` and `QuantileRecalibration`, each
against an independent reference (scikit-learn's `IsotonicRegression`, a
scipy minimisation of the NLL, a numpy histogram, netcal where it is
installed)."""

import dataclasses
import math
import statistics
import warnings

import numpy as np
import pytest
from scipy import optimize, special
from sklearn.isotonic import IsotonicRegression

import keras_uncertainty as ku
from keras_uncertainty.calibration import (
    HistogramBinning,
    IsotonicCalibration,
    QuantileRecalibration,
    RecalibratedRegression,
    VectorScaling,
)
from keras_uncertainty.calibration._isotonic import (
    isotonic_fit,
    isotonic_inverse,
    isotonic_predict,
)
from keras_uncertainty.posthoc import NotFittedError

CLASSIFIERS = (VectorScaling, HistogramBinning, IsotonicCalibration)


def miscalibrated_logits(seed=0, n=1500, classes=4):
    """Over-confident, biased logits and labels drawn from the true ones."""
    rng = np.random.default_rng(seed)
    true = rng.normal(scale=1.5, size=(n, classes))
    cumulative = np.cumsum(special.softmax(true, -1), -1)
    labels = (rng.random((n, 1)) > cumulative).sum(-1)
    labels = np.minimum(labels, classes - 1)
    bias = np.linspace(-0.5, 0.5, classes)
    logits = 2.5 * true + 0.5 * rng.normal(size=(n, classes)) + bias
    return logits, labels


def binary_logits(seed=0, n=1500):
    rng = np.random.default_rng(seed)
    z = 3.0 * rng.normal(size=n)
    labels = (rng.random(n) < special.expit(0.5 * z + 0.3)).astype(np.int64)
    return z, labels


def mc_prediction(seed=0, n=800, classes=3, samples=4):
    """A `ClassificationPrediction` from T over-confident samples."""
    rng = np.random.default_rng(seed)
    logits, labels = miscalibrated_logits(seed, n, classes)
    sample_probs = special.softmax(
        logits + 0.5 * rng.normal(size=(samples, n, classes)), -1
    )
    votes = np.eye(classes)[sample_probs.argmax(-1)].sum(0)
    sample_entropy = -np.sum(special.xlogy(sample_probs, sample_probs), -1)
    prediction = ku.ClassificationPrediction.from_moments(
        sample_probs.sum(0), sample_entropy.sum(0), votes, samples
    )
    return prediction, labels


def nll(labels, probs):
    return -np.mean(np.log(probs[np.arange(len(labels)), labels]))


# The shared pool-adjacent-violators --------------------------------------


def test_pav_matches_scikit_learn_on_random_data_with_ties_and_weights():
    rng = np.random.default_rng(0)
    for trial in range(120):
        n = int(rng.integers(1, 200))
        if trial % 2:  # many ties in x
            x = rng.integers(0, max(2, n // 4), n).astype(np.float64)
        else:
            x = rng.normal(size=n)
        y = rng.normal(size=n) + 0.5 * x
        weights = None
        if trial % 3 == 0:
            weights = rng.uniform(0.0, 2.0, n)
            weights[rng.random(n) < 0.1] = 0.0
            weights[0] = 1.0  # not all 0
        knots_x, knots_y = isotonic_fit(x, y, weights)
        reference = IsotonicRegression(out_of_bounds="clip")
        fitted = reference.fit_transform(x, y, sample_weight=weights)
        np.testing.assert_allclose(
            isotonic_predict(knots_x, knots_y, x), fitted, rtol=0, atol=1e-12
        )
        new = 3.0 * rng.normal(size=50)  # between and beyond the data
        np.testing.assert_allclose(
            isotonic_predict(knots_x, knots_y, new),
            reference.predict(new),
            rtol=0,
            atol=1e-12,
        )
        assert np.all(np.diff(knots_x) > 0) and np.all(np.diff(knots_y) >= 0)


def test_pav_pools_a_decreasing_sequence_into_its_mean():
    x = np.arange(10.0)
    knots_x, knots_y = isotonic_fit(x, -x)
    np.testing.assert_array_equal(knots_x, [0.0, 9.0])
    np.testing.assert_array_equal(knots_y, [-4.5, -4.5])
    # Already increasing: every point is its own knot.
    knots_x, knots_y = isotonic_fit(x, x**2)
    np.testing.assert_array_equal(knots_y, x**2)


@pytest.mark.parametrize("pattern", ["bernoulli", "slow_cascade"])
def test_pav_is_fast_and_right_on_a_hundred_thousand_points(pattern):
    import time

    rng = np.random.default_rng(0)
    x = np.arange(100_000.0)
    if pattern == "bernoulli":  # a classifier's hits against its scores
        y = (rng.random(x.size) < x / x.size).astype(np.float64)
    else:  # teeth of growing width on a falling trend: pooling cascades
        y = np.sqrt(x) % 7 - 1e-4 * x
    start = time.perf_counter()
    knots_x, knots_y = isotonic_fit(x, y)
    assert time.perf_counter() - start < 1.0  # about 0.1 s
    expected = IsotonicRegression().fit_transform(x, y)
    np.testing.assert_allclose(
        isotonic_predict(knots_x, knots_y, x), expected, rtol=0, atol=1e-9
    )


def test_isotonic_inverse_is_the_smallest_input_reaching_the_level():
    knots_x = np.array([0.0, 0.2, 0.5, 0.7, 1.0])
    knots_y = np.array([0.0, 0.4, 0.4, 0.9, 1.0])  # flat from 0.2 to 0.5
    levels = np.array([0.0, 0.1, 0.4, 0.5, 0.9, 0.95, 1.0])
    inverse = isotonic_inverse(knots_x, knots_y, levels)
    np.testing.assert_allclose(inverse, [0.0, 0.05, 0.2, 0.54, 0.7, 0.85, 1.0])
    np.testing.assert_allclose(isotonic_predict(knots_x, knots_y, inverse), levels)


def test_pav_refuses_nan_and_bad_weights():
    with pytest.raises(ValueError, match="`y`.*finite"):
        isotonic_fit([0.0, 1.0], [0.0, np.nan])
    with pytest.raises(ValueError, match="`sample_weight`"):
        isotonic_fit([0.0, 1.0], [0.0, 1.0], [-1.0, 1.0])
    with pytest.raises(ValueError, match="same|shapes"):
        isotonic_fit([0.0, 1.0], [0.0])


# Vector scaling ---------------------------------------------------------


def scipy_vector_scaling(logits, labels):
    """The reference: BFGS on the mean NLL of softmax(w * z + b)."""
    classes = logits.shape[1]

    def objective(theta):
        scaled = logits * theta[:classes] + theta[classes:]
        return -np.mean(special.log_softmax(scaled, -1)[np.arange(len(labels)), labels])

    start = np.concatenate([np.ones(classes), np.zeros(classes)])
    result = optimize.minimize(
        objective, start, method="BFGS", options={"gtol": 1e-10, "maxiter": 2000}
    )
    theta = result.x
    return special.softmax(logits * theta[:classes] + theta[classes:], -1), result.fun


def test_vector_scaling_matches_a_scipy_minimisation_of_the_nll_on_logits():
    logits, labels = miscalibrated_logits()
    scaler = VectorScaling().fit(logits, labels, from_logits=True)
    expected_probs, expected_nll = scipy_vector_scaling(logits, labels)
    calibrated = scaler.transform(logits, from_logits=True)
    np.testing.assert_allclose(calibrated.probs, expected_probs, atol=1e-6)
    assert nll(labels, calibrated.probs) == pytest.approx(expected_nll, abs=1e-10)
    assert nll(labels, calibrated.probs) < nll(labels, special.softmax(logits, -1))
    assert scaler.n_iter_ < 20  # Newton converges in a few steps
    assert abs(scaler.bias_.mean()) < 1e-12
    assert np.all(scaler.scale_ < 1)  # the logits were over-confident


def test_vector_scaling_of_probabilities_reads_their_logs():
    prediction, labels = mc_prediction()
    scaler = VectorScaling().fit(prediction, labels)
    expected_probs, _ = scipy_vector_scaling(np.log(prediction.probs), labels)
    np.testing.assert_allclose(
        scaler.transform(prediction).probs, expected_probs, atol=1e-6
    )
    from_array = VectorScaling().fit(prediction.probs, labels, from_logits=False)
    np.testing.assert_allclose(from_array.scale_, scaler.scale_)
    np.testing.assert_allclose(from_array.bias_, scaler.bias_)


def test_vector_scaling_of_binary_logits_is_platt_scaling():
    z, labels = binary_logits()
    scaler = VectorScaling().fit(z, labels, from_logits=True)

    def objective(theta):  # logistic regression on z, by scipy
        logit = theta[0] * z + theta[1]
        return np.mean(np.logaddexp(0, logit) - labels * logit)

    a, b = optimize.minimize(
        objective, [1.0, 0.0], method="BFGS", options={"gtol": 1e-10}
    ).x
    assert scaler.scale_[1] == pytest.approx(a, rel=1e-6)
    assert scaler.bias_[1] - scaler.bias_[0] == pytest.approx(b, rel=1e-6)
    assert scaler.scale_[0] == 1.0  # a column of zeros: its scale stays put
    positive = scaler.transform(z, from_logits=True).probs[:, 1]
    np.testing.assert_allclose(positive, special.expit(a * z + b), atol=1e-6)
    # (N, 1) logits are the same binary task.
    same = VectorScaling().fit(z[:, None], labels, from_logits=True)
    np.testing.assert_allclose(same.scale_, scaler.scale_)


def test_vector_scaling_warns_when_the_nll_has_no_minimiser():
    logits = np.array([[2.0, -2.0], [-2.0, 2.0]] * 10)
    labels = np.array([0, 1] * 10)  # every prediction right: w -> infinity
    with pytest.warns(UserWarning, match="no finite minimiser"):
        VectorScaling(max_iter=20).fit(logits, labels, from_logits=True)
    with pytest.warns(UserWarning, match="no finite minimiser"):
        VectorScaling().fit(logits, labels, from_logits=True)  # far out: warns
    logits, labels = miscalibrated_logits(n=300)
    with pytest.warns(UserWarning, match=r"never among the labels: \[3\]"):
        VectorScaling().fit(logits, np.minimum(labels, 2), from_logits=True)


# Histogram binning ------------------------------------------------------


def numpy_histogram_reference(probs, hits, num_bins):
    """Per-bin hit rates by `np.histogram` (empty bins: their midpoint)."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    counts, _ = np.histogram(probs, bins=edges)
    sums, _ = np.histogram(probs, bins=edges, weights=hits)
    midpoints = 0.5 * (edges[:-1] + edges[1:])
    values = np.where(counts > 0, sums / np.maximum(counts, 1), midpoints)
    index = np.clip(np.digitize(probs, edges[1:-1]), 0, num_bins - 1)
    return values, counts, index


def test_histogram_binning_matches_a_numpy_histogram_on_a_binary_task():
    z, labels = binary_logits()
    positive = special.expit(z)
    binning = HistogramBinning(num_bins=12).fit(positive, labels, from_logits=False)
    values, counts, _ = numpy_histogram_reference(positive, labels, 12)
    np.testing.assert_allclose(binning.bin_values_[0], values)
    np.testing.assert_array_equal(binning.bin_counts_[0], counts)
    np.testing.assert_allclose(binning.bin_edges_, np.linspace(0, 1, 13))
    new = special.expit(3.0 * np.random.default_rng(1).normal(size=300))
    calibrated = binning.transform(new, from_logits=False)
    _, _, index = numpy_histogram_reference(new, np.zeros_like(new), 12)
    np.testing.assert_allclose(calibrated.probs[:, 1], values[index])
    np.testing.assert_allclose(calibrated.probs.sum(1), 1.0)
    # From the logits (sigmoid first), the same map.
    from_logits = HistogramBinning(num_bins=12).fit(z, labels, from_logits=True)
    np.testing.assert_allclose(from_logits.bin_values_, binning.bin_values_)


def test_histogram_binning_is_one_vs_rest_then_renormalised_on_many_classes():
    logits, labels = miscalibrated_logits()
    probs = special.softmax(logits, -1)
    binning = HistogramBinning(num_bins=10).fit(logits, labels, from_logits=True)
    mapped = np.empty_like(probs)
    for c in range(probs.shape[1]):
        hits = (labels == c).astype(np.float64)
        values, _, index = numpy_histogram_reference(probs[:, c], hits, 10)
        np.testing.assert_allclose(binning.bin_values_[c], values)
        mapped[:, c] = values[index]
    calibrated = binning.transform(logits, from_logits=True)
    np.testing.assert_allclose(calibrated.probs, mapped / mapped.sum(1, keepdims=True))
    assert ku.metrics.expected_calibration_error(
        labels, calibrated.probs
    ) < ku.metrics.expected_calibration_error(labels, probs)


def test_histogram_binning_keeps_the_midpoint_of_an_empty_bin():
    probs = np.array([0.05, 0.05, 0.95, 0.95])
    binning = HistogramBinning(num_bins=4).fit(probs, [0, 1, 1, 1], from_logits=False)
    np.testing.assert_allclose(binning.bin_values_[0], [0.5, 0.375, 0.625, 1.0])
    out = binning.transform(np.array([0.0, 0.3, 0.6, 1.0]), from_logits=False)
    np.testing.assert_allclose(out.probs[:, 1], [0.5, 0.375, 0.625, 1.0])


# Isotonic calibration ---------------------------------------------------


def test_isotonic_calibration_matches_scikit_learn_on_a_binary_task():
    z, labels = binary_logits()
    positive = special.expit(z)
    iso = IsotonicCalibration().fit(positive, labels, from_logits=False)
    reference = IsotonicRegression(out_of_bounds="clip").fit(positive, labels)
    new = special.expit(3.0 * np.random.default_rng(1).normal(size=300))
    calibrated = iso.transform(new, from_logits=False)
    np.testing.assert_allclose(
        calibrated.probs[:, 1], reference.predict(new), atol=1e-12
    )
    np.testing.assert_allclose(calibrated.probs[:, 0], 1 - reference.predict(new))


def test_isotonic_calibration_is_one_vs_rest_then_renormalised_on_many_classes():
    logits, labels = miscalibrated_logits()
    probs = special.softmax(logits, -1)
    iso = IsotonicCalibration().fit(probs, labels, from_logits=False)
    test_logits, test_labels = miscalibrated_logits(seed=1)
    test_probs = special.softmax(test_logits, -1)
    mapped = np.stack(
        [
            IsotonicRegression(out_of_bounds="clip")
            .fit(probs[:, c], labels == c)
            .predict(test_probs[:, c])
            for c in range(probs.shape[1])
        ],
        axis=1,
    )
    calibrated = iso.transform(test_probs, from_logits=False)
    np.testing.assert_allclose(
        calibrated.probs, mapped / mapped.sum(1, keepdims=True), atol=1e-12
    )
    assert nll(test_labels, np.clip(calibrated.probs, 1e-12, 1)) < nll(
        test_labels, test_probs
    )


def test_isotonic_calibration_makes_an_all_zero_row_uniform():
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]] * 3)
    labels = np.array([1, 2, 0] * 3)  # every prediction wrong: every map is 0
    out = IsotonicCalibration().fit_transform(probs, labels, from_logits=False)
    np.testing.assert_allclose(out.probs, 1 / 3)


# What every classification recalibrator shares --------------------------


@pytest.mark.parametrize("method", CLASSIFIERS, ids=lambda m: m.__name__)
def test_transform_returns_a_new_prediction_with_the_documented_fields(method):
    prediction, labels = mc_prediction()
    before = {
        f.name: getattr(prediction, f.name).copy()
        for f in dataclasses.fields(prediction)
    }
    calibrated = method().fit(prediction, labels).transform(prediction)
    assert isinstance(calibrated, ku.ClassificationPrediction)
    for name, value in before.items():  # the input is left alone
        np.testing.assert_array_equal(getattr(prediction, name), value)
    np.testing.assert_allclose(calibrated.probs.sum(1), 1.0)
    assert not np.allclose(calibrated.probs, prediction.probs)
    np.testing.assert_array_equal(calibrated.label, calibrated.probs.argmax(1))
    entropy = -np.sum(special.xlogy(calibrated.probs, calibrated.probs), 1)
    np.testing.assert_allclose(calibrated.entropy, entropy, atol=1e-12)
    for name in ("expected_entropy", "mutual_information", "votes"):
        np.testing.assert_array_equal(getattr(calibrated, name), before[name])


@pytest.mark.parametrize("method", CLASSIFIERS, ids=lambda m: m.__name__)
def test_an_array_is_read_as_one_sample(method):
    logits, labels = miscalibrated_logits(n=300)
    calibrated = method().fit_transform(logits, labels, from_logits=True)
    np.testing.assert_allclose(calibrated.expected_entropy, calibrated.entropy)
    np.testing.assert_array_equal(calibrated.mutual_information, 0.0)
    assert calibrated.votes is None


@pytest.mark.parametrize("method", CLASSIFIERS, ids=lambda m: m.__name__)
def test_a_binary_task_reads_the_same_as_n_n1_or_n2_probabilities(method):
    z, labels = binary_logits(n=400)
    positive = special.expit(z)
    results = [
        method().fit_transform(values, labels, from_logits=False).probs
        for values in (
            positive,
            positive[:, None],
            np.stack([1 - positive, positive], 1),
        )
    ]
    for probs in results:
        assert probs.shape == (400, 2)
        np.testing.assert_allclose(probs, results[0], atol=1e-12)
        np.testing.assert_allclose(probs.sum(1), 1.0)


@pytest.mark.parametrize("method", CLASSIFIERS, ids=lambda m: m.__name__)
def test_config_and_state_round_trip(method):
    logits, labels = miscalibrated_logits(n=300)
    fitted = method().fit(logits, labels, from_logits=True)
    restored = method.from_config(fitted.get_config()).set_state(fitted.get_state())
    np.testing.assert_array_equal(
        restored.transform(logits, from_logits=True).probs,
        fitted.transform(logits, from_logits=True).probs,
    )
    assert eval(repr(fitted), {method.__name__: method}).get_config() == (
        fitted.get_config()
    )


@pytest.mark.parametrize("method", CLASSIFIERS, ids=lambda m: m.__name__)
def test_classification_errors_say_what_was_expected(method):
    logits, labels = miscalibrated_logits(n=100)
    prediction, mc_labels = mc_prediction(n=100)
    with pytest.raises(NotFittedError, match=f"This {method.__name__} instance"):
        method().transform(logits, from_logits=True)
    with pytest.raises(ValueError, match="`from_logits`. Expected True"):
        method().fit(logits, labels)  # an array needs from_logits
    with pytest.raises(ValueError, match="`from_logits`. Expected None"):
        method().fit(prediction, mc_labels, from_logits=True)
    with pytest.raises(ValueError, match="finite"):
        bad = logits.copy()
        bad[3, 1] = np.nan
        method().fit(bad, labels, from_logits=True)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\]"):
        method().fit(logits, np.where(labels == 0, 4, labels), from_logits=True)
    with pytest.raises(ValueError, match="`labels`. Expected integer"):
        method().fit(logits, labels.astype(np.float64), from_logits=True)
    with pytest.raises(ValueError, match="`labels`. Expected integer"):
        method().fit(logits, labels[:-1], from_logits=True)
    with pytest.raises(ValueError, match="Expected shape"):
        method().fit(logits[None], labels, from_logits=True)
    with pytest.raises(ValueError, match="rows that sum to 1"):
        method().fit(np.abs(logits), labels, from_logits=False)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        method().fit(np.linspace(-0.5, 1, 100), labels % 2, from_logits=False)
    with pytest.raises(ValueError, match="Expected a ClassificationPrediction"):
        method().fit(ku.RegressionPrediction(*[np.ones((3, 1))] * 4), [0, 1, 0])
    fitted = method().fit(logits, labels, from_logits=True)
    with pytest.raises(ValueError, match="Expected 4 classes, as in `fit`"):
        fitted.transform(logits[:, :3], from_logits=True)


def test_classification_parameters_are_checked():
    with pytest.raises(ValueError, match="`num_bins`"):
        HistogramBinning(num_bins=0)
    with pytest.raises(ValueError, match="`tol`"):
        VectorScaling(tol=-1.0)
    with pytest.raises(ValueError, match="`max_iter`"):
        VectorScaling(max_iter=0)


# netcal -------------------------------------------------------------------

# netcal 1.4.0's outputs on `_netcal_binary()` and `_netcal_multiclass()`,
# computed with numpy 2.4 in a separate environment (netcal needs PyTorch,
# so it is no dev dependency here), e.g. for the binary task:
#   netcal.binning.HistogramBinning(bins=5).fit(p, y).transform(p_new)
#   netcal.binning.IsotonicRegression().fit(p, y).transform(p_new)
# The multiclass calls take the (N, 3) probabilities and the labels. No
# probe lies on a bin edge: netcal's bins are (a, b], ours [a, b) as in
# np.histogram.
NETCAL_BINARY_HISTOGRAM = [0.0, 0.0, 3 / 14, 3 / 14] + [4 / 13] * 3 + [0.2] * 2
NETCAL_BINARY_HISTOGRAM += [11 / 12] * 2
NETCAL_BINARY_ISOTONIC = [0.0] * 4 + [7 / 23] * 3 + [1 / 3] * 2 + [1.0] * 2
NETCAL_MULTICLASS_HISTOGRAM = [
    [0.66185620463187, 0.22381610784652609, 0.11432768752160385],
    [0.16521739130434782, 0.41739130434782606, 0.41739130434782606],
    [0.32769830949284784, 0.305591677503251, 0.36671001300390116],
    [0.13190370422016157, 0.10362653014472255, 0.7644697656351158],
]
NETCAL_MULTICLASS_ISOTONIC = [
    [0.719254413360071, 0.17949307998290542, 0.10125250665702357],
    [0.16644880139822368, 0.48784984185161956, 0.3457013567501569],
    [0.3341902313624679, 0.30912596401028275, 0.3566838046272493],
    [0.12320916905444126, 0.13753581661891118, 0.7392550143266475],
]


def _netcal_binary():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.99, 60)
    y = (rng.random(60) < p**2).astype(np.int64)
    return p, y, np.linspace(0.015, 0.985, 11)


def _netcal_multiclass():
    rng = np.random.default_rng(11)
    logits = 2.0 * rng.normal(size=(300, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    tempered = probs**0.5 / (probs**0.5).sum(1, keepdims=True)
    labels = (rng.random((300, 1)) > np.cumsum(tempered, 1)).sum(1)
    new = [[0.7, 0.21, 0.09], [0.1, 0.6, 0.3], [0.34, 0.33, 0.33], [0.05, 0.05, 0.9]]
    return probs, np.minimum(labels, 2), np.array(new)


def test_binning_and_isotonic_reproduce_netcals_outputs():
    p, y, p_new = _netcal_binary()
    for method, expected in (
        (HistogramBinning(num_bins=5), NETCAL_BINARY_HISTOGRAM),
        (IsotonicCalibration(), NETCAL_BINARY_ISOTONIC),
    ):
        calibrated = method.fit(p, y, from_logits=False)
        probs = calibrated.transform(p_new, from_logits=False).probs
        np.testing.assert_allclose(probs[:, 1], expected, rtol=0, atol=1e-12)
    probs, labels, new = _netcal_multiclass()
    for method, expected in (
        (HistogramBinning(num_bins=5), NETCAL_MULTICLASS_HISTOGRAM),
        (IsotonicCalibration(), NETCAL_MULTICLASS_ISOTONIC),
    ):
        calibrated = method.fit(probs, labels, from_logits=False)
        np.testing.assert_allclose(
            calibrated.transform(new, from_logits=False).probs,
            expected,
            rtol=0,
            atol=1e-12,
        )


def test_binning_and_isotonic_agree_with_an_installed_netcal():
    netcal = pytest.importorskip("netcal.binning")
    p, y, p_new = _netcal_binary()
    probs, labels, new = _netcal_multiclass()
    for ours, theirs in (
        (HistogramBinning(num_bins=5), netcal.HistogramBinning(bins=5)),
        (IsotonicCalibration(), netcal.IsotonicRegression()),
    ):
        expected = theirs.fit(p, y).transform(p_new)
        mine = ours.fit(p, y, from_logits=False).transform(p_new, from_logits=False)
        np.testing.assert_allclose(mine.probs[:, 1], expected, atol=1e-12)
        expected = theirs.fit(probs, labels).transform(new)
        mine = ours.fit(probs, labels, from_logits=False)
        np.testing.assert_allclose(
            mine.transform(new, from_logits=False).probs, expected, atol=1e-12
        )


# Regression: isotonic recalibration of the predictive CDF ---------------


def gaussian_regression(seed=0, n=7000, outputs=1, std_factor=0.5):
    """Targets from N(mean, true_std^2); predicted std = factor * true_std."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, outputs))
    true_std = rng.uniform(0.5, 2.0, size=(n, outputs))
    y = mean + true_std * rng.normal(size=(n, outputs))
    std = std_factor * true_std
    prediction = ku.RegressionPrediction(mean, std, std, np.zeros_like(std))
    return prediction, y


def rows(prediction, part):
    return ku.RegressionPrediction(
        *(getattr(prediction, f.name)[part] for f in dataclasses.fields(prediction))
    )


def test_recalibration_restores_ninety_percent_coverage_of_overconfident_gaussians():
    prediction, y = gaussian_regression()  # stds too small by 2x
    cal, test = slice(0, 2000), slice(2000, None)
    recal = QuantileRecalibration().fit(rows(prediction, cal), y[cal])
    lower, upper = recal.interval(rows(prediction, test), 0.9)
    covered = np.mean((y[test] >= lower) & (y[test] <= upper))
    # Binomial tolerance: 4 sd of the calibration and test fractions.
    tolerance = 4 * math.sqrt(0.9 * 0.1 * (1 / 2000 + 1 / 5000))
    assert abs(covered - 0.9) < tolerance
    uncalibrated, _ = ku.metrics.interval_coverage(
        y[test], prediction.mean[test], prediction.std[test], 0.9
    )
    assert abs(uncalibrated - 0.9) > 0.25  # about 0.59
    # Every level, not just 0.9: the recalibrated levels are uniform.
    levels = recal.calibrated_cdf(rows(prediction, test), y[test])
    quantiles = np.quantile(levels, np.linspace(0.1, 0.9, 9))
    np.testing.assert_allclose(quantiles, np.linspace(0.1, 0.9, 9), atol=0.03)


def test_the_fitted_map_is_scikit_learns_isotonic_fit_of_the_empirical_cdf():
    prediction, y = gaussian_regression(n=500)
    recal = QuantileRecalibration().fit(prediction, y)
    z = (y - prediction.mean) / prediction.std
    levels = np.array([statistics.NormalDist().cdf(v) for v in z[:, 0]])
    frequency = np.array([np.mean(levels <= p) for p in levels])
    reference = IsotonicRegression(out_of_bounds="clip").fit(
        np.r_[0.0, levels, 1.0], np.r_[0.0, frequency, 1.0]
    )
    grid = np.linspace(0, 1, 201)
    np.testing.assert_allclose(
        isotonic_predict(recal.x_thresholds_[0], recal.y_thresholds_[0], grid),
        reference.predict(grid),
        atol=1e-12,
    )
    # calibrated_cdf is that map of the Gaussian CDF.
    np.testing.assert_allclose(
        recal.calibrated_cdf(prediction, y)[:, 0], reference.predict(levels), atol=1e-9
    )


def test_the_calibrated_cdf_at_a_quantile_is_its_level():
    prediction, y = gaussian_regression(n=1500)
    recal = QuantileRecalibration().fit(prediction, y)
    for level in (0.01, 0.05, 0.3, 0.5, 0.77, 0.95, 0.99):
        quantile = recal.quantile(prediction, level)
        np.testing.assert_allclose(recal.calibrated_cdf(prediction, quantile), level)
    lower, upper = recal.interval(prediction, 0.8)
    np.testing.assert_allclose(lower, recal.quantile(prediction, 0.1))
    np.testing.assert_allclose(upper, recal.quantile(prediction, 0.9))
    assert np.all(lower < upper)


def test_a_calibrated_model_keeps_about_its_gaussian_quantiles():
    prediction, y = gaussian_regression(n=5000, std_factor=1.0)
    recal = QuantileRecalibration().fit(prediction, y)
    z = statistics.NormalDist().inv_cdf(0.95)
    gaussian = prediction.mean + z * prediction.std
    recalibrated = recal.quantile(prediction, 0.95)
    np.testing.assert_allclose(recalibrated, gaussian, atol=0.1 * prediction.std.max())


def test_each_output_column_has_its_own_map_and_shapes_are_kept():
    prediction, y = gaussian_regression(n=3000, outputs=2)
    # The second output is over-confident by 2x, the first calibrated.
    std = prediction.std * np.array([2.0, 1.0])
    prediction = ku.RegressionPrediction(prediction.mean, std, std, 0 * std)
    recal = QuantileRecalibration().fit(prediction, y)
    assert recal.num_outputs_ == 2 and len(recal.x_thresholds_) == 2
    z = recal.quantile(prediction, 0.95) - prediction.mean
    ratio = (z / prediction.std).mean(0)
    assert ratio[0] == pytest.approx(1.645, abs=0.1)  # calibrated: unchanged
    assert ratio[1] == pytest.approx(2 * 1.645, abs=0.2)  # widened 2x
    # (N,) means and a (mean, std) pair: one map, (N,) results.
    flat = QuantileRecalibration().fit((prediction.mean[:, 1], std[:, 1]), y[:, 1])
    quantile = flat.quantile((prediction.mean[:, 1], std[:, 1]), 0.95)
    assert quantile.shape == (3000,)
    np.testing.assert_allclose(quantile, recal.quantile(prediction, 0.95)[:, 1])


def test_transform_returns_the_recalibrated_distribution_not_a_gaussian():
    prediction, y = gaussian_regression(n=500)
    before = prediction.std.copy()
    recalibrated = QuantileRecalibration().fit_transform(prediction, y)
    assert isinstance(recalibrated, RecalibratedRegression)
    assert not isinstance(recalibrated, ku.RegressionPrediction)
    np.testing.assert_array_equal(prediction.std, before)
    np.testing.assert_array_equal(recalibrated.std, before)
    lower, upper = recalibrated.interval(0.9)
    assert lower.shape == upper.shape == prediction.mean.shape


def test_regression_recalibration_state_round_trips():
    prediction, y = gaussian_regression(n=500)
    fitted = QuantileRecalibration().fit(prediction, y)
    restored = QuantileRecalibration.from_config(fitted.get_config()).set_state(
        fitted.get_state()
    )
    np.testing.assert_array_equal(
        restored.quantile(prediction, 0.9), fitted.quantile(prediction, 0.9)
    )
    assert repr(fitted) == "QuantileRecalibration()"


def test_regression_errors_say_what_was_expected():
    prediction, y = gaussian_regression(n=200)
    with pytest.raises(NotFittedError, match="This QuantileRecalibration instance"):
        QuantileRecalibration().quantile(prediction, 0.9)
    bad = y.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="`y_true`. Expected finite"):
        QuantileRecalibration().fit(prediction, bad)
    with pytest.raises(ValueError, match="`std`. Expected standard deviations > 0"):
        QuantileRecalibration().fit((prediction.mean, 0 * prediction.std), y)
    with pytest.raises(ValueError, match="same shape"):
        QuantileRecalibration().fit(prediction, y[:-1])
    with pytest.raises(ValueError, match="Expected a RegressionPrediction"):
        QuantileRecalibration().fit(mc_prediction(n=10)[0], y[:10])
    fitted = QuantileRecalibration().fit(prediction, y)
    for level in (0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="`level`"):
            fitted.interval(prediction, level)
    two = (np.hstack([prediction.mean] * 2), np.hstack([prediction.std] * 2))
    with pytest.raises(ValueError, match="Expected 1 output columns, as in `fit`"):
        fitted.transform(two)


def test_new_names_are_public_and_documented():
    for name in (
        "VectorScaling",
        "HistogramBinning",
        "IsotonicCalibration",
        "QuantileRecalibration",
        "RecalibratedRegression",
    ):
        assert name in ku.calibration.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here warns
        VectorScaling().fit(*miscalibrated_logits(n=200), from_logits=True)
