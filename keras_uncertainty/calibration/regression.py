"""Isotonic recalibration of a regressor's predictive distribution
(Kuleshov et al. 2018, "Accurate uncertainties for deep learning using
calibrated regression")."""

import dataclasses
import math
import statistics
import warnings

import numpy as np

from keras_uncertainty._validation import as_array, regression_inputs, unit_interval
from keras_uncertainty.calibration._isotonic import (
    isotonic_fit,
    isotonic_inverse,
    isotonic_predict,
)
from keras_uncertainty.metrics.regression import gaussian_pit
from keras_uncertainty.posthoc.base import PostHocMethod
from keras_uncertainty.sampling.predictions import RegressionPrediction

_NORMAL = statistics.NormalDist()
# Levels strictly inside (0, 1), so that every quantile is finite.
_LOWEST = 1e-300
_HIGHEST = 1.0 - np.finfo(np.float64).epsneg


def _mean_std(prediction):
    """`(mean, std)` of a `RegressionPrediction` or a `(mean, std)` pair."""
    if isinstance(prediction, RegressionPrediction):
        return prediction.mean, prediction.std
    if dataclasses.is_dataclass(prediction):
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            "RegressionPrediction or a (mean, std) pair. Received: "
            f"{type(prediction).__name__}"
        )
    if isinstance(prediction, (tuple, list)) and len(prediction) == 2:
        return prediction
    raise ValueError(
        "Invalid value received for argument `prediction`. Expected a "
        "RegressionPrediction or a (mean, std) pair. Received: "
        f"{type(prediction).__name__}"
    )


def _columns(array):
    """`(N,)` -> `(N, 1)`; `(N, k)` unchanged; else an error."""
    if array.ndim == 1:
        return array[:, None]
    if array.ndim != 2:
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected "
            f"means of shape (N,) or (N, k). Received: shape {array.shape}"
        )
    return array


@dataclasses.dataclass(frozen=True)
class RecalibratedRegression:
    """A Gaussian predictive distribution and its recalibrated CDF.

    `QuantileRecalibration.transform` returns it. For each point and output
    the model's CDF is `F(y) = Phi((y - mean) / std)`; the recalibrated CDF
    is `R(F(y))`, with `R` the fitted non-decreasing map of `[0, 1]` onto
    itself for that output (one per output column). `R o F` is in general
    not Gaussian, so it is not a `ku.RegressionPrediction`: read it through
    `cdf`, `quantile` and `interval`.

    Attributes:
        mean: `(N, k)` (or `(N,)`) float64, the model's predictive means.
        std: The model's predictive standard deviations, shaped like `mean`.
        x_thresholds: A tuple of k increasing arrays: the levels `F(y)` at
            the knots of each output's map `R` (from 0 to 1).
        y_thresholds: A tuple of k non-decreasing arrays: `R` there (from 0
            to 1); `R` is linear between knots.
        num_points: The number n of calibration points `R` was fitted on
            (None: not known). `R` is fitted to data only from level `1/n`
            (its lowest calibration point); a quantile or interval whose
            tail level `p` (`min(level, 1 - level)`; `(1 - level) / 2` for an
            interval) is below it is interpolated toward the anchors, not
            calibrated (one point gave 29% coverage at 90%): it warns,
            naming n, the level and the `ceil(1 / p)` points needed.
    """

    mean: np.ndarray
    std: np.ndarray
    x_thresholds: tuple
    y_thresholds: tuple
    num_points: int | None = None

    def _check_tail(self, tail, what):
        """Warns when `num_points` cannot resolve the tail level `tail`."""
        n = self.num_points
        if n is None or n * tail >= 1 - 1e-9:
            return
        need = math.ceil(1 / tail - 1e-9)
        warnings.warn(
            f"QuantileRecalibration was fitted on {n} calibration point(s), "
            f"too few for {what}: its map is fitted to data only from level "
            f"1/n = {1 / n:.3g}, and the tail level {tail:.3g} is interpolated "
            "toward the anchors (0, 0) and (1, 1), not calibrated; at least "
            f"{need} calibration points are needed.",
            UserWarning,
            stacklevel=3,
        )

    def cdf(self, y):
        """The recalibrated CDF at `y`: `R(Phi((y - mean) / std))`.

        Args:
            y: Values shaped like `mean` (`(N,)` against `(N, 1)` works).

        Returns:
            float64 array shaped like `mean`, in `[0, 1]`.
        """
        y, mean, std = regression_inputs(y, self.mean, self.std)
        levels = _columns(gaussian_pit(y, mean, std))
        mapped = np.stack(
            [
                isotonic_predict(x, r, levels[:, j])
                for j, (x, r) in enumerate(zip(self.x_thresholds, self.y_thresholds))
            ],
            axis=1,
        )
        return mapped.reshape(np.shape(self.mean))

    def quantile(self, level):
        """The recalibrated quantile at `level`: `mean + std Phi^-1(p)` with
        `p = R^-1(level)`, the smallest `p` with `R(p) >= level`.

        Args:
            level: A number in (0, 1).

        Returns:
            float64 array shaped like `mean`.
        """
        level = unit_interval(level, "level")
        self._check_tail(min(level, 1.0 - level), f"the {level:g} quantile")
        return self._quantile(level)

    def _quantile(self, level):
        z = np.array(
            [
                _NORMAL.inv_cdf(
                    float(np.clip(isotonic_inverse(x, r, level), _LOWEST, _HIGHEST))
                )
                for x, r in zip(self.x_thresholds, self.y_thresholds)
            ]
        )
        mean = np.asarray(self.mean, np.float64)
        std = np.asarray(self.std, np.float64)
        return mean + std * (z if mean.ndim == 2 else z[0])

    def interval(self, level=0.9):
        """The central `level` interval of the recalibrated distribution:
        its `(1 - level)/2` and `(1 + level)/2` quantiles.

        Args:
            level: The nominal coverage, a number in (0, 1).

        Returns:
            `(lower, upper)`, two float64 arrays shaped like `mean`.
        """
        level = unit_interval(level, "level")
        self._check_tail(0.5 - 0.5 * level, f"a {level:g} interval")
        return self._quantile(0.5 - 0.5 * level), self._quantile(0.5 + 0.5 * level)


class QuantileRecalibration(PostHocMethod):
    """Isotonic recalibration of regression quantiles (Kuleshov et al. 2018).

    A regression prediction is read as the Gaussian CDF
    `F_n(y) = Phi((y - mean_n) / std_n)` of each point. On held-out data,
    `fit` computes the levels `p_n = F_n(y_n)` and their empirical
    frequencies `P(p_n) = #{m : p_m <= p_n} / N`, and fits the
    non-decreasing map `R` from levels to frequencies by isotonic regression
    (pool-adjacent-violators; the points `(0, 0)` and `(1, 1)` are added, so
    `R` maps `[0, 1]` onto itself; `R` is linear between its knots). One map
    is fitted per output column. If the model is calibrated, `R` is close to
    the identity; if its stds are too small, the held-out levels crowd at 0
    and 1 and `R` is S-shaped.

    The recalibrated CDF `R(F_n(y))` is not Gaussian in general, so
    `transform` does not return a `ku.RegressionPrediction` (no mean and
    std describe it): it returns a `ku.calibration.RecalibratedRegression`,
    which holds the Gaussian and the map and answers `cdf(y)`,
    `quantile(level)` and `interval(level)`. The shortcuts
    `calibrated_cdf(prediction, y)`, `quantile(prediction, level)` and
    `interval(prediction, level)` call `transform` first. The recalibrated
    `level` quantile is `mean + std Phi^-1(R^-1(level))`, where `R^-1` is
    the smallest level mapped to at least `level`: the same multiple of the
    std for every point of one output, as in Kuleshov et al.; the interval
    is the central one, between the `(1 - level)/2` and `(1 + level)/2`
    quantiles. Coverage is calibrated on average over points like the
    held-out ones, not for each point.

    Attributes:
        x_thresholds_: A list of k increasing arrays, one per output: the
            levels at the knots of the map `R` (from 0 to 1).
        y_thresholds_: A list of k non-decreasing arrays: `R` at the knots
            (from 0 to 1).
        num_outputs_: k, the number of output columns (1 for `(N,)` means).
        n_: The number of calibration points. Too few for a level (fewer
            than `1 / p` for a tail level `p`: 20 for a 90% interval) make
            its quantiles and intervals warn, naming the count and the
            level (see `RecalibratedRegression`).

    Example:

    >>> val_pred = ku.predict_regression(model, x_val)
    >>> recal = ku.calibration.QuantileRecalibration().fit(val_pred, y_val)
    >>> test_pred = ku.predict_regression(model, x_test)
    >>> lower, upper = recal.interval(test_pred, 0.9)
    >>> median = recal.quantile(test_pred, 0.5)
    >>> levels = recal.calibrated_cdf(test_pred, y_test)  # uniform if calibrated
    """

    def fit(self, prediction, y):
        """Fits one map per output on held-out predictions and targets.

        Args:
            prediction: A `ku.RegressionPrediction`, or a `(mean, std)` pair
                of arrays (std > 0), `(N,)` or `(N, k)`.
            y: The held-out targets, shaped like the means (`(N,)` against
                `(N, 1)` works).

        Returns:
            self.
        """
        return super().fit(prediction, y)

    def _fit(self, prediction, y):
        mean, std = _mean_std(prediction)
        y, mean, std = regression_inputs(y, mean, std)
        levels = _columns(gaussian_pit(y, mean, std))
        count = len(levels)
        x_thresholds, y_thresholds = [], []
        for column in levels.T:
            ordered = np.sort(column)
            frequency = np.searchsorted(ordered, column, side="right") / count
            x, r = isotonic_fit(
                np.concatenate(([0.0], column, [1.0])),
                np.concatenate(([0.0], frequency, [1.0])),
            )
            x_thresholds.append(x)
            y_thresholds.append(r)
        self.x_thresholds_ = x_thresholds
        self.y_thresholds_ = y_thresholds
        self.num_outputs_ = levels.shape[1]
        self.n_ = int(count)

    def transform(self, prediction):
        """The prediction with its recalibrated CDF.

        Args:
            prediction: A `ku.RegressionPrediction` or a `(mean, std)` pair,
                with as many outputs as in `fit`.

        Returns:
            A `ku.calibration.RecalibratedRegression` (not a
            `RegressionPrediction`: the recalibrated distribution is not
            Gaussian); the input is left unchanged.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        return super().transform(prediction)

    def _transform(self, prediction):
        mean, std = _mean_std(prediction)
        mean, std = as_array(mean, "mean"), as_array(std, "std")
        _, mean, std = regression_inputs(mean, mean, std)  # shapes, std > 0
        mean, std = mean.copy(), std.copy()
        outputs = _columns(mean).shape[1]
        if outputs != self.num_outputs_:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected "
                f"{self.num_outputs_} output columns, as in `fit`. Received: "
                f"{outputs}"
            )
        return RecalibratedRegression(
            mean=mean,
            std=std,
            x_thresholds=tuple(np.array(x) for x in self.x_thresholds_),
            y_thresholds=tuple(np.array(r) for r in self.y_thresholds_),
            num_points=getattr(self, "n_", None),  # None: an earlier state
        )

    def calibrated_cdf(self, prediction, y):
        """`transform(prediction).cdf(y)`: the recalibrated CDF at `y`.

        Args:
            prediction: As in `transform`.
            y: Values shaped like the means.

        Returns:
            float64 array shaped like the means, in `[0, 1]`; on data like
            the held-out data, close to uniform.
        """
        return self.transform(prediction).cdf(y)

    def quantile(self, prediction, level):
        """`transform(prediction).quantile(level)`: the recalibrated
        quantile.

        Args:
            prediction: As in `transform`.
            level: A number in (0, 1).

        Returns:
            float64 array shaped like the means.
        """
        return self.transform(prediction).quantile(level)

    def interval(self, prediction, level=0.9):
        """`transform(prediction).interval(level)`: the recalibrated central
        interval.

        Args:
            prediction: As in `transform`.
            level: The nominal coverage, a number in (0, 1).

        Returns:
            `(lower, upper)`, two float64 arrays shaped like the means.
        """
        return self.transform(prediction).interval(level)
