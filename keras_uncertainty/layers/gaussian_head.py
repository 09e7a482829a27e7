"""A (mean, log-variance) output layer whose variance cannot bend the features.

The faithful heteroscedastic head of Stirn et al. (2023): the means are a
Dense layer of the features; the log-variances are a Dense layer of the same
features with their gradient stopped, so the variance's loss trains only its
own weights, and the layers below learn from the means' loss alone. With a
loss that gives the mean the squared error's gradient
(`ku.losses.GaussianNLL("faithful")`), the network's means are those of the
homoscedastic network of the same shape, and the variance is fitted to its
residuals: a variance head can then neither excuse a poor mean nor crowd the
mean's features out.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_uncertainty._split_gradient import stop_gradient_after
from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.layers.batch_ensemble import BatchEnsembleDense
from keras_uncertainty.layers.packed import PackedDense, share_across_members

_PACKAGE = "keras_uncertainty"


def _variance_columns(layer):
    """The first log-variance column, the first whose inputs' gradient
    `layer` stops (None: it stops none)."""
    return layer.targets if layer.stop_variance_gradient else None


def _head_config(layer, config):
    """The Dense config of a head, its units and activation replaced by
    `targets` and `stop_variance_gradient` (its `__init__`'s arguments)."""
    for name in ("units", "activation"):
        config.pop(name, None)
    config.update(
        targets=layer.targets, stop_variance_gradient=layer.stop_variance_gradient
    )
    return config


def _refuse_units_and_activation(kwargs):
    """Pops `units` and `activation` from a head's `kwargs`: a ValueError
    for a value other than unset (the head has 2 * `targets` linear units)."""
    for name in ("units", "activation"):
        value = kwargs.pop(name, None)
        if name == "units" and value is not None:
            raise ValueError(
                "Invalid value received for argument `units`. Expected it "
                "unset: the layer has 2 * `targets` units. Received: "
                f"units={value!r}"
            )
        if name == "activation" and value not in (None, "linear"):
            raise ValueError(
                "Invalid value received for argument `activation`. Expected "
                "None (means and log-variances are linear). Received: "
                f"activation={value!r}"
            )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GaussianHead(keras.layers.Dense):
    """Output layer of k means then k log-variances, faithful by default.

    A `keras.layers.Dense` of `2 * targets` linear units (the layout of
    `ku.losses.GaussianNLL` and `ku.predict_regression`). With
    `stop_variance_gradient=True` (the default) the log-variance columns read
    the inputs through `stop_gradient`: the variance's loss trains their
    weights and biases only, never the layers below, which learn from the
    means alone (Stirn et al. 2023, "Faithful heteroscedastic regression with
    neural networks"). Its forward values are those of the Dense layer with
    the same weights. The layer declares its output (`variance_head = True`),
    so `ku.predict_regression` reads it without a compiled loss, and a
    `ku.Ensemble` of networks ending in it packs (`PackedGaussianHead`).

    Args:
        targets: Positive integer k, the number of regression targets.
        stop_variance_gradient: Whether the log-variances read the inputs with
            their gradient stopped (default True; False: a plain Dense).
        **kwargs: `keras.layers.Dense`'s other arguments (initializers,
            regularizers, constraints, `use_bias`, `name`, ...); not `units`
            or `activation` (the outputs are linear).

    Call arguments:
        inputs: Features `(..., d)`.

    Example:

    >>> inputs = keras.Input((8,))
    >>> hidden = keras.layers.Dense(50, activation="relu")(inputs)
    >>> model = keras.Model(inputs, ku.layers.GaussianHead(1)(hidden))
    >>> model.compile("adam", loss=ku.losses.GaussianNLL("faithful"))
    """

    task = "regression"
    variance_head = True

    def __init__(self, targets=1, stop_variance_gradient=True, **kwargs):
        _refuse_units_and_activation(kwargs)
        self.targets = check_positive_int(targets, "targets")
        self.stop_variance_gradient = bool(stop_variance_gradient)
        super().__init__(2 * self.targets, **kwargs)

    def call(self, inputs, training=None):
        outputs = stop_gradient_after(
            _variance_columns(self), ops.matmul, self.kernel, inputs
        )
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        return outputs

    def get_config(self):
        return _head_config(self, super().get_config())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackedGaussianHead(PackedDense):
    """M `GaussianHead`s side by side: `(M, batch, d)` -> `(M, batch, 2k)`.

    The packed twin of `GaussianHead` (a `ku.Ensemble` packs its members'
    heads into one): member m computes its own head with its own weights,
    the log-variance columns from the inputs with their gradient stopped.

    Args:
        targets: Positive integer k.
        num_members: Positive integer M.
        stop_variance_gradient: As `GaussianHead`'s.
        **kwargs: `PackedDense`'s other arguments (not `units` or
            `activation`).

    Call arguments:
        inputs: `(M, batch, d)` member-major features, or `(batch, d)`.
    """

    def __init__(self, targets, num_members, stop_variance_gradient=True, **kwargs):
        kwargs.pop("units", None)
        kwargs.pop("activation", None)
        self.targets = check_positive_int(targets, "targets")
        self.stop_variance_gradient = bool(stop_variance_gradient)
        super().__init__(2 * self.targets, num_members, **kwargs)

    def call(self, inputs):
        if len(inputs.shape) == 2:
            inputs = share_across_members(inputs, self.num_members)
        outputs = stop_gradient_after(
            _variance_columns(self), ops.matmul, self.kernel, inputs
        )
        if self.bias is not None:
            outputs = outputs + ops.expand_dims(self.bias, 1)
        return outputs

    def get_config(self):
        return _head_config(self, super().get_config())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchEnsembleGaussianHead(BatchEnsembleDense):
    """`GaussianHead` with a member axis: M BatchEnsemble heads of k means
    then k log-variances.

    The BatchEnsemble twin of `GaussianHead`: member m's outputs are those of
    a `ku.layers.BatchEnsembleDense` of `2 * targets` linear units,
    `((x * r_m) @ W) * s_m + b_m`. With `stop_variance_gradient=True` (the
    default) the log-variance columns read the inputs and the shared input
    fast weights `r_m` with their gradient stopped: the variance's loss
    trains only the log-variance columns of `W`, `s` and `b`, and the layers
    below (and `r`) learn from the means alone (Stirn et al. 2023). Rows are
    member-major, as for `BatchEnsembleDense`. Train it with
    `ku.losses.GaussianNLL()` (faithful by default).

    Args:
        targets: Positive integer k, the number of regression targets.
        num_members: Positive integer M.
        stop_variance_gradient: Whether the log-variances read the inputs
            (and `r`) with their gradient stopped (default True; False: a
            plain `BatchEnsembleDense`).
        **kwargs: `BatchEnsembleDense`'s other arguments (initializers,
            regularizers, `use_bias`, `name`, ...); not `units` or
            `activation`.

    Call arguments:
        inputs: `(M * B, ..., in)` tensor, member-major rows.

    Example:

    >>> def network(m):
    ...     inputs = keras.Input((8,))
    ...     h = ku.layers.BatchEnsembleDense(50, m, activation="relu")(inputs)
    ...     return keras.Model(inputs, ku.layers.BatchEnsembleGaussianHead(1, m)(h))
    >>> model = ku.BatchEnsemble(network, num_members=4)
    >>> model.compile("adam", loss=ku.losses.GaussianNLL())
    """

    task = "regression"
    variance_head = True

    def __init__(self, targets, num_members, stop_variance_gradient=True, **kwargs):
        _refuse_units_and_activation(kwargs)
        self.targets = check_positive_int(targets, "targets")
        self.stop_variance_gradient = bool(stop_variance_gradient)
        super().__init__(2 * self.targets, num_members, **kwargs)

    def call(self, inputs):
        if not self.stop_variance_gradient:
            return super().call(inputs)
        checks = self._check_batch(inputs)
        with tf.control_dependencies(checks):
            inputs = tf.identity(inputs)

        def product(features, r, kernel):
            return ops.matmul(self._scale(features, r), kernel)

        # The log-variance columns read the inputs and the shared fast
        # weights `r` with their gradient stopped.
        kernel = ops.cast(self.kernel, inputs.dtype)
        outputs = stop_gradient_after(self.targets, product, kernel, inputs, self.r)
        return self._finish(outputs)

    def get_config(self):
        return _head_config(self, super().get_config())
