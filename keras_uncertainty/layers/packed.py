"""Layers that hold M member networks' weights on a leading member axis.

An ensemble of M small networks of one architecture, or the many networks of
a benchmark protocol (every split, every cell of a grid), costs M times the
per-step overhead when each has its own variables. Packed, every weight has a
leading member axis (a Dense kernel is `(M, inputs, units)`), activations are
member-major `(M, batch, features)`, and one batched matmul computes all
members. The optimizer then makes one update per kind of variable instead of
one per member, with identical arithmetic for element-wise optimizers (Adam,
SGD, RMSprop, ...): each entry of a packed variable is updated from its own
gradient and state.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_uncertainty._validation import check_positive_int, check_rate, check_seed
from keras_uncertainty.layers import _masks

_PACKAGE = "keras_uncertainty"


def _check_factors(values, name):
    factors = np.asarray(values, dtype="float64").reshape(-1)
    if factors.size == 0 or not np.all(np.isfinite(factors)) or np.any(factors < 0):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            "non-empty list of finite non-negative floats, one per member. "
            f"Received: {name}={values!r}"
        )
    return factors


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackedL2(keras.regularizers.Regularizer):
    """L2 penalty with one factor per member: `sum_m l2_m * sum(W[m] ** 2)`.

    The packed counterpart of `keras.regularizers.L2` for a weight whose
    leading axis lists the members: the penalty is the sum of the penalties
    each member would pay alone, so each member's gradient is the one it
    would get alone.

    Args:
        l2: Float or list of M non-negative floats (one per member).

    Example:

    >>> reg = PackedL2([1e-4, 1e-3])  # two members, two weight decays
    >>> float(reg(np.ones((2, 3, 4), "float32")))  # 12e-4 + 12e-3
    0.0132
    """

    def __init__(self, l2):
        self.l2 = [float(v) for v in _check_factors(l2, "l2")]

    def __call__(self, x):
        factors = ops.cast(np.asarray(self.l2, "float32"), x.dtype)
        per_member = ops.sum(ops.reshape(ops.square(x), (ops.shape(x)[0], -1)), axis=1)
        if len(self.l2) == 1:
            return factors[0] * ops.sum(per_member)
        return ops.sum(factors * per_member)

    def get_config(self):
        return {"l2": list(self.l2)}


class _PerMemberInitializer(keras.initializers.Initializer):
    """Draws each member's slice `(..., in, out)` with its own copy of
    `initializer`, so fans (Glorot, He) are those of one member's weight and
    members start apart. A seeded initializer gives member m `seed + m`."""

    def __init__(self, initializer, num_members):
        initializer = keras.initializers.get(initializer)
        config = initializer.get_config()
        if "seed" in config:
            seed = config["seed"]
            self.initializers = [
                type(initializer).from_config(
                    {**config, "seed": None if seed is None else seed + m}
                )
                for m in range(num_members)
            ]
        else:  # deterministic (zeros, constant, ...)
            self.initializers = [initializer] * num_members

    def __call__(self, shape, dtype=None):
        return ops.stack([init(shape[1:], dtype=dtype) for init in self.initializers])


def share_across_members(inputs, num_members):
    """Rows shared by every member, `(batch, ...)` -> `(M, batch, ...)`,
    the member-major layout of the packed layers."""
    return ops.broadcast_to(
        ops.expand_dims(inputs, 0), (num_members, *ops.shape(inputs))
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackedDense(keras.layers.Layer):
    """M Dense layers side by side: `(M, batch, k)` -> `(M, batch, units)`.

    Member m computes `activation(x[m] @ kernel[m] + bias[m])`, exactly a
    `keras.layers.Dense` with member m's weights; all members run as one
    batched matmul. A rank-2 input `(batch, k)` is shared by every member.

    Args:
        units: Positive integer, output size of each member.
        num_members: Positive integer M.
        activation: Activation function (name or callable), as for Dense.
        use_bias: Whether each member has a bias.
        kernel_initializer: Initializer of ONE member's `(k, units)` kernel;
            each member draws its own (default Glorot uniform, as Dense).
        bias_initializer: Initializer of one member's bias.
        kernel_regularizer: Regularizer of the `(M, k, units)` kernel, for
            example `PackedL2` (a per-member weight decay).
        bias_regularizer: Regularizer of the `(M, units)` bias.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(M, batch, k)` member-major activations, or `(batch, k)`.

    Example:

    >>> layer = PackedDense(16, num_members=5, activation="relu")
    >>> layer(np.zeros((32, 8), "float32")).shape  # shared input rows
    (5, 32, 16)
    """

    def __init__(
        self,
        units,
        num_members,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int(units, "units")
        self.num_members = check_positive_int(num_members, "num_members")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        width = input_shape[-1]
        if width is None:
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected a "
                f"known last dimension. Received: input_shape={input_shape}"
            )
        if len(input_shape) == 3 and input_shape[0] not in (None, self.num_members):
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected "
                f"member-major inputs (M={self.num_members}, batch, k). "
                f"Received: input_shape={input_shape}"
            )
        self.kernel = self.add_weight(
            shape=(self.num_members, width, self.units),
            initializer=_PerMemberInitializer(
                self.kernel_initializer, self.num_members
            ),
            regularizer=self.kernel_regularizer,
            name="kernel",
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.num_members, self.units),
                initializer=_PerMemberInitializer(
                    self.bias_initializer, self.num_members
                ),
                regularizer=self.bias_regularizer,
                name="bias",
            )

    def call(self, inputs):
        if len(inputs.shape) == 2:
            inputs = share_across_members(inputs, self.num_members)
        outputs = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            outputs = outputs + ops.expand_dims(self.bias, 1)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0] if len(input_shape) == 2 else input_shape[1]
        return (self.num_members, batch, self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_members": self.num_members,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackedDropout(keras.layers.Layer):
    """Dropout with its own rate for each member: `(M, batch, ...)` inputs.

    Member m's units are dropped with probability `rates[m]` and the kept
    ones scaled by the inverse of the realized keep probability (the 16-bit
    masks of `MCDropout`: the realized rate is within 2**-17 of each rate,
    and each member stays exactly unbiased). With `monte_carlo=True` (the
    default) the dropout stays on at inference, like `MCDropout`, so
    `ku.sample` draws MC samples of every member at once; with False it is
    active only when `training=True`, like `keras.layers.Dropout`.

    Args:
        rates: Float in [0, 1) for every member, or a list of M of them.
        num_members: Positive integer M; needed when `rates` is one float.
        monte_carlo: Whether the dropout stays on at inference.
        seed: Optional non-negative integer, the layer's random seed.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: Member-major tensor `(M, batch, ...)`.
        training: Python boolean; ignored when `monte_carlo=True`.

    Example:

    >>> layer = PackedDropout([0.05, 0.1, 0.2])
    >>> y = layer(np.ones((3, 4, 8), "float32"))  # each member its own rate
    """

    def __init__(self, rates, num_members=None, monte_carlo=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rates, numbers.Real) and not isinstance(rates, bool):
            count = check_positive_int(num_members, "num_members")
            rates = [rates] * count
        if not isinstance(rates, (list, tuple, np.ndarray)) or len(rates) == 0:
            raise ValueError(
                "Invalid value received for argument `rates`. Expected a float "
                "in [0, 1) or a non-empty list of them, one per member. "
                f"Received: rates={rates!r}"
            )
        self.rates = [check_rate(float(r)) for r in rates]
        if num_members is not None and len(self.rates) != num_members:
            raise ValueError(
                "Invalid value received for argument `rates`. Expected one "
                f"rate per member ({num_members}). Received: {len(self.rates)}"
            )
        self.num_members = len(self.rates)
        self.monte_carlo = bool(monte_carlo)
        # `ku.sample` recognises layers that stay random at inference by this.
        self.stochastic_at_inference = self.monte_carlo
        self.seed = check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        cuts = np.array([_masks.threshold(r) for r in self.rates])
        self.thresholds = cuts.astype("uint16")
        self.scales = _masks.keep_scale(cuts).astype("float32")

    def call(self, inputs, training=None):
        if not (self.monte_carlo or training) or not np.any(self.thresholds):
            return inputs
        rank = len(inputs.shape)
        trailing = (1,) * (rank - 1)
        thresholds = self.thresholds.reshape((-1, *trailing))
        scales = ops.cast(self.scales.reshape((-1, *trailing)), inputs.dtype)
        draws = _masks.random_bits16(_masks.noise_dims(inputs), self.seed_generator)
        keep = ops.cast(draws >= thresholds, inputs.dtype)
        return inputs * keep * scales

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rates": list(self.rates),
            "monte_carlo": self.monte_carlo,
            "seed": self.seed,
        }
