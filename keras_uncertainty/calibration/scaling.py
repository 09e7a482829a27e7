"""One-parameter recalibration of classifiers and regressors."""

import dataclasses
import math
import warnings

import numpy as np

from keras_uncertainty._validation import check_positive_finite, check_positive_int
from keras_uncertainty.metrics._checks import (
    as_array,
    classification_inputs,
    regression_inputs,
)
from keras_uncertainty.posthoc.base import PostHocMethod
from keras_uncertainty.sampling.formulas import entropy
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    RegressionPrediction,
)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _log_probs(probs):
    """Checked `(N, C)` probabilities -> their logs (0 is clipped to the
    smallest float, so a class with probability 0 stays all but impossible)."""
    _, probs = classification_inputs(np.zeros(len(probs), np.int64), probs)
    return np.log(np.maximum(probs, np.finfo(np.float64).tiny))


def _deprecated(call, instead):
    warnings.warn(
        f"{call} with an array is deprecated and will be removed in 0.4; {instead}",
        DeprecationWarning,
        stacklevel=3,
    )


def _refuse_other_prediction(prediction, expected):
    if dataclasses.is_dataclass(prediction) and not isinstance(prediction, expected):
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            f"{expected.__name__}. Received: {type(prediction).__name__}"
        )


class TemperatureScaling(PostHocMethod):
    """Temperature scaling (Guo et al. 2017): `softmax(logits / T)`.

    `fit` chooses the one temperature `T > 0` that minimises the NLL of the
    labels on held-out data; the argmax, and so the accuracy, is unchanged.
    A `ku.ClassificationPrediction` is read through the logs of its `probs`
    (logits up to a constant per row, which softmax ignores), so the
    calibrated probabilities are `softmax(log(probs) / T)`. The NLL is convex
    in `1/T`, so a golden-section search on `log T` finds the optimum to
    `tol` (at most `max_iter` steps). A temperature at a bound warns: the
    optimum may lie beyond it (every label the same, every prediction right,
    or bounds too narrow).

    `transform(prediction)` returns a new `ClassificationPrediction`:

    - `probs`: `softmax(log(probs) / temperature_)`;
    - `entropy`: recomputed, the entropy of the new `probs`;
    - `label` and `votes`: unchanged (a temperature moves no argmax);
    - `expected_entropy` and `mutual_information`: unchanged. They are
      averages over the Monte Carlo samples, which the prediction no longer
      holds, so they still describe the uncalibrated samples, and
      `entropy = expected_entropy + mutual_information` no longer holds
      after the transform. Rank by `mutual_information` as before.

    Deprecated since 0.3 (removed in 0.4): `fit(logits, labels)` and
    `transform(logits)` with arrays of logits (or of probabilities with
    `from_probs=True`); `transform` then returns the `(N, C)` array of
    calibrated probabilities. Each call warns once.

    Args:
        bounds: `(low, high)`, finite, `0 < low < high`: the range of T.
        tol: Finite number > 0: the width in `log T` at which the search
            stops.
        max_iter: Positive integer: a cap on the search's steps.

    Attributes:
        temperature_: The fitted temperature (T > 1 softens over-confident
            predictions).

    Example:

    >>> val_pred = ku.predict_classification(model, x_val)
    >>> scaler = ku.calibration.TemperatureScaling().fit(val_pred, val_labels)
    >>> calibrated = scaler.transform(ku.predict_classification(model, x_test))
    >>> scaler
    TemperatureScaling(bounds=(0.01, 100.0), tol=1e-06, max_iter=200)
    """

    def __init__(self, bounds=(1e-2, 1e2), tol=1e-6, max_iter=200):
        self.bounds = bounds
        self.tol = tol
        self.max_iter = max_iter
        self._check_params()

    def _check_params(self):
        bounds = self.bounds
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
        self.tol = check_positive_finite(self.tol, "tol")
        self.max_iter = check_positive_int(self.max_iter, "max_iter")

    @staticmethod
    def _check_from_probs(from_probs):
        if from_probs is False:
            raise ValueError(
                "Invalid value received for argument `from_probs`. Expected "
                "None (or True) with a ClassificationPrediction, which holds "
                "probabilities. Received: from_probs=False"
            )

    @staticmethod
    def _array_logits(values, from_probs):
        if from_probs:
            return _log_probs(as_array(values, "probs"))
        logits = as_array(values, "logits")
        if logits.ndim != 2:
            raise ValueError(
                "Invalid value received for argument `logits`. Expected shape "
                f"(N, C). Received: shape {logits.shape}"
            )
        return logits

    def fit(self, prediction, labels, from_probs=None):
        """Fits the temperature on held-out predictions and labels.

        Args:
            prediction: A `ku.ClassificationPrediction`. Deprecated: an
                `(N, C)` array of logits, or of probabilities with
                `from_probs=True`.
            labels: `(N,)` integer labels.
            from_probs: Only for the deprecated array form: whether the
                array holds probabilities (their logs are used as logits).

        Returns:
            self.
        """
        _refuse_other_prediction(prediction, ClassificationPrediction)
        if isinstance(prediction, ClassificationPrediction):
            self._check_from_probs(from_probs)
            return super().fit(prediction, labels)
        _deprecated(
            "TemperatureScaling.fit(logits, labels)",
            "pass a ClassificationPrediction (as ku.predict_classification "
            "returns): fit(prediction, labels).",
        )
        self._check_params()
        self._fit_logits(self._array_logits(prediction, from_probs), labels, 3)
        return self

    def _fit(self, prediction, labels):
        self._fit_logits(_log_probs(prediction.probs), labels, 5)

    def _fit_logits(self, logits, labels, stacklevel):
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
        fitted = nll(math.log(self.temperature_))
        for bound in self.bounds:
            at_bound = abs(math.log(self.temperature_) - math.log(bound)) <= near
            # Every prediction right: the NLL falls towards T -> 0 until it
            # rounds to 0, and the search stops anywhere on that flat stretch
            # (T = 0.134, say); an NLL no better at the bound means the same.
            flat = nll(math.log(bound)) <= fitted + 1e-12 * max(1.0, fitted)
            if at_bound or flat:
                warnings.warn(
                    f"TemperatureScaling: the fitted temperature "
                    f"{self.temperature_:.4g} sits on the bound {bound:g} (or "
                    "the NLL is as low there), so the "
                    "NLL's optimum may lie beyond it (validation labels all "
                    "the same, every prediction right, or bounds too narrow).",
                    UserWarning,
                    stacklevel=stacklevel,
                )

    def transform(self, prediction, from_probs=None):
        """Recalibrates a prediction with the fitted temperature.

        Args:
            prediction: A `ku.ClassificationPrediction`. Deprecated: an
                `(N, C)` array of logits, or of probabilities with
                `from_probs=True`.
            from_probs: Only for the deprecated array form (see `fit`).

        Returns:
            A new `ClassificationPrediction` (see the class docstring for
            each field); for the deprecated array form, the `(N, C)` array
            `softmax(logits / temperature_)`.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        _refuse_other_prediction(prediction, ClassificationPrediction)
        if isinstance(prediction, ClassificationPrediction):
            self._check_from_probs(from_probs)
            return super().transform(prediction)
        self._check_is_fitted("transform")
        _deprecated(
            "TemperatureScaling.transform(logits)",
            "pass a ClassificationPrediction (as ku.predict_classification "
            "returns) to get a calibrated one: transform(prediction).",
        )
        logits = self._array_logits(prediction, from_probs)
        return np.exp(_log_softmax(logits / self.temperature_))

    def _transform(self, prediction):
        probs = np.exp(_log_softmax(_log_probs(prediction.probs) / self.temperature_))
        return dataclasses.replace(prediction, probs=probs, entropy=entropy(probs))


class VarianceScaling(PostHocMethod):
    """One factor on the predicted standard deviations (regression).

    `fit` finds the `s > 0` that maximises the Gaussian likelihood of the
    held-out targets under `N(mean, (s std)^2)`; it has the closed form
    `s^2 = mean(((y - mean) / std)^2)`. `s > 1` means the model was
    over-confident (Levi et al. 2019; Kuleshov et al. 2018 recalibrate the
    whole CDF instead).

    `transform(prediction)` returns a new `ku.RegressionPrediction` whose
    `std`, `aleatoric_std` and `epistemic_std` are all multiplied by `s`, so
    the total variance scales by `s^2` and
    `std^2 = aleatoric_std^2 + epistemic_std^2` still holds; `mean` is
    unchanged.

    Deprecated since 0.3 (removed in 0.4): `transform(std)` with an array of
    standard deviations, which returns `scale_ * std` (one warning per
    call). `fit(y_true, mean, std)`, the argument order of 0.1, is
    deprecated too.

    Attributes:
        scale_: The fitted factor s.

    Example:

    >>> val_pred = ku.predict_regression(model, x_val)
    >>> scaler = ku.calibration.VarianceScaling().fit(val_pred, y_val)
    >>> calibrated = scaler.transform(ku.predict_regression(model, x_test))
    """

    def fit(self, prediction, y_true, *deprecated):
        """Fits the factor on held-out predictions and targets.

        Args:
            prediction: A `ku.RegressionPrediction` (or anything with `mean`
                and `std` attributes), or a `(mean, std)` pair of arrays.
            y_true: The held-out targets, shaped like `mean`.
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
                "TemperatureScaling.fit(prediction, labels).",
                DeprecationWarning,
                stacklevel=2,
            )
            prediction, y_true = (y_true, deprecated[0]), prediction
        return super().fit(prediction, y_true)

    def _fit(self, prediction, y_true):
        if (
            hasattr(prediction, "mean")
            and hasattr(prediction, "std")
            and not isinstance(prediction, np.ndarray)
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

    def transform(self, prediction):
        """Scales a prediction's standard deviations by the fitted factor.

        Args:
            prediction: A `ku.RegressionPrediction`. Deprecated: an array of
                standard deviations (> 0).

        Returns:
            A new `RegressionPrediction` with `std`, `aleatoric_std` and
            `epistemic_std` multiplied by `scale_`; for the deprecated array
            form, the array `scale_ * std`.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        _refuse_other_prediction(prediction, RegressionPrediction)
        if isinstance(prediction, RegressionPrediction):
            return super().transform(prediction)
        self._check_is_fitted("transform")
        _deprecated(
            "VarianceScaling.transform(std)",
            "pass a RegressionPrediction (as ku.predict_regression returns) "
            "to get a calibrated one: transform(prediction).",
        )
        std = as_array(prediction, "std")
        if np.any(std <= 0):
            raise ValueError(
                "Invalid value received for argument `std`. Expected standard "
                f"deviations > 0. Received: smallest {std.min()!r}"
            )
        return self.scale_ * std

    def _transform(self, prediction):
        scale = self.scale_
        return dataclasses.replace(
            prediction,
            std=scale * np.asarray(prediction.std, np.float64),
            aleatoric_std=scale * np.asarray(prediction.aleatoric_std, np.float64),
            epistemic_std=scale * np.asarray(prediction.epistemic_std, np.float64),
        )
