"""Regression metrics: accuracy of the mean and quality of the uncertainty.

Arguments are arrays of one shape, `(N,)` or `(N, k)`, in the same units
(`y_true` may be `(N,)` against `(N, 1)` predictions); Keras/TF tensors are
accepted. Each function returns a Python float (or arrays where stated),
averaged over every point and target.
"""

import math
import statistics

import numpy as np
import tensorflow as tf

from keras_uncertainty._validation import check_positive_int as positive_int
from keras_uncertainty._validation import check_positive_std
from keras_uncertainty.metrics._checks import (
    as_array,
    regression_inputs,
    same_shape,
    unit_interval,
)

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _erfc(x):
    """float64 erfc (TensorFlow's kernel: relative error below 1e-13)."""
    return tf.math.erfc(tf.constant(np.asarray(x, np.float64))).numpy()


def _erf_nonnegative(x):
    """float64 erf of `x >= 0`: TensorFlow's erf gives NaN past about 1e150,
    so `1 - erfc(x)` above 0.5 (where it loses nothing)."""
    x = np.asarray(x, np.float64)
    small = tf.math.erf(tf.constant(np.minimum(x, 0.5))).numpy()
    return np.where(x <= 0.5, small, 1.0 - _erfc(np.maximum(x, 0.5)))


def _standard_normal_cdf(z):
    # erfc keeps the lower tail's relative precision (1 + erf underflows).
    return 0.5 * _erfc(-np.asarray(z, np.float64) / math.sqrt(2.0))


def _standardized(y, mean, std):
    """`(y - mean) / std` without spurious overflow: where `y - mean`
    overflows (opposite signs near the float64 limit), `y/std - mean/std`.
    A result beyond float64's range is +-inf, as it truly is."""
    with np.errstate(over="ignore", invalid="ignore"):
        difference = y - mean
        z = difference / std
        bad = ~np.isfinite(difference)
        if np.any(bad):
            # y and mean have opposite signs here, so y/std - mean/std is
            # never inf - inf.
            z = np.where(bad, y / std - mean / std, z)
    return z


def _abs_difference(y, mean):
    """`|y - mean|`, +inf where it exceeds float64 (its true value does)."""
    with np.errstate(over="ignore"):
        return np.abs(y - mean)


def _mean(values):
    """The mean of finite values that may sum past float64 (1e308 + 1e308):
    averaged from `values / size` when the plain sum overflows."""
    values = np.asarray(values, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        result = np.mean(values)
        if not np.isfinite(result) and np.all(np.isfinite(values)):
            result = np.sum(values / values.size)
    return float(result)


def _central_z(level):
    """z such that the central interval mean +- z*std holds `level` mass."""
    return statistics.NormalDist().inv_cdf(0.5 + 0.5 * level)


def gaussian_log_density(y, mean, std):
    """`log N(y | mean, std^2) = -0.5 log(2 pi) - log std - (y-mean)^2 / 2std^2`.

    Args:
        y: Values.
        mean: Means, broadcastable with `y`.
        std: Standard deviations (> 0), broadcastable with `y`.

    Returns:
        float64 array, the log densities, element-wise: finite, or -inf
        where the true value is below float64's range (`|y - mean| / std`
        past about 1e154), never NaN for finite arguments.
    """
    y, mean, std = (np.asarray(v, np.float64) for v in (y, mean, std))
    z = _standardized(y, mean, std)
    with np.errstate(over="ignore"):
        return -_HALF_LOG_TWO_PI - np.log(std) - 0.5 * (z * z)


def rmse(y_true, mean):
    """Root mean squared error: `sqrt(mean((y - mean)^2))`.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictions, shaped like `y_true`.

    Returns:
        float, in the units of `y`.
    """
    y_true, mean = regression_inputs(y_true, mean)
    errors = _abs_difference(y_true, mean)
    scale = float(np.max(errors))
    if scale == 0 or not math.isfinite(scale):
        return scale
    # Scaled by the largest error, so squares neither overflow nor underflow.
    return scale * math.sqrt(_mean(np.square(errors / scale)))


def gaussian_nll(y_true, mean, std):
    """Mean negative log-likelihood of a Gaussian predictive distribution.

    `mean over points of -log N(y | mean, std^2)`, constant `0.5 log 2 pi`
    included, in the units of `y` (lower is better).

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.

    Returns:
        float, in nats per point.
    """
    y_true, mean, std = regression_inputs(y_true, mean, std)
    return -_mean(gaussian_log_density(y_true, mean, std))


def mixture_log_density(y_true, sample_means, sample_stds):
    """Per point, the log density of the uniform mixture of T Gaussians.

    `log((1/T) sum_t N(y | mu_t, sigma_t^2))`, computed as
    `logsumexp_t log N(y | mu_t, sigma_t^2) - log T` so that no density
    underflows.

    Args:
        y_true: `(N,)` or `(N, k)`.
        sample_means: `(T, *y_true.shape)`, the means of the T samples.
        sample_stds: Same shape, their standard deviations (> 0); a scalar
            (a homoscedastic model's `1 / sqrt(tau)`) is broadcast.

    Returns:
        A float64 array of `y_true`'s shape (with a trailing 1 where
        `sample_means` has one).
    """
    sample_means = as_array(sample_means, "sample_means")
    sample_stds = as_array(sample_stds, "sample_stds")
    if sample_stds.ndim == 0:
        sample_stds = np.full_like(sample_means, float(sample_stds))
    same_shape(sample_means=sample_means, sample_stds=sample_stds)
    y_true = as_array(y_true, "y_true")
    if y_true.ndim == sample_means.ndim - 2 and sample_means.shape[-1] == 1:
        y_true = y_true[..., None]
    same_shape(y_true=y_true, sample_mean=sample_means[0])
    if np.any(sample_stds <= 0):
        raise ValueError(
            "Invalid value received for argument `sample_stds`. Expected "
            f"standard deviations > 0. Received: smallest {sample_stds.min()!r}"
        )
    log_densities = gaussian_log_density(y_true[None], sample_means, sample_stds)
    peak = log_densities.max(axis=0)
    # Where every density is 0 in float64 (peak -inf), the mixture's log
    # density is -inf too: shift by 0 there, not by -inf (-inf - -inf = NaN).
    shift = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return shift + np.log(np.mean(np.exp(log_densities - shift), axis=0))


def mixture_nll(y_true, sample_means, sample_stds):
    """Mean NLL of the uniform mixture of T Gaussians (the papers' test LL).

    `-mean over points of log((1/T) sum_t N(y | mu_t, sigma_t^2))` (see
    `mixture_log_density`): the test log-likelihood of the MC dropout and
    Deep Ensembles papers, negated. Arguments as in `mixture_log_density`.

    Args:
        y_true: `(N,)` or `(N, k)`.
        sample_means: `(T, *y_true.shape)`, the means of the T samples.
        sample_stds: Same shape (or a scalar), their standard deviations (> 0).

    Returns:
        float, in nats per point.
    """
    return -_mean(mixture_log_density(y_true, sample_means, sample_stds))


def crps_gaussian(y_true, mean, std):
    """Mean continuous ranked probability score of a Gaussian (closed form).

    With `z = (y - mean) / std`:
    `CRPS = std * (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))`
    (Gneiting & Raftery 2007); lower is better, in the units of `y`.
    Computed as `|y - mean| erf(|z| / sqrt 2) + std (2 phi(z) - 1/sqrt(pi))`,
    which stays finite (about `|y - mean|`) when `z` overflows at tiny `std`.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.

    Returns:
        float, in the units of `y`.
    """
    y_true, mean, std = regression_inputs(y_true, mean, std)
    distance = _abs_difference(y_true, mean)
    z = np.abs(_standardized(y_true, mean, std))
    with np.errstate(over="ignore", under="ignore"):
        pdf = np.exp(-0.5 * (z * z)) / math.sqrt(2.0 * math.pi)
        # std |z| (2 Phi(|z|) - 1) = |y - mean| erf(|z| / sqrt 2): no z * std.
        crps = distance * _erf_nonnegative(z / math.sqrt(2.0)) + std * (
            2.0 * pdf - 1.0 / math.sqrt(math.pi)
        )
    return _mean(crps)


def interval_coverage(y_true, mean, std, level=0.95):
    """Coverage and width of the central `level` interval `mean +- z std`.

    Returns:
        `(coverage, mean_width)`: the fraction of `y` inside the interval
        (ideally `level`) and its mean width `2 z std`.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.
        level: The interval's nominal coverage, in (0, 1).
    """
    y_true, mean, std = regression_inputs(y_true, mean, std)
    z = _central_z(unit_interval(level, "level"))
    with np.errstate(over="ignore"):
        inside = _abs_difference(y_true, mean) <= z * std
        return float(np.mean(inside)), _mean(2.0 * z * std)


def interval_score(y_true, mean, std, level=0.95):
    """Mean interval score of the central `level` interval [l, u].

    `(u - l) + (2/alpha)(l - y) 1{y < l} + (2/alpha)(y - u) 1{y > u}` with
    `alpha = 1 - level` (Gneiting & Raftery 2007): a proper score that
    rewards narrow intervals and penalises misses; lower is better.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.
        level: The interval's nominal coverage, in (0, 1).

    Returns:
        float, in the units of `y`.
    """
    y_true, mean, std = regression_inputs(y_true, mean, std)
    alpha = 1.0 - unit_interval(level, "level")
    half = _central_z(1.0 - alpha) * std
    with np.errstate(over="ignore"):
        # The miss beyond the interval: max(|y - mean| - half, 0).
        miss = np.maximum(_abs_difference(y_true, mean) - half, 0.0)
        score = 2.0 * half + (2.0 / alpha) * miss
    return _mean(score)


def regression_calibration_curve(y_true, mean, std, num_levels=20):
    """Observed against expected coverage of central intervals.

    For each nominal level p in `linspace(0, 1, num_levels)`, the observed
    fraction of points inside `mean +- z_p std`, `z_p = Phi^-1((1 + p)/2)`
    (Kuleshov et al. 2018). A calibrated model follows the diagonal.

    Returns:
        `(expected, observed)`, two arrays of length `num_levels`.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.
        num_levels: Integer >= 2, the number of nominal levels.
    """
    y_true, mean, std = regression_inputs(y_true, mean, std)
    num_levels = positive_int(num_levels, "num_levels")
    if num_levels < 2:
        raise ValueError(
            "Invalid value received for argument `num_levels`. Expected an "
            f"integer >= 2. Received: num_levels={num_levels}"
        )
    # |z| of each point: inside the level-p interval iff 2 Phi(|z|) - 1 <= p.
    needed = 2.0 * _standard_normal_cdf(np.abs(_standardized(y_true, mean, std))) - 1.0
    expected = np.linspace(0.0, 1.0, num_levels)
    observed = np.array([np.mean(needed <= p) for p in expected])
    observed[-1] = 1.0  # the level-1 interval is the whole line
    return expected, observed


def regression_calibration_error(y_true, mean, std, num_levels=20):
    """Miscalibration area: mean `|observed - expected|` over the curve.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.
        num_levels: Integer >= 2, the number of nominal levels.

    Returns:
        float in [0, 1]; 0 is calibrated.
    """
    expected, observed = regression_calibration_curve(y_true, mean, std, num_levels)
    return float(np.mean(np.abs(observed - expected)))


def gaussian_pit(y_true, mean, std):
    """The probability integral transform of each target under its Gaussian
    predictive distribution: `Phi((y_true - mean) / std)`.

    For a calibrated model these levels are uniform on `[0, 1]`; they are
    the input of `ku.calibration.QuantileRecalibration` (Kuleshov et al.
    2018) and of the calibration curve. `Phi` is computed through `erfc`,
    so the lower tail keeps its relative precision (no `1 + erf`
    cancellation), and `(y_true - mean) / std` does not overflow where the
    difference alone would.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true` (`(N,)` targets against
            `(N, 1)` means work).
        std: Predictive standard deviations (> 0), shaped like `mean`.

    Returns:
        float64 array shaped like `mean`, in `[0, 1]`.
    """
    y_true, mean, std = regression_inputs(y_true, mean, std)
    return _standard_normal_cdf(_standardized(y_true, mean, std))


def sharpness(std):
    """Sharpness of a regressor's predictive distributions, as
    uncertainty-toolbox defines it: the root mean predicted variance,
    `sqrt(mean(std^2))` over every point and target.

    Lower is sharper (more concentrated predictions). Sharpness says nothing
    of calibration: read it next to a calibration measure
    (`regression_calibration_error`) or a proper score (`gaussian_nll`,
    `crps_gaussian`), which reward sharpness only as far as it stays
    calibrated (Gneiting et al. 2007).

    Args:
        std: `(N,)` or `(N, k)` predictive standard deviations (>= 0,
            finite), or a `ku.RegressionPrediction` (its `std`).

    Returns:
        float >= 0, in the units of the targets.
    """
    if (
        hasattr(std, "std")
        and not isinstance(std, np.ndarray)
        and not callable(std.std)
    ):
        std = std.std
    std = check_positive_std(as_array(std, "std"), strict=False)
    with np.errstate(over="ignore"):
        squares = np.square(std)
    # float64's largest std squared overflows: sqrt(mean(std^2)) from the
    # scaled values then.
    if not np.all(np.isfinite(squares)):
        top = float(np.max(std))
        return top * math.sqrt(_mean(np.square(std / top)))
    return math.sqrt(_mean(squares))
