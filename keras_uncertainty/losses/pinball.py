"""The pinball (quantile) loss for heads that predict quantiles.

A quantile head predicts, for each of k targets, one value per quantile
level; the last axis of `y_pred` holds the k predictions of the first level,
then the k of the second, and so on: `(N, m k)` for m levels. With the
levels `(alpha / 2, 1 - alpha / 2)` it is the lower / upper band that
`ku.conformal.ConformalizedQuantileRegressor` calibrates.
"""

import math

import keras
from keras import ops

_PACKAGE = "keras_uncertainty"


def _check_quantiles(quantiles):
    try:
        levels = tuple(float(q) for q in quantiles)
        ok = bool(levels) and all(
            not isinstance(q, bool) and math.isfinite(v) and 0 < v < 1
            for q, v in zip(quantiles, levels)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "Invalid value received for argument `quantiles`. Expected a "
            "non-empty sequence of levels in (0, 1), e.g. (0.05, 0.95). "
            f"Received: quantiles={quantiles!r}"
        )
    return levels


def _pinball(y_true, y_pred, quantiles):
    m = len(quantiles)
    width = y_pred.shape[-1]
    if width is not None and width % m:
        raise ValueError(
            f"Expected `y_pred` to hold {m} quantile(s) per target, so its last "
            f"dimension must be {m}*k for k targets. Received: y_pred with "
            f"shape {tuple(y_pred.shape)}"
        )
    k = width // m if width is not None else ops.shape(y_pred)[-1] // m
    y_true = ops.cast(y_true, y_pred.dtype)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    total = 0.0
    for i, tau in enumerate(quantiles):  # per level, not per point
        error = y_true - y_pred[..., i * k : (i + 1) * k]
        total = total + ops.maximum(tau * error, (tau - 1.0) * error)
    return ops.mean(total / m, axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
def pinball_loss(y_true, y_pred, quantiles=(0.05, 0.95)):
    """Pinball (quantile) loss, averaged over the levels and targets.

    For a level `tau` and the error `e = y - q_tau`:
    `rho_tau(e) = max(tau e, (tau - 1) e)`, minimised in expectation by the
    `tau`-quantile of `y` (Koenker and Bassett 1978). With m levels the last
    axis of `y_pred` holds the k predictions of level 1, then the k of level
    2, ...; the loss is the mean of `rho` over the m levels and k targets.

    Args:
        y_true: Targets, shape `(N, k)`, or `(N,)` when k = 1.
        y_pred: Quantile predictions, shape `(N, m k)`.
        quantiles: The m levels, in (0, 1); default `(0.05, 0.95)`, the
            band of a 90% interval.

    Returns:
        Per-example loss, shape `(N,)`.

    Example:

    >>> model.compile("adam", loss=ku.losses.pinball_loss)  # (0.05, 0.95)
    """
    return _pinball(y_true, y_pred, _check_quantiles(quantiles))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PinballLoss(keras.losses.Loss):
    """Pinball (quantile) loss for a quantile head, as a Keras loss.

    Per level `tau` and target, with `e = y - q_tau`:

        rho_tau(e) = max(tau e, (tau - 1) e)

    averaged over the m levels and k targets. The last axis of `y_pred`
    holds the k predictions of the first level, then the k of the second,
    ...: a head `keras.layers.Dense(2 * k)` trained with
    `PinballLoss((0.05, 0.95))` outputs k lower then k upper quantiles,
    which `ku.conformal.ConformalizedQuantileRegressor` turns into intervals
    with guaranteed coverage. Saved and loaded with the model (registered
    under `keras_uncertainty>PinballLoss`).

    Args:
        quantiles: The m levels, each in (0, 1); default `(0.05, 0.95)`.
        reduction: Keras loss reduction, default `"sum_over_batch_size"`.
        name: Name of the loss.

    Call arguments:
        y_true: Targets, shape `(N, k)` or `(N,)`.
        y_pred: Predictions, shape `(N, m k)`.

    Example:

    >>> head = keras.layers.Dense(2)(hidden)  # lower, upper
    >>> model.compile("adam", loss=ku.losses.PinballLoss((0.05, 0.95)))
    """

    def __init__(
        self,
        quantiles=(0.05, 0.95),
        reduction="sum_over_batch_size",
        name="pinball_loss",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.quantiles = _check_quantiles(quantiles)

    def call(self, y_true, y_pred):
        return _pinball(y_true, y_pred, self.quantiles)

    def get_config(self):
        config = super().get_config()
        config.update(quantiles=list(self.quantiles))
        return config
