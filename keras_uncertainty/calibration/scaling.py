"""One-parameter recalibration of classifiers and regressors."""

import math
import warnings

import numpy as np

from keras_uncertainty._validation import check_positive_finite, check_positive_int
from keras_uncertainty.metrics._checks import (
    as_array,
    classification_inputs,
    regression_inputs,
)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _not_fitted(name, attribute):
    raise ValueError(
        f"This {name} instance is not fitted yet: call `fit` before using "
        f"`{attribute}`."
    )


class TemperatureScaling:
    """Temperature scaling (Guo et al. 2017): `softmax(logits / T)`.

    `fit` chooses the one temperature `T > 0` that minimises the NLL of the
    labels on validation data; the argmax, and so the accuracy, is unchanged.
    The NLL is convex in `1/T`, so a golden-section search on `log T` finds
    the optimum to `tol` (at most `max_iter` steps). A temperature at a bound
    warns: the optimum may lie beyond it (every label the same, every
    prediction right, or bounds too narrow).

    Args:
        bounds: `(low, high)`, finite, `0 < low < high`: the range of T.
        tol: Finite number > 0: the width in `log T` at which the search
            stops.
        max_iter: Positive integer: a cap on the search's steps.

    Attributes:
        temperature_: The fitted temperature (T > 1 softens over-confident
            predictions).

    Example:

    >>> scaler = ku.calibration.TemperatureScaling().fit(val_logits, val_labels)
    >>> probs = scaler.transform(test_logits)
    """

    def __init__(self, bounds=(1e-2, 1e2), tol=1e-6, max_iter=200):
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            low = high = float("nan")
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
            raise ValueError(
                "Invalid value received for argument `bounds`. Expected two "
                f"finite numbers 0 < low < high. Received: bounds={bounds!r}"
            )
        self.bounds = (low, high)
        self.tol = check_positive_finite(tol, "tol")
        self.max_iter = check_positive_int(max_iter, "max_iter")

    def _logits(self, values, from_probs):
        if from_probs:
            _, probs = classification_inputs(np.zeros(len(values), np.int64), values)
            return np.log(np.maximum(probs, np.finfo(np.float64).tiny))
        logits = as_array(values, "logits")
        if logits.ndim != 2:
            raise ValueError(
                "Invalid value received for argument `logits`. Expected shape "
                f"(N, C). Received: shape {logits.shape}"
            )
        return logits

    def fit(self, logits, labels, from_probs=False):
        """Fits the temperature on validation logits (or probabilities).

        Args:
            logits: `(N, C)` logits, or probabilities with `from_probs=True`.
            labels: `(N,)` integer labels.
            from_probs: Whether `logits` holds probabilities (their logs are
                used as logits).

        Returns:
            self.
        """
        logits = self._logits(logits, from_probs)
        uniform = np.full_like(logits, 1.0 / logits.shape[1])
        labels, _ = classification_inputs(labels, uniform)
        rows = np.arange(len(labels))

        def nll(log_t):
            return -np.mean(_log_softmax(logits / math.exp(log_t))[rows, labels])

        # Golden-section search on log T (the NLL is unimodal there).
        low, high = math.log(self.bounds[0]), math.log(self.bounds[1])
        ratio = (math.sqrt(5.0) - 1.0) / 2.0
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        fa, fb = nll(a), nll(b)
        for _ in range(self.max_iter):
            if high - low <= self.tol:
                break
            if fa < fb:
                high, b, fb = b, a, fa
                a = high - ratio * (high - low)
                fa = nll(a)
            else:
                low, a, fa = a, b, fb
                b = low + ratio * (high - low)
                fb = nll(b)
        self.temperature_ = math.exp(0.5 * (low + high))
        near = max(2 * self.tol, 1e-3)  # in log T
        for bound in self.bounds:
            if abs(math.log(self.temperature_) - math.log(bound)) <= near:
                warnings.warn(
                    f"TemperatureScaling: the fitted temperature "
                    f"{self.temperature_:.4g} sits on the bound {bound:g}, so the "
                    "NLL's optimum may lie beyond it (validation labels all "
                    "the same, every prediction right, or bounds too narrow).",
                    UserWarning,
                    stacklevel=2,
                )
        return self

    def transform(self, logits, from_probs=False):
        """Calibrated probabilities `softmax(logits / temperature_)`, `(N, C)`."""
        if not hasattr(self, "temperature_"):
            _not_fitted("TemperatureScaling", "transform")
        logits = self._logits(logits, from_probs)
        return np.exp(_log_softmax(logits / self.temperature_))


class VarianceScaling:
    """One factor on the predicted standard deviations (regression).

    `fit` finds the `s > 0` that maximises the Gaussian likelihood of the
    validation targets under `N(mean, (s std)^2)`; it has the closed form
    `s^2 = mean(((y - mean) / std)^2)`. `s > 1` means the model was
    over-confident (Levi et al. 2019; Kuleshov et al. 2018 recalibrate the
    whole CDF instead).

    Like `TemperatureScaling.fit(logits, labels)`, `fit` takes the
    predictions first and the targets last.

    Attributes:
        scale_: The fitted factor s.

    Example:

    >>> pred = ku.predict_regression(model, x_val)
    >>> scaler = ku.calibration.VarianceScaling().fit(pred, y_val)
    >>> std = scaler.transform(test_pred.std)
    """

    def fit(self, prediction, y_true, *deprecated):
        """Fits the factor on validation predictions and targets.

        Args:
            prediction: A `ku.RegressionPrediction` (or anything with `mean`
                and `std` attributes), or a `(mean, std)` pair of arrays.
            y_true: The validation targets, shaped like `mean`.
            *deprecated: The order of 0.1, `fit(y_true, mean, std)`, still
                works for one release, with a DeprecationWarning.

        Returns:
            self.
        """
        if deprecated:
            warnings.warn(
                "VarianceScaling.fit(y_true, mean, std) is deprecated and will "
                "be removed in 0.3: call fit((mean, std), y_true) or "
                "fit(prediction, y_true), predictions first as in "
                "TemperatureScaling.fit(logits, labels).",
                DeprecationWarning,
                stacklevel=2,
            )
            y_true, mean, std = prediction, y_true, deprecated[0]
        elif (
            hasattr(prediction, "mean")
            and hasattr(prediction, "std")
            and not (isinstance(prediction, np.ndarray))
        ):
            mean, std = prediction.mean, prediction.std
        elif isinstance(prediction, (tuple, list)) and len(prediction) == 2:
            mean, std = prediction
        else:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected a "
                "RegressionPrediction or a (mean, std) pair. Received: "
                f"{type(prediction).__name__}"
            )
        y_true, mean, std = regression_inputs(y_true, mean, std)
        self.scale_ = float(np.sqrt(np.mean(np.square((y_true - mean) / std))))
        return self

    def transform(self, std):
        """The recalibrated standard deviations `scale_ * std`."""
        if not hasattr(self, "scale_"):
            _not_fitted("VarianceScaling", "transform")
        std = as_array(std, "std")
        if np.any(std <= 0):
            raise ValueError(
                "Invalid value received for argument `std`. Expected standard "
                f"deviations > 0. Received: smallest {std.min()!r}"
            )
        return self.scale_ * std
