"""Classification metrics: accuracy, proper scores, calibration, ranking.

`labels` are integer class indices `(N,)`, `probs` predictive probabilities
`(N, C)` whose rows sum to 1; Keras/TF tensors are accepted.
"""

import numpy as np

from keras_uncertainty._validation import check_positive_int as positive_int
from keras_uncertainty.metrics._checks import (
    binary_inputs,
    classification_inputs,
)

# log(0) would make one confident mistake dominate everything; probabilities
# are floored at the smallest normal float64 (an NLL of at most about 708).
_PROB_FLOOR = np.finfo(np.float64).tiny


def accuracy(labels, probs):
    """Fraction of points whose most probable class is the label.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        probs: `(N, C)` predictive probabilities (rows summing to 1).

    Returns:
        float in [0, 1].
    """
    labels, probs = classification_inputs(labels, probs)
    return float(np.mean(np.argmax(probs, axis=-1) == labels))


def classification_nll(labels, probs):
    """Mean negative log-likelihood `-mean log p[label]` (nats).

    Probabilities are floored at the smallest normal float64 before the log.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        probs: `(N, C)` predictive probabilities (rows summing to 1).

    Returns:
        float, nats per point.
    """
    labels, probs = classification_inputs(labels, probs)
    chosen = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(chosen, _PROB_FLOOR))))


def brier_score(labels, probs):
    """Mean over points of `sum_c (p_c - 1{c = label})^2` (in [0, 2]).

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        probs: `(N, C)` predictive probabilities (rows summing to 1).

    Returns:
        float in [0, 2].
    """
    labels, probs = classification_inputs(labels, probs)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum(np.square(probs - onehot), axis=-1)))


def _calibration_bins(labels, probs, num_bins, adaptive):
    """Per non-empty bin: (weight, accuracy, mean confidence)."""
    labels, probs = classification_inputs(labels, probs)
    num_bins = positive_int(num_bins, "num_bins")
    confidence = probs.max(axis=-1)
    correct = np.argmax(probs, axis=-1) == labels
    if adaptive:
        # Equal-mass bins: each holds (about) N / num_bins points.
        order = np.argsort(confidence, kind="stable")
        bins = np.empty(len(order), dtype=np.int64)
        bins[order] = np.arange(len(order)) * num_bins // len(order)
    else:
        # Equal-width bins (lo, hi] on [0, 1], as in Guo et al. (2017).
        edges = np.linspace(0.0, 1.0, num_bins + 1)
        bins = np.clip(
            np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1
        )
    counts = np.bincount(bins, minlength=num_bins)
    filled = counts > 0
    acc = np.bincount(bins, weights=correct, minlength=num_bins)[filled]
    conf = np.bincount(bins, weights=confidence, minlength=num_bins)[filled]
    counts = counts[filled]
    return counts / len(labels), acc / counts, conf / counts


def expected_calibration_error(labels, probs, num_bins=15, adaptive=False):
    """ECE: `sum_b (n_b / N) |accuracy_b - confidence_b|`.

    Confidence is the top probability; bins are `num_bins` equal-width
    intervals of [0, 1] (Guo et al. 2017) or, with `adaptive=True`,
    equal-mass bins.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        probs: `(N, C)` predictive probabilities (rows summing to 1).
        num_bins: Positive integer, the number of bins.
        adaptive: Equal-mass bins instead of equal-width ones.

    Returns:
        float in [0, 1].
    """
    weight, acc, conf = _calibration_bins(labels, probs, num_bins, adaptive)
    return float(np.sum(weight * np.abs(acc - conf)))


def max_calibration_error(labels, probs, num_bins=15, adaptive=False):
    """MCE: `max_b |accuracy_b - confidence_b|` over non-empty bins.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        probs: `(N, C)` predictive probabilities (rows summing to 1).
        num_bins: Positive integer, the number of bins.
        adaptive: Equal-mass bins instead of equal-width ones.

    Returns:
        float in [0, 1].
    """
    _, acc, conf = _calibration_bins(labels, probs, num_bins, adaptive)
    return float(np.max(np.abs(acc - conf)))


def reliability_bins(labels, probs, num_bins=15, adaptive=False):
    """The bins behind the ECE: `(weight, accuracy, confidence)` arrays.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        probs: `(N, C)` predictive probabilities (rows summing to 1).
        num_bins: Positive integer, the number of bins.
        adaptive: Equal-mass bins instead of equal-width ones.

    Returns:
        `(weight, accuracy, confidence)`, three arrays with one entry per
        non-empty bin; the weights sum to 1.
    """
    return _calibration_bins(labels, probs, num_bins, adaptive)


def auroc(is_positive, scores):
    """Area under the ROC curve: P(score of a positive > score of a negative).

    Computed from ranks (Mann-Whitney U), ties counted half. Use it for
    misclassification detection (`is_positive = errors`, `scores =
    uncertainty`) or out-of-distribution detection.

    Args:
        is_positive: `(N,)` booleans, or integers that are all 0 or 1.
        scores: `(N,)` finite scores; higher should mean positive.

    Returns:
        float in [0, 1]; 0.5 is chance.
    """
    positive, scores = binary_inputs(is_positive, scores)
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            "Invalid value received for argument `is_positive`. Expected both "
            f"classes. Received: {num_pos} positives and {num_neg} negatives"
        )
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average ranks over ties.
    unique, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    if len(unique) < len(scores):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u / (num_pos * num_neg))
