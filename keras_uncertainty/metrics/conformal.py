"""Metrics of conformal intervals and sets: empirical coverage and size.

Intervals are `[lower, upper]` arrays of one shape, `(N,)` or `(N, k)`
(bounds may be infinite; `y_true` may be `(N,)` against `(N, 1)` bounds), or
a `ku.conformal.Interval` passed as `lower`. Sets are boolean `(N, C)`
matrices, as `ku.conformal.ConformalClassifier.predict_set` returns.
"""

import numpy as np

from keras_uncertainty._validation import as_array, class_indices, same_shape


def _bounds(lower, upper):
    """Checked float64 bounds (the shared array check, infinite bounds
    allowed) of the same shape; an `Interval` may come as `lower`."""
    if upper is None and hasattr(lower, "lower") and hasattr(lower, "upper"):
        lower, upper = lower.lower, lower.upper
    lower = as_array(lower, "lower", allow_inf=True)
    upper = as_array(upper, "upper", allow_inf=True)
    same_shape(lower=lower, upper=upper)
    return lower, upper


def _sets(sets):
    if hasattr(sets, "numpy") and not isinstance(sets, np.ndarray):
        sets = sets.numpy()
    sets = np.asarray(sets)
    if sets.ndim != 2 or sets.size == 0 or sets.dtype != bool:
        raise ValueError(
            "Invalid value received for argument `sets`. Expected a non-empty "
            f"boolean (N, C) matrix. Received: dtype {sets.dtype} and shape "
            f"{sets.shape}"
        )
    return sets


def empirical_coverage(y_true, lower, upper=None):
    """The fraction of targets inside their intervals.

    `coverage = (1 / (N k)) sum_i 1{lower_i <= y_i <= upper_i}` over every
    point and target; a conformal interval at level `1 - alpha` should give
    at least `1 - alpha` on fresh data (up to sampling noise).

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        lower: Lower bounds shaped like `y_true`, or a `ku.conformal.Interval`.
        upper: Upper bounds shaped like `lower` (None when `lower` is an
            Interval).

    Returns:
        float in [0, 1].
    """
    lower, upper = _bounds(lower, upper)
    y_true = as_array(y_true, "y_true")
    if y_true.ndim == lower.ndim - 1 and lower.shape[-1] == 1:
        y_true = y_true[..., None]
    if y_true.shape != lower.shape:
        raise ValueError(
            "Expected `y_true` and `lower` to have the same shape. Received: "
            f"y_true with shape {y_true.shape} and lower with shape {lower.shape}"
        )
    return float(np.mean((lower <= y_true) & (y_true <= upper)))


def mean_interval_width(lower, upper=None):
    """The mean width of intervals: `(1 / (N k)) sum_i (upper_i - lower_i)`.

    Infinite when any bound is (a calibration set too small for its level).

    Args:
        lower: Lower bounds, or a `ku.conformal.Interval`.
        upper: Upper bounds shaped like `lower` (None when `lower` is an
            Interval).

    Returns:
        float, in the units of the targets.
    """
    lower, upper = _bounds(lower, upper)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.mean(upper - lower))


def set_coverage(labels, sets):
    """The fraction of points whose set holds their label.

    `coverage = (1 / N) sum_i sets[i, y_i]`; a conformal set at level
    `1 - alpha` should give at least `1 - alpha` on fresh data.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        sets: `(N, C)` boolean set matrix.

    Returns:
        float in [0, 1].
    """
    sets = _sets(sets)
    labels = class_indices(labels, *sets.shape)
    return float(np.mean(np.take_along_axis(sets, labels[:, None], axis=1)))


def mean_set_size(sets):
    """The mean number of classes per set: `(1 / N) sum_i sum_c sets[i, c]`.

    Smaller is more informative at the same coverage; a size of 1 is a
    single confident answer, 0 an empty set (possible with every score
    unless `allow_empty_sets=False`), C a shrug.

    Args:
        sets: `(N, C)` boolean set matrix.

    Returns:
        float in [0, C].
    """
    return float(np.mean(np.sum(_sets(sets), axis=1)))
