"""Packing M member networks of one architecture into one network of packed layers.

A member network packs when it is a chain of layers (Sequential, or a
Functional model whose layers each feed the next) on rank-2 inputs, made of
`Dense` (no constraint; no regularizer, or L2), `Dropout` / `MCDropout`
(without `noise_shape`) and weight-free element-wise layers (`Activation`,
`ReLU`, `LeakyReLU`, `ELU`). Every member must have the same sequence of
layers with the same widths and activations; dropout rates and L2 factors
may differ. Members that do not pack train through plain Keras, each with
its own variables.
"""

import keras
import numpy as np
from keras import ops

from keras_uncertainty.layers.mc_dropout import MCDropout
from keras_uncertainty.layers.packed import (
    PackedDense,
    PackedDropout,
    PackedL2,
    share_across_members,
)

_ELEMENTWISE = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
)


def _chain(member):
    """The member's layers in order (input layers left out), or None."""
    if not (hasattr(member, "inputs") and hasattr(member, "outputs")):
        return None  # subclassed
    if len(member.inputs) != 1 or len(member.outputs) != 1:
        return None
    if len(member.inputs[0].shape) != 2:
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


def _l2_factor(regularizer):
    """The factor of an L2 regularizer, 0 for None, None for other kinds."""
    if regularizer is None:
        return 0.0
    if type(regularizer) is keras.regularizers.L2:
        return float(regularizer.get_config()["l2"])
    return None


def _dense_signature(layer):
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
    activation = keras.activations.serialize(layer.activation)
    return ("dense", layer.units, layer.use_bias, repr(activation))


def _signature(layer):
    """What must agree across members for `layer` to pack, or None."""
    kind = type(layer)
    if kind is keras.layers.Dense:
        return _dense_signature(layer)
    if kind in (keras.layers.Dropout, MCDropout):
        if layer.noise_shape is not None:
            return None
        return ("dropout", kind is MCDropout)
    if kind in _ELEMENTWISE:
        config = dict(layer.get_config())
        config.pop("name", None)
        return ("elementwise", kind.__name__, repr(sorted(config.items())))
    return None


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

    Built by `pack(members)`; call it on `(batch, d)` rows shared by every
    member to get `(batch, M, outputs)`, or use `member_major` on `(M, batch,
    d)` inputs, one slice per member.
    """

    def __init__(self, packed_layers, num_members, **kwargs):
        super().__init__(**kwargs)
        self.packed_layers = list(packed_layers)
        self.num_members = num_members

    def member_major(self, inputs, training=None):
        """`(M, batch, d)` -> `(M, batch, outputs)`."""
        x = inputs
        for layer in self.packed_layers:
            if isinstance(layer, PackedDropout):
                x = layer(x, training=training)
            else:
                x = layer(x)
        return x

    def call(self, inputs, training=None):
        shared = share_across_members(inputs, self.num_members)
        return ops.transpose(self.member_major(shared, training), (1, 0, 2))


def _packed_twin(layers, index):
    """The packed layer standing for `layers` (one per member)."""
    first = layers[0]
    num_members = len(layers)
    name = f"packed_{first.name}"
    if type(first) is keras.layers.Dense:
        kernel_l2 = [_l2_factor(layer.kernel_regularizer) for layer in layers]
        bias_l2 = [_l2_factor(layer.bias_regularizer) for layer in layers]
        return PackedDense(
            first.units,
            num_members,
            activation=first.activation,
            use_bias=first.use_bias,
            kernel_regularizer=PackedL2(kernel_l2) if any(kernel_l2) else None,
            bias_regularizer=PackedL2(bias_l2) if any(bias_l2) else None,
            dtype=first.dtype_policy,
            name=name,
        )
    if type(first) in (keras.layers.Dropout, MCDropout):
        seed = first.seed
        return PackedDropout(
            [layer.rate for layer in layers],
            monte_carlo=isinstance(first, MCDropout),
            seed=None if seed is None else seed + index,
            name=name,
        )
    return type(first).from_config(first.get_config())


def pack(members):
    """One `PackedNetwork` holding the members' current weights.

    Args:
        members: Built models for which `packable(members)` is True.
    """
    chains = [_chain(member) for member in members]
    packed = [_packed_twin(layers, i) for i, layers in enumerate(zip(*chains))]
    network = PackedNetwork(packed, len(members), name="packed_members")
    width = members[0].inputs[0].shape[-1]
    network(np.zeros((1, width), members[0].inputs[0].dtype))  # builds
    load_members(network, members)
    return network


def _dense_pairs(network, members):
    """`(packed layer, [member layers])` for every packed Dense."""
    chains = [_chain(member) for member in members]
    for packed, layers in zip(network.packed_layers, zip(*chains)):
        if isinstance(packed, PackedDense):
            yield packed, layers


def load_members(network, members):
    """Copies each member's Dense weights into the packed network."""
    for packed, layers in _dense_pairs(network, members):
        packed.kernel.assign(np.stack([layer.kernel.numpy() for layer in layers]))
        if packed.use_bias:
            packed.bias.assign(np.stack([layer.bias.numpy() for layer in layers]))


def store_members(network, members):
    """Copies the packed weights back into each member's Dense layers."""
    for packed, layers in _dense_pairs(network, members):
        kernels = packed.kernel.numpy()
        biases = packed.bias.numpy() if packed.use_bias else None
        for m, layer in enumerate(layers):
            layer.kernel.assign(kernels[m])
            if biases is not None:
                layer.bias.assign(biases[m])
