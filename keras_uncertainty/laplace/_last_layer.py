"""Finds the last linear layer of a network: the Dense layer `Laplace` covers.

A classifier often ends `Dense(k, name="logits")` and then
`Activation("softmax")` (or `Softmax()`), so that its logits stay reachable;
a regression model may end `Dense(1)` and a `Reshape`. `find_last_layer`
walks back from the model's output through such trailing layers, which
carry no weights and either reshape (keeping the order of the values) or
apply one elementwise activation, to the `keras.layers.Dense` that computes
the outputs, and reads what the trailing layers mean: the activation applied
to the Dense layer's outputs, its own or a trailing layer's. A model ending
`Dense(10)` + `Activation("softmax")` is then the same model, for the
Laplace approximation, as one ending `Dense(10, activation="softmax")`: the
likelihood is categorical on the Dense layer's logits.

Any other trailing layer (a Lambda, a custom layer, a Normalization with its
statistics, a keras.ops function, a nested model) would change what the
Laplace formulas compute, and is refused. Every part of `ku.laplace` that
needs the last layer (fit, the predictives, the Jacobians, `as_model`) finds
it here.
"""

import dataclasses

import keras

from keras_uncertainty.sampling import graph

# Weightless layers that only reshape a row's values, keeping their order.
_RESHAPES = (keras.layers.Reshape, keras.layers.Flatten, keras.layers.Identity)
# Weightless elementwise activation layers (softmax: over a row's values).
_ACTIVATIONS = (
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
)
_EXPECTED = (
    "a model whose output is computed by a final keras.layers.Dense on "
    "(batch, features) inputs, followed by nothing but weightless layers that "
    "apply one elementwise activation (Activation, Softmax, ReLU, LeakyReLU, "
    "ELU) or reshape (Reshape, Flatten, Identity)"
)


def invalid(name, expected, value):
    """The project's `ValueError` for an argument's invalid value."""
    return ValueError(
        f"Invalid value received for argument `{name}`. Expected {expected}. "
        f"Received: {name}={value!r}"
    )


@dataclasses.dataclass(frozen=True)
class LastLayer:
    """The last linear layer of a network and what follows it.

    Attributes:
        view: The network's functional view (`graph.functional_view`).
        dense: The final `keras.layers.Dense`.
        features: The symbolic tensor of its inputs, the features `phi`.
        trailing: The weightless layers between it and the output, in order.
        activation: The activation applied to the Dense layer's outputs to
            give the model's output: "linear" or another Keras activation's
            name ("softmax", "sigmoid", ...).
        applied_by: The layer that applies `activation` (`dense` when it is
            linear or the Dense layer's own).
    """

    view: keras.Model
    dense: keras.layers.Dense
    features: object
    trailing: tuple
    activation: str
    applied_by: keras.layers.Layer


def _describe(layer):
    if not isinstance(layer, keras.layers.Layer):  # a keras.ops function
        return f"keras.ops operation {type(layer).__name__} {layer.name!r}"
    return f"{type(layer).__name__} {layer.name!r}"


def activation_name(activation):
    """The name of a Keras activation function ("linear", "softmax", ...)."""
    serialized = keras.activations.serialize(activation)
    if isinstance(serialized, str):
        return serialized
    return serialized.get("config")


def _producer(view, tensor):
    """The operation of `view` whose (first call's) output is `tensor`."""
    for operation in reversed(view.operations):
        try:
            output = operation.output
        except (AttributeError, ValueError):
            continue
        if output is tensor:
            return operation
    return None


def _single_tensor(value):
    return None if keras.tree.is_nested(value) else value


def _layer_activation(layer):
    """The activation a trailing layer applies, by name (None: a reshape)."""
    if isinstance(layer, keras.layers.Activation):
        return activation_name(layer.activation)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.ReLU):
        return "relu"
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, keras.layers.ELU):
        return "elu"
    return None


def _softmax_over_the_row(layer):
    """Whether a softmax layer normalizes over all the values of a row (the
    axes it leaves out all have size 1), as the Dense layer's softmax does."""
    shape = tuple(layer.input.shape)
    rank = len(shape)
    axis = getattr(layer, "axis", -1)  # Activation("softmax"): the last axis
    axes = axis if isinstance(axis, (list, tuple)) else (axis,)
    try:
        axes = {int(a) % rank for a in axes}
    except (TypeError, ValueError):
        return False
    if 0 in axes:
        return False
    return all(shape[a] == 1 for a in range(1, rank) if a not in axes)


def find_last_layer(model):
    """The last linear layer of `model` (see the module docstring).

    Args:
        model: A Functional or Sequential `keras.Model` with one output.

    Returns:
        A `LastLayer`.

    Raises:
        ValueError: `model` is not such a model, its output does not come
            from a Dense layer through the allowed trailing layers, or they
            apply more than one activation.
    """
    view = graph.functional_view(model) if isinstance(model, keras.Model) else None
    outputs = None if view is None else keras.tree.flatten(view.outputs)
    if view is None or len(outputs) != 1:
        name = model.name if isinstance(model, keras.Model) else type(model).__name__
        raise invalid(
            "model", "a Functional or Sequential keras.Model with one output", name
        )
    tensor, trailing = outputs[0], []
    while True:
        layer = _producer(view, tensor)
        if isinstance(layer, keras.layers.Dense):
            break
        if layer is None:
            where = "the model's output"
            if trailing:
                where = f"the input of {_describe(trailing[-1])}"
            raise invalid(
                "model",
                _EXPECTED,
                f"{where}, computed by a layer called more than once",
            )
        if type(layer) not in _RESHAPES + _ACTIVATIONS or layer.weights:
            # Exact types: a subclass may compute anything.
            received = f"last layer {_describe(layer)}"
            if trailing:
                received = f"{_describe(layer)} before {_describe(trailing[-1])}"
            raise invalid("model", _EXPECTED, received)
        tensor = _single_tensor(layer.input)
        if tensor is None:
            raise invalid("model", _EXPECTED, f"{_describe(layer)} on several inputs")
        trailing.append(layer)
    dense = layer
    features = _single_tensor(dense.input)
    if features is None or len(features.shape) != 2:
        shape = None if features is None else tuple(features.shape)
        raise invalid(
            "model",
            _EXPECTED,
            f"final {_describe(dense)} on inputs of shape {shape}",
        )
    trailing.reverse()
    activation, applied_by = activation_name(dense.activation), dense
    for layer in trailing:
        name = _layer_activation(layer)
        if name is None or name == "linear":
            continue
        if activation != "linear":
            raise invalid(
                "model",
                _EXPECTED,
                f"{activation} ({_describe(applied_by)}) and then {name} "
                f"({_describe(layer)}) after {_describe(dense)}",
            )
        if name == "softmax" and not _softmax_over_the_row(layer):
            raise invalid(
                "model",
                "a trailing softmax over all the outputs of the final "
                "keras.layers.Dense",
                f"{_describe(layer)} on shape {tuple(layer.input.shape)}",
            )
        activation, applied_by = name, layer
    return LastLayer(view, dense, features, tuple(trailing), activation, applied_by)


def check_activation(last, likelihood):
    """Refuses an output activation the `likelihood` cannot read: regression
    needs linear outputs; classification reads linear outputs or a softmax's
    inputs as logits."""
    allowed = ("linear", "softmax") if likelihood == "classification" else ("linear",)
    if last.activation in allowed:
        return
    received = last.activation
    if last.applied_by is not last.dense:
        received = (
            f"{last.activation} (applied by {_describe(last.applied_by)} after "
            f"{_describe(last.dense)})"
        )
    raise invalid(
        "model",
        f"a final keras.layers.Dense with activation in {allowed} for "
        f"{likelihood} (its own or a trailing activation layer's)",
        received,
    )
