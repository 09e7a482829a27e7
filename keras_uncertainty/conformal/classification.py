"""Split conformal classification: LAC (THR), APS and RAPS prediction sets."""

import numbers

import numpy as np

from keras_uncertainty._validation import check_bool, classification_inputs
from keras_uncertainty.conformal._core import (
    ConformalMethod,
    SortedScores,
    conformal_quantiles,
)

SCORES = ("lac", "aps", "raps")


def _probs(prediction):
    probs = getattr(prediction, "probs", prediction)
    if hasattr(probs, "numpy") and not isinstance(probs, np.ndarray):
        probs = probs.numpy()
    try:
        probs = np.asarray(probs, np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            "ClassificationPrediction or an (N, C) array of probabilities. "
            f"Received: {type(prediction).__name__}"
        ) from None
    return probs


def class_scores(probs, score, randomized=False, u=None, penalty=0.0, k_reg=0):
    """The conformity score of every class, `(N, C)`, vectorized.

    - `"lac"`: `1 - p_c`;
    - `"aps"`: the mass of the classes ranked above c plus `p_c`
      (`u * p_c` when randomized, `u ~ U(0, 1)` one per row);
    - `"raps"`: the APS score plus `penalty * max(0, rank_c - k_reg)`, where
      `rank_c` is c's 1-based rank by decreasing probability.

    Ties in probability are ranked by class index (a stable sort).

    Args:
        probs: `(N, C)` float64 probabilities.
        score: `"lac"`, `"aps"` or `"raps"`.
        randomized: Whether to use `u`.
        u: `(N,)` uniform draws (randomized only).
        penalty: RAPS's lambda.
        k_reg: RAPS's k_reg.

    Returns:
        `(N, C)` float64.
    """
    if score == "lac":
        return 1.0 - probs
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(probs.shape[1])[None, :], axis=1)
    scores = np.take_along_axis(cumulative, ranks, axis=1)
    if randomized:
        scores = scores - probs + u[:, None] * probs
    if score == "raps":
        scores = scores + penalty * np.maximum(ranks + 1 - k_reg, 0)
    return scores


def _label_scores(probs, labels, score, u, penalty, k_reg):
    """`class_scores(...)[i, labels[i]]` without sorting: the classes ranked
    before the label are those more likely, or as likely with a smaller
    index (equal to the sorted formula up to float rounding)."""
    own = np.take_along_axis(probs, labels[:, None], axis=1)
    if score == "lac":
        return 1.0 - own[:, 0]
    index = np.arange(probs.shape[1])[None, :]
    before = (probs > own) | ((probs == own) & (index < labels[:, None]))
    scores = np.sum(np.where(before, probs, 0.0), axis=1)
    scores = scores + (own[:, 0] if u is None else u * own[:, 0])
    if score == "raps":
        rank = np.count_nonzero(before, axis=1) + 1
        scores = scores + penalty * np.maximum(rank - k_reg, 0)
    return scores


def _sets(probs, q, score, u, penalty, k_reg):
    """`class_scores(...) <= q` (q `(1,)` or per class `(C,)`), computed in
    the order of decreasing probability and scattered back."""
    if score == "lac":
        return 1.0 - probs <= q[None, :]
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    scores = np.cumsum(ranked, axis=1)
    if u is not None:
        scores = scores - ranked + u[:, None] * ranked
    if score == "raps":
        positions = np.arange(1, probs.shape[1] + 1)
        scores = scores + penalty * np.maximum(positions - k_reg, 0)[None, :]
    limit = q[order] if len(q) > 1 else q[None, :]
    sets = np.empty(probs.shape, bool)
    np.put_along_axis(sets, order, scores <= limit, axis=1)
    return sets


class ConformalClassifier(ConformalMethod):
    """Split conformal prediction sets: LAC (THR), APS and RAPS.

    With `s(x, c)` the conformity score of class c (lower: more conforming)
    and n calibration points of labels `y_i`, `q` is the
    `ceil((n + 1)(1 - alpha))`-th smallest of `s(x_i, y_i)`, and the set of
    a new x is `{c : s(x, c) <= q}`, a row of a boolean `(N, C)` matrix. For
    exchangeable data `P(y in set) >= 1 - alpha` (and `< 1 - alpha +
    1/(n + 1)` for scores without ties). The scores, with `p` the
    probabilities and `rank_c` the 1-based rank of class c by decreasing
    probability:

    - `"lac"` (the default; least ambiguous set-valued classifier, Sadinle
      et al. 2019; THR in Angelopoulos et al.; MAPIE's default): `s = 1 -
      p_c`. The smallest sets on average at the guaranteed coverage (Sadinle
      et al. prove it minimal): on a 90%-accurate 10-class classifier at
      alpha 0.05 about one class per set, where APS holds several (5.9 in
      the issue that made LAC the default). Its coverage is marginal: hard
      inputs may be under-covered and easy ones over-covered, and it may
      return empty sets where no class is likely enough.
    - `"aps"` (adaptive prediction sets, Romano et al. 2020):
      `s = sum of p over classes ranked before c + p_c` (non-randomized),
      or `... + u p_c` with one `u ~ U(0, 1)` per point (randomized: the
      coverage is then exactly `1 - alpha` in expectation up to
      `1/(n + 1)`, and sets may be empty). Sets grow with the model's
      uncertainty (closer to coverage conditional on the input's
      difficulty), at the cost of larger sets, most of all with a
      miscalibrated or overconfident model.
    - `"raps"` (regularized APS, Angelopoulos et al. 2021, "Uncertainty sets
      for image classifiers using conformal prediction"): the APS score plus
      `penalty * max(0, rank_c - k_reg)`, which discourages the long tails
      of unlikely classes and gives smaller, more stable sets than APS,
      still adaptive: the choice when sets should grow on hard inputs.

    The sets are top-K sets for APS and RAPS (the score grows along the
    ranking). Every score can give an empty set: LAC where no class is
    likely enough, and APS and RAPS (randomized or not) where the top class
    alone scores above `q`, that is, for the inputs the model is most sure
    of (`p_max > q`: with a confident model `q` is near 1, and such inputs
    get no class, though they are almost always right). The coverage
    guarantee holds either way. `allow_empty_sets=False` puts the top class
    into every empty set (Angelopoulos et al.'s `allow_zero_sets=False`):
    sets are never empty and coverage can only rise (it may then exceed
    `1 - alpha + 1/(n + 1)`). With `class_conditional=True` each class c gets its own
    quantile `q_c` from the calibration points labelled c (Mondrian by
    class, Vovk 2003), and the set is `{c : s(x, c) <= q_c}`: coverage
    `>= 1 - alpha` within every class. A class with too few calibration
    points (`ceil((n_c + 1)(1 - alpha)) > n_c`, or none) gets `q_c = +inf`
    and is in every set, with a warning.

    `prediction`: a `ku.ClassificationPrediction` (its `probs`, the MC or
    ensemble mean) or an `(N, C)` array of probabilities; labels are
    integers in `[0, C)`. Rows must be finite and sum to 1 (within 1e-3).

    Args:
        alpha: Miscoverage level in (0, 1); each call of `predict_set` may
            ask for another.
        score: `"lac"` (default), `"aps"` or `"raps"`.
        randomized: APS and RAPS only: whether to randomize the score of
            the last class (needs `seed` for repeatable sets).
        class_conditional: Whether to calibrate one quantile per class.
        penalty: RAPS's `lambda >= 0` (default 0.01).
        k_reg: RAPS's `k_reg`, an integer >= 0: ranks beyond it are
            penalized (default 1).
        seed: Seed of the uniform draws of a randomized score (None: fresh
            draws); `fit` and each `predict_set` call draw in turn from one
            generator made at `fit`.
        allow_empty_sets: Whether a set may be empty (the exact conformal
            rule, the default); False adds the most probable class to every
            empty set.

    The settings but `alpha` are fixed at `fit` (`settings_`): the
    calibration scores depend on them, so one changed after `fit` is
    refused at the next use with a ValueError naming it (refit). An `alpha`
    set after `fit` is used, validated where it is used.

    Attributes:
        settings_: The validated settings (but `alpha`) `fit` used.
        quantile_: `(G,)` quantile at `alpha`: G = 1, or C with
            `class_conditional`.
        scores_: `(n, 1)` calibration scores, sorted within each class with
            `class_conditional`.
        group_counts_: `(G,)` calibration points per quantile.
        num_classes_: C.
        n_: The number of calibration points.

    Example:

    >>> cal = ku.predict_classification(model, x_cal)
    >>> conformal = ku.conformal.ConformalClassifier(alpha=0.1, score="raps")
    >>> conformal.fit(cal, y_cal)
    >>> sets = conformal.predict_set(ku.predict_classification(model, x))
    >>> sets.sum(axis=1)  # set sizes
    """

    def __init__(
        self,
        alpha=0.1,
        score="lac",
        randomized=False,
        class_conditional=False,
        penalty=0.01,
        k_reg=1,
        seed=None,
        allow_empty_sets=True,
    ):
        self.alpha = alpha
        self.score = score
        self.randomized = randomized
        self.class_conditional = class_conditional
        self.penalty = penalty
        self.k_reg = k_reg
        self.seed = seed
        self.allow_empty_sets = allow_empty_sets
        self._draws = None  # the generator of randomized scores, made at fit
        self._check_params()

    def _check_params(self):
        ConformalMethod._check_params(self)
        if self.score not in SCORES:
            raise ValueError(
                "Invalid value received for argument `score`. Expected one of "
                f"{SCORES}. Received: score={self.score!r}"
            )
        check_bool(self.randomized, "randomized")
        check_bool(self.class_conditional, "class_conditional")
        check_bool(self.allow_empty_sets, "allow_empty_sets")
        if self.randomized and self.score == "lac":
            raise ValueError(
                "Invalid value received for argument `randomized`. Expected "
                "False with score='lac' (only APS and RAPS randomize). "
                "Received: randomized=True"
            )
        penalty = self.penalty
        if (
            isinstance(penalty, bool)
            or not isinstance(penalty, numbers.Real)
            or not 0 <= penalty < np.inf
        ):
            raise ValueError(
                "Invalid value received for argument `penalty`. Expected a "
                f"finite number >= 0. Received: penalty={penalty!r}"
            )
        self.penalty = float(penalty)
        k_reg = self.k_reg
        if (
            isinstance(k_reg, bool)
            or not isinstance(k_reg, numbers.Integral)
            or (k_reg < 0)
        ):
            raise ValueError(
                "Invalid value received for argument `k_reg`. Expected an "
                f"integer >= 0. Received: k_reg={k_reg!r}"
            )
        self.k_reg = int(k_reg)
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, numbers.Integral)
            or self.seed < 0
        ):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected None or "
                f"an integer >= 0. Received: seed={self.seed!r}"
            )

    def scores(self, prediction, u=None):
        """The conformity score of every class of every point.

        Args:
            prediction: A `ku.ClassificationPrediction` or `(N, C)`
                probabilities.
            u: Randomized scores only: `(N,)` uniform draws in [0, 1]; None
                draws them from the method's generator.

        Returns:
            `(N, C)` float64 scores (see the class docstring).
        """
        probs = _probs(prediction)
        _, probs = classification_inputs(np.zeros(len(probs), np.int64), probs)
        return self._class_scores(probs, u)

    def _draw(self, n, u):
        """The uniform draws of a randomized score (None otherwise)."""
        if not self.randomized:
            return None
        if u is None:
            if self._draws is None:
                self._draws = np.random.default_rng(self.seed)
            return self._draws.uniform(size=n)
        u = np.asarray(u, np.float64)
        if u.shape != (n,) or np.any(~((u >= 0) & (u <= 1))):
            raise ValueError(
                "Invalid value received for argument `u`. Expected "
                f"{n} uniform draws in [0, 1]. Received: shape {u.shape}"
            )
        return u

    def _class_scores(self, probs, u=None):
        u = self._draw(len(probs), u)
        return class_scores(
            probs, self.score, self.randomized, u, self.penalty, self.k_reg
        )

    def fit(self, prediction, labels):
        """Fits the conformal quantile(s) on a held-out calibration set.

        Args:
            prediction: A `ku.ClassificationPrediction` or `(N, C)`
                probabilities of the calibration points.
            labels: `(N,)` integer labels in `[0, C)`.

        Returns:
            self, fitted.
        """
        self._check_params()
        labels, probs = classification_inputs(labels, _probs(prediction))
        self._fix_settings()
        self._draws = np.random.default_rng(self.seed)
        u = self._draw(len(labels), None)
        own = _label_scores(probs, labels, self.score, u, self.penalty, self.k_reg)[
            :, None
        ]
        num_classes = probs.shape[1]
        if self.class_conditional:
            sorted_ = SortedScores(own, labels, num_classes)
        else:
            sorted_ = None
        if sorted_ is None:
            self.scores_ = np.sort(own, axis=0)
            self.group_counts_ = np.array([len(own)])
        else:
            self.scores_, self.group_counts_ = sorted_.scores, sorted_.counts
        self.num_classes_ = int(num_classes)
        self.n_ = int(len(labels))
        self.quantile_ = conformal_quantiles(
            self.scores_, self.group_counts_, self.alpha, "ConformalClassifier", "class"
        )[:, 0]
        return self

    def _fit(self, prediction, labels):
        self.fit(prediction, labels)

    def quantile(self, alpha=None):
        """The fitted conformal quantile(s) of the scores at `alpha`.

        Args:
            alpha: Miscoverage level in (0, 1); None: the `alpha` given at
                construction.

        Returns:
            `(G,)` float64: one quantile, or one per class with
            `class_conditional`; `+inf` where a class has too few points.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("quantile")
        return conformal_quantiles(
            self.scores_,
            self.group_counts_,
            self._alpha(alpha),
            "ConformalClassifier",
            "class",
        )[:, 0]

    def predict_set(self, prediction, alpha=None, u=None):
        """Prediction sets with finite-sample coverage `1 - alpha`.

        Args:
            prediction: A `ku.ClassificationPrediction` or `(N, C)`
                probabilities, C as at fit time.
            alpha: Miscoverage level in (0, 1); None: the `alpha` given at
                construction.
            u: Randomized scores only: `(N,)` uniform draws to use (None:
                drawn from the generator seeded by `seed`).

        Returns:
            `(N, C)` boolean matrix: `sets[i, c]` is whether class c is in
            point i's set.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("predict_set")
        q = self.quantile(alpha)
        probs = _probs(prediction)
        _, probs = classification_inputs(np.zeros(len(probs), np.int64), probs)
        if probs.shape[1] != self.num_classes_:
            raise ValueError(
                "Invalid value received for argument `prediction`. Expected "
                f"{self.num_classes_} classes, as at fit time. Received: shape "
                f"{probs.shape}"
            )
        u = self._draw(len(probs), u)
        sets = _sets(probs, q, self.score, u, self.penalty, self.k_reg)
        if not self.allow_empty_sets:
            empty = ~sets.any(axis=1)
            sets[empty, np.argmax(probs[empty], axis=1)] = True
        return sets

    def transform(self, prediction):
        """`predict_set(prediction)` at the `alpha` given at construction.

        Args:
            prediction: New predictions.

        Returns:
            `(N, C)` boolean sets.
        """
        return self.predict_set(prediction)

    def _transform(self, prediction):
        return self.predict_set(prediction)
