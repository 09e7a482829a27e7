"""Many one-hidden-layer networks of one shape, trained as one Keras model.

The UCI protocol trains the same small network many times: for every split,
every cell of the (dropout rate, tau) grid, every ensemble member. Trained one
after another, each network pays Keras's per-step and per-trace overhead for
a few thousand multiply-adds. Here they share one model instead: every weight
has a leading member axis (a kernel is `(M, inputs, units)`) and one `einsum`
computes all members, so M networks cost one trace and one optimizer step.

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

from keras_uncertainty.layers import _masks


class MemberStandardize(keras.layers.Layer):
    """`(x - mean_m) / std_m` for every member m: `(B, d)` or `(B, M, d)` ->
    `(B, M, d)`. A `(B, M, d)` input gives each member its own rows."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = np.asarray(mean, "float32")
        self.std = np.asarray(std, "float32")

    def call(self, inputs):
        if len(inputs.shape) == 2:
            inputs = inputs[:, None, :]
        return (inputs - self.mean) / self.std


class MemberDropout(keras.layers.Layer):
    """MC dropout with one rate per member along axis 0 (always on).

    The 16-bit masks of `ku.layers.MCDropout` (half the random-number work
    of float draws; the realized rate is within 2**-17 of each `rate`, and
    the scaling uses it, so each member stays unbiased).
    """

    stochastic_at_inference = True

    def __init__(self, rates, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rates = np.asarray(rates, "float64")
        thresholds = np.array([_masks.threshold(r) for r in self.rates])
        self.thresholds = thresholds.astype("uint16")[:, None, None]
        self.scales = _masks.keep_scale(thresholds).astype("float32")[:, None, None]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        shape = tf.shape(inputs)
        draws = _masks.random_bits16(
            [shape[0], shape[1], inputs.shape[-1]], self.seed_generator
        )
        keep = ops.cast(draws >= self.thresholds, inputs.dtype)
        return inputs * keep * self.scales


class MemberL2:
    """`sum_m decay_m * ||W_m||^2`: an L2 penalty with one factor per member."""

    def __init__(self, decays):
        self.decays = np.asarray(decays, "float32")

    def __call__(self, kernel):
        return ops.sum(self.decays * ops.sum(ops.square(kernel), axis=(1, 2)))


class MemberDense(keras.layers.Layer):
    """A Dense layer per member, member-major: `(M, B, k)` -> `(M, B, units)`.

    Member-major activations make the layer one batched matmul over the
    member axis, with no transposes (and half the cost of an einsum over
    `(B, M, k)` in the backward pass on CPU).
    """

    def __init__(self, units, activation=None, decays=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = keras.activations.get(activation)
        self.decays = decays

    def build(self, input_shape):
        members, width = input_shape[0], input_shape[2]
        # Glorot uniform per member, as keras.layers.Dense initializes.
        limit = float(np.sqrt(6.0 / (width + self.units)))
        self.kernel = self.add_weight(
            shape=(members, width, self.units),
            initializer=keras.initializers.RandomUniform(-limit, limit),
            regularizer=None if self.decays is None else MemberL2(self.decays),
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(members, self.units), initializer="zeros", name="bias"
        )

    def call(self, inputs):
        return self.activation(ops.matmul(inputs, self.kernel) + self.bias[:, None, :])


class StackedNetwork(keras.Model):
    """M networks `d -> dropout -> hidden ReLU -> dropout -> outputs`.

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
        self.standardize = MemberStandardize(x_mean, x_std)
        self.input_dropout = None if rates is None else MemberDropout(rates, seed)
        self.hidden = MemberDense(hidden, "relu", decays)
        self.hidden_dropout = (
            None
            if rates is None
            else MemberDropout(rates, None if seed is None else seed + 1)
        )
        self.head = MemberDense(outputs, None, decays)
        self.adversarial_step = None
        if adversarial_epsilon is not None:
            self.adversarial_step = np.asarray(
                adversarial_epsilon * np.asarray(feature_range), "float32"
            )

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

    def train_step(self, data):
        if self.adversarial_step is None:
            return super().train_step(data)
        # Deep Ensembles' adversarial training: each member also trains on
        # its own fast-gradient-sign perturbation of its standardized inputs.
        x, y = data[0], data[1]
        standardized = self.standardize(x)
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(standardized)
                clean = self.network(standardized)
                clean_loss = self.loss(y, clean)
            direction = ops.sign(inner.gradient(clean_loss, standardized))
            perturbed = tf.stop_gradient(
                standardized + self.adversarial_step * direction
            )
            loss = clean_loss + self.loss(y, self.network(perturbed))
            if self.losses:
                loss = loss + ops.sum(self.losses)
        gradients = outer.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        self._loss_tracker.update_state(loss)
        return {"loss": self._loss_tracker.result()}


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
