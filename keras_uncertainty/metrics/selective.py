"""Selective prediction: refer the most uncertain cases, score the rest.

The referral protocol of Filos et al. (2019): sort test cases by uncertainty,
refer the most uncertain fraction to an expert, report the accuracy on the
retained cases. Good uncertainty makes accuracy rise as more is referred.
"""

import dataclasses

import numpy as np

from keras_uncertainty.metrics._checks import (
    as_array,
    classification_inputs,
    unit_interval,
)


@dataclasses.dataclass(frozen=True)
class RetentionCurve:
    """Accuracy on the retained (most certain) fraction of the data.

    Attributes:
        retained_fraction: `(F,)` fractions of the data kept.
        accuracy: `(F,)` accuracy on the kept, most certain cases.
        random_accuracy: `(F,)` expected accuracy under random referral (the
            overall accuracy: flat).
        oracle_accuracy: `(F,)` accuracy when the errors are referred first,
            `min(1, correct / kept)`.
        auc: area under `accuracy` over `retained_fraction`, divided by the
            width of that range (the mean accuracy along the curve).
    """

    retained_fraction: np.ndarray
    accuracy: np.ndarray
    random_accuracy: np.ndarray
    oracle_accuracy: np.ndarray
    auc: float


def _certainty_order(labels, probs, uncertainty):
    labels, probs = classification_inputs(labels, probs)
    uncertainty = as_array(uncertainty, "uncertainty")
    if uncertainty.shape != labels.shape:
        raise ValueError(
            "Invalid value received for argument `uncertainty`. Expected shape "
            f"{labels.shape}. Received: shape {uncertainty.shape}"
        )
    correct = np.argmax(probs, axis=-1) == labels
    return correct[np.argsort(uncertainty, kind="stable")]


def _area(x, y):
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def retention_curve(labels, probs, uncertainty, fractions=None):
    """The referral curve: accuracy when the most uncertain are referred.

    Args:
        labels: `(N,)` integer labels.
        probs: `(N, C)` predictive probabilities.
        uncertainty: `(N,)` any score where larger means less certain
            (predictive entropy, mutual information, ...).
        fractions: Retained fractions in [0, 1]; default 0.5 to 1.0 in steps
            of 0.05, as in Filos et al. (2019). A fraction keeps
            `max(1, round(f N))` cases.

    Returns:
        A `RetentionCurve`.
    """
    correct = _certainty_order(labels, probs, uncertainty)
    if fractions is None:
        fractions = np.linspace(0.5, 1.0, 11)
    fractions = np.sort(as_array(fractions, "fractions").ravel())
    for f in fractions:
        unit_interval(float(f), "fractions", closed=True)
    n = len(correct)
    kept = np.maximum(1, np.round(fractions * n).astype(np.int64))
    cumulative = np.cumsum(correct)
    accuracy = cumulative[kept - 1] / kept
    total_correct = cumulative[-1]
    return RetentionCurve(
        retained_fraction=fractions,
        accuracy=accuracy,
        random_accuracy=np.full(len(fractions), total_correct / n),
        oracle_accuracy=np.minimum(1.0, total_correct / kept),
        auc=_area(fractions, accuracy),
    )


def aurc(labels, probs, uncertainty):
    """Area under the risk-coverage curve (Geifman et al. 2019).

    Keep the k most certain cases for k = 1..N; the risk at coverage k/N is
    their error rate; AURC is the mean of those risks (lower is better).

    Args:
        labels: `(N,)` integer labels.
        probs: `(N, C)` predictive probabilities.
        uncertainty: `(N,)` scores where larger means less certain.

    Returns:
        float in [0, 1].
    """
    correct = _certainty_order(labels, probs, uncertainty)
    kept = np.arange(1, len(correct) + 1)
    risk = np.cumsum(~correct) / kept
    return float(np.mean(risk))
