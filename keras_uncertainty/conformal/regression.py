"""Split conformal regression: absolute, normalized and quantile scores,
optionally group-conditional (Mondrian)."""

import dataclasses

import numpy as np

from keras_uncertainty.conformal._core import (
    ConformalMethod,
    Interval,
    check_groups,
    conformal_quantiles,
    float_array,
    group_index,
    match_target,
    sort_scores,
)


@dataclasses.dataclass(frozen=True)
class QuantilePrediction:
    """Lower and upper quantile predictions, the input of
    `ConformalizedQuantileRegressor`.

    A quantile head trained with `ku.losses.PinballLoss(quantiles=(lo, hi))`
    outputs `(N, 2k)`: the k lower quantiles, then the k upper ones (the
    layout of the Gaussian NLL's means and log-variances).
    `QuantilePrediction.from_array(model.predict(x))` splits it; with MC
    dropout or an ensemble, split the averaged output,
    `ku.predict_regression(model, x, variance_head=False).mean`.
    `ConformalizedQuantileRegressor` also takes the `(N, 2k)` array or a
    `(lower, upper)` pair directly.

    Attributes:
        lower: `(N,)` or `(N, k)` float64, the lower quantiles.
        upper: float64 of the same shape, the upper quantiles.
    """

    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_array(cls, values):
        """Splits a quantile head's `(N, 2k)` output into lower and upper.

        Args:
            values: `(N, 2k)` array: k lower quantiles, then k upper ones.

        Returns:
            A `QuantilePrediction` with `(N, k)` fields.
        """
        values = float_array(values, "prediction")
        if values.ndim != 2 or values.shape[-1] % 2:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected "
                "a quantile head's (N, 2k) output: k lower quantiles, then k "
                f"upper ones. Received: shape {values.shape}"
            )
        k = values.shape[-1] // 2
        return cls(lower=values[:, :k], upper=values[:, k:])


def sorted_band(lower, upper, xp=np):
    """A quantile band with crossed quantiles sorted: `(min, max)` of the
    two, element-wise (`xp`: numpy, or TensorFlow in a served graph)."""
    return xp.minimum(lower, upper), xp.maximum(lower, upper)


def cqr_bounds(lower, upper, q, xp=np):
    """CQR's interval `[lo - q, hi + q]` of the sorted band (`sorted_band`);
    where `q < 0` narrows it past zero width, the band's midpoint (never
    `lower > upper`). One formula for `predict_interval` (numpy) and the
    served graph of `ku.export` (`xp=tf`)."""
    lower, upper = sorted_band(lower, upper, xp)
    low, high = lower - q, upper + q
    middle = 0.5 * lower + 0.5 * upper
    crossed = low > high
    return xp.where(crossed, middle, low), xp.where(crossed, middle, high)


def _bad_prediction(expected, prediction):
    return ValueError(
        "Invalid value received for argument `prediction`. Expected "
        f"{expected}. Received: {type(prediction).__name__}"
    )


class _ConformalRegressor(ConformalMethod):
    """Split conformal regression on a score `s(prediction, y)`; see the
    public subclasses."""

    def __init__(self, alpha=0.1):
        self.alpha = alpha
        self._check_params()

    # Subclass parts ----------------------------------------------------------

    def _read(self, prediction):
        """`prediction` -> dict of float64 arrays of one shape."""
        raise NotImplementedError

    def _score(self, parts, y):
        raise NotImplementedError

    def _bounds(self, parts, q):
        raise NotImplementedError

    # The contract -----------------------------------------------------------

    def fit(self, prediction, y, groups=None):
        """Fits the conformal quantile on a held-out calibration set.

        Args:
            prediction: Predictions on the calibration set (see the class).
            y: `(N,)` or `(N, k)` calibration targets, shaped like the
                predictions (`(N,)` against `(N, 1)` is accepted).
            groups: Optional `(N,)` group labels (integers or strings): a
                separate quantile per group (Mondrian conformal prediction),
                so coverage holds within each group. Then `predict_interval`
                needs the groups of the new points too.

        Returns:
            self, fitted.
        """
        self._check_params()
        parts = self._read(prediction)
        like = next(iter(parts.values()))
        y = match_target(y, like)
        if groups is not None:
            groups = check_groups(groups, len(y))
        scores = self._score(parts, y).reshape(len(y), -1)
        self.groups_, self.scores_, self.group_counts_ = sort_scores(scores, groups)
        self.n_ = int(len(y))
        self.quantile_ = conformal_quantiles(
            self.scores_, self.group_counts_, self.alpha, type(self).__name__
        )
        return self

    def _fit(self, prediction, y):
        self.fit(prediction, y)

    def quantile(self, alpha=None):
        """The fitted conformal quantile of the scores at `alpha`.

        The `ceil((n + 1)(1 - alpha))`-th smallest of the n calibration
        scores (per group), `+inf` when that rank exceeds n.

        Args:
            alpha: Miscoverage level in (0, 1); None: the `alpha` given at
                construction.

        Returns:
            `(G, k)` float64: one row per group (G = 1 without groups), one
            column per target.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("quantile")
        return conformal_quantiles(
            self.scores_,
            self.group_counts_,
            self._alpha(alpha),
            type(self).__name__,
        )

    def predict_interval(self, prediction, alpha=None, groups=None):
        """Prediction intervals with finite-sample coverage `1 - alpha`.

        Args:
            prediction: New predictions, of the kind `fit` was given.
            alpha: Miscoverage level in (0, 1); None: the `alpha` given at
                construction.
            groups: `(N,)` group labels of the new points: required when
                `fit` was given groups, refused otherwise; each must be a
                group seen by `fit`.

        Returns:
            An `Interval` of float64 arrays shaped like the predictions.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("predict_interval")
        q = self.quantile(alpha)
        parts = self._read(prediction)
        like = next(iter(parts.values()))
        n = len(like)
        if self.groups_ is None:
            if groups is not None:
                raise ValueError(
                    "Invalid value received for argument `groups`. Expected "
                    "None: this method was fitted without groups. Received: "
                    "an array of groups"
                )
            rows = np.broadcast_to(q[0], (n, q.shape[1]))
        else:
            if groups is None:
                raise ValueError(
                    "Invalid value received for argument `groups`. Expected "
                    "the group of each new point: this method was fitted with "
                    "groups (Mondrian). Received: groups=None"
                )
            rows = q[group_index(self.groups_, groups, n)]
        if rows.shape[1] != like[0].size:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected "
                f"{rows.shape[1]} target(s) per point, as at fit time. "
                f"Received: shape {like.shape}"
            )
        lower, upper = self._bounds(parts, rows.reshape(like.shape))
        return Interval(lower=lower, upper=upper)

    def transform(self, prediction, groups=None):
        """`predict_interval(prediction, groups=groups)` at the `alpha` given
        at construction.

        Args:
            prediction: New predictions.
            groups: Their groups, for a Mondrian method.

        Returns:
            An `Interval`.
        """
        return self.predict_interval(prediction, groups=groups)

    def _transform(self, prediction):
        return self.predict_interval(prediction)

    def fit_transform(self, prediction, y, groups=None):
        """`fit(prediction, y, groups).transform(prediction, groups)`.

        Args:
            prediction: Calibration predictions.
            y: Their targets.
            groups: Their groups (optional).

        Returns:
            An `Interval`.
        """
        return self.fit(prediction, y, groups).transform(prediction, groups)


class SplitConformalRegressor(_ConformalRegressor):
    """Split conformal regression with absolute residuals (Vovk et al. 2005;
    Lei et al. 2018).

    Score `s_i = |y_i - mean_i|` on n calibration points; `q` the
    `ceil((n + 1)(1 - alpha))`-th smallest score; interval
    `[mean - q, mean + q]`. For exchangeable data,
    `P(y in interval) >= 1 - alpha`, and `< 1 - alpha + 1/(n + 1)` when the
    scores have no ties. When `ceil((n + 1)(1 - alpha)) > n` (n below
    `1/alpha - 1`), `q = +inf`: the interval is the whole line, with a
    warning (at `fit` and at each use). Each target of an `(N, k)`
    prediction gets its own quantile.

    `prediction`: a `ku.RegressionPrediction` (its `mean` is used), anything
    with a `mean` attribute, or an array of point predictions.

    Args:
        alpha: Miscoverage level in (0, 1) (0.1: 90% intervals); each call
            of `predict_interval` may ask for another; one set after `fit`
            is used (and validated) from then on.

    Attributes:
        quantile_: `(G, k)` conformal quantile at the `alpha` of `fit`, per
            group (`quantile(alpha)` gives it at any level).
        scores_: `(n, k)` calibration scores, sorted within each group.
        groups_: The groups seen by `fit` (sorted), or None.
        group_counts_: `(G,)` calibration points per group.
        n_: The number of calibration points.

    Example:

    >>> cal = ku.predict_regression(model, x_cal)
    >>> conformal = ku.conformal.SplitConformalRegressor(alpha=0.1)
    >>> conformal.fit(cal, y_cal)
    >>> interval = conformal.predict_interval(ku.predict_regression(model, x))
    >>> interval.lower, interval.upper
    """

    def _read(self, prediction):
        if isinstance(prediction, (tuple, list)):
            raise _bad_prediction(
                "a RegressionPrediction, an object with `mean`, or an array of means",
                prediction,
            )
        mean = getattr(prediction, "mean", prediction)
        if callable(mean):  # a numpy array's own .mean method
            mean = prediction
        return {"mean": float_array(mean, "prediction")}

    def _score(self, parts, y):
        with np.errstate(over="ignore"):
            return np.abs(y - parts["mean"])

    def _bounds(self, parts, q):
        mean = parts["mean"]
        return mean - q, mean + q


class NormalizedConformalRegressor(_ConformalRegressor):
    """Normalized (locally adaptive) split conformal regression (Papadopoulos
    et al. 2008; Lei et al. 2018).

    Score `s_i = |y_i - mean_i| / std_i` with any predicted standard
    deviation (MC dropout, ensemble spread, a variance head: a
    `ku.RegressionPrediction`'s `std`); `q` the
    `ceil((n + 1)(1 - alpha))`-th smallest score; interval
    `[mean - q std, mean + q std]`: wider where the model is less sure, with
    the same marginal guarantee as `SplitConformalRegressor`.

    `prediction`: a `ku.RegressionPrediction`, anything with `mean` and
    `std` attributes, or a `(mean, std)` pair; `std > 0`.

    Args:
        alpha: Miscoverage level in (0, 1); each call of `predict_interval`
            may ask for another.

    Attributes:
        quantile_: `(G, k)` conformal quantile of the scores at `alpha`.
        scores_: `(n, k)` calibration scores, sorted within each group.
        groups_: The groups seen by `fit` (sorted), or None.
        group_counts_: `(G,)` calibration points per group.
        n_: The number of calibration points.

    Example:

    >>> conformal = ku.conformal.NormalizedConformalRegressor(alpha=0.1)
    >>> conformal.fit(ku.predict_regression(model, x_cal), y_cal)
    >>> interval = conformal.predict_interval(ku.predict_regression(model, x))
    """

    def _read(self, prediction):
        if isinstance(prediction, (tuple, list)) and len(prediction) == 2:
            mean, std = prediction
        elif hasattr(prediction, "mean") and hasattr(prediction, "std"):
            if isinstance(prediction, np.ndarray):
                raise _bad_prediction(
                    "a RegressionPrediction or a (mean, std) pair", prediction
                )
            mean, std = prediction.mean, prediction.std
        else:
            raise _bad_prediction(
                "a RegressionPrediction or a (mean, std) pair", prediction
            )
        mean = float_array(mean, "mean")
        std = float_array(std, "std")
        if std.shape != mean.shape:
            raise ValueError(
                "Invalid value received for argument `std`. Expected the shape "
                f"of `mean`, {mean.shape}. Received: shape {std.shape}"
            )
        if np.any(std <= 0):
            raise ValueError(
                "Invalid value received for argument `std`. Expected standard "
                f"deviations > 0. Received: {int(np.sum(std <= 0))} entries "
                f"<= 0 (smallest {std.min()!r})"
            )
        return {"mean": mean, "std": std}

    def _score(self, parts, y):
        with np.errstate(over="ignore"):
            return np.abs(y - parts["mean"]) / parts["std"]

    def _bounds(self, parts, q):
        with np.errstate(over="ignore", invalid="ignore"):
            half = q * parts["std"]
        return parts["mean"] - half, parts["mean"] + half


class ConformalizedQuantileRegressor(_ConformalRegressor):
    """Conformalized quantile regression, CQR (Romano, Patterson and Candes
    2019).

    A quantile head (trained with `ku.losses.PinballLoss`) predicts a lower
    quantile `lo` and an upper quantile `hi`. Score
    `s_i = max(lo_i - y_i, y_i - hi_i)` (negative inside the band); `q` the
    `ceil((n + 1)(1 - alpha))`-th smallest score; interval
    `[lo - q, hi + q]` (narrower than the band when `q < 0`). The band's
    width adapts to the input as the quantile head learned it; the
    coverage guarantee is that of split conformal prediction.

    `prediction`: a `QuantilePrediction(lower, upper)`, a `(lower, upper)`
    pair of arrays, or the head's `(N, 2k)` output (k lower quantiles, then
    k upper ones; with MC dropout or an ensemble, the averaged output
    `ku.predict_regression(model, x, variance_head=False).mean`).

    Crossed quantiles (a head can predict `lo > hi` for some inputs: the
    pinball losses of the two quantiles are trained independently) are
    sorted, at `fit` and at prediction: the band is `[min(lo, hi),
    max(lo, hi)]` (the rearrangement of Chernozhukov et al. 2010, which
    only brings each estimate closer to the true quantiles). Where
    `q < 0` narrows a band below zero width (`hi - lo < -2q`), the
    interval is the band's midpoint, `lower == upper`: never `lower >
    upper`.

    Args:
        alpha: Miscoverage level in (0, 1); the head's quantiles are usually
            `alpha / 2` and `1 - alpha / 2`, but any band works.

    Attributes:
        quantile_: `(G, k)` conformal quantile of the scores at `alpha`.
        scores_: `(n, k)` calibration scores, sorted within each group.
        groups_: The groups seen by `fit` (sorted), or None.
        group_counts_: `(G,)` calibration points per group.
        n_: The number of calibration points.

    Example:

    >>> model.compile("adam", loss=ku.losses.PinballLoss((0.05, 0.95)))
    >>> cqr = ku.conformal.ConformalizedQuantileRegressor(alpha=0.1)
    >>> cqr.fit(model.predict(x_cal), y_cal)
    >>> interval = cqr.predict_interval(model.predict(x_test))
    """

    def _read(self, prediction):
        if isinstance(prediction, QuantilePrediction):
            lower, upper = prediction.lower, prediction.upper
        elif isinstance(prediction, (tuple, list)) and len(prediction) == 2:
            lower, upper = prediction
        elif dataclasses.is_dataclass(prediction):
            raise _bad_prediction(
                "a QuantilePrediction, a (lower, upper) pair or a (N, 2k) array",
                prediction,
            )
        else:
            split = QuantilePrediction.from_array(prediction)
            lower, upper = split.lower, split.upper
        lower = float_array(lower, "lower")
        upper = float_array(upper, "upper")
        if lower.shape != upper.shape:
            raise ValueError(
                "Invalid value received for argument `upper`. Expected the "
                f"shape of `lower`, {lower.shape}. Received: shape {upper.shape}"
            )
        # Crossed quantiles sorted (see the class docstring).
        lower, upper = sorted_band(lower, upper)
        return {"lower": lower, "upper": upper}

    def _score(self, parts, y):
        return np.maximum(parts["lower"] - y, y - parts["upper"])

    def _bounds(self, parts, q):
        return cqr_bounds(parts["lower"], parts["upper"], q)
