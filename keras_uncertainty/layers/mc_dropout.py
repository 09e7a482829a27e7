"""Dropout layers that stay stochastic at prediction time (MC dropout).

Gal & Ghahramani (2016): keeping dropout on at inference turns T forward passes
into T samples of an approximate posterior predictive. Calling a whole model
with `training=True` does that too, but also switches BatchNormalization (and
any other training-dependent layer) into training mode. These layers ignore
`training` instead, so a model built with them can be called normally
(`training=False`) and only the dropout stays random.
"""

import math

import keras

from keras_uncertainty._validation import check_rate
from keras_uncertainty.layers import _masks
from keras_uncertainty.layers.mc_layer import MCLayer

_PACKAGE = "keras_uncertainty"


class _AlwaysOnBernoulli:
    """Mixin for the Bernoulli dropouts: the fast 16-bit mask of `_masks`,
    drawn whatever `training` says (it is accepted for API compatibility
    and deliberately ignored)."""

    def _noise_shape_of(self, inputs):
        if self.noise_shape is None:
            return None
        # The batch axis holds samples x inputs: a mask shared over it (a
        # batch dimension of 1) would be shared by every Monte Carlo sample.
        return (None, *tuple(self.noise_shape)[1:])

    def call(self, inputs, training=None):
        if self.rate == 0:
            return inputs
        return _masks.dropout(
            inputs, self.rate, self._noise_shape_of(inputs), self.seed_generator
        )


class _SpatialNoiseShape:
    """One mask entry per row and channel: whole feature maps are dropped.

    `None` entries take the input's size (see `_masks.dropout`), so the mask
    is `(batch, 1, ..., 1, channels)` for channels-last inputs.
    """

    def _noise_shape_of(self, inputs):
        rank = len(inputs.shape)
        spatial = [1] * (rank - 2)
        if getattr(self, "data_format", "channels_last") == "channels_first":
            return (None, None, *spatial)
        return (None, *spatial, None)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MCDropout(_AlwaysOnBernoulli, MCLayer, keras.layers.Dropout):
    """Dropout that is applied at training and at inference time.

    Each call zeroes a fraction `rate` of the inputs at random and scales the
    rest by `1 / (1 - rate)`, whatever the `training` argument says, so that
    repeated predictions are Monte Carlo samples (MC dropout). The mask uses
    16 random bits per unit (half the work of `keras.layers.Dropout`), so the
    realized rate is `round(rate * 2**16) / 2**16`, within 2**-17 of `rate`;
    the scaling uses the realized rate, so the layer stays exactly unbiased.

    Args:
        rate: Float in [0, 1). Fraction of the input units to drop.
        noise_shape: 1D integer tuple, the shape of the binary dropout mask
            that is broadcast over the inputs (as in `keras.layers.Dropout`).
            Its batch dimension is always taken as `None`: every row, so
            every input of every Monte Carlo sample, gets its own mask (a
            mask shared over the batch would make all samples equal); the
            other dimensions broadcast within each row.
        seed: Optional non-negative integer, the layer's random seed.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input tensor of any rank.
        training: Ignored; dropout is always active.

    Example:

    >>> layer = MCDropout(0.5, seed=1)
    >>> x = np.ones((2, 4), dtype="float32")
    >>> y = layer(x, training=False)  # still random: entries are 0 or 2
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(check_rate(rate), noise_shape=noise_shape, seed=seed, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MCSpatialDropout1D(
    _SpatialNoiseShape, _AlwaysOnBernoulli, MCLayer, keras.layers.SpatialDropout1D
):
    """Spatial 1D dropout (whole channels) at training and inference time.

    Drops entire feature maps of a `(batch, steps, channels)` input, one mask
    per row, whatever `training` says.

    Args:
        rate: Float in [0, 1). Fraction of the channels to drop.
        seed: Optional non-negative integer, the layer's random seed.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: 3D tensor `(batch, steps, channels)`.
        training: Ignored; dropout is always active.

    Example:

    >>> layer = MCSpatialDropout1D(0.5)
    >>> y = layer(np.ones((2, 5, 3), dtype="float32"))
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(check_rate(rate), seed=seed, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MCSpatialDropout2D(
    _SpatialNoiseShape, _AlwaysOnBernoulli, MCLayer, keras.layers.SpatialDropout2D
):
    """Spatial 2D dropout (whole channels) at training and inference time.

    The dropout of the MNIST LeNet-5 of the epistemic-uncertainty article:
    whole feature maps are dropped, one mask per row, whatever `training` says.

    Args:
        rate: Float in [0, 1). Fraction of the channels to drop.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            Keras's `image_data_format()`.
        seed: Optional non-negative integer, the layer's random seed.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: 4D tensor.
        training: Ignored; dropout is always active.

    Example:

    >>> layer = MCSpatialDropout2D(0.5)
    >>> y = layer(np.ones((2, 8, 8, 6), dtype="float32"))
    """

    def __init__(self, rate, data_format=None, seed=None, **kwargs):
        super().__init__(check_rate(rate), data_format=data_format, seed=seed, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MCSpatialDropout3D(
    _SpatialNoiseShape, _AlwaysOnBernoulli, MCLayer, keras.layers.SpatialDropout3D
):
    """Spatial 3D dropout (whole channels) at training and inference time.

    Args:
        rate: Float in [0, 1). Fraction of the channels to drop.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            Keras's `image_data_format()`.
        seed: Optional non-negative integer, the layer's random seed.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: 5D tensor.
        training: Ignored; dropout is always active.

    Example:

    >>> layer = MCSpatialDropout3D(0.5)
    >>> y = layer(np.ones((2, 4, 4, 4, 3), dtype="float32"))
    """

    def __init__(self, rate, data_format=None, seed=None, **kwargs):
        super().__init__(check_rate(rate), data_format=data_format, seed=seed, **kwargs)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MCGaussianDropout(MCLayer, keras.layers.GaussianDropout):
    """Multiplicative Gaussian noise at training and inference time.

    Multiplies the inputs by noise drawn from `N(1, rate / (1 - rate))`, the
    Gaussian counterpart of dropout with the same `rate`, whatever `training`
    says.

    Args:
        rate: Float in [0, 1), as for `MCDropout`.
        seed: Optional non-negative integer, the layer's random seed.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        inputs: Input tensor of any rank.
        training: Ignored; the noise is always applied.

    Example:

    >>> layer = MCGaussianDropout(0.2)
    >>> y = layer(np.ones((2, 4), dtype="float32"))
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(check_rate(rate), seed=seed, **kwargs)

    def call(self, inputs, training=None):
        if self.rate == 0:
            return inputs
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        noise = self.random_normal(keras.ops.shape(inputs), dtype=inputs.dtype)
        return inputs * (1.0 + stddev * noise)
