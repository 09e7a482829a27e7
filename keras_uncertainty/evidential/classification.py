"""Evidential classification (Sensoy et al. 2018): a Dirichlet head.

The network outputs, per input, the concentration `alpha` of a Dirichlet
over the class probabilities: `alpha = evidence + 1`, the evidence a
non-negative function of the logits (exp by default, softplus or ReLU). The
expected probabilities are `alpha / S` with the strength
`S = sum_c alpha_c`, and the vacuity `K / S` (K classes) is 1 without any
evidence.

Training minimises a data term plus an annealed KL divergence from the
Dirichlet whose correct-class evidence is removed to the uniform `Dir(1)`
(the paper's eq. 9):

    data(y, alpha) + lambda_t KL(Dir(alpha~) || Dir(1)),
    alpha~ = y + (1 - y) alpha,   lambda_t = min(1, t / annealing_epochs)

with t the epoch index (0 for the first epoch), which reaches the loss
through a non-trainable variable that the `KLAnnealing` callback sets at the
start of each epoch. The data term is one of the paper's three
(`EvidentialClassificationLoss(loss=...)`):

- `"log"` (default; eq. 3, type-II maximum likelihood):
  `sum_c y_c (log S - log alpha_c)`, the cross-entropy of `alpha / S`;
- `"digamma"` (eq. 4, the Bayes risk of the cross-entropy):
  `sum_c y_c (digamma(S) - digamma(alpha_c))`;
- `"mse"` (eq. 5, the paper's main choice, the expected squared error):
  `sum_c (y_c - p_c)^2 + p_c (1 - p_c) / (S + 1)`.

Why the defaults (exp evidence, the log loss) depart from the paper's
experiments (ReLU or softplus evidence, the expected squared error): the
probabilities read out, `alpha / S`, can only be confident when the
right class's evidence is large (0.99 on 10 classes needs about 900). A
softplus (or ReLU) evidence grows linearly with the logit, which a network
of bounded (tanh) features and Adam's small steps reach slowly, so the
read-out stays under-confident (MNIST, LeNet-5, 10 epochs on 6,000 digits:
accuracy 97.2% at mean confidence 0.68, ECE 0.29, with any of the three
losses); the exp evidence reaches it at a logit of about 7 (ECE 0.07 with
the squared error), and the log loss, a proper scoring rule for `alpha / S`,
removes most of the rest (ECE 0.02-0.04).
"""

import dataclasses
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty._validation import (
    check_choice,
    check_finite,
    check_positive_int,
)
from keras_uncertainty.evidential import _predict
from keras_uncertainty.evidential._base import DenseHead, SuppliesReducer
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    classification_summary,
)
from keras_uncertainty.sampling.reducers import Reducer

_PACKAGE = "keras_uncertainty"
EVIDENCE_FUNCTIONS = ("softplus", "relu", "exp")
# exp evidence: logits clipped to [-10, 10] (as in the paper's code), so that
# the evidence stays below e^10 and float32 sums of it stay exact enough.
_EXP_CLIP = 10.0


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DirichletHead(SuppliesReducer, DenseHead):
    """Dense output layer of Dirichlet concentrations `alpha = evidence + 1`.

    Args:
        units: Integer K >= 2, the number of classes.
        evidence: `"exp"` (default; of logits clipped to [-10, 10]),
            `"softplus"` or `"relu"`: the map from logits to evidence >= 0.
            The paper's experiments use ReLU; a linear evidence makes the
            expected probabilities under-confident (see the module
            docstring), hence exp.
        kernel_initializer: As for `keras.layers.Dense`.
        bias_initializer: As for `keras.layers.Dense`.
        kernel_regularizer: As for `keras.layers.Dense`.
        bias_regularizer: As for `keras.layers.Dense`.
        **kwargs: Base layer arguments.

    Call arguments:
        inputs: Features, `(N, ..., d)`.

    Returns:
        `(N, ..., K)` concentrations, each >= 1.

    Example:

    >>> alpha = ku.evidential.DirichletHead(10)(features)
    >>> model.compile("adam", loss=ku.evidential.EvidentialClassificationLoss(10))
    """

    units_meaning = "an integer >= 2 (classes)"
    min_units = 2

    # The head declares its output (`ku.predict_*` reads it, compiled or
    # not).
    task = "classification"

    def _summary(self):
        return EvidentialClassificationSummary()

    def __init__(
        self,
        units,
        evidence="exp",
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
        self.evidence = check_choice(evidence, "evidence", EVIDENCE_FUNCTIONS)

    def _parameters(self, logits):
        if self.evidence == "softplus":
            evidence = ops.softplus(logits)
        elif self.evidence == "relu":
            evidence = ops.relu(logits)
        else:
            evidence = ops.exp(ops.clip(logits, -_EXP_CLIP, _EXP_CLIP))
        return evidence + 1.0

    def get_config(self):
        return {**super().get_config(), "evidence": self.evidence}


def dirichlet_kl_uniform(alpha):
    """`KL(Dir(alpha) || Dir(1, ..., 1))` over the last axis.

    `log Gamma(S) - log Gamma(K) - sum_c log Gamma(alpha_c)
    + sum_c (alpha_c - 1)(digamma(alpha_c) - digamma(S))`.

    Args:
        alpha: `(..., K)` concentrations > 0.

    Returns:
        `(...)`.
    """
    alpha = tf.convert_to_tensor(alpha)
    k = ops.cast(ops.shape(alpha)[-1], alpha.dtype)
    strength = ops.sum(alpha, axis=-1, keepdims=True)
    return (
        tf.math.lgamma(strength[..., 0])
        - tf.math.lgamma(k)
        - ops.sum(tf.math.lgamma(alpha), axis=-1)
        + ops.sum(
            (alpha - 1.0) * (tf.math.digamma(alpha) - tf.math.digamma(strength)),
            axis=-1,
        )
    )


def dirichlet_expected_entropy(alpha):
    """`E_{p ~ Dir(alpha)}[H(p)]` in nats, over the last axis (closed form).

    `sum_c -(alpha_c / S)(digamma(alpha_c + 1) - digamma(S + 1))`.

    Args:
        alpha: `(..., K)` concentrations > 0.

    Returns:
        `(...)`.
    """
    alpha = tf.convert_to_tensor(alpha)
    strength = ops.sum(alpha, axis=-1, keepdims=True)
    return -ops.sum(
        alpha
        / strength
        * (tf.math.digamma(alpha + 1.0) - tf.math.digamma(strength + 1.0)),
        axis=-1,
    )


def _label_problem(num_classes):
    return (
        "Invalid value received for argument `y_true`. Expected integer class "
        f"labels in [0, {num_classes}) (K={num_classes} classes; or one-hot "
        "rows). Received: labels"
    )


def checked_labels(labels, num_classes):
    """Integer class labels, checked as Keras's sparse cross-entropy checks
    them: each must be a whole number in `[0, num_classes)` (an out-of-range
    label is not an all-zero target, and 0.7 is not class 0).

    Eager labels are checked up front (a `ValueError` naming the first
    offending labels); in a graph (`fit`'s step) by `tf.debugging.Assert`,
    which raises `InvalidArgumentError` with the same message. XLA
    (`jit_compile`) drops assertions: there the returned validity mask lets
    the caller make an invalid label's loss NaN (as Keras's sparse
    cross-entropy's is on GPU), never a plausible number.

    Args:
        labels: `(...)` labels, integer or float.
        num_classes: K.

    Returns:
        `(int32 labels, valid mask)`.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        whole = tf.equal(labels, tf.round(labels))  # False for NaN
    elif labels.dtype.is_integer:
        whole = tf.ones_like(labels, tf.bool)
    else:
        raise ValueError(f"{_label_problem(num_classes)} of dtype {labels.dtype.name}")
    valid = whole & (labels >= 0) & (labels < num_classes)
    if tf.executing_eagerly():
        if not bool(np.all(valid.numpy())):
            bad = labels.numpy()[~valid.numpy()]
            raise ValueError(
                f"{_label_problem(num_classes)} {bad[:5].tolist()} ({bad.size} invalid)"
            )
    else:
        check = tf.debugging.Assert(
            tf.reduce_all(valid),
            [_label_problem(num_classes), tf.boolean_mask(labels, ~valid)],
            summarize=5,
        )
        with tf.control_dependencies([check]):
            labels = tf.identity(labels)
    safe = tf.where(valid, labels, tf.zeros_like(labels))
    return tf.cast(safe, tf.int32), valid


def _one_hot_targets(y_true, alpha):
    num_classes = alpha.shape[-1]
    rank = len(alpha.shape)
    if len(y_true.shape) == rank and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, alpha.dtype)
    if len(y_true.shape) == rank and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if len(y_true.shape) != rank - 1:
        raise ValueError(
            "Expected `y_true` to be one-hot `(N, K)` or integer labels `(N,)` "
            f"/ `(N, 1)` for K={num_classes} classes. Received: y_true with "
            f"shape {tuple(y_true.shape)}"
        )
    labels, valid = checked_labels(y_true, num_classes)
    one_hot = ops.one_hot(labels, num_classes, dtype=alpha.dtype)
    # Only where an assertion was dropped (XLA): an invalid label's row NaN.
    return tf.where(valid[..., None], one_hot, tf.constant(np.nan, alpha.dtype))


def dirichlet_mse(y_one_hot, alpha):
    """The expected squared error under `Dir(alpha)` (Sensoy eq. 5), summed
    over the classes: `sum_c (y_c - p_c)^2 + p_c (1 - p_c) / (S + 1)`.

    Args:
        y_one_hot: `(..., K)` one-hot targets.
        alpha: `(..., K)` concentrations.

    Returns:
        `(...)`.
    """
    strength = ops.sum(alpha, axis=-1, keepdims=True)
    probs = alpha / strength
    return ops.sum(
        ops.square(y_one_hot - probs) + probs * (1.0 - probs) / (strength + 1.0),
        axis=-1,
    )


def dirichlet_log_loss(y_one_hot, alpha):
    """The type-II maximum-likelihood loss (Sensoy eq. 3): the negative log
    of the Dirichlet-multinomial marginal likelihood of one label,
    `sum_c y_c (log S - log alpha_c)`, i.e. the cross-entropy of the expected
    probabilities `alpha / S`.

    Args:
        y_one_hot: `(..., K)` one-hot targets.
        alpha: `(..., K)` concentrations > 0.

    Returns:
        `(...)`.
    """
    strength = ops.sum(alpha, axis=-1, keepdims=True)
    return ops.sum(y_one_hot * (ops.log(strength) - ops.log(alpha)), axis=-1)


def dirichlet_digamma_loss(y_one_hot, alpha):
    """The Bayes risk of the cross-entropy under `Dir(alpha)` (Sensoy eq. 4):
    `E_{p ~ Dir(alpha)}[-sum_c y_c log p_c]
    = sum_c y_c (digamma(S) - digamma(alpha_c))`.

    Args:
        y_one_hot: `(..., K)` one-hot targets.
        alpha: `(..., K)` concentrations > 0.

    Returns:
        `(...)`.
    """
    strength = ops.sum(alpha, axis=-1, keepdims=True)
    return ops.sum(
        y_one_hot * (tf.math.digamma(strength) - tf.math.digamma(alpha)), axis=-1
    )


# The data terms of `EvidentialClassificationLoss(loss=...)`.
DATA_LOSSES = {
    "mse": dirichlet_mse,
    "log": dirichlet_log_loss,
    "digamma": dirichlet_digamma_loss,
}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EvidentialClassificationLoss(SuppliesReducer, keras.losses.Loss):
    """Sensoy et al.'s loss: a data term + annealed KL to the uniform Dirichlet.

    `data(y, alpha) + coefficient * KL(Dir(alpha~) || Dir(1))`,
    `alpha~ = y + (1 - y) alpha` (the evidence of the wrong classes), the
    data term `dirichlet_log_loss` (default), `dirichlet_digamma_loss` or
    `dirichlet_mse` (the paper's eqs. 3, 4 and 5).

    With `annealing_epochs=n` the coefficient is
    `kl_weight * min(1, epoch / n)` and lives in the non-trainable variable
    `annealing_coefficient` (0 until set): train with the
    `ku.evidential.KLAnnealing()` callback, which sets it at the start of
    every epoch (epoch 0 first, so the first epoch has no KL term). With
    `annealing_epochs=None` the coefficient is `kl_weight` throughout and no
    callback is needed.

    Args:
        annealing_epochs: Positive integer n (the paper uses 10), or None.
        kl_weight: Float >= 0, the KL weight once annealed (1 in the paper).
        loss: The data term: `"log"` (default; type-II maximum likelihood,
            the cross-entropy of the expected probabilities `alpha / S`),
            `"digamma"` (the Bayes risk of the cross-entropy) or `"mse"`
            (the expected squared error, the paper's main experiments).
            With `"mse"` the expected probabilities stay under-confident
            (MNIST, LeNet-5: ECE 0.07 with exp evidence, 0.29 with
            softplus); see the module docstring.
        reduction: Keras loss reduction, default `"sum_over_batch_size"`.
        name: Name of the loss.

    Attributes:
        annealing_coefficient: A non-trainable `keras.Variable` (None when
            `annealing_epochs` is None).

    Call arguments:
        y_true: One-hot `(N, K)` or integer labels `(N,)` / `(N, 1)`. Labels
            are checked as Keras's sparse cross-entropy checks them: a label
            outside `[0, K)` or not a whole number (7 of 2 classes, -1, 0.7)
            raises (`ValueError` eagerly, `InvalidArgumentError` in `fit`);
            under XLA, which drops the check, its loss is NaN.
        y_pred: `(N, K)` concentrations (`DirichletHead`).

    Example:

    >>> loss = ku.evidential.EvidentialClassificationLoss(annealing_epochs=10)
    >>> model.compile("adam", loss=loss)
    >>> model.fit(x, y, epochs=20, callbacks=[ku.evidential.KLAnnealing()])
    """

    task = "classification"

    def _summary(self):
        return EvidentialClassificationSummary()

    def __init__(
        self,
        annealing_epochs=10,
        kl_weight=1.0,
        loss="log",
        reduction="sum_over_batch_size",
        name="evidential_classification",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.loss = check_choice(loss, "loss", tuple(DATA_LOSSES))
        self.annealing_epochs = check_positive_int(
            annealing_epochs, "annealing_epochs", allow_none=True
        )
        self.kl_weight = check_finite(kl_weight, "kl_weight", 0)
        self.annealing_coefficient = None
        if self.annealing_epochs is not None:
            self.annealing_coefficient = keras.Variable(
                0.0,
                trainable=False,
                dtype="float32",
                name="kl_annealing_coefficient",
            )

    def coefficient_for_epoch(self, epoch):
        """`kl_weight * min(1, epoch / annealing_epochs)` (the constant
        `kl_weight` without annealing).

        Args:
            epoch: Non-negative integer, the epoch index (0 first).

        Returns:
            A float.
        """
        if self.annealing_epochs is None:
            return self.kl_weight
        return self.kl_weight * min(1.0, epoch / self.annealing_epochs)

    def call(self, y_true, y_pred):
        alpha = ops.convert_to_tensor(y_pred)
        y = _one_hot_targets(y_true, alpha)
        loss = DATA_LOSSES[self.loss](y, alpha)
        if self.annealing_coefficient is None:
            if not self.kl_weight:
                return loss
            coefficient = self.kl_weight
        else:
            coefficient = ops.cast(self.annealing_coefficient, alpha.dtype)
        alpha_tilde = y + (1.0 - y) * alpha
        return loss + coefficient * dirichlet_kl_uniform(alpha_tilde)

    def get_config(self):
        config = super().get_config()
        config.update(
            annealing_epochs=self.annealing_epochs,
            kl_weight=self.kl_weight,
            loss=self.loss,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # A config without `loss` was saved before it existed (0.2), when the
        # data term was always the expected squared error.
        return cls(**{"loss": "mse", **config})


class KLAnnealing(keras.callbacks.Callback):
    """Sets an `EvidentialClassificationLoss`'s KL coefficient every epoch.

    At the start of epoch t (0 first) the loss's `annealing_coefficient`
    becomes `kl_weight * min(1, t / annealing_epochs)`. The in-graph loss
    reads the variable, so no retracing happens.

    Args:
        loss: The `EvidentialClassificationLoss` to anneal; None finds it in
            the model's compiled loss (the loss itself, or the one in a dict
            or list of losses).

    Example:

    >>> model.fit(x, y, epochs=20, callbacks=[ku.evidential.KLAnnealing()])
    """

    def __init__(self, loss=None):
        super().__init__()
        if loss is not None and not isinstance(loss, EvidentialClassificationLoss):
            raise ValueError(
                "Invalid value received for argument `loss`. Expected an "
                "ku.evidential.EvidentialClassificationLoss or None. Received: "
                f"{type(loss).__name__}"
            )
        self.loss = loss

    def _find_loss(self):
        if self.loss is not None:
            return self.loss
        compiled = getattr(self.model, "loss", None)
        candidates = (
            list(compiled.values())
            if isinstance(compiled, dict)
            else list(compiled)
            if isinstance(compiled, (list, tuple))
            else [compiled]
        )
        found = [c for c in candidates if isinstance(c, EvidentialClassificationLoss)]
        if len(found) != 1:
            raise ValueError(
                "KLAnnealing: expected the model to be compiled with one "
                "ku.evidential.EvidentialClassificationLoss (or pass it as "
                f"`loss=`). Received: loss={compiled!r}"
            )
        return found[0]

    def on_epoch_begin(self, epoch, logs=None):
        loss = self._find_loss()
        if loss.annealing_coefficient is not None:
            loss.annealing_coefficient.assign(loss.coefficient_for_epoch(epoch))


@dataclasses.dataclass(frozen=True)
class EvidentialClassificationPrediction(ClassificationPrediction):
    """A `ku.ClassificationPrediction` of a Dirichlet head, with its vacuity.

    From the concentrations `alpha` (strength `S = sum_c alpha_c`, K
    classes):

    - `probs = alpha / S` (its expectation), `label` the argmax;
    - `entropy = H[probs]`, the total uncertainty (nats);
    - `expected_entropy = E_{p ~ Dir(alpha)}[H(p)]
      = sum_c -(alpha_c / S)(digamma(alpha_c + 1) - digamma(S + 1))`, the
      aleatoric part;
    - `mutual_information = entropy - expected_entropy`, the epistemic
      (distributional) part, >= 0;
    - `vacuity = K / S`, in (0, 1]: 1 with no evidence at all (Josang's
      subjective-logic uncertainty that Sensoy et al. report);
    - `votes` is None.

    Several rows per input (a `ku.Ensemble` of Dirichlet members, or MC
    samples) give the uniform mixture: `probs` and `expected_entropy` and
    `vacuity` averaged over the rows.

    Attributes:
        vacuity: `(N,)` float64.
    """

    vacuity: np.ndarray


class EvidentialClassificationSummary(Reducer):
    """Reduces Dirichlet concentrations to an
    `EvidentialClassificationPrediction` (see `predict_classification`)."""

    uncertainty_in_output = True  # one pass: no warning about samples

    def reduce(self, samples):
        alpha = ops.cast(samples, "float32")
        strength = ops.sum(alpha, axis=-1, keepdims=True)
        num_classes = ops.cast(ops.shape(alpha)[-1], "float32")
        # In float64: with large evidence (the exp head's reaches e^10) the
        # expected entropy is a difference of nearly equal digammas, which
        # float32 would keep to about 1e-3 of its value only.
        expected_entropy = dirichlet_expected_entropy(ops.cast(samples, "float64"))
        return (
            ops.sum(alpha / strength, axis=0),
            ops.cast(ops.sum(expected_entropy, axis=0), "float32"),
            ops.sum(num_classes / strength[..., 0], axis=0),
            ops.min(alpha, axis=(0, -1)),
        )

    def merge(self, a, count_a, b, count_b):
        sums = tuple(x.astype(np.float64) + y for x, y in zip(a[:3], b[:3]))
        return (*sums, np.minimum(a[3], b[3]))

    def finalize(self, state, num_samples):
        sum_probs, sum_expected, sum_vacuity, min_alpha = (
            np.asarray(v, np.float64) for v in state
        )
        if np.any(min_alpha <= 0):
            raise ValueError(
                "Invalid value received for argument `model`. Expected "
                "Dirichlet concentrations > 0 (ku.evidential.DirichletHead "
                "outputs evidence + 1). Received: values down to "
                f"{float(np.min(min_alpha)):.3g}"
            )
        fields = classification_summary(sum_probs, sum_expected, num_samples)
        return EvidentialClassificationPrediction(
            **fields,
            label=np.argmax(fields["probs"], axis=-1),
            votes=None,
            vacuity=sum_vacuity / num_samples,
        )

    def summary(self, state, num_samples):
        sum_probs, sum_expected, sum_vacuity, _ = state
        return {
            **classification_summary(sum_probs, sum_expected, num_samples),
            "vacuity": sum_vacuity / num_samples,
        }


def predict_classification(
    model,
    x,
    batch_size=None,
    num_samples=1,
    seed=None,
    verbose="auto",
    max_rows_per_call=None,
):
    """Deprecated (removed in 0.4): `ku.predict_classification(model, x)`.

    Expected class probabilities and the Dirichlet's uncertainty split.

    One compiled forward pass through the sampling engine
    (`ku.sampling.reduce_samples` with `EvidentialClassificationSummary`);
    see `EvidentialClassificationPrediction` for the formulas. Bengs et al.
    (2022) show that losses of this family do not make the second-order
    distribution faithful (the epistemic part need not vanish with data, nor
    reflect it): read `mutual_information` and `vacuity` as scores, not as
    calibrated epistemic uncertainty.

    Args:
        model: A `keras.Model` whose output is `(N, K)` Dirichlet
            concentrations (`DirichletHead`), or a `ku.Ensemble` of them.
        x: Inputs with N rows, anything `model.predict` takes.
        batch_size: Inputs per compiled call; None picks it.
        num_samples: Positive integer, 1 by default (one pass); more only
            for a model with MC layers.
        seed: Optional non-negative integer, for a model with MC layers.
        verbose: "auto", 0, 1 or 2.
        max_rows_per_call: The most rows one compiled call holds.

    Returns:
        An `EvidentialClassificationPrediction` (a
        `ku.ClassificationPrediction` with `vacuity`).

    Example:

    >>> pred = ku.evidential.predict_classification(model, x_test)
    >>> pred.mutual_information, pred.vacuity
    """
    warnings.warn(
        "ku.evidential.predict_classification is deprecated and removed in 0.4: "
        "use ku.predict_classification(model, x, num_samples, batch_size, ...), "
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
    if width is not None and width < 2:
        raise ValueError(
            "Invalid value received for argument `model`. Expected an output "
            "of K >= 2 Dirichlet concentrations (ku.evidential.DirichletHead). "
            f"Received: last dimension {width}"
        )
    return _predict.run(
        model,
        x,
        EvidentialClassificationSummary(),
        num_samples,
        batch_size,
        seed,
        verbose,
        max_rows_per_call,
    )
