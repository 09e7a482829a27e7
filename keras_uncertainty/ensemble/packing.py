"""Packing M member networks of one architecture into one network of packed layers.

A member network packs when it is a chain of layers (Sequential, or a
Functional model whose layers each feed the next) on rank-2, rank-3 or
rank-4 inputs (vectors, channels-last sequences or images), every layer of a
registered kind:

- `Dense`, `GaussianHead`, `Conv1D`, `Conv2D` (no constraint; no regularizer, or L2;
  channels last, `groups=1`, no causal padding);
- `Dropout` / `MCDropout` (without `noise_shape`), `SpatialDropout1D` /
  `SpatialDropout2D` / `MCSpatialDropout1D` / `MCSpatialDropout2D`;
- `AveragePooling1D/2D`, `MaxPooling1D/2D`, `Flatten` (channels last);
- `Normalization` with its mean and variance (given or adapted);
- weight-free element-wise layers (`Activation`, `ReLU`, `LeakyReLU`, `ELU`).

Every member must have the same sequence of layers with the same shapes and
activations; dropout rates, L2 factors and normalization statistics may
differ. Members that do not pack train through plain Keras, each with its
own variables.

The registry: `register(layer_type, signature, twin, load, store)` makes a
Keras layer type packable. `signature(layer)` is what must agree across
members (None: this layer cannot pack); `twin(layers, index)` builds the
packed layer standing for the members' `layers` (one per member);
`load(packed, layers)` copies the members' weights into it and
`store(packed, layers)` copies them back (both None for weight-free layers).
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_uncertainty.layers.gaussian_head import GaussianHead, PackedGaussianHead
from keras_uncertainty.layers.mc_dropout import (
    MCDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
)
from keras_uncertainty.layers.packed import (
    PackedConv1D,
    PackedConv2D,
    PackedDense,
    PackedDropout,
    PackedFlatten,
    PackedL2,
    PackedNormalization,
    PackedPooling,
    to_member_major,
)


@dataclasses.dataclass(frozen=True)
class Packing:
    """How one Keras layer type packs (see the module docstring)."""

    signature: object
    twin: object
    load: object = None
    store: object = None


_REGISTRY = {}


def register(layer_type, signature, twin, load=None, store=None):
    """Makes `layer_type` (exactly that class) packable (see the module)."""
    _REGISTRY[layer_type] = Packing(signature, twin, load, store)


def _l2_factor(regularizer):
    """The factor of an L2 regularizer, 0 for None, None for other kinds."""
    if regularizer is None:
        return 0.0
    if type(regularizer) is keras.regularizers.L2:
        return float(regularizer.get_config()["l2"])
    return None


def _weighted_signature(layer):
    """What a Dense or convolution needs to pack (None: it cannot)."""
    if layer.kernel_constraint is not None or layer.bias_constraint is not None:
        return None
    if layer.activity_regularizer is not None:
        return None
    if _l2_factor(layer.kernel_regularizer) is None:
        return None
    if _l2_factor(layer.bias_regularizer) is None:
        return None
    if getattr(layer, "lora_rank", None):
        return None
    return (layer.use_bias, repr(keras.activations.serialize(layer.activation)))


def _regularizers(layers):
    kernel_l2 = [_l2_factor(layer.kernel_regularizer) for layer in layers]
    bias_l2 = [_l2_factor(layer.bias_regularizer) for layer in layers]
    return {
        "kernel_regularizer": PackedL2(kernel_l2) if any(kernel_l2) else None,
        "bias_regularizer": PackedL2(bias_l2) if any(bias_l2) else None,
    }


def _numpy(value):
    if isinstance(value, keras.Variable):
        return value.numpy()
    return ops.convert_to_numpy(value)


def _weight_names(packed):
    return ["kernel", "bias"] if packed.use_bias else ["kernel"]


def _load_weights(packed, layers):
    """Stacks each member's kernel (and bias) on the packed member axis."""
    for name in _weight_names(packed):
        stacked = np.stack([_numpy(getattr(layer, name)) for layer in layers])
        getattr(packed, name).assign(stacked)


def _store_weights(packed, layers):
    """Member m's kernel (and bias) from slice m of the packed ones."""
    for name in _weight_names(packed):
        values = getattr(packed, name).numpy()
        for m, layer in enumerate(layers):
            getattr(layer, name).assign(values[m])


_WEIGHTS = {"load": _load_weights, "store": _store_weights}


def _name(layers):
    return f"packed_{layers[0].name}"


# Dense -------------------------------------------------------------------


def _dense_signature(layer):
    common = _weighted_signature(layer)
    return None if common is None else ("dense", layer.units, *common)


def _dense_twin(layers, index):
    first = layers[0]
    return PackedDense(
        first.units,
        len(layers),
        activation=first.activation,
        use_bias=first.use_bias,
        dtype=first.dtype_policy,
        name=_name(layers),
        **_regularizers(layers),
    )


register(keras.layers.Dense, _dense_signature, _dense_twin, **_WEIGHTS)


def _gaussian_head_signature(layer):
    common = _weighted_signature(layer)
    if common is None:
        return None
    return ("gaussian_head", layer.targets, layer.stop_variance_gradient, *common)


def _gaussian_head_twin(layers, index):
    first = layers[0]
    return PackedGaussianHead(
        first.targets,
        len(layers),
        stop_variance_gradient=first.stop_variance_gradient,
        use_bias=first.use_bias,
        dtype=first.dtype_policy,
        name=_name(layers),
        **_regularizers(layers),
    )


register(GaussianHead, _gaussian_head_signature, _gaussian_head_twin, **_WEIGHTS)


# Convolutions ------------------------------------------------------------


def _conv_signature(layer):
    common = _weighted_signature(layer)
    if common is None or layer.data_format != "channels_last":
        return None
    if layer.groups != 1 or layer.padding not in ("valid", "same"):
        return None
    return (
        type(layer).__name__,
        layer.filters,
        tuple(layer.kernel_size),
        tuple(layer.strides),
        layer.padding,
        tuple(layer.dilation_rate),
        *common,
    )


def _conv_twin(packed_type):
    def twin(layers, index):
        first = layers[0]
        return packed_type(
            first.filters,
            first.kernel_size,
            len(layers),
            strides=first.strides,
            padding=first.padding,
            dilation_rate=first.dilation_rate,
            activation=first.activation,
            use_bias=first.use_bias,
            dtype=first.dtype_policy,
            name=_name(layers),
            **_regularizers(layers),
        )

    return twin


register(keras.layers.Conv1D, _conv_signature, _conv_twin(PackedConv1D), **_WEIGHTS)
register(keras.layers.Conv2D, _conv_signature, _conv_twin(PackedConv2D), **_WEIGHTS)


# Dropout -----------------------------------------------------------------

_MONTE_CARLO = (MCDropout, MCSpatialDropout1D, MCSpatialDropout2D)
_SPATIAL = (
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
)


def _dropout_signature(layer):
    if type(layer) in _SPATIAL:
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None
    elif layer.noise_shape is not None:
        return None
    return ("dropout", type(layer) in _MONTE_CARLO, type(layer) in _SPATIAL)


def _dropout_twin(layers, index):
    first = layers[0]
    seed = first.seed
    return PackedDropout(
        [layer.rate for layer in layers],
        monte_carlo=type(first) in _MONTE_CARLO,
        seed=None if seed is None else seed + index,
        spatial=type(first) in _SPATIAL,
        name=_name(layers),
    )


for _kind in (keras.layers.Dropout, MCDropout, *_SPATIAL):
    register(_kind, _dropout_signature, _dropout_twin)


# Weight-free layers ------------------------------------------------------


def _config_signature(layer):
    config = dict(layer.get_config())
    config.pop("name", None)
    return (type(layer).__name__, repr(sorted(config.items())))


def _channels_last_signature(layer):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    return _config_signature(layer)


def _pooling_twin(layers, index):
    first = layers[0]
    return PackedPooling(
        type(first).from_config(first.get_config()), len(layers), name=_name(layers)
    )


for _kind in (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
):
    register(_kind, _channels_last_signature, _pooling_twin)

register(
    keras.layers.Flatten,
    _channels_last_signature,
    lambda layers, index: PackedFlatten(len(layers), name=_name(layers)),
)


def _copy(layers, index):
    first = layers[0]
    return type(first).from_config(first.get_config())


for _kind in (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
):
    register(_kind, _config_signature, _copy)


# Normalization -----------------------------------------------------------


def _normalization_signature(layer):
    if not layer.built or layer.mean is None:
        return None
    rank = len(layer.mean.shape)
    if tuple(a % rank for a in layer.axis) != (rank - 1,):
        return None  # statistics per feature of the last axis only
    return ("normalization", layer.invert, tuple(layer.mean.shape))


def _statistics(layer):
    # The built statistics broadcast against a batch: drop the batch axis.
    mean = ops.convert_to_numpy(layer.mean)[0]
    variance = ops.convert_to_numpy(layer.variance)[0]
    return mean, variance


def _normalization_twin(layers, index):
    mean, variance = zip(*(_statistics(layer) for layer in layers))
    return PackedNormalization(
        np.stack(mean),
        np.stack(variance),
        invert=layers[0].invert,
        name=_name(layers),
    )


def _load_statistics(packed, layers):
    mean, variance = zip(*(_statistics(layer) for layer in layers))
    packed.mean.assign(np.stack(mean))
    packed.variance.assign(np.stack(variance))


def _store_statistics(packed, layers):
    """Adapted members get the packed statistics back (a loaded ensemble's
    members are rebuilt unadapted); given statistics are constants."""
    means, variances = packed.mean.numpy(), packed.variance.numpy()
    for m, layer in enumerate(layers):
        if layer.input_mean is None:
            layer.adapt_mean.assign(means[m].reshape(layer.adapt_mean.shape))
            layer.adapt_variance.assign(
                variances[m].reshape(layer.adapt_variance.shape)
            )
            layer.finalize_state()


register(
    keras.layers.Normalization,
    _normalization_signature,
    _normalization_twin,
    load=_load_statistics,
    store=_store_statistics,
)


# Packing -----------------------------------------------------------------


def _chain(member):
    """The member's layers in order (input layers left out), or None."""
    if not (hasattr(member, "inputs") and hasattr(member, "outputs")):
        return None  # subclassed
    if len(member.inputs) != 1 or len(member.outputs) != 1:
        return None
    if len(member.inputs[0].shape) not in (2, 3, 4):
        return None
    layers = [
        layer
        for layer in member.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    if not layers:
        return None
    if not isinstance(member, keras.Sequential):
        previous = member.inputs[0]
        try:
            for layer in layers:
                if layer.input is not previous:
                    return None
                previous = layer.output
        except (AttributeError, ValueError):
            return None
        if previous is not member.outputs[0]:
            return None
    return layers


def _signature(layer):
    """What must agree across members for `layer` to pack, or None."""
    packing = _REGISTRY.get(type(layer))
    if packing is None:
        return None
    signature = packing.signature(layer)
    if signature is None:
        return None
    try:
        shape = tuple(layer.input.shape[1:])
    except (AttributeError, ValueError):
        return None
    return (signature, shape)


def packable(members):
    """Whether `members` pack into one `PackedNetwork` (see the module)."""
    chains = [_chain(member) for member in members]
    if any(chain is None for chain in chains):
        return False
    if len({len(chain) for chain in chains}) != 1:
        return False
    for layers in zip(*chains):
        signatures = {_signature(layer) for layer in layers}
        if None in signatures or len(signatures) != 1:
            return False
    return True


class PackedNetwork(keras.Model):
    """M chain networks of one architecture as one network of packed layers.

    Built by `pack(members)`; call it on `(batch, ...)` rows shared by every
    member to get `(batch, M, ...outputs)`, or use `member_major` on `(M,
    batch, ...)` inputs, one slice per member. Between layers the activations
    are in one of three layouts (see `keras_uncertainty.layers.packed`):
    "shared" rows (before the first layer that differs per member),
    "member"-major, or "folded" channels on the convolution path; each
    packed layer's `packed_call` converts only when it must.
    """

    def __init__(self, packed_layers, num_members, **kwargs):
        super().__init__(**kwargs)
        self.packed_layers = list(packed_layers)
        self.num_members = num_members

    def _run(self, x, layout, training):
        for layer in self.packed_layers:
            if hasattr(layer, "packed_call"):
                x, layout = layer.packed_call(x, layout, training=training)
            else:  # element-wise: any layout
                x = layer(x)
        return to_member_major(x, layout, self.num_members)

    def member_major(self, inputs, training=None):
        """`(M, batch, ...)` -> `(M, batch, ...outputs)`."""
        return self._run(inputs, "member", training)

    def call(self, inputs, training=None):
        outputs = self._run(inputs, "shared", training)
        return ops.transpose(outputs, (1, 0, *range(2, len(outputs.shape))))


def pack(members):
    """One `PackedNetwork` holding the members' current weights.

    Args:
        members: Built models for which `packable(members)` is True.
    """
    chains = [_chain(member) for member in members]
    num_members = len(members)
    packed = []
    for index, layers in enumerate(zip(*chains)):
        twin = _REGISTRY[type(layers[0])].twin(layers, index)
        if not twin.built:
            twin.build((num_members, *layers[0].input.shape))
        packed.append(twin)
    network = PackedNetwork(packed, num_members, name="packed_members")
    example = members[0].inputs[0]
    network(np.zeros((1, *example.shape[1:]), example.dtype))  # builds
    load_members(network, members)
    return network


def _entries(network, members):
    """`(packing, packed layer, [member layers])` along the chain."""
    chains = [_chain(member) for member in members]
    for packed, layers in zip(network.packed_layers, zip(*chains)):
        yield _REGISTRY[type(layers[0])], packed, layers


def load_members(network, members):
    """Copies each member's weights into the packed network."""
    for packing, packed, layers in _entries(network, members):
        if packing.load is not None:
            packing.load(packed, layers)


def store_members(network, members):
    """Copies the packed weights back into each member's layers."""
    for packing, packed, layers in _entries(network, members):
        if packing.store is not None:
            packing.store(packed, layers)
