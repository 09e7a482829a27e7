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


def member_losses(loss, y, y_pred, sample_weight):
    """`(M,)` losses: `loss` on each member's output `y_pred[:, m]`.

    A `(batch, M)` `sample_weight` gives member m the column `[:, m]`
    (bootstrap resample counts); any other weight is shared.
    """
    values = []
    for m in range(y_pred.shape[1]):
        weight = sample_weight
        if sample_weight is not None and len(sample_weight.shape) == 2:
            weight = sample_weight[:, m]
        values.append(loss(y, y_pred[:, m], sample_weight=weight))
    return ops.stack(values)


def bootstrap_counts(rng, num_rows, num_members, sample_weight=None):
    """`(num_rows, M)` multinomial resample counts, one column per member,
    times `sample_weight` when given."""
    counts = rng.multinomial(
        num_rows, np.full(num_rows, 1.0 / num_rows), size=num_members
    ).T.astype(keras.config.floatx())
    if sample_weight is not None:
        counts = counts * np.asarray(sample_weight, counts.dtype).reshape(-1, 1)
    return counts
