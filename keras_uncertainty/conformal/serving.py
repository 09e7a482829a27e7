"""In-graph intervals and sets from a fitted conformal method: what
`ku.export(..., conformal=fitted)` adds to the serving signature.

The fitted quantile at the method's `alpha` becomes a constant of the graph;
the intervals and sets are computed in float64 from the served summary
(`mean`, `std` or `probs`) with the formulas of `predict_interval` /
`predict_set`, then returned as float32 bounds and boolean sets.
"""

import numpy as np
import tensorflow as tf

from keras_uncertainty.conformal.classification import ConformalClassifier
from keras_uncertainty.conformal.regression import (
    ConformalizedQuantileRegressor,
    NormalizedConformalRegressor,
    SplitConformalRegressor,
    cqr_bounds,
)

REGRESSORS = (
    SplitConformalRegressor,
    NormalizedConformalRegressor,
    ConformalizedQuantileRegressor,
)


def check_servable(method, task_kind, name="conformal"):
    """Refuses what cannot be served: an unfitted or unknown method, a kind
    that does not match the task, Mondrian groups (the signature has no
    group input) and randomized sets (a served set must be repeatable).

    Args:
        method: The fitted conformal method.
        task_kind: `"regression"` or `"classification"`, the served task.
        name: The argument's name in messages.
    """
    if isinstance(method, REGRESSORS):
        kind = "regression"
    elif isinstance(method, ConformalClassifier):
        kind = "classification"
    else:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a fitted "
            "ku.conformal method (SplitConformalRegressor, "
            "NormalizedConformalRegressor, ConformalizedQuantileRegressor or "
            f"ConformalClassifier). Received: {type(method).__name__}"
        )
    if not method.is_fitted:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a fitted "
            f"method: call `fit` on calibration data first. Received: an "
            f"unfitted {type(method).__name__}"
        )
    if kind == "regression" and method.groups_ is not None:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a method "
            "fitted without groups: the serving signature has no group input. "
            f"Received: {type(method).__name__} fitted with groups"
        )
    if kind == "classification" and method.randomized:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected "
            "randomized=False: served sets must be repeatable. Received: "
            "randomized=True"
        )

    if kind != task_kind:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"{task_kind} method for a {task_kind} task. Received: "
            f"{type(method).__name__} ({kind})"
        )


def _finite_rows(values):
    ok = tf.math.is_finite(values)
    return tf.reduce_all(ok, axis=list(range(1, values.shape.rank)))


def _class_scores(probs, method):
    """`class_scores` of `ku.conformal.classification` in TensorFlow."""
    if method.score == "lac":
        return 1.0 - probs
    order = tf.argsort(-probs, axis=1, stable=True)
    cumulative = tf.cumsum(tf.gather(probs, order, batch_dims=1), axis=1)
    ranks = tf.argsort(order, axis=1, stable=True)  # the inverse permutation
    scores = tf.gather(cumulative, ranks, batch_dims=1)
    if method.score == "raps":
        excess = tf.maximum(ranks + 1 - method.k_reg, 0)
        scores = scores + method.penalty * tf.cast(excess, scores.dtype)
    return scores


def serving_outputs(method, summary, prefix=""):
    """The conformal outputs of one served summary.

    Args:
        method: A fitted method that passed `check_servable`.
        summary: The served summary dict (tensors).
        prefix: The output's key prefix (`"price_"` for a model with
            several outputs, else `""`).

    Returns:
        `{prefix + "lower": ..., prefix + "upper": ...}` (float32, shaped like
        the target) for a regressor, `{prefix + "sets": ...}` (bool,
        `(batch, C)`) for a classifier.
    """
    q = np.asarray(method.quantile(), np.float64)
    if isinstance(method, ConformalClassifier):
        probs = tf.cast(summary[prefix + "probs"], tf.float64)
        if probs.shape[-1] != method.num_classes_:
            raise ValueError(
                "Invalid value received for argument `conformal`. Expected a "
                f"classifier fitted on the model's {probs.shape[-1]} classes. "
                f"Received: one fitted on {method.num_classes_}"
            )
        scores = _class_scores(probs, method)
        sets = scores <= tf.constant(q[None, :], tf.float64)
        if not method.allow_empty_sets:  # the top class where a set is empty
            top = tf.one_hot(tf.argmax(probs, axis=1), method.num_classes_) > 0
            empty = tf.logical_not(tf.reduce_any(sets, axis=1, keepdims=True))
            sets = tf.logical_or(sets, tf.logical_and(top, empty))
        sets = tf.logical_and(sets, _finite_rows(probs)[:, None])
        return {prefix + "sets": sets}
    mean = tf.cast(summary[prefix + "mean"], tf.float64)
    k = q.shape[1]
    width = 2 * k if isinstance(method, ConformalizedQuantileRegressor) else k
    if mean.shape.rank != 2 or mean.shape[-1] != width:
        raise ValueError(
            "Invalid value received for argument `conformal`. Expected a "
            f"method fitted on {k} target(s), which needs a served `mean` of "
            f"shape (batch, {width}). Received: a model whose served mean has "
            f"shape {tuple(mean.shape)}"
        )
    if isinstance(method, ConformalizedQuantileRegressor):
        lower, upper = cqr_bounds(mean[:, :k], mean[:, k:], q[0], tf)
    elif isinstance(method, NormalizedConformalRegressor):
        half = tf.cast(summary[prefix + "std"], tf.float64) * q[0]
        lower, upper = mean - half, mean + half
    else:
        lower, upper = mean - q[0], mean + q[0]
    dtype = summary[prefix + "mean"].dtype
    return {
        prefix + "lower": tf.cast(lower, dtype),
        prefix + "upper": tf.cast(upper, dtype),
    }
