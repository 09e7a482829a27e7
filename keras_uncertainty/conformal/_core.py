"""What every conformal method shares: the finite-sample quantile, groups,
argument checks and the `Interval` result."""

import dataclasses
import math
import numbers
import warnings

import numpy as np

from keras_uncertainty._validation import as_array
from keras_uncertainty.posthoc.base import PostHocMethod


@dataclasses.dataclass(frozen=True)
class Interval:
    """A prediction interval per point and target: `[lower, upper]`.

    Bounds may be infinite: a calibration set too small for the level
    (`ceil((n + 1)(1 - alpha)) > n`) gives `-inf` / `+inf` (with a warning).

    Attributes:
        lower: `(N,)` or `(N, k)` float64, the lower bounds.
        upper: float64 of the same shape, the upper bounds.
    """

    lower: np.ndarray
    upper: np.ndarray

    @property
    def width(self):
        """`upper - lower`, per point and target."""
        return self.upper - self.lower


def check_alpha(alpha, name="alpha"):
    """A miscoverage level in the open interval (0, 1)."""
    ok = (
        not isinstance(alpha, bool)
        and isinstance(alpha, numbers.Real)
        and 0 < float(alpha) < 1
    )
    if not ok:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"miscoverage level in (0, 1), e.g. 0.1 for 90% coverage. "
            f"Received: {name}={alpha!r}"
        )
    return float(alpha)


def match_target(y, like, name="y"):
    """`y` as float64 shaped like `like` (`(N,)` may meet `(N, 1)`)."""
    y = as_array(y, name)
    if y.ndim == like.ndim - 1 and like.shape[-1] == 1:
        y = y[..., None]
    if y.shape != like.shape:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected the "
            f"shape of the predictions, {like.shape}. Received: shape {y.shape}"
        )
    return y


def check_groups(groups, n, name="groups"):
    """A `(n,)` array of group labels (integers or strings, no NaN)."""
    if hasattr(groups, "numpy") and not isinstance(groups, np.ndarray):
        groups = groups.numpy()
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected one group "
            f"label per point, shape ({n},). Received: shape {groups.shape}"
        )
    if groups.dtype.kind == "f" and np.any(np.isnan(groups)):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected group "
            "labels without NaN. Received: "
            f"{int(np.count_nonzero(np.isnan(groups)))} NaN entries"
        )
    if groups.dtype.kind not in "biufUS":
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected integer "
            f"or string group labels. Received: dtype {groups.dtype}"
        )
    return groups


def quantile_rank(n, alpha):
    """`k = ceil((n + 1)(1 - alpha))`, the rank of the conformal quantile
    among `n` sorted scores (float rounding of `(n + 1)(1 - alpha)` just above
    an integer is taken as that integer)."""
    n = np.asarray(n, np.int64)
    raw = (n + 1) * (1.0 - alpha)
    return np.ceil(raw - 1e-9 * np.maximum(raw, 1.0)).astype(np.int64)


class SortedScores:
    """Calibration scores sorted within each group: `scores` `(n, k)` flat,
    group g's block starting at `starts[g]` with `counts[g]` rows."""

    def __init__(self, scores, inverse, num_groups):
        n, width = scores.shape
        counts = np.bincount(inverse, minlength=num_groups)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.empty_like(scores)
        for j in range(width):  # per target column, never per point
            order = np.lexsort((scores[:, j], inverse))
            out[:, j] = scores[order, j]
        self.scores, self.counts, self.starts = out, counts, starts


def sort_scores(scores, groups):
    """Sorts `(n, k)` scores within each group.

    Returns:
        `(groups_, sorted_scores_, group_counts_)`: the unique groups (None
        without groups), the scores sorted within each group's block, and
        each block's size.
    """
    if groups is None:
        return None, np.sort(scores, axis=0), np.array([len(scores)])
    unique, inverse = np.unique(groups, return_inverse=True)
    sorted_ = SortedScores(scores, inverse.ravel(), len(unique))
    return unique, sorted_.scores, sorted_.counts


def conformal_quantiles(sorted_scores, counts, alpha, owner, what="group"):
    """The conformal quantile of each group: the `ceil((n_g+1)(1-alpha))`-th
    smallest of its `n_g` scores, `+inf` (with a warning) where that rank
    exceeds `n_g`.

    Returns:
        `(G, k)` float64.
    """
    counts = np.asarray(counts, np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = quantile_rank(counts, alpha)
    too_few = ranks > counts
    index = starts + np.clip(ranks, 1, np.maximum(counts, 1)) - 1
    index = np.minimum(index, len(sorted_scores) - 1)
    quantiles = sorted_scores[index]
    quantiles[too_few] = np.inf
    if np.any(too_few):
        need = int(math.ceil((1.0 - alpha) / alpha))
        small = counts[too_few].tolist()
        where = (
            f"the calibration set ({small[0]} points)"
            if len(counts) == 1
            else f"{len(small)} {what}(s) (with {', '.join(map(str, small[:5]))}"
            f"{', ...' if len(small) > 5 else ''} points)"
        )
        warnings.warn(
            f"{owner}: {where} has too few points for alpha={alpha:g} "
            f"(ceil((n + 1)(1 - alpha)) > n; at least {need} are needed), so "
            "the conformal quantile is +inf: infinite intervals, or every "
            "class in the sets.",
            UserWarning,
            stacklevel=3,
        )
    return quantiles


def group_index(groups_, groups, n):
    """The index in `groups_` of each of `groups`; a group not seen by `fit`
    is refused."""
    groups = check_groups(groups, n)
    try:
        index = np.searchsorted(groups_, groups)
    except TypeError:
        index = None
    if index is not None:
        clipped = np.minimum(index, len(groups_) - 1)
        found = groups_[clipped] == groups
    if index is None or not np.all(found):
        unseen = (
            np.setdiff1d(groups.astype(str), groups_.astype(str))
            if index is None
            else np.unique(groups[~found])
        )
        raise ValueError(
            "Invalid value received for argument `groups`. Expected groups "
            f"seen at fit time, {groups_[:20].tolist()}. Received: unseen "
            f"groups {unseen[:20].tolist()}"
        )
    return clipped


def _same(a, b):
    """Whether two settings are the same value (True is not 1)."""
    try:
        return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)
    except (TypeError, ValueError):
        return False


class ConformalMethod(PostHocMethod):
    """Shared by the conformal regressors and classifier: `alpha` at init,
    overridable per call; `transform` is the method's prediction.

    The calibration scores do not depend on `alpha`, so an `alpha` set
    after `fit` is honoured: validated where it is used (`method.alpha = 5`
    raises there). The settings the scores do depend on (the classifier's
    `score`, `penalty`, ...) are fixed at `fit`, kept validated in
    `settings_` (scikit-learn style); one changed after `fit` is refused at
    the next use with a ValueError naming it, never mixed silently with
    scores fitted under another: refit."""

    def _check_params(self):
        self.alpha = check_alpha(self.alpha)

    def _fix_settings(self):
        """At `fit`, after `_check_params`: the settings its scores use."""
        config = self.get_config()
        config.pop("alpha")
        self.settings_ = config

    def _check_settings(self):
        """Refuses a setting changed since `fit` (but `alpha`)."""
        fitted = getattr(self, "settings_", None)
        if fitted is None:  # a state saved before `settings_` existed
            return
        for name, value in self.get_config().items():
            if name in fitted and not _same(value, fitted[name]):
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected "
                    f"the value `fit` used, {fitted[name]!r}: the calibration "
                    f"scores were computed with it (call `fit` again). "
                    f"Received: {name}={value!r}, set after `fit`"
                )

    def _alpha(self, alpha):
        self._check_settings()
        return check_alpha(self.alpha if alpha is None else alpha)
