"""One-parameter recalibration of classifiers and regressors."""

import math

import numpy as np

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
    The NLL is convex in `1/T`, so a bracketing search on `log T` finds the
    optimum to `tol`.

    Attributes:
        temperature_: The fitted temperature (T > 1 softens over-confident
            predictions).

    Example:

    >>> scaler = ku.calibration.TemperatureScaling().fit(val_logits, val_labels)
    >>> probs = scaler.transform(test_logits)
    """

    def __init__(self, bounds=(1e-2, 1e2), tol=1e-6):
        low, high = bounds
        if not 0 < low < high:
            raise ValueError(
                "Invalid value received for argument `bounds`. Expected "
                f"0 < low < high. Received: bounds={bounds!r}"
            )
        self.bounds = (float(low), float(high))
        self.tol = float(tol)

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
        while high - low > self.tol:
            if fa < fb:
                high, b, fb = b, a, fa
                a = high - ratio * (high - low)
                fa = nll(a)
            else:
                low, a, fa = a, b, fb
                b = low + ratio * (high - low)
                fb = nll(b)
        self.temperature_ = math.exp(0.5 * (low + high))
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

    Attributes:
        scale_: The fitted factor s.

    Example:

    >>> scaler = ku.calibration.VarianceScaling().fit(y_val, pred.mean, pred.std)
    >>> std = scaler.transform(test_pred.std)
    """

    def fit(self, y_true, mean, std):
        """Fits the factor on validation targets, means and stds; returns self."""
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
