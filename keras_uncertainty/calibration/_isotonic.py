"""Isotonic regression by pool-adjacent-violators (PAV), in numpy.

The one implementation behind `IsotonicCalibration` (classification) and
`QuantileRecalibration` (regression). It solves

    min_f sum_i w_i (y_i - f(x_i))^2  subject to  f non-decreasing in x,

the problem scikit-learn's `IsotonicRegression` solves, with its handling of
ties in `x` (tied points share one fitted value, the weighted mean of their
targets, before the fit) and its prediction rule between fitted points
(linear interpolation, clipped to the end values outside them).

PAV pools adjacent blocks whose means decrease until none do; the result
does not depend on the order of the pooling. Here each round pools every
maximal run of decreasing block means at once, with vectorized numpy
(`np.add.reduceat`), so a round costs O(number of blocks) in numpy and the
rounds needed are few in practice (a strictly decreasing sequence takes one);
when a round pools little, the sequential stack-based PAV finishes the job.
A run of decreasing means may be pooled whole: pooling its first two blocks
gives a mean at least the second's, which still exceeds the third's, and so on.
"""

import numpy as np


def _pool_sequential(sums, weights, sizes):
    """The classic stack-based PAV over blocks, one Python step each."""
    stack_sums, stack_weights, stack_sizes = [], [], []
    for total, weight, size in zip(sums.tolist(), weights.tolist(), sizes.tolist()):
        # Merge while the last block's mean exceeds the new one's.
        while stack_sums and stack_sums[-1] * weight > total * stack_weights[-1]:
            total += stack_sums.pop()
            weight += stack_weights.pop()
            size += stack_sizes.pop()
        stack_sums.append(total)
        stack_weights.append(weight)
        stack_sizes.append(size)
    sums, weights = np.array(stack_sums), np.array(stack_weights)
    return sums / weights, np.array(stack_sizes, np.int64)


def _pool(values, weights):
    """PAV on already-ordered `values` with weights > 0: the fitted values.

    Vectorized rounds pool every maximal decreasing run at once; when a
    round removes under a tenth of the blocks (inputs built so that pooling
    cascades slowly), the remaining blocks are pooled by the sequential
    stack-based PAV, so no input needs more than O(N) Python steps.
    """
    weights = weights.astype(np.float64, copy=True)
    sums = weights * values
    means = sums / weights
    # sizes[b]: how many of the original points block b holds.
    sizes = np.ones(len(means), np.int64)
    while True:
        decreasing = means[:-1] > means[1:]
        if not np.any(decreasing):
            break
        # A block starts a new pooled block unless it continues a decreasing
        # run from its left neighbour.
        starts = np.flatnonzero(np.concatenate(([True], ~decreasing)))
        if len(starts) > 0.9 * len(means):
            means, sizes = _pool_sequential(sums, weights, sizes)
            break
        sums = np.add.reduceat(sums, starts)
        weights = np.add.reduceat(weights, starts)
        sizes = np.add.reduceat(sizes, starts)
        means = sums / weights
    return np.repeat(means, sizes)


def _check(x, y, sample_weight):
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(
            "Expected `x` and `y` of one non-empty 1-D shape. Received: shapes "
            f"{x.shape} and {y.shape}"
        )
    if sample_weight is None:
        weights = np.ones_like(y)
    else:
        weights = np.asarray(sample_weight, np.float64).reshape(-1)
        if weights.shape != y.shape:
            raise ValueError(
                "Invalid value received for argument `sample_weight`. Expected "
                f"shape {y.shape}. Received: shape {weights.shape}"
            )
    for name, array in (("x", x), ("y", y), ("sample_weight", weights)):
        if not np.all(np.isfinite(array)):
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected finite "
                "values. Received: NaN or infinite entries"
            )
    if np.any(weights < 0) or not np.any(weights > 0):
        raise ValueError(
            "Invalid value received for argument `sample_weight`. Expected "
            "weights >= 0, not all 0."
        )
    return x, y, weights


def isotonic_fit(x, y, sample_weight=None):
    """Fits a non-decreasing map of `x` to `y`.

    Points of weight 0 are dropped; points with equal `x` are merged first
    into one point (their weighted mean target, their summed weight), as
    scikit-learn does.

    Args:
        x: `(N,)` inputs.
        y: `(N,)` targets.
        sample_weight: `(N,)` weights >= 0, or None for 1 each.

    Returns:
        `(knots_x, knots_y)`: the strictly increasing distinct inputs and the
        non-decreasing fitted values there, reduced to the first and last
        knot of each constant stretch (interpolating between the kept knots
        gives the same function). Evaluate with `isotonic_predict`.
    """
    x, y, weights = _check(x, y, sample_weight)
    keep = weights > 0
    x, y, weights = x[keep], y[keep], weights[keep]
    order = np.argsort(x, kind="stable")
    x, y, weights = x[order], y[order], weights[order]
    # Merge tied inputs: one point per distinct x.
    starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    unique_x = x[starts]
    tie_weights = np.add.reduceat(weights, starts)
    tie_means = np.add.reduceat(weights * y, starts) / tie_weights
    fitted = _pool(tie_means, tie_weights)
    # Keep the first and last knot of each constant stretch.
    if len(fitted) > 2:
        same_left = np.concatenate(([False], fitted[1:] == fitted[:-1]))
        same_right = np.concatenate((fitted[:-1] == fitted[1:], [False]))
        keep = ~(same_left & same_right)
        unique_x, fitted = unique_x[keep], fitted[keep]
    return unique_x, fitted


def isotonic_predict(knots_x, knots_y, x):
    """The fitted map at `x`: linear between knots, the end values outside.

    Args:
        knots_x, knots_y: `isotonic_fit`'s output.
        x: Any array of inputs.

    Returns:
        float64 array shaped like `x`.
    """
    return np.interp(np.asarray(x, np.float64), knots_x, knots_y)


def isotonic_inverse(knots_x, knots_y, level):
    """The generalized inverse `inf {x : f(x) >= level}` of a fitted map.

    On a flat stretch of `f` at `level` it gives the stretch's left end;
    below every fitted value, the first knot; above every one, the last.

    Args:
        knots_x, knots_y: `isotonic_fit`'s output.
        level: Any array of values.

    Returns:
        float64 array shaped like `level`.
    """
    level = np.asarray(level, np.float64)
    k = np.searchsorted(knots_y, level, side="left")
    k = np.clip(k, 1, len(knots_y) - 1) if len(knots_y) > 1 else np.zeros_like(k)
    if len(knots_y) == 1:
        return np.full(level.shape, knots_x[0])
    y0, y1 = knots_y[k - 1], knots_y[k]
    x0, x1 = knots_x[k - 1], knots_x[k]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(y1 > y0, (level - y0) / (y1 - y0), 1.0)
    inverse = x0 + np.clip(t, 0.0, 1.0) * (x1 - x0)
    inverse = np.where(level <= knots_y[0], knots_x[0], inverse)
    return np.where(level > knots_y[-1], knots_x[-1], inverse)
