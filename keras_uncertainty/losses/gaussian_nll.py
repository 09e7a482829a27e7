"""Gaussian negative log-likelihood on (mean, log-variance) outputs.

Heteroscedastic regression (Nix & Weigend 1994; Kendall & Gal 2017): the
network predicts, for each of k targets, a mean `mu` and a log-variance
`s = log sigma^2`; the last axis of `y_pred` holds the k means, then the k
log-variances. Predicting `s` instead of `sigma^2` keeps the loss finite and
its gradients well scaled without a positivity constraint.
"""

import math
import numbers

import keras
from keras import ops

from keras_uncertainty._precision import widen
from keras_uncertainty._validation import check_choice, check_finite, unit_interval

_PACKAGE = "keras_uncertainty"
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
# The scaled squared error (y - mu)^2 * exp(-s) is computed exactly while it
# is at most exp(_LOG_LIMIT) and s >= -_LOG_LIMIT, which keeps it, its
# gradients and a batch's sum far below float32's maximum (about exp(88.7)).
_LOG_LIMIT = 80.0
# Below that, exp(-s) continues along its tangent for at most this many
# nats; further down the loss stops growing (its gradient in s is then 0.5,
# as for a perfect fit).
_TANGENT_SPAN = 1000.0


def split_mean_log_var(y_pred):
    """Splits `y_pred` of last dimension 2k into (mean, log_var), each k wide.

    The one place that defines the output layout shared by the loss and by
    `ku.predict_regression`.

    Args:
        y_pred: A tensor whose last dimension is 2k: k means, then k
            log-variances.

    Returns:
        `(mean, log_var)`, two tensors with last dimension k.
    """
    width = y_pred.shape[-1]
    if width is not None and width % 2:
        raise ValueError(
            "Expected `y_pred` to hold k means followed by k log-variances, so "
            "its last dimension must be 2*k for k targets. Received: y_pred "
            f"with shape {tuple(y_pred.shape)} (last dimension {width} is odd)"
        )
    k = width // 2 if width is not None else ops.shape(y_pred)[-1] // 2
    return y_pred[..., :k], y_pred[..., k:]


def align_targets(y_true, per_target, columns=2, unit="means"):
    """Gives `y_true` the shape (and dtype) of `per_target`, one column per
    target, accepting `(N,)` for one target: the target check of every
    regression loss whose `y_pred` holds `columns` columns per target.

    Args:
        y_true: Targets, `(N, k)` or `(N,)` when k = 1.
        per_target: A `(N, k)` slice of `y_pred` (the means, or the NIG's
            gamma).
        columns: Columns of `y_pred` per target (2: mean and log-variance;
            4: a Normal-Inverse-Gamma), for the message.
        unit: What the k columns of `per_target` are, for the message.

    Returns:
        `y_true` cast to `per_target`'s dtype, `(N, k)`; a ValueError when
        its number of targets does not match.
    """
    y_true = ops.cast(y_true, per_target.dtype)
    if len(y_true.shape) == len(per_target.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    k_true, k_pred = y_true.shape[-1], per_target.shape[-1]
    if len(y_true.shape) != len(per_target.shape) or (
        k_true is not None and k_pred is not None and k_true != k_pred
    ):
        raise ValueError(
            f"Expected `y_pred` to have last dimension {columns}*k for `y_true` "
            f"with k targets. Received: y_true with shape {tuple(y_true.shape)} "
            f"and y_pred with {k_pred} {unit} ({columns}*{k_pred} columns)"
        )
    return y_true


def scaled_squared_error(squared_error, log_var):
    """`squared_error * exp(-log_var)`, finite with finite gradients.

    Exactly the product wherever it is at most `exp(80)` and
    `log_var >= -80`, so wherever the loss is below about 1e34. Beyond
    (a variance head driven far down on a batch without outliers, or an
    outlier under a tiny variance), `exp(-s)` is continued by its tangent at
    the threshold `s0`, `exp(-s0) * (1 + s0 - s)`, for up to 1,000 nats
    and is constant below that. The loss then grows linearly instead of
    overflowing to inf (and inf * 0 to NaN), and its gradient still pushes
    the variance up. Both branches are finite everywhere, so neither
    poisons the other's gradient through the `where`.
    """
    # The threshold s0: where squared_error * exp(-s) reaches exp(80), and
    # never below -80 (exp(80) times a small residual stays finite).
    threshold = ops.stop_gradient(
        ops.maximum(
            ops.log(ops.maximum(squared_error, 1e-30)) - _LOG_LIMIT, -_LOG_LIMIT
        )
    )
    exact_region = log_var >= threshold
    exact = squared_error * ops.exp(-ops.where(exact_region, log_var, threshold))
    below = ops.maximum(log_var, threshold - _TANGENT_SPAN)
    tangent = squared_error * ops.exp(-threshold) * (1.0 + threshold - below)
    return ops.where(exact_region, exact, tangent)


# The objectives a variance head can be trained by (`GaussianNLL`'s
# `objective`): the plain NLL (beta-NLL with `beta`), and the faithful
# objective of Stirn et al. (2023).
OBJECTIVES = ("nll", "faithful")


def _nll(
    y_true,
    y_pred,
    beta=0.0,
    min_log_var=None,
    include_constant=False,
    objective="nll",
):
    # float32 for half-precision predictions (a mixed-precision model's):
    # exp(-log_var) and the squared errors overflow float16 at 65504.
    mean, log_var = split_mean_log_var(widen(y_pred))
    y_true = align_targets(y_true, mean)
    if min_log_var is not None:
        log_var = ops.maximum(log_var, min_log_var)
    if objective == "faithful":
        # The variance sees a constant mean; the mean gets the squared
        # error's gradient, as under a fixed unit variance. The added term is
        # 0 in value, so the loss still reads as the NLL (for logs, early
        # stopping and the model's reported loss).
        squared = ops.square(y_true - mean)
        mean_term = 0.5 * (squared - ops.stop_gradient(squared))
        mean = ops.stop_gradient(mean)
    else:
        mean_term = 0.0
    loss = 0.5 * (log_var + scaled_squared_error(ops.square(y_true - mean), log_var))
    loss = loss + mean_term
    if include_constant:
        loss = loss + _HALF_LOG_TWO_PI
    if beta:
        # beta-NLL (Seitzer et al. 2022): weight each term by sigma^(2 beta),
        # treated as a constant so that it rescales gradients only.
        loss = loss * ops.stop_gradient(ops.exp(beta * log_var))
    return ops.mean(loss, axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def gaussian_nll(y_true, y_pred):
    """Gaussian negative log-likelihood of `y_true` under (mean, log-variance).

    For each target: `0.5 * (log_var + (y - mu)^2 / exp(log_var))`, the NLL
    without its constant `0.5 * log(2 pi)`, averaged over the k targets (as
    Keras averages `mean_squared_error` over the last axis). The loss and
    its gradients are finite for every finite log-variance: where
    `(y - mu)^2 / exp(log_var)` would exceed `exp(80)` (or `log_var < -80`)
    the exponential is continued by its tangent (see
    `scaled_squared_error`); everywhere else the value is the formula's.
    float16 and bfloat16 predictions (a mixed-precision model's) are
    computed in float32.

    Args:
        y_true: Targets, shape `(N, k)`, or `(N,)` when k = 1.
        y_pred: Predictions, shape `(N, 2k)`: the k means, then the k
            log-variances.

    Returns:
        Per-example loss, shape `(N,)`.

    Example:

    >>> model.compile(optimizer="adam", loss=ku.losses.gaussian_nll)
    """
    return _nll(y_true, y_pred)


# Read by `ku.has_variance_head`: a model trained with this loss outputs
# (means, log-variances). Custom heteroscedastic losses can declare the same.
gaussian_nll.variance_head = True


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GaussianNLL(keras.losses.Loss):
    """Gaussian negative log-likelihood, trained faithfully by default.

    Per target, with `s` the predicted log-variance (clipped from below at
    `min_log_var` when given), the value is the NLL

        nll = 0.5 * (s + (y - mu)^2 * exp(-s))  [+ 0.5 * log(2 pi)]

    averaged over the k targets. What the gradients train depends on
    `objective`:

    - `"faithful"` (the default, unless `beta` is given; Stirn et al. 2023): the mean is trained by
      the gradient of `0.5 * (y - mu)^2`, as under a fixed unit variance, and
      the log-variance by the NLL's gradient with the mean held constant:

          loss = 0.5 * (y - mu)^2 + nll(stop_gradient(mu), s)
                 - stop_gradient(0.5 * (y - mu)^2)

      Its value is still `nll`. A variance head cannot excuse its mean: the
      plain NLL lets a network fit a row poorly and predict a large variance
      there instead (on protein's inputs far from the training rows, a
      linearly extrapolated mean of 913 under a log-variance of 1,711). The
      means are those of a homoscedastic network of the same shape.
    - `"nll"` (the default when `beta > 0`): the plain NLL's gradient,
      optionally beta-weighted:
      `loss = stop_gradient(exp(beta * s)) * nll`. `beta = 0` is the plain
      NLL (Nix & Weigend 1994; Kendall & Gal 2017); `beta = 0.5` is the
      beta-NLL that Seitzer et al. (2022) recommend, which keeps the mean
      fit from starving where the predicted variance is high; `beta = 1`
      gives the mean the gradient of the squared error.

    The benchmarks page shows the evidence for the default (the objectives
    on validation splits cut from the UCI training rows).

    Args:
        objective: `"faithful"` or `"nll"`; see above. None (default):
            `"faithful"`, or `"nll"` when `beta > 0`.
        beta: Float in [0, 1], the beta-NLL exponent (with
            `objective="nll"` only).
        min_log_var: Optional float; log-variances below it are clipped to it
            (a floor on the predicted variance). None: no clipping.
        include_constant: Whether to add `0.5 * log(2 pi)`, making the value
            the exact negative log density.
        reduction: Keras loss reduction, default `"sum_over_batch_size"`.
        name: Name of the loss.

    Attributes:
        variance_head: True: a model trained with this loss outputs means
            and log-variances (read by `ku.has_variance_head`).

    Call arguments:
        y_true: Targets, shape `(N, k)` or `(N,)`.
        y_pred: Predictions, shape `(N, 2k)`: k means, then k log-variances.

    Example:

    >>> model.compile("adam", loss=ku.losses.GaussianNLL())
    >>> model.compile("adam", loss=ku.losses.GaussianNLL(beta=0.5))  # beta-NLL
    """

    variance_head = True

    def __init__(
        self,
        objective=None,
        beta=0.0,
        min_log_var=None,
        include_constant=False,
        reduction="sum_over_batch_size",
        name="gaussian_nll",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        if isinstance(objective, numbers.Real) and not isinstance(objective, bool):
            # 0.2's first positional argument was `beta`.
            raise ValueError(
                "Invalid value received for argument `objective`. Expected one "
                f"of {list(OBJECTIVES)}; pass beta by name (`beta={objective!r}`). "
                f"Received: objective={objective!r}"
            )
        self.beta = unit_interval(beta, "beta", closed=True)
        if objective is None:
            # beta-NLL is a weighting of the NLL's gradient.
            objective = "nll" if self.beta else "faithful"
        self.objective = check_choice(objective, "objective", OBJECTIVES)
        if self.objective == "faithful" and self.beta:
            raise ValueError(
                "Invalid value received for argument `beta`. Expected 0 with "
                "objective='faithful' (its mean already trains by the squared "
                "error; beta-NLL is objective='nll'). Received: "
                f"beta={beta!r}"
            )
        self.min_log_var = check_finite(min_log_var, "min_log_var", allow_none=True)
        self.include_constant = bool(include_constant)

    def call(self, y_true, y_pred):
        return _nll(
            y_true,
            y_pred,
            beta=self.beta,
            min_log_var=self.min_log_var,
            include_constant=self.include_constant,
            objective=self.objective,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            objective=self.objective,
            beta=self.beta,
            min_log_var=self.min_log_var,
            include_constant=self.include_constant,
        )
        return config
