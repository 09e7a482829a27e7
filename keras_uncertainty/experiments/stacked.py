"""Many one-hidden-layer networks of one shape, trained as one Keras model.

The UCI protocol trains the same small network many times: for every split,
every cell of the (dropout rate, tau) grid, every ensemble member. Trained one
after another, each network pays Keras's per-step and per-trace overhead for
a few thousand multiply-adds. Here they share one model of the packed layers
of `ku.layers` instead: every weight has a leading member axis (a kernel is
`(M, inputs, units)`) and one batched matmul computes all members, so M
networks cost one trace and one optimizer step.

Members differ in what the protocol varies: their dropout rate, their weight
decay, the standardization of their split, and the rows they train on. A
training row carries, per member, its standardized target and a 0/1 weight;
each member's loss is the mean over its own rows of the batch, exactly the
loss it would have trained on alone.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty.ensemble.adversarial import fast_gradient_sign_losses
from keras_uncertainty.layers.packed import PackedDense, PackedDropout, PackedL2


class MemberStandardize(keras.layers.Layer):
    """`(x - mean_m) / std_m` for every member m: `(B, d)` or `(B, M, d)` ->
    `(B, M, d)`. A `(B, M, d)` input gives each member its own rows."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = np.asarray(mean, "float32").tolist()
        self.std = np.asarray(std, "float32").tolist()

    def call(self, inputs):
        if len(inputs.shape) == 2:
            inputs = inputs[:, None, :]
        mean = np.asarray(self.mean, "float32")
        return (inputs - mean) / np.asarray(self.std, "float32")

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


class StackedNetwork(keras.Model):
    """M networks `d -> dropout -> hidden ReLU -> dropout -> outputs`.

    Built of the packed layers of `ku.layers` (`PackedDropout` with each
    member's rate, `PackedDense` with a `PackedL2` of each member's weight
    decay), on member-major activations.

    Args:
        x_mean, x_std: `(M, d)`, each member's input standardization.
        hidden: Hidden units.
        outputs: 1 (a mean) or 2 (mean and log-variance).
        rates: `(M,)` dropout rates, or None for no dropout.
        decays: `(M,)` L2 factors of the kernels, or None.
        adversarial_epsilon: Optional fast-gradient-sign step, as a fraction
            of each standardized feature's range `feature_range` `(M, d)`.
        seed: Seed of the dropout masks.

    Call arguments:
        inputs: `(B, d)` rows shared by all members, or `(B, M, d)`.

    Returns `(B, M, outputs)` in each member's standardized target units.
    """

    def __init__(
        self,
        x_mean,
        x_std,
        hidden,
        outputs,
        rates=None,
        decays=None,
        adversarial_epsilon=None,
        feature_range=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        members = len(x_mean)
        self.network_config = {
            "x_mean": np.asarray(x_mean).tolist(),
            "x_std": np.asarray(x_std).tolist(),
            "hidden": hidden,
            "outputs": outputs,
            "rates": None if rates is None else np.asarray(rates).tolist(),
            "decays": None if decays is None else np.asarray(decays).tolist(),
            "adversarial_epsilon": adversarial_epsilon,
            "feature_range": None
            if feature_range is None
            else np.asarray(feature_range).tolist(),
            "seed": seed,
        }
        self.standardize = MemberStandardize(x_mean, x_std)
        self.input_dropout = None
        self.hidden_dropout = None
        if rates is not None:
            self.input_dropout = PackedDropout(list(rates), seed=seed)
            self.hidden_dropout = PackedDropout(
                list(rates), seed=None if seed is None else seed + 1
            )
        regularizer = None if decays is None else PackedL2(decays)
        self.hidden = PackedDense(
            hidden, members, "relu", kernel_regularizer=regularizer
        )
        self.head = PackedDense(outputs, members, kernel_regularizer=regularizer)
        self.adversarial_step = None
        if adversarial_epsilon is not None:
            self.adversarial_step = np.asarray(
                adversarial_epsilon * np.asarray(feature_range), "float32"
            )
            # The adversarial step below reports its own loss.
            self.loss_metric = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=None):
        return self.network(self.standardize(inputs))

    def network(self, standardized):
        """`(B, M, d)` standardized inputs -> `(B, M, outputs)`."""
        x = ops.transpose(standardized, (1, 0, 2))  # member-major
        if self.input_dropout is not None:
            x = self.input_dropout(x)
        x = self.hidden(x)
        if self.hidden_dropout is not None:
            x = self.hidden_dropout(x)
        return ops.transpose(self.head(x), (1, 0, 2))

    @property
    def metrics(self):
        if self.adversarial_step is None:
            return super().metrics
        return [self.loss_metric]

    def train_step(self, data):
        if self.adversarial_step is None:
            return super().train_step(data)
        # Deep Ensembles' adversarial training: each member also trains on
        # its own fast-gradient-sign perturbation of its standardized inputs.
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            clean, perturbed = fast_gradient_sign_losses(
                self.network,
                lambda outputs: self.loss(y, outputs),
                self.standardize(x),
                self.adversarial_step,
            )
            loss = clean + perturbed
            if self.losses:
                loss = loss + ops.sum(self.losses)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        self.loss_metric.update_state(loss)
        return {"loss": self.loss_metric.result()}

    def get_config(self):
        return {**super().get_config(), **self.network_config}


class MaskedMemberLoss(keras.losses.Loss):
    """Sum over members of each member's mean loss over its own rows.

    `y_true` is `(B, M, 2)`: each member's standardized target and a 0/1
    weight saying whether the row belongs to the member's training rows.
    `member_loss(target (B, M, 1), y_pred (B, M, k))` gives `(B, M)`.
    """

    def __init__(self, member_loss, name="masked_member_loss"):
        super().__init__(name=name, reduction="sum")
        self.member_loss = member_loss

    def call(self, y_true, y_pred):
        target, weight = y_true[..., :1], y_true[..., 1]
        per_row = self.member_loss(target, y_pred) * weight
        rows = ops.maximum(ops.sum(weight, axis=0), 1.0)
        return ops.sum(per_row / rows, axis=1)
