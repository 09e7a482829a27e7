"""Variational (Bayes by Backprop) layers: Gaussian weights sampled at inference.

Each layer holds a mean-field Gaussian posterior `q(w) = N(loc, scale**2)`
over its kernel and bias, with `scale = softplus(rho)`, and adds the KL
divergence to its prior through `add_loss`, so `model.compile(loss=...)` and
`fit` minimize the negative ELBO with no custom training loop (Blundell et
al. 2015, "Weight Uncertainty in Neural Networks"). At inference the layers
stay random (`ku.layers.MCLayer`): `ku.sample`, `ku.predict_*`, `ku.export`
and the callbacks sample them like MC dropout.

- `DenseReparameterization` samples the outputs through the local
  reparameterization trick (Kingma et al. 2015): for a Dense layer with an
  independent Gaussian weight draw per row, the row's outputs are
  independent Gaussians with mean `x @ loc + bias_loc` and variance
  `x**2 @ scale**2 + bias_scale**2`, so one normal draw per output entry
  gives exactly the distribution of one weight draw per row, at the cost of
  two matrix products.
- `DenseFlipout`, `Conv1DFlipout`, `Conv2DFlipout` use Flipout (Wen et al.
  2018): `mean(x) + ((x * s_in) @ (scale * eps) + bias_scale * eps_b) * s_out`
  with random signs `s_in`, `s_out` per row (per row and channel for a
  convolution). Rows that share a perturbation `eps` are decorrelated by
  their signs, and each row's marginal is exactly that of its own weight draw
  `loc + scale * eps * s_in s_out^T`.

The KL divergence per layer is `kl_weight * KL(q || p)`. The ELBO per
example is `E_q[log p(y | x, w)] - KL / N` for N training examples, so with a
loss that averages over the batch (every Keras loss does) set
**`kl_weight = 1 / num_train_examples`**: the loss Keras minimizes is then
the negative ELBO divided by N. `set_kl_weight(model, weight)` changes it on
every variational layer of a model after `compile` without retracing.
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty import _keras_compat
from keras_uncertainty._validation import (
    check_bool,
    check_choice,
    check_conv_arguments,
    check_finite,
    check_positive_int,
)
from keras_uncertainty.layers.grouped_conv import grouped_convolution
from keras_uncertainty.layers.mc_layer import MCLayer
from keras_uncertainty.layers.packed import fold_members, unfold_members_to_axis
from keras_uncertainty.sampling import keys

_PACKAGE = "keras_uncertainty"
_PRIORS = ("normal", "scale_mixture")
_MIXTURE_SCALE = math.exp(-6.0)  # Blundell et al.: -log(sigma_2) in {6, 7, 8}
# Added under the square root of the local reparameterization's variance,
# so its gradient stays finite on a row of zeros (without a variational bias).
_VARIANCE_FLOOR = 1e-16
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

__all__ = [
    "Conv1DFlipout",
    "Conv2DFlipout",
    "DenseFlipout",
    "DenseReparameterization",
    "set_kl_weight",
]


def check_kl_weight(kl_weight):
    """Checks a KL weight: a finite number >= 0."""
    return check_finite(kl_weight, "kl_weight", 0.0, False)


def _rho_of(scale):
    """The `rho` with `softplus(rho) == scale`."""
    return float(np.log(np.expm1(scale)))


# Row b of the table: the 8 signs (+1 / -1) of the bits of the byte b.
_SIGNS_OF_BYTE = 1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)) & 1)


def _rademacher(layer, shape):
    """Random signs (+1 / -1) of `shape`, rows on axis 0, in the layer's
    compute dtype.

    A sign needs one bit: each 16-bit draw of `random_bits16` gives 16 signs
    of a row (a 50-unit row hashes 2 words, not 25), each byte turned into
    its 8 signs by one table lookup, which makes the signs of a Flipout
    layer about as cheap as a dropout mask.
    """
    dims = list(shape)
    units = 1
    for dim in dims[1:]:
        if not isinstance(dim, int):  # a dynamic axis: one draw per sign
            bits = tf.cast(layer.random_bits16(dims), tf.int32)
            return tf.cast(1 - 2 * tf.bitwise.bitwise_and(bits, 1), layer.compute_dtype)
        units *= dim
    num_bytes = -(-units // 8)
    draws = tf.cast(layer.random_bits16([dims[0], -(-num_bytes // 2)]), tf.int32)
    low = tf.bitwise.bitwise_and(draws, 255)
    high = tf.bitwise.right_shift(draws, 8)
    byte_values = tf.reshape(tf.stack([low, high], axis=-1), tf.stack([dims[0], -1]))
    table = tf.constant(_SIGNS_OF_BYTE, layer.compute_dtype)
    signs = tf.gather(table, byte_values[:, :num_bytes])  # (rows, bytes, 8)
    signs = tf.reshape(signs, tf.stack([dims[0], num_bytes * 8]))
    if num_bytes * 8 != units:
        signs = signs[:, :units]
    return tf.reshape(signs, tf.stack(dims))


def _normal(layer, shape, **kwargs):
    """`layer.random_normal(shape, **kwargs)` clipped to [-6, 6].

    The engine's keyed draws are `ndtri((top + 0.5) * 2**-24)` of 24-bit
    `top`, computed in float32, where `2**24 - 0.5` rounds to `2**24`: the
    top value gives `ndtri(1.0) = +inf`, once in 2**24 draws (a sampling call
    of a 100000-row, 50-unit layer draws 5M normals). The largest finite draw
    is about 5.4, so the clip changes nothing else.
    """
    return ops.clip(layer.random_normal(shape, **kwargs), -6.0, 6.0)


def _samples_in_call():
    """T of the sampling call being traced, or None outside one."""
    call_key = keys.current()
    return None if call_key is None else call_key.num_samples


class _Variational(MCLayer):
    """Shared posterior, prior and KL of the variational layers (see the
    module docstring)."""

    def __init__(
        self,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        use_bias=True,
        variational_bias=True,
        posterior_scale_init=1e-3,
        prior="normal",
        prior_scale=1.0,
        mixture_scale=_MIXTURE_SCALE,
        mixture_weight=0.5,
        kl_weight=1.0,
        activation=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.variational_bias = check_bool(variational_bias, "variational_bias")
        self.posterior_scale_init = check_finite(
            posterior_scale_init, "posterior_scale_init", 0.0, True
        )
        self.prior = check_choice(prior, "prior", _PRIORS, lower=True)
        self.prior_scale = check_finite(prior_scale, "prior_scale", 0.0, True)
        self.mixture_scale = check_finite(mixture_scale, "mixture_scale", 0.0, True)
        self.mixture_weight = check_finite(
            mixture_weight, "mixture_weight", 0.0, True, 1.0, False
        )
        self.activation = keras.activations.get(activation)
        self.initial_kl_weight = check_kl_weight(kl_weight)
        self.kl_weight_variable = None

    # -- posterior ---------------------------------------------------------

    def _add_posterior(self, kernel_shape, bias_shape):
        rho = keras.initializers.Constant(_rho_of(self.posterior_scale_init))
        self.kernel_loc = self.add_weight(
            name="kernel_loc", shape=kernel_shape, initializer=self.kernel_initializer
        )
        self.kernel_rho = self.add_weight(
            name="kernel_rho", shape=kernel_shape, initializer=rho
        )
        self.bias_loc = self.bias_rho = None
        if self.use_bias:
            self.bias_loc = self.add_weight(
                name="bias_loc", shape=bias_shape, initializer=self.bias_initializer
            )
            if self.variational_bias:
                self.bias_rho = self.add_weight(
                    name="bias_rho", shape=bias_shape, initializer=rho
                )
        self.kl_weight_variable = self.add_weight(
            name="kl_weight",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_kl_weight),
            trainable=False,
        )

    @property
    def kl_weight(self):
        """The current KL weight (a float)."""
        if self.kl_weight_variable is None:
            return self.initial_kl_weight
        return float(ops.convert_to_numpy(self.kl_weight_variable))

    def set_kl_weight(self, kl_weight):
        """Sets the KL weight (no retracing: it is a non-trainable variable).

        Args:
            kl_weight: Finite number >= 0, e.g. `1 / num_train_examples`.
        """
        kl_weight = check_kl_weight(kl_weight)
        self.initial_kl_weight = kl_weight
        if self.kl_weight_variable is not None:
            self.kl_weight_variable.assign(kl_weight)

    @property
    def kernel_scale(self):
        """The posterior standard deviations of the kernel, `softplus(rho)`."""
        return ops.softplus(self.kernel_rho)

    @property
    def bias_scale(self):
        """The posterior standard deviations of the bias (None when the bias
        is deterministic or absent)."""
        return None if self.bias_rho is None else ops.softplus(self.bias_rho)

    def _params(self, dtype):
        """`[(loc, scale), ...]` of the kernel and the variational bias."""
        params = [(self.kernel_loc, self.kernel_scale)]
        if self.bias_rho is not None:
            params.append((self.bias_loc, self.bias_scale))
        return [(ops.cast(loc, dtype), ops.cast(scale, dtype)) for loc, scale in params]

    # -- prior and KL ------------------------------------------------------

    def _log_prior(self, w):
        if self.prior == "normal":
            return ops.sum(
                -0.5 * ops.square(w / self.prior_scale)
                - math.log(self.prior_scale)
                - _HALF_LOG_2PI
            )
        components = []
        for weight, scale in (
            (self.mixture_weight, self.prior_scale),
            (1.0 - self.mixture_weight, self.mixture_scale),
        ):
            if weight > 0:
                components.append(
                    math.log(weight)
                    - 0.5 * ops.square(w / scale)
                    - math.log(scale)
                    - _HALF_LOG_2PI
                )
        return ops.sum(ops.logsumexp(ops.stack(components), axis=0))

    def kl_divergence(self, noise=None):
        """`KL(q || p)` of the layer's weights (without `kl_weight`).

        Closed form for the Normal prior:
        `sum log(p / s) + (s**2 + m**2) / (2 p**2) - 1/2` over the posterior
        means m and scales s (p: `prior_scale`). For the scale mixture prior
        it has no closed form: a one-sample Monte Carlo estimate
        `log q(w) - log p(w)` at `w = m + s * eps` (unbiased, as in Blundell
        et al.), with `eps` the list `noise` of standard normal tensors (the
        kernel's, then the bias's) or fresh draws.

        Returns:
            A float32 scalar tensor.
        """
        params = self._params("float32")
        if self.prior == "normal":
            p = self.prior_scale
            total = 0.0
            for loc, scale in params:
                total = total + ops.sum(
                    math.log(p)
                    - ops.log(scale)
                    + (ops.square(scale) + ops.square(loc)) / (2.0 * p * p)
                    - 0.5
                )
            return total
        if noise is None:
            noise = [
                ops.reshape(
                    _normal(self, (1, int(np.prod(loc.shape))), dtype="float32"),
                    loc.shape,
                )
                for loc, _ in params
            ]
        total = 0.0
        for (loc, scale), eps in zip(params, noise):
            eps = ops.cast(eps, "float32")
            w = loc + scale * eps
            log_q = ops.sum(-0.5 * ops.square(eps) - ops.log(scale) - _HALF_LOG_2PI)
            total = total + log_q - self._log_prior(w)
        return total

    def _add_kl_loss(self, noise=None):
        # A sampling call (ku.sample, ku.predict_*, an export) never trains:
        # no loss to add, no draw to spend.
        if keys.current() is not None:
            return
        kl = self.kl_divergence(noise if self.prior != "normal" else None)
        self.add_loss(ops.cast(self.kl_weight_variable, "float32") * kl)

    def _flipout_noise(self):
        """Standard normal perturbations of the kernel and the variational
        bias: `[(T, *kernel_shape), (T, *bias_shape)]` inside a sampling call
        of T samples when `per_sample` (one per sample, keyed by the
        sample's global index, so chunk-invariant), else one shared
        `[kernel_shape, bias_shape]` for the call."""
        shapes = [tuple(self.kernel_loc.shape)]
        if self.bias_rho is not None:
            shapes.append(tuple(self.bias_loc.shape))
        sizes = [int(np.prod(s)) for s in shapes]
        total = sum(sizes)
        samples = _samples_in_call() if self.per_sample_noise else None
        rows = 1 if samples is None else samples
        eps = _normal(self, (rows, total), per_sample=True)
        pieces, start = [], 0
        for shape, size in zip(shapes, sizes):
            piece = eps[:, start : start + size]
            start += size
            if samples is None:
                pieces.append(ops.reshape(piece, shape))
            else:
                pieces.append(ops.reshape(piece, (samples, *shape)))
        return pieces, samples

    per_sample_noise = False

    @property
    def floats_per_sample(self):
        """Floats one sample of a sampling call holds for its own kernel
        and bias perturbation (the draw and its scaled copy): 0 for a layer
        whose samples share one draw."""
        if not self.per_sample_noise or not self.built:
            return 0
        size = int(np.prod(self.kernel_loc.shape))
        if self.bias_rho is not None:
            size += int(np.prod(self.bias_loc.shape))
        return 2 * size

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "use_bias": self.use_bias,
            "variational_bias": self.variational_bias,
            "posterior_scale_init": self.posterior_scale_init,
            "prior": self.prior,
            "prior_scale": self.prior_scale,
            "mixture_scale": self.mixture_scale,
            "mixture_weight": self.mixture_weight,
            "kl_weight": self.kl_weight,
            "activation": keras.activations.serialize(self.activation),
        }


_COMMON_ARGS = """
        kernel_initializer: Initializer of the kernel's posterior mean
            (default `"glorot_uniform"`, as `keras.layers.Dense`).
        bias_initializer: Initializer of the bias's posterior mean.
        use_bias: Whether the layer has a bias.
        variational_bias: True (default): the bias has a Gaussian posterior
            and a prior like the kernel (it is sampled and enters the KL).
            False: a deterministic bias (TensorFlow Probability's default),
            a point estimate without prior.
        posterior_scale_init: The posterior's initial standard deviation,
            the same for every weight: `rho` starts at
            `log(expm1(posterior_scale_init))` (default 1e-3, so training
            starts near the deterministic network).
        prior: `"normal"` (default): `N(0, prior_scale**2)` per weight, KL in
            closed form. `"scale_mixture"`: Blundell et al.'s
            `mixture_weight * N(0, prior_scale**2) + (1 - mixture_weight) *
            N(0, mixture_scale**2)`; its KL is a one-sample Monte Carlo
            estimate at the weights drawn in the call (unbiased).
        prior_scale: Finite number > 0, the prior's standard deviation (the
            mixture's first component).
        mixture_scale: Finite number > 0, the second (narrow) component of
            the scale mixture (default `exp(-6)`); unused by `"normal"`.
        mixture_weight: In (0, 1], the weight of the first component;
            unused by `"normal"`.
        kl_weight: Finite number >= 0 multiplying the KL in the loss. Use
            `1 / num_train_examples`: Keras losses average over the batch, so
            the loss is then the negative ELBO divided by N. Kept in a
            non-trainable variable (`set_kl_weight` changes it).
        activation: Activation applied to the sampled outputs.
        seed: Optional non-negative integer, the layer's seed (used outside
            sampling calls, e.g. in training).
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...)."""


def _document(cls):
    cls.__doc__ = cls.__doc__.replace("    {common}", _COMMON_ARGS.strip("\n"))
    return cls


class _DenseBase(_Variational):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int(units, "units")

    def build(self, input_shape):
        last = input_shape[-1]
        if last is None:
            raise ValueError(
                f"Invalid input received by layer '{self.name}'. Expected the "
                "last axis of the input to be known. Received: input_shape="
                f"{tuple(input_shape)}"
            )
        self._add_posterior((int(last), self.units), (self.units,))

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.units)

    def _mean(self, x):
        out = ops.matmul(x, ops.cast(self.kernel_loc, x.dtype))
        if self.use_bias:
            out = out + ops.cast(self.bias_loc, x.dtype)
        return out

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@_document
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseReparameterization(_DenseBase):
    """Dense layer with Gaussian weights, sampled by local reparameterization.

    The kernel (and bias) have a mean-field Gaussian posterior
    `N(loc, softplus(rho)**2)`; the layer adds `kl_weight * KL(q || prior)`
    to the model's losses in every call outside a sampling call. Each row
    (in a sampling call each (sample, input) pair) gets its own independent
    weight draw, sampled through its outputs (local reparameterization,
    Kingma et al. 2015): `y = x @ m + b_m + sqrt(x**2 @ s**2 + b_s**2) * eps`
    with one standard normal `eps` per output entry, which is exactly the
    distribution of the outputs of `x @ W + b` with `W, b` drawn from the
    posterior for that row, for two matrix products and no weight draw.

    Args:
        units: Positive integer, the output dimension.
    {common}

    Call arguments:
        inputs: Tensor `(..., input_dim)`.
        training: Ignored; the layer samples whenever it is called.

    Example:

    >>> layer = DenseReparameterization(4, kl_weight=1 / 1000, seed=0)
    >>> y = layer(np.ones((2, 3), dtype="float32"))  # random, shape (2, 4)
    >>> float(layer.losses[0]) >= 0  # kl_weight * KL
    True
    """

    def call(self, inputs, training=None):
        x = ops.convert_to_tensor(inputs, self.compute_dtype)
        mean = self._mean(x)
        params = self._params(x.dtype)
        kernel_scale = params[0][1]
        variance = ops.matmul(ops.square(x), ops.square(kernel_scale))
        if self.bias_rho is not None:
            variance = variance + ops.square(params[1][1])
        noise = _normal(self, ops.shape(mean))
        out = mean + ops.sqrt(variance + _VARIANCE_FLOOR) * noise
        self._add_kl_loss()
        return self.activation(out)


@_document
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DenseFlipout(_DenseBase):
    """Dense layer with Gaussian weights, sampled by Flipout (Wen et al. 2018).

    Posterior, prior and KL as `DenseReparameterization`. The outputs are
    `x @ m + b_m + ((x * s_in) @ (s * eps) + b_s * eps_b) * s_out`, with random
    signs `s_in` (per row and input unit) and `s_out` (per row and output
    unit): row r uses the weights `m + s * eps * s_in[r] s_out[r]^T`, whose
    marginal is exactly the posterior. Rows that share `eps` are
    decorrelated by their signs.

    - Outside a sampling call (training, a direct call) all rows of the
      batch share one `eps`, as in Wen et al.: one weight perturbation per
      minibatch, decorrelated per example by the signs.
    - Inside a sampling call (`ku.sample`, `ku.predict_*`, `ku.export`)
      each row is a (sample, input) pair, and each of the T samples gets
      its own `eps` (keyed by the sample's global index, so a seed gives the
      same samples whatever the chunking): the T samples of one input use
      T independent weight draws, and the inputs of one sample are
      decorrelated by the signs. This costs `T * input_dim * units` extra
      normal draws per call and a batched matrix product.

    Args:
        units: Positive integer, the output dimension.
        sampling_signs: `"both"` (default): in sampling calls too, each row
            gets signs on its inputs and on its outputs (Flipout).
            `"narrow"`: in sampling calls only, signs on the narrower side
            of the kernel (the inputs when `input_dim <= units`, else the
            outputs). Each input's T samples are still T independent
            posterior draws and each row's marginal is exact, so every
            per-input statistic (`ku.predict_*`) has the same distribution;
            only the inputs of one sample are decorrelated less (with a side
            of width 1, two inputs' perturbations in one sample are equal or
            opposite). It skips the wide sign tensor: about 2.5x faster
            sampling of an 8-50-2 MLP (`benchmarks/variational.py`).
            Training is unchanged (both sides).
    {common}

    Call arguments:
        inputs: Tensor `(..., input_dim)`.
        training: Ignored; the layer samples whenever it is called.

    Example:

    >>> layer = DenseFlipout(4, kl_weight=1 / 1000, seed=0)
    >>> y = layer(np.ones((2, 3), dtype="float32"))  # random, shape (2, 4)
    """

    per_sample_noise = True

    def __init__(self, units, sampling_signs="both", **kwargs):
        super().__init__(units, **kwargs)
        self.sampling_signs = check_choice(
            sampling_signs, "sampling_signs", ("both", "narrow"), lower=True
        )

    def get_config(self):
        return {**super().get_config(), "sampling_signs": self.sampling_signs}

    def call(self, inputs, training=None):
        x = ops.convert_to_tensor(inputs, self.compute_dtype)
        mean = self._mean(x)
        params = self._params(x.dtype)
        noise, samples = self._flipout_noise()
        sign_inputs = sign_outputs = True
        if samples is not None and self.sampling_signs == "narrow":
            # In a sampling call each input's T samples already use T
            # independent perturbations; signs on the narrower side suffice
            # to decorrelate the inputs of one sample.
            sign_inputs = int(self.kernel_loc.shape[0]) <= self.units
            sign_outputs = not sign_inputs
        signed = x * _rademacher(self, ops.shape(x)) if sign_inputs else x
        kernel_scale = params[0][1]
        if samples is None:
            perturbation = ops.matmul(signed, kernel_scale * noise[0])
            if self.bias_rho is not None:
                perturbation = perturbation + params[1][1] * noise[1]
        else:
            # Rows are sample-major: (T, rows of one sample, input_dim).
            per_sample = ops.reshape(signed, (samples, -1, ops.shape(x)[-1]))
            perturbation = ops.matmul(per_sample, kernel_scale[None] * noise[0])
            if self.bias_rho is not None:
                perturbation = perturbation + params[1][1] * noise[1][:, None, :]
            perturbation = ops.reshape(perturbation, ops.shape(mean))
        if sign_outputs:
            perturbation = perturbation * _rademacher(self, ops.shape(mean))
        out = mean + perturbation
        self._add_kl_loss(noise)
        return self.activation(out)


class _ConvFlipout(_Variational):
    rank = None

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        data_format=None,
        dilation_rate=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_positive_int(filters, "filters")
        given = (kernel_size, strides, padding, dilation_rate)
        conv = check_conv_arguments(self.rank, *given)
        self.kernel_size, self.strides, self.padding, self.dilation_rate = conv
        self.data_format = check_choice(
            data_format or keras.config.image_data_format(),
            "data_format",
            ("channels_last", "channels_first"),
            lower=True,
        )

    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def build(self, input_shape):
        if (
            len(input_shape) != self.rank + 2
            or input_shape[self._channel_axis()] is None
        ):
            raise ValueError(
                f"Invalid input received by layer '{self.name}'. Expected a "
                f"tensor of rank {self.rank + 2} with a known channel axis "
                f"({self.data_format}). Received: input_shape={tuple(input_shape)}"
            )
        channels = int(input_shape[self._channel_axis()])
        self._add_posterior(
            (*self.kernel_size, channels, self.filters), (self.filters,)
        )

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        spatial_axes = (
            range(1, self.rank + 1)
            if self.data_format == "channels_last"
            else range(2, self.rank + 2)
        )
        for i, axis in enumerate(spatial_axes):
            size = shape[axis]
            if size is None:
                continue
            if self.padding == "same":
                shape[axis] = -(-size // self.strides[i])
            else:
                extent = self.dilation_rate[i] * (self.kernel_size[i] - 1) + 1
                shape[axis] = max(0, (size - extent) // self.strides[i] + 1)
        shape[self._channel_axis()] = self.filters
        return tuple(shape)

    def _conv(self, x, kernel):
        return ops.conv(
            x,
            kernel,
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
            dilation_rate=self.dilation_rate,
        )

    def _channel_signs(self, rows, channels):
        signs = _rademacher(self, (rows, channels))
        return ops.reshape(signs, (rows, *([1] * self.rank), channels))

    per_sample_noise = True

    def _per_sample_conv(self, x, kernels, bias, samples):
        """The perturbation of `samples` sample-major row blocks, block t
        with its own kernel `kernels[t]` (and bias `bias[t]`): one grouped
        convolution, the T blocks side by side on the channel axis."""
        dims = tf.unstack(tf.shape(x))
        per_sample = tf.reshape(x, tf.stack([samples, -1, *dims[1:]]))
        folded = fold_members(per_sample)  # (n, *spatial, T * C)
        rank = self.rank
        # (T, *size, C, F) -> (*size, C, T * F): group t's filters.
        moved = tf.transpose(kernels, (*range(1, rank + 2), 0, rank + 2))
        size = [int(d) for d in self.kernel_loc.shape[:-1]]
        kernel = tf.reshape(moved, (*size, -1))
        out = grouped_convolution(
            folded,
            kernel,
            strides=self.strides,
            padding=self.padding.upper(),
            dilations=self.dilation_rate,
        )
        out = unfold_members_to_axis(out, samples)  # (T, n, *spatial, F)
        if bias is not None:
            out = out + tf.reshape(bias, (samples, 1, *([1] * rank), -1))
        dims = tf.unstack(tf.shape(out))
        return tf.reshape(out, tf.stack([-1, *dims[2:]]))

    def call(self, inputs, training=None):
        x = ops.convert_to_tensor(inputs, self.compute_dtype)
        if self.data_format == "channels_first":
            # TensorFlow's CPU convolutions take channels last only: the
            # layer computes channels last and transposes back.
            x = ops.transpose(x, (0, *range(2, self.rank + 2), 1))
        params = self._params(x.dtype)
        mean = self._conv(x, ops.cast(self.kernel_loc, x.dtype))
        if self.use_bias:
            mean = mean + ops.cast(self.bias_loc, x.dtype)
        noise, samples = self._flipout_noise()
        rows = ops.shape(x)[0]
        channels = int(self.kernel_loc.shape[-2])
        signed = x * self._channel_signs(rows, channels)
        bias_noise = None
        if self.bias_rho is not None:
            bias_noise = params[1][1] * noise[1]
        if isinstance(samples, numbers.Integral):
            # A sampling call of T samples (a Python int: the engine traces
            # one step per chunk size): each sample its own perturbation.
            perturbation = self._per_sample_conv(
                signed, params[0][1][None] * noise[0], bias_noise, samples
            )
        else:
            if samples is not None:  # T as a tensor: one perturbation
                noise = [n[0] for n in noise]
                bias_noise = None if bias_noise is None else bias_noise[0]
            perturbation = self._conv(signed, params[0][1] * noise[0])
            if bias_noise is not None:
                perturbation = perturbation + bias_noise
        out = mean + perturbation * self._channel_signs(rows, self.filters)
        self._add_kl_loss(noise)
        out = self.activation(out)
        if self.data_format == "channels_first":
            out = ops.transpose(out, (0, self.rank + 1, *range(1, self.rank + 1)))
        return out

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
        }


_CONV_DOC = """
    Posterior, prior and KL as `DenseReparameterization`. The outputs are
    `conv(x, m) + b_m + (conv(x * s_in, s * eps) + b_s * eps_b) * s_out`,
    with random signs per row and channel (`s_in` on the input channels,
    `s_out` on the filters, the same at every position, since one weight
    draw serves every position of a row): row r uses the kernel
    `m + s * eps * s_in[r] s_out[r]^T`, whose marginal is exactly the
    posterior. In training the rows of a batch share `eps` and are
    decorrelated by their signs (Wen et al. 2018). In a sampling call
    (`ku.sample`, `ku.predict_*`, an export) each of the T samples draws its
    own `eps` (keyed by the sample's global index, so a seed gives the same
    samples whatever the chunking), and the T perturbations run as one
    grouped convolution with the T samples side by side on the channel
    axis: the T samples of one input are independent weight draws, at the
    cost of T convolutions of the input, as MC dropout before the layer.
"""


@_document
@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv1DFlipout(_ConvFlipout):
    """1D convolution with Gaussian weights, sampled by Flipout.
    {conv}
    Args:
        filters: Positive integer, the number of output channels.
        kernel_size: Positive integer or tuple of 1, the window.
        strides: Positive integer or tuple of 1.
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"` (`(batch, steps, channels)`) or
            `"channels_first"`; defaults to `keras.config.image_data_format()`.
        dilation_rate: Positive integer or tuple of 1.
    {common}

    Call arguments:
        inputs: 3D tensor.
        training: Ignored; the layer samples whenever it is called.

    Example:

    >>> layer = Conv1DFlipout(4, 3, padding="same", kl_weight=1e-3)
    >>> y = layer(np.ones((2, 10, 3), dtype="float32"))  # (2, 10, 4)
    """

    rank = 1


@_document
@keras.saving.register_keras_serializable(package=_PACKAGE)
class Conv2DFlipout(_ConvFlipout):
    """2D convolution with Gaussian weights, sampled by Flipout.
    {conv}
    Args:
        filters: Positive integer, the number of output channels.
        kernel_size: Positive integer or tuple of 2, the window.
        strides: Positive integer or tuple of 2.
        padding: `"valid"` or `"same"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        dilation_rate: Positive integer or tuple of 2.
    {common}

    Call arguments:
        inputs: 4D tensor.
        training: Ignored; the layer samples whenever it is called.

    Example:

    >>> layer = Conv2DFlipout(4, 3, strides=2, kl_weight=1e-3)
    >>> y = layer(np.ones((2, 9, 9, 1), dtype="float32"))  # (2, 4, 4, 4)
    """

    rank = 2


for _cls in (Conv1DFlipout, Conv2DFlipout):
    _cls.__doc__ = _cls.__doc__.replace(
        "    {conv}", "\n" + _CONV_DOC.strip("\n") + "\n"
    )


VARIATIONAL_LAYERS = (
    DenseReparameterization,
    DenseFlipout,
    Conv1DFlipout,
    Conv2DFlipout,
)


def set_kl_weight(model, kl_weight):
    """Sets `kl_weight` on every variational layer of `model`, nested ones too.

    The weight is a non-trainable variable of each layer, so it can change
    after `compile` (or between epochs, e.g. for KL annealing) without
    retracing the training step.

    Args:
        model: A `keras.Model` (or layer) holding variational layers.
        kl_weight: Finite number >= 0; use `1 / num_train_examples` so the
            loss is the negative ELBO divided by N.

    Returns:
        The number of layers set.

    Example:

    >>> ku.layers.set_kl_weight(model, 1 / len(x_train))
    """
    kl_weight = check_kl_weight(kl_weight)
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model or layer. Received: {type(model).__name__}"
        )
    layers = [
        layer
        for layer in _keras_compat.flatten_layers(model)
        if isinstance(layer, _Variational)
    ]
    if not layers:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a model "
            "with variational layers (ku.layers.DenseFlipout, ...). Received: "
            f"'{model.name}' has none"
        )
    for layer in layers:
        layer.set_kl_weight(kl_weight)
    return len(layers)
