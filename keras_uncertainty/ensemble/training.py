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
    A `keras.optimizers.LossScaleOptimizer` (what `compile` wraps the
    optimizer in under the `mixed_float16` policy) is judged by the optimizer
    it wraps: the loss scale multiplies every gradient alike, and a step it
    skips (a non-finite gradient) is skipped for every member, as it would
    be for members with their own variables under one optimizer.
    """
    loss_scale = getattr(keras.optimizers, "LossScaleOptimizer", ())
    if isinstance(optimizer, loss_scale):
        optimizer = optimizer.inner_optimizer
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


# Reductions that `member_losses` computes itself, once for all members.
_FOLDED_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum")


def _member_axis_first(tensor):
    """`(batch, M, ...)` -> `(M, batch, ...)`."""
    return ops.transpose(tensor, (1, 0, *range(2, len(tensor.shape))))


def member_weights(sample_weight, num_members, batch):
    """Sample weights as `(M, batch)`, or None: a `(batch, M)` weight gives
    member m the column `[:, m]`; any other weight is shared."""
    if sample_weight is None:
        return None
    weight = ops.convert_to_tensor(sample_weight)
    if len(weight.shape) == 2 and weight.shape[1] == num_members:
        return ops.transpose(weight)  # a column per member
    return ops.broadcast_to(ops.reshape(weight, (1, batch)), (num_members, batch))


def _folded_member_losses(loss, y, y_pred, sample_weight, per_member_targets, mean):
    """All members' losses from one call of `loss.call` on the members folded
    into the batch (member-major), reduced per member as Keras reduces one
    model's loss: the weighted sum, divided by the number of loss entries
    (`"sum_over_batch_size"`), by the member's sum of weights over them
    (`mean`), or by nothing (`"sum"`)."""
    num_members = y_pred.shape[1]
    batch = ops.shape(y_pred)[0]
    by_member = _member_axis_first(y_pred)
    folded = ops.reshape(by_member, (-1, *by_member.shape[2:]))
    y = ops.cast(ops.convert_to_tensor(y), y_pred.dtype)
    if per_member_targets:  # (batch, M, ...): member m's targets are [:, m]
        y = _member_axis_first(y)
        folded_y = ops.reshape(y, (-1, *y.shape[2:]))
    else:
        folded_y = ops.tile(y, (num_members, *([1] * (len(y.shape) - 1))))
    values = ops.convert_to_tensor(loss.call(folded_y, folded))
    values = ops.reshape(values, (num_members, batch, -1))  # (M, batch, rest)
    weight = member_weights(sample_weight, num_members, batch)
    if weight is not None:
        weight = ops.expand_dims(ops.cast(weight, values.dtype), -1)
        values = values * weight
    total = ops.sum(values, axis=(1, 2))
    if loss.reduction == "sum":
        return total
    entries = ops.cast(ops.shape(values)[2], total.dtype)
    if mean and weight is not None:
        # Each member's weighted mean over its own rows; a member with no
        # row of weight in the batch has loss 0 (Keras's divide_no_nan).
        divisor = ops.sum(weight, axis=(1, 2)) * entries
    else:
        divisor = ops.cast(batch, total.dtype) * entries
    return ops.divide_no_nan(total, divisor)


def member_losses(
    loss, y, y_pred, sample_weight, per_member_targets=False, weighted_mean=False
):
    """`(M,)` losses: `loss` on each member's output `y_pred[:, m]`.

    A `(batch, M)` `sample_weight` gives member m the column `[:, m]`
    (bootstrap resample counts, 0/1 row masks); any other weight is shared.
    With `per_member_targets`, `y` is `(batch, M, ...)` and member m's
    targets are `y[:, m]`; otherwise every member has the targets `y`.

    Each member's loss is reduced as Keras reduces one model's loss: the
    weighted sum divided by the number of rows (`"sum_over_batch_size"`,
    `"mean"`), not divided (`"sum"`), or, with `weighted_mean=True` or a
    loss of reduction `"mean_with_sample_weight"`, divided by the member's
    own sum of weights: with 0/1 row masks, the mean over the member's own
    rows of the batch, the loss it would get trained alone on those rows.
    Losses of these reductions run once on the members folded into the
    batch; others (`"none"`) once per member.
    """
    reduction = getattr(loss, "reduction", None)
    mean = weighted_mean or reduction == "mean_with_sample_weight"
    if reduction in _FOLDED_REDUCTIONS:
        return _folded_member_losses(
            loss, y, y_pred, sample_weight, per_member_targets, mean
        )
    values = []
    for m in range(y_pred.shape[1]):
        weight = sample_weight
        if sample_weight is not None and len(sample_weight.shape) == 2:
            weight = sample_weight[:, m]
        target = y[:, m] if per_member_targets else y
        values.append(loss(target, y_pred[:, m], sample_weight=weight))
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
    times `sample_weight` when given: `(num_rows,)` shared by the members,
    or `(num_rows, M)`, one column per member (row masks)."""
    counts = rng.multinomial(
        num_rows, np.full(num_rows, 1.0 / num_rows), size=num_members
    ).T.astype(keras.config.floatx())
    if sample_weight is not None:
        weight = np.asarray(sample_weight, counts.dtype)
        if weight.shape != counts.shape:
            weight = weight.reshape(-1, 1)
        counts = counts * weight
    return counts
