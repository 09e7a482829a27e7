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

Layouts. Every packed layer takes and returns member-major tensors
`(M, batch, ...)`; most also take a `(batch, ...)` tensor shared by every
member. Inside a `PackedNetwork` (see `keras_uncertainty.ensemble.packing`)
the convolution path runs in the folded layout instead: `(batch, *spatial,
M * C)`, member m's C channels at `[m * C, (m + 1) * C)`. In it M
convolutions are one grouped convolution (`tf.nn.convolution` with M * in
input channels and an `(..., in, M * out)` kernel), and pooling, activations
and dropout need no reshaping; the network converts to member-major at
`Flatten` (or at the first layer that needs it), so no transposes sit
between convolutions. Measured for LeNet-5's second convolution, 5 members,
batch 64, forward and backward on 2 CPU cores: grouped 12.6 ms, one member
alone 7.9 ms; M convolutions on channel slices 22.8 ms, `tf.vectorized_map`
15.8 ms, block-diagonal kernel 31.7 ms, depthwise-and-sum 44.1 ms,
patches-and-einsum 152 ms. For a shared input the same op is one ordinary
convolution with the M kernels side by side (`(..., in, M * out)`), whose
output is already folded. `packed_call(x, layout, training)` runs a layer in
any layout ("shared", "member" or "folded") and says which it returns.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty._validation import (
    check_conv_arguments,
    check_positive_int,
    check_rate,
    check_seed,
    value_errors_from_config,
)
from keras_uncertainty.layers import _masks
from keras_uncertainty.layers.grouped_conv import grouped_convolution

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


def _add_member_weights(layer, kernel_shape, units):
    """Creates `layer.kernel` `(M, *kernel_shape)` and `layer.bias` `(M,
    units)` (None without `use_bias`), each member drawn on its own."""
    members = layer.num_members
    layer.kernel = layer.add_weight(
        shape=(members, *kernel_shape),
        initializer=_PerMemberInitializer(layer.kernel_initializer, members),
        regularizer=layer.kernel_regularizer,
        name="kernel",
    )
    layer.bias = None
    if layer.use_bias:
        layer.bias = layer.add_weight(
            shape=(members, units),
            initializer=_PerMemberInitializer(layer.bias_initializer, members),
            regularizer=layer.bias_regularizer,
            name="bias",
        )


def share_across_members(inputs, num_members):
    """Rows shared by every member, `(batch, ...)` -> `(M, batch, ...)`,
    the member-major layout of the packed layers."""
    return ops.broadcast_to(
        ops.expand_dims(inputs, 0), (num_members, *ops.shape(inputs))
    )


def _dims(x):
    """The shape of `x`: Python ints where static, scalar tensors elsewhere."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape)]


def fold_members(inputs):
    """Member-major `(M, batch, *spatial, C)` -> folded `(batch, *spatial, M * C)`."""
    rank = len(inputs.shape)
    moved = tf.transpose(inputs, (*range(1, rank - 1), 0, rank - 1))
    dims = _dims(moved)
    return tf.reshape(moved, tf.stack([*dims[:-2], dims[-2] * dims[-1]]))


def unfold_members_to_axis(inputs, num_members):
    """Folded `(batch, *spatial, M * C)` -> member-major `(M, batch, *spatial, C)`
    (a leading member axis; the inverse of `fold_members`). Compare
    `layers.batch_ensemble.unfold_members_to_rows`, which stacks the members
    on the rows."""
    dims = _dims(inputs)
    channels = inputs.shape[-1] // num_members
    split = tf.reshape(inputs, tf.stack([*dims[:-1], num_members, channels]))
    rank = len(split.shape)
    return tf.transpose(split, (rank - 2, *range(rank - 2), rank - 1))


def to_member_major(inputs, layout, num_members):
    """`inputs` in `layout` ("shared", "member", "folded") as member-major."""
    if layout == "shared":
        return share_across_members(inputs, num_members)
    if layout == "folded":
        return unfold_members_to_axis(inputs, num_members)
    return inputs


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
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
        _add_member_weights(self, (width, self.units), self.units)

    def call(self, inputs):
        if len(inputs.shape) == 2:
            inputs = share_across_members(inputs, self.num_members)
        outputs = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            outputs = outputs + ops.expand_dims(self.bias, 1)
        return self.activation(outputs)

    def packed_call(self, inputs, layout, training=None):
        if layout == "folded":
            inputs = unfold_members_to_axis(inputs, self.num_members)
        return self(inputs), "member"

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
@value_errors_from_config
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
        spatial: Whether whole feature maps are dropped (channels last: one
            mask entry per member, row and channel), as `SpatialDropout1D` /
            `SpatialDropout2D` / `MCSpatialDropout2D` do; default False.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: Member-major tensor `(M, batch, ...)`.
        training: Python boolean; ignored when `monte_carlo=True`.

    Example:

    >>> layer = PackedDropout([0.05, 0.1, 0.2])
    >>> y = layer(np.ones((3, 4, 8), "float32"))  # each member its own rate
    """

    def __init__(
        self,
        rates,
        num_members=None,
        monte_carlo=True,
        seed=None,
        spatial=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.spatial = bool(spatial)
        if isinstance(rates, numbers.Real) and not isinstance(rates, bool):
            count = check_positive_int(num_members, "num_members")
            rates = [rates] * count
        if not isinstance(rates, (list, tuple, np.ndarray)) or len(rates) == 0:
            raise ValueError(
                "Invalid value received for argument `rates`. Expected a float "
                "in [0, 1) or a non-empty list of them, one per member. "
                f"Received: rates={rates!r}"
            )
        self.rates = [check_rate(float(r), "rates") for r in rates]
        if num_members is not None and len(self.rates) != num_members:
            raise ValueError(
                "Invalid value received for argument `rates`. Expected one "
                f"rate per member ({num_members}). Received: {len(self.rates)}"
            )
        self.num_members = len(self.rates)
        self.monte_carlo = bool(monte_carlo)
        # `ku.sample` recognises layers that stay random at inference by this.
        self.stochastic_at_inference = self.monte_carlo
        # Its masks go through `_masks` with the rows' axis (1 member-major,
        # 0 folded), so they follow the sampling call's key.
        self.draws_from_call_key = True
        self.seed = check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        cuts = np.array([_masks.threshold(r) for r in self.rates])
        self.thresholds = cuts.astype("uint16")
        self.scales = _masks.keep_scale(cuts).astype("float32")

    def call(self, inputs, training=None):
        if not (self.monte_carlo or training) or not np.any(self.thresholds):
            return inputs
        if self.spatial:
            return self._drop(inputs, member_axis=0)
        rank = len(inputs.shape)
        trailing = (1,) * (rank - 1)
        thresholds = self.thresholds.reshape((-1, *trailing))
        scales = ops.cast(self.scales.reshape((-1, *trailing)), inputs.dtype)
        draws = _masks.random_bits16(
            _masks.noise_dims(inputs), self.seed_generator, row_axis=1
        )
        keep = ops.cast(draws >= thresholds, inputs.dtype)
        return inputs * keep * scales

    def _drop(self, inputs, member_axis):
        """Dropout of member-major (`member_axis=0`) or folded (`-1`: member
        m's channels are the m-th block of the last axis) `inputs`."""
        rank = len(inputs.shape)
        if member_axis == 0:
            shape = (-1, *(1,) * (rank - 1))
            thresholds = self.thresholds.reshape(shape)
            scales = self.scales.reshape(shape)
            row_axis = 1
        else:
            channels = inputs.shape[-1] // self.num_members
            thresholds = np.repeat(self.thresholds, channels)
            scales = np.repeat(self.scales, channels)
            row_axis = 0
        noise_shape = None
        if self.spatial:  # one entry per (member,) row and channel
            noise_shape = [None] * (row_axis + 1) + [1] * (rank - row_axis - 2) + [None]
        dims = _masks.noise_dims(inputs, noise_shape)
        draws = _masks.random_bits16(dims, self.seed_generator, row_axis=row_axis)
        keep = ops.cast(draws >= thresholds, inputs.dtype)
        return inputs * keep * ops.cast(scales, inputs.dtype)

    def packed_call(self, inputs, layout, training=None):
        if not (self.monte_carlo or training) or not np.any(self.thresholds):
            return inputs, layout
        if layout == "folded":
            return self._drop(inputs, member_axis=-1), layout
        inputs = to_member_major(inputs, layout, self.num_members)
        return self(inputs, training=training), "member"

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rates": list(self.rates),
            "monte_carlo": self.monte_carlo,
            "seed": self.seed,
            "spatial": self.spatial,
        }


@value_errors_from_config
class _PackedConv(keras.layers.Layer):
    """M channels-last convolutions of `rank` spatial dimensions."""

    rank = None

    def __init__(
        self,
        filters,
        kernel_size,
        num_members,
        strides=1,
        padding="valid",
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        self.num_members = check_positive_int(num_members, "num_members")
        given = (kernel_size, strides, padding, dilation_rate)
        conv = check_conv_arguments(self.rank, *given)
        self.kernel_size, self.strides, self.padding, self.dilation_rate = conv
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or len(input_shape) not in (self.rank + 2, self.rank + 3):
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected "
                f"member-major (M={self.num_members}, batch, *spatial, "
                f"channels) or shared (batch, *spatial, channels) inputs with "
                f"{self.rank} spatial dimensions and known channels. "
                f"Received: input_shape={input_shape}"
            )
        if len(input_shape) == self.rank + 3 and input_shape[0] not in (
            None,
            self.num_members,
        ):
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected "
                f"{self.num_members} members on axis 0. Received: "
                f"input_shape={input_shape}"
            )
        _add_member_weights(
            self, (*self.kernel_size, channels, self.filters), self.filters
        )

    def _folded_kernel(self):
        """`(M, *k, in, out)` -> `(*k, in, M * out)`: the members' kernels
        side by side, member-major on the output channels."""
        kernel = tf.convert_to_tensor(self.kernel)
        moved = tf.transpose(kernel, (*range(1, self.rank + 2), 0, self.rank + 2))
        return tf.reshape(
            moved,
            (*self.kernel_size, kernel.shape[-2], self.num_members * self.filters),
        )

    def convolve_folded(self, inputs):
        """Folded `(batch, *spatial, M * in)` or shared `(batch, *spatial,
        in)` inputs -> folded `(batch, *spatial', M * filters)` outputs.

        With M * in input channels and an `(..., in, M * out)` kernel the
        convolution is grouped (group m sees member m's channels); with in
        input channels it is one ordinary convolution of all members."""
        outputs = grouped_convolution(
            inputs,
            tf.cast(self._folded_kernel(), inputs.dtype),
            strides=self.strides,
            padding=self.padding.upper(),
            dilations=self.dilation_rate,
        )
        if self.bias is not None:
            outputs = outputs + tf.cast(tf.reshape(self.bias, (-1,)), inputs.dtype)
        return self.activation(outputs)

    def packed_call(self, inputs, layout, training=None):
        if layout == "member":
            inputs = fold_members(inputs)
        return self.convolve_folded(inputs), "folded"

    def call(self, inputs):
        if len(inputs.shape) == self.rank + 3:
            inputs = fold_members(inputs)
        return unfold_members_to_axis(self.convolve_folded(inputs), self.num_members)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0] if len(input_shape) == self.rank + 2 else input_shape[1]
        spatial = []
        for size, k, s, d in zip(
            input_shape[-self.rank - 1 : -1],
            self.kernel_size,
            self.strides,
            self.dilation_rate,
        ):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - d * (k - 1) - 1) // s + 1)
        return (self.num_members, batch, *spatial, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "num_members": self.num_members,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }


_CONV_DOC = """M {name} layers side by side (channels last).

    Member m computes `activation(conv(x[m], kernel[m]) + bias[m])`, exactly
    a `keras.layers.{name}` with member m's weights (`groups=1`, no causal
    padding); all members run as one grouped convolution (see the module
    docstring for the folded layout and the measurements behind it). The
    kernel is `(M, {kernel}, in, filters)`, the bias `(M, filters)`.

    Args:
        filters: Positive integer, output channels of each member.
        kernel_size: Integer or tuple of {rank}, as for `{name}`.
        num_members: Positive integer M.
        strides: Integer or tuple of {rank}.
        padding: `"valid"` or `"same"`.
        dilation_rate: Integer or tuple of {rank}.
        activation: Activation function (name or callable).
        use_bias: Whether each member has a bias.
        kernel_initializer: Initializer of ONE member's kernel (its fans are
            those of one member); each member draws its own.
        bias_initializer: Initializer of one member's bias.
        kernel_regularizer: Regularizer of the `(M, ...)` kernel, for
            example `PackedL2` (a per-member weight decay).
        bias_regularizer: Regularizer of the `(M, filters)` bias.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Member-major `(M, batch, {spatial}, channels)`, or
            `(batch, {spatial}, channels)` shared by every member.

    Returns:
        Member-major `(M, batch, {spatial}', filters)`.

    Example:

    >>> layer = {packed}(6, 5, num_members=5, activation="tanh")
    >>> layer(np.zeros({example}, "float32")).shape
    {shape}
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackedConv1D(_PackedConv):
    __doc__ = _CONV_DOC.format(
        name="Conv1D",
        packed="PackedConv1D",
        kernel="k",
        rank=1,
        spatial="steps",
        example="(8, 32, 1)",
        shape="(5, 8, 28, 6)",
    )
    rank = 1


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PackedConv2D(_PackedConv):
    __doc__ = _CONV_DOC.format(
        name="Conv2D",
        packed="PackedConv2D",
        kernel="kh, kw",
        rank=2,
        spatial="H, W",
        example="(8, 32, 32, 1)",
        shape="(5, 8, 28, 28, 6)",
    )
    rank = 2


_POOLING = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
)


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class PackedPooling(keras.layers.Wrapper):
    """A channels-last pooling layer applied to every member.

    Pooling is per channel, so it runs unchanged on shared and folded
    inputs; member-major `(M, batch, *spatial, C)` inputs are pooled as
    `(M * batch, *spatial, C)`.

    Args:
        layer: A `keras.layers` `AveragePooling1D`, `AveragePooling2D`,
            `MaxPooling1D` or `MaxPooling2D` with `data_format="channels_last"`.
        num_members: Positive integer M.
        **kwargs: Base layer keyword arguments.

    Example:

    >>> pool = PackedPooling(keras.layers.AveragePooling2D(2), num_members=5)
    >>> pool(np.zeros((5, 8, 28, 28, 6), "float32")).shape
    (5, 8, 14, 14, 6)
    """

    def __init__(self, layer, num_members, **kwargs):
        if type(layer) not in _POOLING or layer.data_format != "channels_last":
            raise ValueError(
                "Invalid value received for argument `layer`. Expected a "
                "channels-last AveragePooling1D/2D or MaxPooling1D/2D layer. "
                f"Received: {layer!r}"
            )
        super().__init__(layer, **kwargs)
        self.num_members = check_positive_int(num_members, "num_members")

    def build(self, input_shape=None):
        pass  # weight-free

    def call(self, inputs):
        dims = _dims(inputs)
        rows = tf.reshape(inputs, tf.stack([-1, *dims[2:]]))
        pooled = self.layer(rows)
        return tf.reshape(pooled, tf.stack([*dims[:2], *_dims(pooled)[1:]]))

    def packed_call(self, inputs, layout, training=None):
        if layout == "member":
            return self(inputs), layout
        return self.layer(inputs), layout

    def compute_output_shape(self, input_shape):
        pooled = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (*input_shape[:2], *pooled[1:])

    def get_config(self):
        return {**super().get_config(), "num_members": self.num_members}


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class PackedFlatten(keras.layers.Layer):
    """`keras.layers.Flatten` of every member: `(M, batch, ...)` ->
    `(M, batch, features)`, features in each member's channels-last order.

    Args:
        num_members: Positive integer M.
        **kwargs: Base layer keyword arguments.
    """

    def __init__(self, num_members, **kwargs):
        super().__init__(**kwargs)
        self.num_members = check_positive_int(num_members, "num_members")

    def call(self, inputs):
        dims = _dims(inputs)
        return tf.reshape(inputs, tf.stack([dims[0], dims[1], -1]))

    def packed_call(self, inputs, layout, training=None):
        if layout == "shared":
            dims = _dims(inputs)
            return tf.reshape(inputs, tf.stack([dims[0], -1])), layout
        return self(to_member_major(inputs, layout, self.num_members)), "member"

    def compute_output_shape(self, input_shape):
        rest = input_shape[2:]
        size = None if None in rest else int(np.prod(rest))
        return (input_shape[0], input_shape[1], size)

    def get_config(self):
        return {**super().get_config(), "num_members": self.num_members}


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class PackedNormalization(keras.layers.Layer):
    """Each member's own standardization: `(x[m] - mean[m]) / sqrt(var[m])`.

    The packed `keras.layers.Normalization` (with a given or adapted mean
    and variance): member m computes exactly what its Normalization layer
    computes, `sqrt(var)` floored at `keras.config.epsilon()` as there. The
    statistics are non-trainable weights.

    Args:
        mean: Array `(M, *shape)`: member m's mean, `shape` broadcasting
            against one row of a member's input (`(features,)`, or
            `(1, 1, channels)` for images).
        variance: Array of the same shape.
        invert: Whether to undo the standardization, `mean + x * sqrt(var)`,
            as `Normalization(invert=True)`.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: Member-major `(M, batch, ...)`, or `(batch, ...)` shared by
            every member.

    Example:

    >>> layer = PackedNormalization([[0.0, 1.0], [2.0, 3.0]], [[1.0, 4.0], [1.0, 1.0]])
    >>> layer(np.ones((3, 2), "float32")).shape  # shared rows, two members
    (2, 3, 2)
    """

    def __init__(self, mean, variance, invert=False, **kwargs):
        super().__init__(**kwargs)
        mean = np.asarray(mean, dtype="float32")
        variance = np.asarray(variance, dtype="float32")
        if (
            mean.ndim < 1
            or mean.shape != variance.shape
            or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(variance)))
            or np.any(variance < 0)
        ):
            raise ValueError(
                "Invalid value received for arguments `mean` and `variance`. "
                "Expected finite arrays of one shape (M, ...), variances >= 0. "
                f"Received: shapes {mean.shape} and {variance.shape}"
            )
        self.initial_mean = mean
        self.initial_variance = variance
        self.num_members = mean.shape[0]
        self.invert = bool(invert)

    def build(self, input_shape=None):
        shape = self.initial_mean.shape
        self.mean = self.add_weight(
            shape=shape,
            initializer=keras.initializers.Constant(self.initial_mean),
            trainable=False,
            name="mean",
        )
        self.variance = self.add_weight(
            shape=shape,
            initializer=keras.initializers.Constant(self.initial_variance),
            trainable=False,
            name="variance",
        )

    def call(self, inputs):
        if len(inputs.shape) == len(self.initial_mean.shape):  # shared rows
            inputs = share_across_members(inputs, self.num_members)
        mean = ops.expand_dims(ops.cast(self.mean, inputs.dtype), 1)
        std = ops.maximum(
            ops.sqrt(ops.cast(self.variance, inputs.dtype)), keras.config.epsilon()
        )
        std = ops.expand_dims(std, 1)
        if self.invert:
            return mean + inputs * std
        return (inputs - mean) / std

    def packed_call(self, inputs, layout, training=None):
        if layout == "folded":
            inputs = unfold_members_to_axis(inputs, self.num_members)
        return self(inputs), "member"

    def compute_output_shape(self, input_shape):
        if len(input_shape) == len(self.initial_mean.shape):
            return (self.num_members, *input_shape)
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.initial_mean.tolist(),
            "variance": self.initial_variance.tolist(),
            "invert": self.invert,
        }
