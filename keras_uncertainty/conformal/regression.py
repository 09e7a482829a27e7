"""Split conformal regression: absolute, normalized and quantile scores,
optionally group-conditional (Mondrian)."""

import dataclasses
import warnings

import numpy as np

from keras_uncertainty._validation import as_array, check_positive_std
from keras_uncertainty.conformal._core import (
    ConformalMethod,
    Interval,
    check_groups,
    conformal_quantiles,
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
        values = as_array(values, "prediction")
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


# The arrays each regressor reads, by keyword (`fit(mean=..., y=...)`).
ARRAY_KEYWORDS = ("mean", "std", "lower", "upper")


def _is_pair(prediction):
    return isinstance(prediction, (tuple, list)) and len(prediction) == 2


def _has_fields(prediction, *names):
    """Whether `prediction` is an object with these fields (a
    `RegressionPrediction`, say); a numpy array's own `.mean` / `.std`
    methods do not count."""
    return not isinstance(prediction, np.ndarray) and all(
        hasattr(prediction, name) and not callable(getattr(prediction, name))
        for name in names
    )


_SPLIT_EXPECTED = (
    "a RegressionPrediction, an object with `mean`, a (mean, std) pair, an "
    "array of means, or mean= by keyword"
)
_CQR_EXPECTED = (
    "a QuantilePrediction, lower= and upper= by keyword, a quantile head's "
    "(N, 2k) output or a RegressionPrediction of it"
)


class _ConformalRegressor(ConformalMethod):
    """Split conformal regression on a score `s(prediction, y)`; see the
    public subclasses."""

    # The arrays the score reads, by keyword.
    _needs = ()

    def __init__(self, alpha=0.1):
        self.alpha = alpha
        self._check_params()

    # Subclass parts ----------------------------------------------------------

    def _from_prediction(self, prediction):
        """A `prediction` given positionally -> dict of its raw arrays,
        keyed by `_needs`."""
        raise NotImplementedError

    def _check_parts(self, parts, keyword=False):
        """Raw arrays -> checked float64 arrays of one shape (`keyword`:
        whether they were given by keyword, for the messages)."""
        raise NotImplementedError

    def _read(self, prediction, arrays=None):
        """`prediction`, or the arrays given by keyword -> dict of float64
        arrays of one shape, keyed by `_needs`."""
        owner = type(self).__name__
        given = {k: v for k, v in (arrays or {}).items() if v is not None}
        if given:
            if prediction is not None:
                raise ValueError(
                    "Invalid value received for argument `prediction`. Expected "
                    f"None when the arrays are given by keyword "
                    f"({', '.join(f'{k}=' for k in given)}): one or the other. "
                    f"Received: {type(prediction).__name__}"
                )
            for name in given:
                if name not in self._needs:
                    raise ValueError(
                        f"Invalid value received for argument `{name}`. "
                        f"Expected None: {owner} reads "
                        f"{' and '.join(f'`{k}`' for k in self._needs)} only. "
                        f"Received: an array for `{name}`"
                    )
            for name in self._needs:
                if name not in given:
                    raise ValueError(
                        f"Invalid value received for argument `{name}`. "
                        f"Expected an array: {owner} reads "
                        f"{' and '.join(f'`{k}`' for k in self._needs)}. "
                        f"Received: {name}=None"
                    )
            return self._check_parts(given, keyword=True)
        if prediction is None:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected "
                "a prediction, or the arrays by keyword ("
                f"{', '.join(f'{k}=' for k in self._needs)}). Received: "
                "prediction=None"
            )
        return self._check_parts(self._from_prediction(prediction))

    def _score(self, parts, y):
        raise NotImplementedError

    def _bounds(self, parts, q):
        raise NotImplementedError

    # The contract -----------------------------------------------------------

    def fit(
        self,
        prediction=None,
        y=None,
        groups=None,
        *,
        mean=None,
        std=None,
        lower=None,
        upper=None,
    ):
        """Fits the conformal quantile on a held-out calibration set.

        Args:
            prediction: Predictions on the calibration set (see the class),
                or None when the arrays are given by keyword.
            y: `(N,)` or `(N, k)` calibration targets, shaped like the
                predictions (`(N,)` against `(N, 1)` is accepted).
            groups: Optional `(N,)` group labels (integers or strings): a
                separate quantile per group (Mondrian conformal prediction),
                so coverage holds within each group. Then `predict_interval`
                needs the groups of the new points too.
            mean: The predicted means, by keyword (instead of `prediction`;
                `SplitConformalRegressor`, `NormalizedConformalRegressor`).
            std: The predicted standard deviations, by keyword
                (`NormalizedConformalRegressor`).
            lower: The lower quantiles, by keyword
                (`ConformalizedQuantileRegressor`).
            upper: The upper quantiles, by keyword
                (`ConformalizedQuantileRegressor`).

        Returns:
            self, fitted.
        """
        self._check_params()
        arrays = {"mean": mean, "std": std, "lower": lower, "upper": upper}
        parts = self._read(prediction, arrays)
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

    def predict_interval(
        self,
        prediction=None,
        alpha=None,
        groups=None,
        *,
        mean=None,
        std=None,
        lower=None,
        upper=None,
    ):
        """Prediction intervals with finite-sample coverage `1 - alpha`.

        Args:
            prediction: New predictions, in any form the class takes (see
                the class), or None when the arrays are given by keyword.
            alpha: Miscoverage level in (0, 1); None: the `alpha` given at
                construction.
            groups: `(N,)` group labels of the new points: required when
                `fit` was given groups, refused otherwise; each must be a
                group seen by `fit`.
            mean: By keyword, as in `fit`.
            std: By keyword, as in `fit`.
            lower: By keyword, as in `fit`.
            upper: By keyword, as in `fit`.

        Returns:
            An `Interval` of float64 arrays shaped like the predictions.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("predict_interval")
        q = self.quantile(alpha)
        arrays = {"mean": mean, "std": std, "lower": lower, "upper": upper}
        parts = self._read(prediction, arrays)
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

    def transform(self, prediction=None, groups=None, **arrays):
        """`predict_interval(prediction, groups=groups, **arrays)` at the
        `alpha` given at construction.

        Args:
            prediction: New predictions (or None with the arrays by keyword).
            groups: Their groups, for a Mondrian method.
            **arrays: `mean=`, `std=`, `lower=`, `upper=`, as in `fit`.

        Returns:
            An `Interval`.
        """
        return self.predict_interval(prediction, groups=groups, **arrays)

    def _transform(self, prediction):
        return self.predict_interval(prediction)

    def fit_transform(self, prediction=None, y=None, groups=None, **arrays):
        """`fit(prediction, y, groups, **arrays)`, then
        `transform(prediction, groups, **arrays)`.

        Args:
            prediction: Calibration predictions (or None with the arrays by
                keyword).
            y: Their targets.
            groups: Their groups (optional).
            **arrays: `mean=`, `std=`, `lower=`, `upper=`, as in `fit`.

        Returns:
            An `Interval`.
        """
        fitted = self.fit(prediction, y, groups, **arrays)
        return fitted.transform(prediction, groups, **arrays)


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

    Inputs (the same forms as `NormalizedConformalRegressor`'s, of which
    this one reads only the means): a `ku.RegressionPrediction` (its `mean`),
    anything with a `mean` attribute, a `(mean, std)` pair (the std is not
    used), an array of point predictions, or the means by keyword,
    `fit(mean=..., y=...)` / `predict_interval(mean=...)`.

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

    _needs = ("mean",)

    def _from_prediction(self, prediction):
        if isinstance(prediction, QuantilePrediction):
            raise _bad_prediction(_SPLIT_EXPECTED, prediction)
        if _has_fields(prediction, "mean"):
            return {"mean": prediction.mean}
        if _is_pair(prediction):  # (mean, std): the std is not used
            return {"mean": prediction[0]}
        if isinstance(prediction, (tuple, list)):
            raise _bad_prediction(_SPLIT_EXPECTED, prediction)
        return {"mean": prediction}

    def _check_parts(self, parts, keyword=False):
        return {"mean": as_array(parts["mean"], "mean" if keyword else "prediction")}

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

    Inputs: a `ku.RegressionPrediction`, anything with `mean` and `std`
    attributes, a `(mean, std)` pair, or the arrays by keyword,
    `fit(mean=..., std=..., y=...)`; `std > 0`. A bare array (means without
    standard deviations) is refused.

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

    _needs = ("mean", "std")

    def _from_prediction(self, prediction):
        expected = (
            "a RegressionPrediction, a (mean, std) pair, or mean= and std= by keyword"
        )
        if isinstance(prediction, QuantilePrediction):
            raise _bad_prediction(expected, prediction)
        if _is_pair(prediction):
            return {"mean": prediction[0], "std": prediction[1]}
        if _has_fields(prediction, "mean", "std"):
            return {"mean": prediction.mean, "std": prediction.std}
        raise _bad_prediction(expected, prediction)

    def _check_parts(self, parts, keyword=False):
        mean = as_array(parts["mean"], "mean")
        std = as_array(parts["std"], "std")
        if std.shape != mean.shape:
            raise ValueError(
                "Invalid value received for argument `std`. Expected the shape "
                f"of `mean`, {mean.shape}. Received: shape {std.shape}"
            )
        return {"mean": mean, "std": check_positive_std(std)}

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

    Inputs: a `QuantilePrediction(lower, upper)`, the quantiles by keyword
    (`fit(lower=..., upper=..., y=...)`), the head's `(N, 2k)` output (k
    lower quantiles, then k upper ones), or a `ku.RegressionPrediction` of
    that head (with MC dropout or an ensemble,
    `ku.predict_regression(model, x, variance_head=False)`, whose `mean`
    is the averaged output). Deprecated since 0.3 (removed in 0.4): a
    `(lower, upper)` pair, which the other regressors read as
    `(mean, std)`; it still works, with a DeprecationWarning.

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

    _needs = ("lower", "upper")

    def _from_prediction(self, prediction):
        if isinstance(prediction, QuantilePrediction):
            return {"lower": prediction.lower, "upper": prediction.upper}
        if _is_pair(prediction):
            warnings.warn(
                "ConformalizedQuantileRegressor with a (lower, upper) pair is "
                "deprecated and will be removed in 0.4: to the other conformal "
                "regressors a pair is (mean, std). Pass the quantiles by "
                "keyword, fit(lower=..., upper=..., y=...), or a "
                "QuantilePrediction(lower, upper).",
                DeprecationWarning,
                stacklevel=4,
            )
            return {"lower": prediction[0], "upper": prediction[1]}
        if _has_fields(prediction, "mean"):  # the averaged quantile head
            values = prediction.mean
        elif isinstance(prediction, (tuple, list)) or _has_fields(prediction, "lower"):
            raise _bad_prediction(_CQR_EXPECTED, prediction)
        else:
            values = prediction
        split = QuantilePrediction.from_array(values)
        return {"lower": split.lower, "upper": split.upper}

    def _check_parts(self, parts, keyword=False):
        lower = as_array(parts["lower"], "lower")
        upper = as_array(parts["upper"], "upper")
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
