"""Deep evidential regression (Amini et al. 2020): a Normal-Inverse-Gamma head.

The network predicts, for each of k targets, the four parameters of a
Normal-Inverse-Gamma (NIG) prior over the mean and variance of a Gaussian
likelihood: `y ~ N(mu, sigma^2)`, `mu ~ N(gamma, sigma^2 / nu)`,
`sigma^2 ~ Gamma^-1(alpha, beta)`. The last axis of the output holds the k
`gamma`, then the k `nu`, the k `alpha` and the k `beta` (`(N, 4k)`).

Marginalising `mu` and `sigma^2` gives a Student-t predictive,
`St(y; gamma, beta (1 + nu) / (nu alpha), 2 alpha)`, whose negative
log-likelihood (the paper's eq. 8) is the training loss, plus the evidence
regularizer `|y - gamma| (2 nu + alpha)` that removes evidence where the
error is large.

The predictive split (`predict_regression`) is the paper's:

- aleatoric variance `E[sigma^2] = beta / (alpha - 1)`;
- epistemic variance `Var[mu] = beta / (nu (alpha - 1))`;
- total `std^2 = E[sigma^2] + Var[mu] = beta (1 + nu) / (nu (alpha - 1))`.

By the law of total variance the total is exactly the variance of the
Student-t marginal (finite because the head keeps `alpha > 1`); it is *not*
the square of the Student-t's scale parameter, `beta (1 + nu) / (nu alpha)`,
which is smaller by the factor `(alpha - 1) / alpha`. Intervals read from
`std` as Gaussian are therefore moment-matched, not Student-t quantiles.
"""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty._split_gradient import stop_gradient_after
from keras_uncertainty._validation import check_finite, check_positive_finite
from keras_uncertainty.evidential import _predict
from keras_uncertainty.evidential._base import DenseHead, SuppliesReducer
from keras_uncertainty.losses.gaussian_nll import align_targets
from keras_uncertainty.sampling.predictions import RegressionPrediction
from keras_uncertainty.sampling.reducers import Reducer

_PACKAGE = "keras_uncertainty"
_HALF_LOG_PI = 0.5 * math.log(math.pi)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NormalInverseGammaHead(SuppliesReducer, DenseHead):
    """Dense output layer of the four Normal-Inverse-Gamma parameters.

    A `Dense(4 * units)` whose outputs are mapped to `gamma` (identity),
    `nu = softplus + epsilon`, `alpha = softplus + 1 + epsilon` and
    `beta = softplus + epsilon`, concatenated on the last axis:
    `(N, 4 * units)` = k `gamma`, k `nu`, k `alpha`, k `beta`. `alpha > 1`
    keeps `E[sigma^2] = beta / (alpha - 1)` finite.

    Args:
        units: Positive integer k, the number of targets.
        epsilon: Float > 0 added to `nu`, `alpha - 1` and `beta`.
        stop_evidence_gradient: Whether `nu`, `alpha` and `beta` read the
            inputs with their gradient stopped (default False), as
            `ku.layers.GaussianHead`'s log-variances do: their loss then
            trains only their own weights, and the layers below learn from
            `gamma`'s alone. Pair it with
            `EvidentialRegressionLoss(objective="faithful")`.
        kernel_initializer: As for `keras.layers.Dense`.
        bias_initializer: As for `keras.layers.Dense`.
        kernel_regularizer: As for `keras.layers.Dense`.
        bias_regularizer: As for `keras.layers.Dense`.
        **kwargs: Base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Features, `(N, ..., d)`.

    Returns:
        `(N, ..., 4 * units)`.

    Example:

    >>> outputs = ku.evidential.NormalInverseGammaHead(1)(features)
    >>> model.compile("adam", loss=ku.evidential.EvidentialRegressionLoss(0.01))
    """

    width_per_unit = 4

    # The head declares its output (`ku.predict_*` reads it, compiled or
    # not).
    task = "regression"

    def _summary(self):
        return EvidentialRegressionSummary()

    def __init__(
        self,
        units,
        epsilon=1e-6,
        stop_evidence_gradient=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            units,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            **kwargs,
        )
        self.epsilon = check_positive_finite(epsilon, "epsilon")
        self.stop_evidence_gradient = bool(stop_evidence_gradient)

    def call(self, inputs):
        if not self.stop_evidence_gradient:
            return super().call(inputs)
        kernel, bias = self.dense.kernel, self.dense.bias
        # nu, alpha and beta read the inputs with their gradient stopped.
        raw = stop_gradient_after(self.units, ops.matmul, kernel, inputs)
        if bias is not None:
            raw = raw + bias
        return self._parameters(raw)

    def _parameters(self, raw):
        k = self.units
        gamma = raw[..., :k]
        nu = ops.softplus(raw[..., k : 2 * k]) + self.epsilon
        alpha = ops.softplus(raw[..., 2 * k : 3 * k]) + 1.0 + self.epsilon
        beta = ops.softplus(raw[..., 3 * k :]) + self.epsilon
        return ops.concatenate([gamma, nu, alpha, beta], axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "stop_evidence_gradient": self.stop_evidence_gradient,
        }


def split_nig(y_pred):
    """Splits `y_pred` of last dimension 4k into `(gamma, nu, alpha, beta)`.

    The one place that defines the layout shared by
    `NormalInverseGammaHead`, the loss and `predict_regression`.

    Args:
        y_pred: A tensor or array whose last dimension is 4k.

    Returns:
        `(gamma, nu, alpha, beta)`, each with last dimension k.
    """
    width = y_pred.shape[-1]
    if width is None or width % 4 or width == 0:
        raise ValueError(
            "Invalid value received for argument `y_pred`. Expected a last "
            "dimension 4*k (k gamma, k nu, k alpha, k beta: the output of "
            "ku.evidential.NormalInverseGammaHead). Received: y_pred with "
            f"shape {tuple(y_pred.shape)}"
        )
    k = width // 4
    return tuple(y_pred[..., i * k : (i + 1) * k] for i in range(4))


def nig_nll(y_true, y_pred):
    """Negative log-likelihood of `y_true` under the NIG's Student-t marginal.

    The paper's eq. 8, per target, with `Omega = 2 beta (1 + nu)`:

        0.5 log(pi / nu) - alpha log(Omega)
        + (alpha + 0.5) log((y - gamma)^2 nu + Omega)
        + log Gamma(alpha) - log Gamma(alpha + 0.5)

    which is `-log St(y; gamma, beta (1 + nu) / (nu alpha), 2 alpha)`
    exactly (constant included).

    Args:
        y_true: Targets, `(N, k)` or `(N,)` when k = 1.
        y_pred: `(N, 4k)`, see `split_nig`.

    Returns:
        `(N, k)` per-target NLL.
    """
    gamma, nu, alpha, beta = split_nig(y_pred)
    y_true = align_targets(y_true, gamma, columns=4, unit="targets")
    omega = 2.0 * beta * (1.0 + nu)
    return (
        _HALF_LOG_PI
        - 0.5 * ops.log(nu)
        - alpha * ops.log(omega)
        + (alpha + 0.5) * ops.log(ops.square(y_true - gamma) * nu + omega)
        + tf.math.lgamma(alpha)
        - tf.math.lgamma(alpha + 0.5)
    )


def nig_regularizer(y_true, y_pred):
    """The evidence regularizer `|y - gamma| (2 nu + alpha)` per target.

    Args:
        y_true: Targets, `(N, k)` or `(N,)` when k = 1.
        y_pred: `(N, 4k)`, see `split_nig`.

    Returns:
        `(N, k)`.
    """
    gamma, nu, alpha, _ = split_nig(y_pred)
    y_true = align_targets(y_true, gamma, columns=4, unit="targets")
    return ops.abs(y_true - gamma) * (2.0 * nu + alpha)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EvidentialRegressionLoss(SuppliesReducer, keras.losses.Loss):
    """Deep evidential regression loss: NIG NLL + `coeff` x regularizer.

    Per target `nig_nll(y, out) + coeff * |y - gamma| (2 nu + alpha)`,
    averaged over the k targets (Amini et al. 2020, eqs. 8-10).

    With `objective="faithful"` the value is the same, but `gamma` is trained
    by the squared error's gradient, `(gamma - y)`, and `nu`, `alpha`,
    `beta` by the loss's on a constant `gamma`: Stirn et al.'s (2023)
    faithful objective (`ku.losses.GaussianNLL`'s default), so the evidence
    cannot excuse a poor mean (under the NIG NLL each row pulls on `gamma`
    in proportion to its predicted precision).

    Args:
        coeff: Float >= 0, the regularizer's weight (lambda in the paper;
            the paper's experiments use 1e-2 and smaller).
        objective: `"nll"` (the default, the paper's) or `"faithful"`.
        reduction: Keras loss reduction, default `"sum_over_batch_size"`.
        name: Name of the loss.

    Attributes:
        variance_head: False: the output is not (means, log-variances), so
            `ku.has_variance_head` does not read it as one. Predict with
            `ku.predict_regression`, which reads the head's declaration.

    Call arguments:
        y_true: Targets, `(N, k)` or `(N,)`.
        y_pred: `(N, 4k)`, the output of `NormalInverseGammaHead(k)`.

    Example:

    >>> model.compile("adam", loss=ku.evidential.EvidentialRegressionLoss(1e-2))
    """

    variance_head = False
    task = "regression"
    outputs_per_target = 4  # gamma, nu, alpha, beta

    def _summary(self):
        return EvidentialRegressionSummary()

    def __init__(
        self,
        coeff=1e-2,
        objective="nll",
        reduction="sum_over_batch_size",
        name="evidential_regression",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.coeff = check_finite(coeff, "coeff", 0)
        if objective not in ("nll", "faithful"):
            raise ValueError(
                "Invalid value received for argument `objective`. Expected "
                f"'nll' or 'faithful'. Received: objective={objective!r}"
            )
        self.objective = objective

    def call(self, y_true, y_pred):
        mean_term = 0.0
        if self.objective == "faithful":
            gamma, nu, alpha, beta = split_nig(y_pred)
            squared = ops.square(align_targets(y_true, gamma, 4, "targets") - gamma)
            # 0 in value: the loss still reads as the paper's.
            mean_term = 0.5 * (squared - ops.stop_gradient(squared))
            y_pred = ops.concatenate(
                [ops.stop_gradient(gamma), nu, alpha, beta], axis=-1
            )
        loss = nig_nll(y_true, y_pred) + mean_term
        if self.coeff:
            loss = loss + self.coeff * nig_regularizer(y_true, y_pred)
        return ops.mean(loss, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(coeff=self.coeff, objective=self.objective)
        return config


def nig_variances(y_pred):
    """`(gamma, aleatoric variance, epistemic variance)` of NIG outputs.

    `E[sigma^2] = beta / (alpha - 1)` and `Var[mu] = beta / (nu (alpha - 1))`;
    numpy in, numpy out, else TensorFlow ops.

    Args:
        y_pred: `(..., 4k)` NIG parameters, see `split_nig`.

    Returns:
        A tuple of three `(..., k)` arrays or tensors.
    """
    gamma, nu, alpha, beta = split_nig(y_pred)
    aleatoric = beta / (alpha - 1.0)
    return gamma, aleatoric, aleatoric / nu


class EvidentialRegressionSummary(Reducer):
    """Reduces NIG outputs to a `RegressionPrediction` (see
    `predict_regression`).

    With one row per input (a single network, one forward pass) the result
    is the NIG's split. With several rows per input (a `ku.Ensemble` of
    evidential members: member-major rows) it is the mixture's, by the law
    of total variance: the means of `gamma` and of `E[sigma^2]`, and
    epistemic = mean of `Var[mu]` + the variance of `gamma` across rows.
    """

    uncertainty_in_output = True  # one pass: no warning about samples

    def reduce(self, samples):
        samples = ops.cast(samples, "float32")
        gamma, aleatoric, epistemic = nig_variances(samples)
        mean_gamma = ops.mean(gamma, axis=0)
        m2_gamma = ops.sum(ops.square(gamma - mean_gamma), axis=0)
        return (
            mean_gamma,
            m2_gamma,
            ops.mean(aleatoric, axis=0),
            ops.mean(epistemic, axis=0),
        )

    def merge(self, a, count_a, b, count_b):
        total = count_a + count_b
        delta = b[0].astype(np.float64) - a[0]
        return (
            a[0] + delta * count_b / total,
            a[1] + b[1] + delta**2 * count_a * count_b / total,
            (a[2] * count_a + b[2].astype(np.float64) * count_b) / total,
            (a[3] * count_a + b[3].astype(np.float64) * count_b) / total,
        )

    def finalize(self, state, num_samples):
        mean, m2, aleatoric, epistemic = (np.asarray(v, np.float64) for v in state)
        epistemic = epistemic + m2 / num_samples
        return RegressionPrediction(
            mean=mean,
            std=np.sqrt(aleatoric + epistemic),
            aleatoric_std=np.sqrt(aleatoric),
            epistemic_std=np.sqrt(epistemic),
        )

    def summary(self, state, num_samples):
        mean, m2, aleatoric, epistemic = state
        epistemic = epistemic + m2 / num_samples
        return {
            "mean": mean,
            "std": tf.sqrt(aleatoric + epistemic),
            "aleatoric_std": tf.sqrt(aleatoric),
            "epistemic_std": tf.sqrt(epistemic),
        }


def predict_regression(
    model,
    x,
    batch_size=None,
    num_samples=1,
    seed=None,
    verbose="auto",
    max_rows_per_call=None,
):
    """Deprecated (removed in 0.4): `ku.predict_regression(model, x)`.

    Predictive mean and aleatoric / epistemic split of an evidential model.

    One compiled forward pass through the sampling engine
    (`ku.sampling.reduce_samples` with `EvidentialRegressionSummary`): no
    sampling, the split is read from the NIG parameters:

    - `mean = gamma`;
    - `aleatoric_std^2 = E[sigma^2] = beta / (alpha - 1)`;
    - `epistemic_std^2 = Var[mu] = beta / (nu (alpha - 1))`;
    - `std^2 = aleatoric_std^2 + epistemic_std^2
      = beta (1 + nu) / (nu (alpha - 1))`, the variance of the Student-t
      marginal `St(gamma, beta (1 + nu) / (nu alpha), 2 alpha)` (law of total
      variance); the square of that Student-t's *scale* is smaller, by
      `(alpha - 1) / alpha`.

    The "epistemic" part is the NIG's own variance of `mu`; Meinert et al.
    (2023) show it is not a proper epistemic uncertainty (it is a rescaled
    aleatoric quantity that does not shrink with more data in the way a
    posterior does): use it as a heuristic score.

    Args:
        model: A `keras.Model` whose output is `(N, 4k)` NIG parameters
            (`NormalInverseGammaHead(k)`), or a `ku.Ensemble` of them (the
            result is then the members' mixture).
        x: Inputs with N rows, anything `model.predict` takes.
        batch_size: Inputs per compiled call; None picks it.
        num_samples: Positive integer, 1 by default (one pass). More only
            for a model with MC layers: the samples' mixture.
        seed: Optional non-negative integer, for a model with MC layers.
        verbose: "auto", 0, 1 or 2, as in `model.predict`.
        max_rows_per_call: The most rows one compiled call holds; None picks
            it.

    Returns:
        A `ku.RegressionPrediction` of `(N, k)` float64 arrays.

    Example:

    >>> pred = ku.evidential.predict_regression(model, x_test)
    >>> pred.mean, pred.aleatoric_std, pred.epistemic_std
    """
    warnings.warn(
        "ku.evidential.predict_regression is deprecated and removed in 0.4: "
        "use ku.predict_regression(model, x, num_samples, batch_size, ...), "
        "which reads the evidential head (one pass, the same result).",
        DeprecationWarning,
        stacklevel=2,
    )
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: {type(model).__name__}"
        )
    width = _predict.output_width(model)
    if width is not None and (width % 4 or width == 0):
        raise ValueError(
            "Invalid value received for argument `model`. Expected an output "
            "of last dimension 4*k (ku.evidential.NormalInverseGammaHead). "
            f"Received: last dimension {width}"
        )
    return _predict.run(
        model,
        x,
        EvidentialRegressionSummary(),
        num_samples,
        batch_size,
        seed,
        verbose,
        max_rows_per_call,
    )
