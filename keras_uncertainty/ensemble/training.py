"""How an ensemble trains: each member's loss on its own output, bootstrap
resamples, and when packed variables update exactly as separate ones."""

import keras
import numpy as np
from keras import ops

# Optimizers whose update of an entry uses only that entry's gradient and
# state, so that updating one packed `(M, ...)` variable is exactly M
# separate updates.
ELEMENTWISE_OPTIMIZERS = tuple(
    getattr(keras.optimizers, name)
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "RMSprop",
        "Adagrad",
        "Adadelta",
        "Adamax",
        "Nadam",
        "Lion",
        "Ftrl",
    )
    if hasattr(keras.optimizers, name)
)


def packed_update_is_exact(optimizer):
    """Whether `optimizer` updates a packed variable as it would each slice.

    Element-wise optimizers are exact; a per-variable norm clip (`clipnorm`)
    would see all members' gradients at once, and other optimizers (LAMB's
    per-variable trust ratio, loss-scale wrappers, ...) are not known to be.
    `global_clipnorm` is exact: the global norm spans every member either way.
    """
    return type(optimizer) in ELEMENTWISE_OPTIMIZERS and optimizer.clipnorm is None


class FunctionLoss(keras.losses.Loss):
    """A loss function `fn(y_true, y_pred)` as a `keras.losses.Loss`, so that
    Keras applies sample weights and the mean reduction as `compile` would."""

    def __init__(self, fn, name=None):
        super().__init__(name=name or getattr(fn, "__name__", "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def as_loss_object(loss):
    """`keras.losses.get(loss)` as a `keras.losses.Loss`."""
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss
    if not callable(loss):
        raise ValueError(
            "Invalid value received for argument `loss`. Expected a loss "
            f"name, function or keras.losses.Loss. Received: loss={loss!r}"
        )
    return FunctionLoss(loss)


def _folded_member_losses(loss, y, y_pred, sample_weight):
    """All members' losses from one call of `loss.call` on the members folded
    into the batch (member-major), reduced per member as Keras reduces one
    model's loss: the weighted sum, divided by the number of loss entries for
    `"sum_over_batch_size"`."""
    num_members = y_pred.shape[1]
    rank = len(y_pred.shape)
    by_member = ops.transpose(y_pred, (1, 0, *range(2, rank)))
    batch = ops.shape(y_pred)[0]
    folded = ops.reshape(by_member, (-1, *by_member.shape[2:]))
    y = ops.convert_to_tensor(y)
    y = ops.cast(y, y_pred.dtype)
    tiled_y = ops.tile(y, (num_members, *([1] * (len(y.shape) - 1))))
    values = ops.convert_to_tensor(loss.call(tiled_y, folded))
    values = ops.reshape(values, (num_members, batch, -1))  # (M, batch, rest)
    if sample_weight is not None:
        weight = ops.cast(ops.convert_to_tensor(sample_weight), values.dtype)
        if len(weight.shape) == 2 and weight.shape[1] == num_members:
            weight = ops.transpose(weight)  # (M, batch): a column per member
        else:
            weight = ops.reshape(weight, (1, batch))
        values = values * ops.expand_dims(weight, -1)
    total = ops.sum(values, axis=(1, 2))
    if loss.reduction == "sum":
        return total
    entries = ops.cast(batch * ops.shape(values)[2], total.dtype)
    return total / entries


def member_losses(loss, y, y_pred, sample_weight):
    """`(M,)` losses: `loss` on each member's output `y_pred[:, m]`.

    A `(batch, M)` `sample_weight` gives member m the column `[:, m]`
    (bootstrap resample counts); any other weight is shared. Losses with
    Keras's `"sum_over_batch_size"` or `"sum"` reduction run once on the
    members folded into the batch; others once per member.
    """
    if getattr(loss, "reduction", None) in ("sum_over_batch_size", "sum"):
        return _folded_member_losses(loss, y, y_pred, sample_weight)
    values = []
    for m in range(y_pred.shape[1]):
        weight = sample_weight
        if sample_weight is not None and len(sample_weight.shape) == 2:
            weight = sample_weight[:, m]
        values.append(loss(y, y_pred[:, m], sample_weight=weight))
    return ops.stack(values)


class MemberMeans(keras.metrics.Metric):
    """Running means of the M members' losses, as `member_<i>_loss` logs.

    One `(M,)` total and count instead of M `keras.metrics.Mean`, so a
    training step updates two variables whatever M is.
    """

    def __init__(self, num_members, name="member_losses", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_members = num_members
        self.total = self.add_variable(
            shape=(num_members,), initializer="zeros", name="total"
        )
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, sample_weight=1.0):
        weight = ops.cast(sample_weight, self.total.dtype)
        self.total.assign_add(ops.cast(values, self.total.dtype) * weight)
        self.count.assign_add(weight)

    def result(self):
        means = self.total / ops.maximum(self.count, 1e-12)
        return {f"member_{m}_loss": means[m] for m in range(self.num_members)}

    def reset_state(self):
        self.total.assign(ops.zeros((self.num_members,), self.total.dtype))
        self.count.assign(ops.zeros((), self.count.dtype))


def bootstrap_counts(rng, num_rows, num_members, sample_weight=None):
    """`(num_rows, M)` multinomial resample counts, one column per member,
    times `sample_weight` when given."""
    counts = rng.multinomial(
        num_rows, np.full(num_rows, 1.0 / num_rows), size=num_members
    ).T.astype(keras.config.floatx())
    if sample_weight is not None:
        counts = counts * np.asarray(sample_weight, counts.dtype).reshape(-1, 1)
    return counts
