"""BatchEnsemble layers: one shared weight, rank-1 fast weights per member.

Wen, Tran & Ba (2020), "BatchEnsemble: an alternative approach to efficient
ensemble and lifelong learning". Member m of M uses the weight
`W_m = W * outer(r_m, s_m)`: one slow weight `W` shared by every member and
two fast weight vectors per member, `r_m` on the inputs and `s_m` on the
outputs, plus its own bias `b_m`. Since `x (W * outer(r, s)) = ((x * r) W) *
s`, every member runs through the one shared matmul or convolution:

    y = activation(((x * r_m) W) * s_m + b_m)

Layout. The members share the batch axis, member-major: a batch of `M * B`
rows in which rows `[m * B, (m + 1) * B)` belong to member m (edward2's
layout, and the engine's member-major rows). A batch whose size is not a
multiple of M is refused. Layers without a member axis (pooling, `Flatten`,
activations, a plain `Dense` shared by all members, MC dropout) work on the
rows unchanged, so a network of these layers is an ordinary Keras model;
`ku.BatchEnsemble` tiles the inputs M times for it, so that each member sees
the batch, and reads its outputs as an M-member mixture.

Cost. A member adds `in + out` fast weights and `out` biases to the shared
`in * out` (Dense) or `k * k * in * out` (Conv2D) kernel: an M-member LeNet-5
holds 1.07x the parameters of one. Compute stays that of M networks (M times
the rows), as for a packed `ku.Ensemble`: the saving is parameters and
memory. A call forms the M member kernels `W * outer(r_m, s_m)` (transient;
up to `MEMBER_KERNEL_LIMIT` entries) and runs the members as one batched
matmul or grouped convolution, the packed ensemble's kernels; a larger layer
scales its rows around the one shared matmul or convolution instead, the
paper's form, without an M-fold kernel.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty._validation import (
    check_conv_arguments,
    check_positive_int,
    value_errors_from_config,
)
from keras_uncertainty.layers.grouped_conv import grouped_convolution

_PACKAGE = "keras_uncertainty"

# Up to this many entries in the M members' kernels together, a call forms
# them (`W * outer(r_m, s_m)`, transient) and runs the members as one batched
# matmul / grouped convolution, as a packed `ku.Ensemble` does: on 2 CPU cores
# about twice as fast as scaling the rows around one shared matmul or
# convolution (the elementwise passes over small channel counts dominate
# there). Larger layers scale the rows instead, so no M-fold kernel is formed.
MEMBER_KERNEL_LIMIT = 2**22

# Activations applied entry by entry, safe on the grouped convolution's
# folded channels (others, softmax, wait until the members are unfolded).
_ELEMENTWISE = (
    "linear",
    "relu",
    "relu6",
    "tanh",
    "sigmoid",
    "elu",
    "selu",
    "gelu",
    "silu",
    "softplus",
    "softsign",
    "exponential",
    "leaky_relu",
    "hard_sigmoid",
    "mish",
)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomSign(keras.initializers.Initializer):
    """Entries +1 or -1, each +1 with probability `probability`.

    The random-sign initialization of BatchEnsemble's fast weights (Wen et al.
    2020): each member starts as a sign-flipped copy of the shared weight.

    Args:
        probability: Float in [0, 1], the probability of +1 (default 0.5).
        seed: Optional integer seed.

    Example:

    >>> RandomSign(seed=0)((2, 3))  # entries in {-1, 1}
    """

    def __init__(self, probability=0.5, seed=None):
        probability = float(probability)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(
                "Invalid value received for argument `probability`. Expected a "
                f"float in [0, 1]. Received: probability={probability!r}"
            )
        self.probability = probability
        self.seed = seed

    def __call__(self, shape, dtype=None):
        seed = self.seed
        if seed is None:  # a fresh draw for every weight
            seed = int(np.random.randint(0, 2**31 - 1))
        draws = keras.random.uniform(shape, seed=seed)
        signs = ops.where(draws < self.probability, 1.0, -1.0)
        return ops.cast(signs, dtype or keras.config.floatx())

    def get_config(self):
        return {"probability": self.probability, "seed": self.seed}


def unfold_members_to_rows(inputs, num_members):
    """Folded `(B, h, w, M * C)` -> member-major rows `(M * B, h, w, C)`
    (member m's rows `[m * B, (m + 1) * B)`). Compare
    `layers.packed.unfold_members_to_axis`, which gives a leading member
    axis `(M, B, h, w, C)`."""
    dims = tf.shape(inputs)
    height = inputs.shape[1] if inputs.shape[1] is not None else dims[1]
    width = inputs.shape[2] if inputs.shape[2] is not None else dims[2]
    channels = inputs.shape[-1] // num_members
    split = tf.reshape(inputs, [-1, height, width, num_members, channels])
    return tf.reshape(
        tf.transpose(split, (3, 0, 1, 2, 4)), [-1, height, width, channels]
    )


def _fast_weight_initializer(value):
    if isinstance(value, str) and value.lower() in ("random_sign", "randomsign"):
        return RandomSign()
    return keras.initializers.get(value)


@value_errors_from_config
class BatchEnsembleLayer(keras.layers.Layer):
    """What the Dense and Conv2D versions share: the per-member weights, the
    member-major batch check and the per-member scaling of rows.

    The base class of `ku.layers.BatchEnsembleDense` and
    `BatchEnsembleConv2D`: `isinstance(layer, BatchEnsembleLayer)` tells a
    BatchEnsemble layer (as `ku.batch_ensemble.BatchEnsemble` does)."""

    def _init_common(
        self,
        units,
        num_members,
        activation,
        use_bias,
        kernel_initializer,
        bias_initializer,
        r_initializer,
        s_initializer,
        kernel_regularizer,
        bias_regularizer,
        r_regularizer,
        s_regularizer,
    ):
        self.num_members = check_positive_int(num_members, "num_members")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.r_initializer = _fast_weight_initializer(r_initializer)
        self.s_initializer = _fast_weight_initializer(s_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.r_regularizer = keras.regularizers.get(r_regularizer)
        self.s_regularizer = keras.regularizers.get(s_regularizer)
        self.out_width = units

    def _add_weights(self, kernel_shape, in_width):
        members = self.num_members
        self.kernel = self.add_weight(
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            name="kernel",
        )
        self.r = self.add_weight(
            shape=(members, in_width),
            initializer=self.r_initializer,
            regularizer=self.r_regularizer,
            name="r",
        )
        self.s = self.add_weight(
            shape=(members, self.out_width),
            initializer=self.s_initializer,
            regularizer=self.s_regularizer,
            name="s",
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(members, self.out_width),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                name="bias",
            )

    def _check_batch(self, inputs):
        """A ValueError for a known batch size that is not a multiple of M;
        a run-time check (InvalidArgumentError) for an unknown one."""
        batch = inputs.shape[0]
        message = (
            f"Invalid value received for argument `inputs` of layer "
            f"'{self.name}'. Expected a batch of num_members * B rows, "
            f"member-major (rows [m * B, (m + 1) * B) are member m's), with "
            f"num_members={self.num_members}. Received: a batch of "
        )
        if batch is not None:
            if batch % self.num_members:
                raise ValueError(
                    message + f"{batch} rows, not a multiple of {self.num_members}. "
                    "Tile the inputs M times (ku.BatchEnsemble does) to give "
                    "every member the batch."
                )
            return []
        if self.num_members == 1:
            return []
        return [
            tf.debugging.assert_equal(
                tf.math.floormod(tf.shape(inputs)[0], self.num_members),
                0,
                message=message + "a size that is not a multiple of num_members",
            )
        ]

    def _scale(self, inputs, factors):
        """Row block m of `inputs` times `factors[m]` on the last axis."""
        if self.num_members == 1:
            return inputs * ops.cast(factors[0], inputs.dtype)
        rank = len(inputs.shape)
        dims = tf.shape(inputs)
        rest = [
            size if size is not None else dims[i + 1]
            for i, size in enumerate(inputs.shape[1:])
        ]
        by_member = tf.reshape(inputs, [self.num_members, -1, *rest])
        shape = (self.num_members, *(1,) * (rank - 1), factors.shape[-1])
        scaled = by_member * ops.cast(ops.reshape(factors, shape), inputs.dtype)
        batch = inputs.shape[0] if inputs.shape[0] is not None else dims[0]
        return tf.reshape(scaled, [batch, *rest])

    def _finish(self, outputs):
        outputs = self._scale(outputs, self.s)
        if self.bias is not None:
            outputs = self._add_bias(outputs)
        return self.activation(outputs)

    def _add_bias(self, outputs):
        if self.num_members == 1:
            return outputs + ops.cast(self.bias[0], outputs.dtype)
        rank = len(outputs.shape)
        dims = tf.shape(outputs)
        rest = [
            size if size is not None else dims[i + 1]
            for i, size in enumerate(outputs.shape[1:])
        ]
        by_member = tf.reshape(outputs, [self.num_members, -1, *rest])
        shape = (self.num_members, *(1,) * (rank - 1), self.out_width)
        by_member = by_member + ops.cast(ops.reshape(self.bias, shape), outputs.dtype)
        batch = outputs.shape[0] if outputs.shape[0] is not None else dims[0]
        return tf.reshape(by_member, [batch, *rest])

    def _rows(self, tensor):
        """`(M * B, *rest)` -> `(M, B, *rest)` and the `rest` dims."""
        dims = tf.shape(tensor)
        rest = [
            size if size is not None else dims[i + 1]
            for i, size in enumerate(tensor.shape[1:])
        ]
        return tf.reshape(tensor, [self.num_members, -1, *rest]), rest

    def _member_kernels(self, dtype):
        """`W * outer(r_m, s_m)` of every member, `(*k, in, M, out)`."""
        kernel = ops.cast(self.kernel, dtype)
        rank = len(kernel.shape)
        lead = (1,) * (rank - 2)
        r = ops.reshape(
            ops.transpose(ops.cast(self.r, dtype)), (*lead, -1, self.num_members, 1)
        )
        s = ops.reshape(ops.cast(self.s, dtype), (*lead, 1, self.num_members, -1))
        return ops.expand_dims(kernel, -2) * r * s

    def _uses_member_kernels(self):
        return (
            self.num_members > 1
            and self.num_members * int(np.prod(self.kernel.shape))
            <= MEMBER_KERNEL_LIMIT
        )

    def _activation_is_elementwise(self):
        for name in _ELEMENTWISE:
            try:
                if self.activation is keras.activations.get(name):
                    return True
            except ValueError:  # a name this Keras does not have
                continue
        return False

    def member_weights(self):
        """Each member's effective weights, as numpy arrays.

        Returns:
            A list of M `(kernel, bias)` pairs: `kernel = W * outer(r_m,
            s_m)` (broadcast over a convolution's spatial axes), `bias =
            b_m` (None without `use_bias`), the weights of a plain
            `keras.layers.Dense` / `Conv2D` that computes member m.
        """
        kernel = ops.convert_to_numpy(self.kernel)
        r = ops.convert_to_numpy(self.r)
        s = ops.convert_to_numpy(self.s)
        bias = None if self.bias is None else ops.convert_to_numpy(self.bias)
        return [
            (
                kernel * np.multiply.outer(r[m], s[m]),
                None if bias is None else bias[m],
            )
            for m in range(self.num_members)
        ]

    def _common_config(self):
        return {
            "num_members": self.num_members,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "r_initializer": keras.initializers.serialize(self.r_initializer),
            "s_initializer": keras.initializers.serialize(self.s_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "r_regularizer": keras.regularizers.serialize(self.r_regularizer),
            "s_regularizer": keras.regularizers.serialize(self.s_regularizer),
        }


_COMMON_ARGS = """num_members: Positive integer M.
        activation: Activation function (name or callable), applied after
            the bias.
        use_bias: Whether each member has its own bias `b_m`.
        kernel_initializer: Initializer of the shared kernel `W` (default
            Glorot uniform, as Keras's layer).
        bias_initializer: Initializer of the `(M, units)` biases.
        r_initializer: Initializer of the `(M, in)` input fast weights.
            Default `"random_sign"`: entries +1 or -1 with probability 1/2
            (`RandomSign`), so each member starts as a sign-flipped copy of
            `W`, the paper's random-sign initialization; the paper's other
            choice, a normal around 1, is
            `keras.initializers.RandomNormal(1.0, 0.5)`.
        s_initializer: Initializer of the `(M, units)` output fast weights
            (default `"random_sign"`, as `r_initializer`).
        kernel_regularizer: Regularizer of `W`.
        bias_regularizer: Regularizer of the biases.
        r_regularizer: Regularizer of the `r` fast weights.
        s_regularizer: Regularizer of the `s` fast weights.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...)."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchEnsembleDense(BatchEnsembleLayer):
    __doc__ = f"""M Dense layers that share one kernel (BatchEnsemble).

    Member m computes `activation(((x * r_m) @ W) * s_m + b_m)`, a
    `keras.layers.Dense` with kernel `W * outer(r_m, s_m)` and bias `b_m`.
    The input's rows are member-major: a batch of `M * B` rows, rows
    `[m * B, (m + 1) * B)` belonging to member m (a batch that is not a
    multiple of M raises a ValueError). Inputs of rank > 2 are scaled on
    their last axis, as Dense does.

    Args:
        units: Positive integer, output size of each member.
        {_COMMON_ARGS}

    Call arguments:
        inputs: `(M * B, ..., in)` tensor, member-major rows.

    Example:

    >>> layer = BatchEnsembleDense(16, num_members=4, activation="relu")
    >>> x = np.ones((4 * 8, 3), "float32")  # 8 rows for each of 4 members
    >>> layer(x).shape
    (32, 16)
    """

    def __init__(
        self,
        units,
        num_members,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        r_initializer="random_sign",
        s_initializer="random_sign",
        kernel_regularizer=None,
        bias_regularizer=None,
        r_regularizer=None,
        s_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int(units, "units")
        self._init_common(
            self.units,
            num_members,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            r_initializer,
            s_initializer,
            kernel_regularizer,
            bias_regularizer,
            r_regularizer,
            s_regularizer,
        )

    def build(self, input_shape):
        width = input_shape[-1]
        if width is None or len(input_shape) < 2:
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected a "
                "tensor of rank >= 2 with a known last dimension. Received: "
                f"input_shape={input_shape}"
            )
        self._add_weights((width, self.units), width)

    def call(self, inputs):
        checks = self._check_batch(inputs)
        if not self._uses_member_kernels():
            with tf.control_dependencies(checks):
                scaled = self._scale(inputs, self.r)
            outputs = ops.matmul(scaled, ops.cast(self.kernel, scaled.dtype))
            return self._finish(outputs)
        # One batched matmul: (M, rows, in) @ (M, in, out).
        with tf.control_dependencies(checks):
            by_member, rest = self._rows(inputs)
        width = inputs.shape[-1]
        flat = tf.reshape(by_member, [self.num_members, -1, width])
        kernels = ops.transpose(self._member_kernels(inputs.dtype), (1, 0, 2))
        outputs = ops.matmul(flat, kernels)
        if self.bias is not None:
            outputs = outputs + ops.expand_dims(ops.cast(self.bias, outputs.dtype), 1)
        batch = inputs.shape[0] if inputs.shape[0] is not None else tf.shape(inputs)[0]
        outputs = tf.reshape(outputs, [batch, *rest[:-1], self.units])
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, **self._common_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchEnsembleConv2D(BatchEnsembleLayer):
    __doc__ = f"""M Conv2D layers that share one kernel (BatchEnsemble).

    Member m computes `activation(conv(x * r_m, W) * s_m + b_m)`, a
    `keras.layers.Conv2D` with kernel `W * outer(r_m, s_m)` (r on the input
    channels, s on the filters) and bias `b_m`. Channels last; rows
    member-major as for `BatchEnsembleDense`: a batch of `M * B` images,
    images `[m * B, (m + 1) * B)` belonging to member m.

    Args:
        filters: Positive integer, output channels of each member.
        kernel_size: Positive integer or tuple of 2.
        strides: Positive integer or tuple of 2 (default 1).
        padding: `"valid"` or `"same"`.
        dilation_rate: Positive integer or tuple of 2 (default 1); strides
            and dilation cannot both exceed 1.
        {_COMMON_ARGS}

    Call arguments:
        inputs: `(M * B, height, width, channels)` tensor, member-major rows.

    Example:

    >>> layer = BatchEnsembleConv2D(6, 5, num_members=4, activation="tanh")
    >>> layer(np.ones((4 * 2, 32, 32, 1), "float32")).shape
    (8, 28, 28, 6)
    """

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
        r_initializer="random_sign",
        s_initializer="random_sign",
        kernel_regularizer=None,
        bias_regularizer=None,
        r_regularizer=None,
        s_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        conv = check_conv_arguments(2, kernel_size, strides, padding, dilation_rate)
        self.kernel_size, self.strides, self.padding, self.dilation_rate = conv
        self._init_common(
            self.filters,
            num_members,
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            r_initializer,
            s_initializer,
            kernel_regularizer,
            bias_regularizer,
            r_regularizer,
            s_regularizer,
        )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or len(input_shape) != 4:
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected "
                "`(M * B, height, width, channels)` inputs with known "
                f"channels. Received: input_shape={input_shape}"
            )
        self._add_weights((*self.kernel_size, channels, self.filters), channels)

    def call(self, inputs):
        checks = self._check_batch(inputs)
        if self._uses_member_kernels():
            with tf.control_dependencies(checks):
                return self._grouped_call(inputs)
        with tf.control_dependencies(checks):
            scaled = self._scale(inputs, self.r)
        outputs = ops.conv(
            scaled,
            ops.cast(self.kernel, scaled.dtype),
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )
        return self._finish(outputs)

    def _grouped_call(self, inputs):
        """The members as one grouped convolution: member-major rows folded
        into channels `(B, h, w, M * in)`, convolved, then unfolded."""
        by_member, (height, width, channels) = self._rows(inputs)
        folded = tf.transpose(by_member, (1, 2, 3, 0, 4))
        folded = tf.reshape(folded, [-1, height, width, self.num_members * channels])
        outputs = self.folded_call(folded)
        unfolded = unfold_members_to_rows(outputs, self.num_members)
        if self._activation_is_elementwise():
            return unfolded
        return self.activation(unfolded)

    def folds(self):
        """Whether `folded_call` computes the whole layer: the member kernels
        are formed (at most `MEMBER_KERNEL_LIMIT` entries) and the activation
        works entry by entry.

        Returns:
            bool.
        """
        return self._uses_member_kernels() and self._activation_is_elementwise()

    def folded_call(self, inputs):
        """The members on folded inputs, as a packed `ku.Ensemble` runs them.

        `(B, h, w, M * in)` (member m's channels at `[m * in, (m + 1) *
        in)`) -> `(B, h', w', M * filters)` by one grouped convolution with
        the members' kernels side by side; a shared `(B, h, w, in)` input
        (every member's rows the same) by one ordinary convolution. The
        activation is applied when it works entry by entry (else the caller
        applies it to the unfolded outputs).

        Args:
            inputs: Folded `(B, h, w, M * in)` or shared `(B, h, w, in)`.

        Returns:
            Folded `(B, h', w', M * filters)` outputs.
        """
        channels = self.kernel.shape[-2]
        kernels = tf.reshape(
            self._member_kernels(inputs.dtype),
            (*self.kernel_size, channels, self.num_members * self.filters),
        )
        outputs = grouped_convolution(
            inputs,
            kernels,
            strides=self.strides,
            padding=self.padding.upper(),
            dilations=self.dilation_rate,
        )
        if self.bias is not None:
            # An add, not `tf.nn.bias_add`: the graph optimizer fuses a
            # convolution with a BiasAdd, and TensorFlow's own CPU kernels
            # have no fused grouped convolution (a model traced where the
            # grouped form runs, then served on such a CPU, would fail).
            outputs = outputs + tf.reshape(ops.cast(self.bias, outputs.dtype), [-1])
        if self._activation_is_elementwise():
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        spatial = []
        for size, k, s, d in zip(
            input_shape[1:3], self.kernel_size, self.strides, self.dilation_rate
        ):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - d * (k - 1) - 1) // s + 1)
        return (input_shape[0], *spatial, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            **self._common_config(),
        }
