"""Recalibration of classifiers beyond one temperature: vector scaling,
histogram binning and isotonic calibration.

Every method here reads the same inputs and returns a new
`ku.ClassificationPrediction` from `transform`:

- a `ku.ClassificationPrediction` (as `ku.predict_classification` returns),
  read through its `probs`; `from_logits` must then be left at None;
- or an array, with `from_logits=True` (logits) or `from_logits=False`
  (probabilities) said explicitly: `(N, C)` for C >= 2 classes, or a binary
  task as `(N,)` or `(N, 1)` scores of the positive class (a sigmoid's
  logit or probability), which is read as the two columns
  `(1 - p, p)` (logits `(0, z)`). An `(N, 2)` array is a binary task too.

The returned prediction always holds `(N, C)` probabilities (`(N, 2)` for a
binary task, the positive class in column 1), and:

- `probs`: the recalibrated probabilities;
- `label`: recomputed, their argmax (lowest index on ties). Unlike a
  temperature, these maps may move the argmax, and so the accuracy;
- `entropy`: recomputed, the entropy of the new `probs`;
- `expected_entropy`, `mutual_information`, `votes`: from a
  `ClassificationPrediction`, unchanged (averages over Monte Carlo samples
  the prediction no longer holds, so `entropy = expected_entropy +
  mutual_information` no longer holds after the transform; rank by
  `mutual_information` as before). From an array, read as one sample:
  `expected_entropy` is the new `entropy`, `mutual_information` is 0 and
  `votes` is None.
"""

import warnings

import numpy as np

from keras_uncertainty import _budget
from keras_uncertainty._validation import check_positive_finite, check_positive_int
from keras_uncertainty.calibration._inputs import read_labels, read_scores, result
from keras_uncertainty.calibration._isotonic import isotonic_fit, isotonic_predict
from keras_uncertainty.posthoc.base import PostHocMethod
from keras_uncertainty.sampling.formulas import log_softmax


class _ClassificationRecalibration(PostHocMethod):
    """`fit`, `transform` and `fit_transform` with `from_logits`, shared."""

    def fit(self, prediction, labels, from_logits=None):
        """Fits the map on held-out predictions and their labels.

        Args:
            prediction: A `ku.ClassificationPrediction`, or an array of
                logits (`from_logits=True`) or probabilities
                (`from_logits=False`): `(N, C)`, or `(N,)` / `(N, 1)` for the
                positive class of a binary task.
            labels: `(N,)` integer labels in `[0, C)` (0 or 1 for a binary
                task).
            from_logits: None with a `ClassificationPrediction`; True or
                False with an array.

        Returns:
            self.
        """
        self._check_params()
        scores = read_scores(prediction, from_logits)
        labels = read_labels(labels, scores)
        self._fit_scores(scores, labels)
        self.num_classes_ = int(scores.probs.shape[1])
        return self

    def transform(self, prediction, from_logits=None):
        """Recalibrates a prediction with the fitted map.

        Args:
            prediction: As in `fit`, with the same number of classes.
            from_logits: As in `fit`.

        Returns:
            A new `ku.ClassificationPrediction` (see
            `ku.calibration.classification` for each field); the input is
            left unchanged.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("transform")
        scores = read_scores(prediction, from_logits)
        classes = scores.probs.shape[1]
        if classes != self.num_classes_:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected "
                f"{self.num_classes_} classes, as in `fit`. Received: "
                f"{classes} classes"
            )
        return result(scores, self._map_scores(scores))

    def _fit(self, prediction, labels):
        scores = read_scores(prediction, None)
        self._fit_scores(scores, read_labels(labels, scores))
        self.num_classes_ = int(scores.probs.shape[1])

    def _transform(self, prediction):
        return self.transform(prediction)


class _OneVsRest(_ClassificationRecalibration):
    """A map per class of that class's probability, fitted one-vs-rest; a
    binary task maps only the positive class (column 1) and sets column 0 to
    `1 - p`; with C > 2 the mapped rows are divided by their sum (a row
    mapped to all 0 becomes uniform)."""

    def _check_columns(self, count):
        """Called with the number of mapped classes before any is fitted."""

    def _fit_scores(self, scores, labels):
        classes = scores.probs.shape[1]
        columns = [1] if classes == 2 else range(classes)
        self._check_columns(len(columns))
        fitted = [
            self._fit_column(scores.probs[:, c], (labels == c).astype(np.float64))
            for c in columns
        ]
        self._store_columns(fitted)

    def _map_scores(self, scores):
        probs = scores.probs
        if probs.shape[1] == 2:
            positive = np.clip(self._map_column(0, probs[:, 1]), 0.0, 1.0)
            return np.stack([1.0 - positive, positive], axis=1)
        mapped = np.stack(
            [self._map_column(c, probs[:, c]) for c in range(probs.shape[1])], axis=1
        )
        mapped = np.clip(mapped, 0.0, 1.0)
        total = mapped.sum(axis=1, keepdims=True)
        uniform = np.full_like(mapped, 1.0 / mapped.shape[1])
        safe_total = np.where(total > 0, total, 1.0)
        return np.where(total > 0, mapped / safe_total, uniform)


class VectorScaling(_ClassificationRecalibration):
    """Vector scaling (Guo et al. 2017): `softmax(scale * logits + bias)`.

    One scale and one bias per class, `z'_c = scale_c z_c + bias_c`, fitted
    by minimising the mean NLL of the held-out labels (temperature scaling
    is the special case of one shared scale and no bias). The NLL is convex
    in `(scale, bias)`, and `fit` minimises it by Newton's method from the
    identity (`scale = 1`, `bias = 0`): each step solves with the
    pseudo-inverse of the exact Hessian (the bias is defined only up to a
    common constant, and a column of logits that is all 0 leaves its scale
    undefined, so the Hessian is singular), then halves the step until the
    NLL decreases enough (Armijo). It stops when the largest absolute
    gradient entry is at most `tol`, or when no step decreases the NLL
    (the optimum to float precision), or after `max_iter` steps. It warns
    when the NLL has no finite minimiser: when a class never occurs among
    the labels, when every prediction is right with a margin (the NLL still
    falls from the fitted parameters to twice them), or when `max_iter` is
    reached. A step costs
    O(N C^2) for N points and C classes, so the method suits up to a few
    hundred classes. The fitted bias is shifted to mean 0 (which no
    probability sees).

    The logits are the array given with `from_logits=True`; otherwise (a
    `ku.ClassificationPrediction`, or probabilities) the logs of the
    probabilities. Vector scaling is not invariant to a per-row shift of the
    logits (unlike temperature scaling), so the two readings of one model
    fit different maps. A binary task given as `(N,)` logits `z` is read as
    the two logits `(0, z)`: the fit is then Platt scaling of `z`.

    See `ku.calibration.classification` for the inputs and for each field
    of the returned `ClassificationPrediction`.

    Args:
        tol: Finite number > 0: the stopping threshold on the largest
            absolute entry of the mean NLL's gradient.
        max_iter: Positive integer: a cap on Newton's steps.

    Attributes:
        scale_: `(C,)` the per-class scales.
        bias_: `(C,)` the per-class biases (mean 0).
        n_iter_: The Newton steps taken.
        num_classes_: C.

    Example:

    >>> val_pred = ku.predict_classification(model, x_val)
    >>> scaler = ku.calibration.VectorScaling().fit(val_pred, val_labels)
    >>> calibrated = scaler.transform(ku.predict_classification(model, x_test))
    >>> # or from a Keras model's logits (an array needs `from_logits`)
    >>> scaler = ku.calibration.VectorScaling().fit(
    ...     val_logits, val_labels, from_logits=True
    ... )
    """

    def __init__(self, tol=1e-8, max_iter=100):
        self.tol = tol
        self.max_iter = max_iter
        self._check_params()

    def _check_params(self):
        self.tol = check_positive_finite(self.tol, "tol")
        self.max_iter = check_positive_int(self.max_iter, "max_iter")

    @staticmethod
    def _nll_grad_hessian(logits, onehot, scale, bias, order=2):
        n, classes = logits.shape
        log_probs = log_softmax(logits * scale + bias)
        nll = -np.sum(log_probs * onehot) / n
        if order == 0:
            return nll, None, None
        probs = np.exp(log_probs)
        residual = (probs - onehot) / n
        grad = np.concatenate([np.sum(residual * logits, 0), np.sum(residual, 0)])
        pz = probs * logits
        h_ww = np.diag(np.sum(pz * logits, 0)) - pz.T @ pz
        h_wb = np.diag(np.sum(pz, 0)) - pz.T @ probs
        h_bb = np.diag(np.sum(probs, 0)) - probs.T @ probs
        hessian = np.block([[h_ww, h_wb], [h_wb.T, h_bb]]) / n
        return nll, grad, hessian

    def _fit_scores(self, scores, labels):
        logits = scores.logits
        classes = logits.shape[1]
        onehot = np.eye(classes)[labels]
        scale, bias = np.ones(classes), np.zeros(classes)
        nll, grad, hessian = self._nll_grad_hessian(logits, onehot, scale, bias)
        converged, steps = False, 0
        while True:
            if np.max(np.abs(grad)) <= self.tol:
                converged = True
                break
            if steps >= self.max_iter:
                break
            direction = -np.linalg.pinv(hessian, rcond=1e-12, hermitian=True) @ grad
            slope = float(grad @ direction)
            if slope >= 0:  # rounding: fall back on steepest descent
                direction, slope = -grad, -float(grad @ grad)
            step = 1.0
            for _ in range(60):
                new_scale = scale + step * direction[:classes]
                new_bias = bias + step * direction[classes:]
                new_nll, _, _ = self._nll_grad_hessian(
                    logits, onehot, new_scale, new_bias, order=0
                )
                if new_nll <= nll + 1e-4 * step * slope:
                    break
                step *= 0.5
            else:
                converged = True  # no step decreases the NLL: float precision
                break
            scale, bias, steps = new_scale, new_bias, steps + 1
            nll, grad, hessian = self._nll_grad_hessian(logits, onehot, scale, bias)
        # The NLL still falls along the ray to 2 (scale, bias): it has no
        # finite minimiser (every prediction right with a margin), and the
        # gradient only fell below `tol` far out on that ray.
        doubled, _, _ = self._nll_grad_hessian(
            logits, onehot, 2 * scale, 2 * bias, order=0
        )
        missing = np.flatnonzero(onehot.sum(0) == 0)
        if not converged or doubled < nll or missing.size:
            reason = (
                f"Newton's method stopped after max_iter={self.max_iter} steps "
                f"with a gradient of {np.max(np.abs(grad)):.3g} > tol="
                f"{self.tol:g}"
                if not converged
                else f"the NLL ({nll:.3g}) still decreases beyond the fit"
            )
            warnings.warn(
                f"VectorScaling: {reason}: the NLL may have no finite "
                "minimiser (a class never among the labels: "
                f"{missing.tolist()}, or every prediction right with a "
                "margin), so the fitted map is one point on a path to "
                "infinity.",
                UserWarning,
                stacklevel=3,
            )
        self.scale_ = scale
        self.bias_ = bias - bias.mean()
        self.n_iter_ = int(steps)

    def _map_scores(self, scores):
        return np.exp(log_softmax(scores.logits * self.scale_ + self.bias_))


class HistogramBinning(_OneVsRest):
    """Histogram binning (Zadrozny & Elkan 2001), one-vs-rest.

    The predicted probability of each class is cut into `num_bins` bins of
    equal width on `[0, 1]`, `[k/B, (k+1)/B)` for `k < B - 1` and
    `[(B-1)/B, 1]` for the last (as `np.histogram` cuts them); `fit`
    stores, for each class and bin, the fraction of held-out points in the
    bin whose label is that class, and `transform` replaces each probability
    with its bin's fraction. A bin no held-out point fell in keeps its
    midpoint (as netcal does). A binary task maps only the positive class's
    probability (column 1; column 0 is `1 - p`); with C > 2 classes each
    class is mapped on its own and each row is then divided by its sum (a
    row mapped to all 0 becomes uniform), so the result is a distribution
    but no longer exactly the bin fractions.

    The map is a step function: points in one bin get one probability, so
    the argmax may change and ties between classes are frequent (broken
    towards the lowest index). Logits given with `from_logits=True` are
    turned into probabilities by softmax (sigmoid for `(N,)` logits) first.
    See `ku.calibration.classification` for the inputs and for each field
    of the returned `ClassificationPrediction`.

    Args:
        num_bins: Positive integer, the number of equal-width bins. Refused
            (`ValueError`, before any bin exists) when its arrays, about
            `8 * (9 + 4 K) * num_bins` bytes for K mapped classes, exceed
            `keras_uncertainty._budget.MAX_WORKING_BYTES` (16 GiB).

    Attributes:
        bin_edges_: `(num_bins + 1,)` the bin edges, `linspace(0, 1, B + 1)`.
        bin_values_: `(K, num_bins)` the calibrated probability of each bin,
            for each mapped class (K = 1, the positive class, for a binary
            task; else K = C).
        bin_counts_: `(K, num_bins)` how many held-out points fell in each
            bin.
        num_classes_: C.

    Example:

    >>> binning = ku.calibration.HistogramBinning(num_bins=10)
    >>> binning.fit(val_probs_of_positive, val_labels, from_logits=False)
    >>> calibrated = binning.transform(test_probs_of_positive, from_logits=False)
    >>> calibrated.probs[:, 1]  # the positive class
    """

    def __init__(self, num_bins=15):
        self.num_bins = num_bins
        self._check_params()

    def _check_params(self):
        self.num_bins = check_positive_int(self.num_bins, "num_bins")
        self._check_memory(1)

    def _check_columns(self, count):
        self._check_memory(count)

    def _check_memory(self, columns):
        """Refuses, before any bin exists, a `num_bins` whose arrays for
        `columns` mapped classes exceed the memory budget."""
        b = self.num_bins + 1
        most = _budget.most_within(8 * (9 + 4 * columns))
        _budget.check_bytes(
            "num_bins",
            self.num_bins,
            8 * b * (9 + 4 * columns),
            f"the float64 bin edges, counts and values of {columns} mapped "
            f"class(es) and their temporaries ({8 * (9 + 4 * columns)} bytes "
            "per bin)",
            f"Use fewer bins (at most {most} fit; 10 to 20 is usual).",
        )

    @staticmethod
    def _bin_of(edges, probs):
        index = np.searchsorted(edges, probs, side="right") - 1
        return np.clip(index, 0, len(edges) - 2)

    def _fit_column(self, probs, hits):
        edges = np.linspace(0.0, 1.0, self.num_bins + 1)
        index = self._bin_of(edges, probs)
        counts = np.bincount(index, minlength=self.num_bins)
        sums = np.bincount(index, weights=hits, minlength=self.num_bins)
        midpoints = 0.5 * (edges[:-1] + edges[1:])
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(counts > 0, sums / np.maximum(counts, 1), midpoints)
        return values, counts, edges

    def _store_columns(self, fitted):
        self.bin_values_ = np.stack([values for values, _, _ in fitted])
        self.bin_counts_ = np.stack([counts for _, counts, _ in fitted])
        self.bin_edges_ = fitted[0][2]

    def _map_column(self, column, probs):
        return self.bin_values_[column][self._bin_of(self.bin_edges_, probs)]


class IsotonicCalibration(_OneVsRest):
    """Isotonic calibration (Zadrozny & Elkan 2002), one-vs-rest.

    For each class, `fit` finds the non-decreasing map of that class's
    predicted probability to the held-out indicator `1{label == class}`
    with the least squared error (isotonic regression, by
    pool-adjacent-violators; tied probabilities share one value), the fit
    scikit-learn's `IsotonicRegression` makes. `transform` evaluates the map
    linearly between the fitted points and at the end values outside them
    (scikit-learn's `out_of_bounds="clip"`). A binary task maps only the
    positive class's probability (column 1; column 0 is `1 - p`); with
    C > 2 classes each class is mapped on its own and each row is then
    divided by its sum (a row mapped to all 0 becomes uniform), as
    scikit-learn's `CalibratedClassifierCV` does.

    Isotonic maps are flat over stretches, so the argmax may change and ties
    between classes occur (broken towards the lowest index). Logits given
    with `from_logits=True` are turned into probabilities by softmax
    (sigmoid for `(N,)` logits) first. See `ku.calibration.classification`
    for the inputs and for each field of the returned
    `ClassificationPrediction`.

    Attributes:
        x_thresholds_: A list of K `(M_k,)` arrays, increasing: the
            predicted probabilities at the knots of each mapped class's map
            (K = 1, the positive class, for a binary task; else K = C).
        y_thresholds_: A list of K `(M_k,)` arrays, non-decreasing: the
            calibrated probabilities there.
        num_classes_: C.

    Example:

    >>> val_pred = ku.predict_classification(model, x_val)
    >>> iso = ku.calibration.IsotonicCalibration().fit(val_pred, val_labels)
    >>> calibrated = iso.transform(ku.predict_classification(model, x_test))
    """

    def _fit_column(self, probs, hits):
        return isotonic_fit(probs, hits)

    def _store_columns(self, fitted):
        self.x_thresholds_ = [x for x, _ in fitted]
        self.y_thresholds_ = [y for _, y in fitted]

    def _map_column(self, column, probs):
        return isotonic_predict(
            self.x_thresholds_[column], self.y_thresholds_[column], probs
        )
