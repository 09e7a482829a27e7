"""One-parameter recalibration of classifiers and regressors."""

import dataclasses
import math
import warnings

import numpy as np

from keras_uncertainty._validation import (
    as_array,
    check_positive_finite,
    check_positive_int,
    check_positive_std,
    check_probs,
    classification_inputs,
    regression_inputs,
)
from keras_uncertainty.calibration._inputs import (
    log_probs,
    read_labels,
    read_scores,
    result,
)
from keras_uncertainty.posthoc.base import PostHocMethod
from keras_uncertainty.sampling.formulas import entropy, log_softmax
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    RegressionPrediction,
)


def _log_probs(probs):
    """Checked `(N, C)` probabilities -> their logs (see `log_probs`)."""
    return log_probs(check_probs(probs, "probs"))


def _deprecated(call, instead):
    warnings.warn(
        f"{call} is deprecated and will be removed in 0.4; {instead}",
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

    Arrays, read as by every classification calibrator (see
    `ku.calibration.classification`), with `from_logits` said: `(N, C)`
    logits (`from_logits=True`, calibrated as `softmax(logits / T)`) or
    probabilities (`from_logits=False`, read through their logs), or the
    positive class's scores of a binary task as `(N,)`. `transform` then
    returns a new `ClassificationPrediction` of one sample (as
    `ClassificationPrediction.from_probs`).

    Deprecated since 0.3 (removed in 0.4): an array without `from_logits`
    (read as logits, or as probabilities with `from_probs=True`);
    `transform` then returns the `(N, C)` array of calibrated
    probabilities. Each call warns once, saying how to state
    `from_logits`.

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

    def _check_forms(self, prediction, from_logits, from_probs):
        """Refuses what `fit` / `transform` cannot read; whether the array
        form is the deprecated one (no `from_logits`)."""
        _refuse_other_prediction(prediction, ClassificationPrediction)
        if isinstance(prediction, ClassificationPrediction):
            self._check_from_probs(from_probs)
            read_scores(prediction, from_logits)  # from_logits must be None
            return False
        if from_logits is not None and from_probs is not None:
            raise ValueError(
                "Invalid value received for argument `from_probs`. Expected "
                "None with `from_logits` (`from_probs=True` is the deprecated "
                "spelling of `from_logits=False`). Received: "
                f"from_probs={from_probs!r}"
            )
        return from_logits is None

    @staticmethod
    def _legacy_instead(call):
        return (
            "pass a ClassificationPrediction (as ku.predict_classification "
            f"returns), or say what the array holds: {call}(logits, ..., "
            f"from_logits=True) or {call}(probs, ..., from_logits=False), "
            "which return a ClassificationPrediction. Without `from_logits` "
            "the array is read as logits (as probabilities with "
            "from_probs=True)."
        )

    def fit(self, prediction, labels, from_logits=None, from_probs=None):
        """Fits the temperature on held-out predictions and labels.

        Args:
            prediction: A `ku.ClassificationPrediction` (read through the
                logs of its `probs`), or an array with `from_logits` said:
                `(N, C)` logits (`from_logits=True`) or probabilities
                (`from_logits=False`, read through their logs), or `(N,)` /
                `(N, 1)` scores of the positive class of a binary task (as
                in `ku.calibration.classification`).
            labels: `(N,)` integer labels.
            from_logits: None with a `ClassificationPrediction`; True or
                False with an array. Deprecated: an array without it, read
                as logits (one DeprecationWarning per call, which says how
                to state it).
            from_probs: Deprecated spelling of `from_logits=False` (only
                without `from_logits`).

        Returns:
            self.
        """
        legacy = self._check_forms(prediction, from_logits, from_probs)
        if isinstance(prediction, ClassificationPrediction):
            return super().fit(prediction, labels)
        self._check_params()
        if legacy:
            _deprecated(
                "TemperatureScaling.fit(logits, labels) with an array and no "
                "`from_logits`",
                self._legacy_instead("fit"),
            )
            logits = self._array_logits(prediction, from_probs)
            self._fit_logits(logits, labels, 3)
            return self
        scores = read_scores(prediction, from_logits)
        self._fit_logits(scores.logits, read_labels(labels, scores), 3)
        return self

    def _fit(self, prediction, labels):
        self._fit_logits(_log_probs(prediction.probs), labels, 5)

    def _fit_logits(self, logits, labels, stacklevel):
        uniform = np.full_like(logits, 1.0 / logits.shape[1])
        labels, _ = classification_inputs(labels, uniform)
        rows = np.arange(len(labels))

        def nll(log_t):
            return -np.mean(log_softmax(logits / math.exp(log_t))[rows, labels])

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

    def transform(self, prediction, from_logits=None, from_probs=None):
        """Recalibrates a prediction with the fitted temperature.

        Args:
            prediction: As in `fit`, with the same number of classes.
            from_logits: As in `fit`: None with a `ClassificationPrediction`;
                True or False with an array.
            from_probs: Deprecated, as in `fit`.

        Returns:
            A new `ClassificationPrediction` (see the class docstring for
            each field; from an array, read as one sample:
            `ClassificationPrediction.from_probs` of the calibrated
            probabilities); for the deprecated array form without
            `from_logits`, the `(N, C)` array `softmax(logits /
            temperature_)`.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        legacy = self._check_forms(prediction, from_logits, from_probs)
        if isinstance(prediction, ClassificationPrediction):
            return super().transform(prediction)
        self._check_is_fitted("transform")
        if legacy:
            _deprecated(
                "TemperatureScaling.transform(logits) with an array and no "
                "`from_logits`",
                self._legacy_instead("transform"),
            )
            logits = self._array_logits(prediction, from_probs)
            return np.exp(log_softmax(logits / self.temperature_))
        scores = read_scores(prediction, from_logits)
        return result(scores, np.exp(log_softmax(scores.logits / self.temperature_)))

    def _transform(self, prediction):
        probs = np.exp(log_softmax(_log_probs(prediction.probs) / self.temperature_))
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
            "VarianceScaling.transform(std) with an array",
            "pass a RegressionPrediction (as ku.predict_regression returns) "
            "to get a calibrated one: transform(prediction).",
        )
        return self.scale_ * check_positive_std(as_array(prediction, "std"))

    def _transform(self, prediction):
        scale = self.scale_
        return dataclasses.replace(
            prediction,
            std=scale * np.asarray(prediction.std, np.float64),
            aleatoric_std=scale * np.asarray(prediction.aleatoric_std, np.float64),
            epistemic_std=scale * np.asarray(prediction.epistemic_std, np.float64),
        )
