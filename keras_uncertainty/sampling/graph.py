"""Forward passes that draw T Monte Carlo samples in one call.

The batch is tiled T times (sample-major: rows `[s * n + i]` are sample s of
input i), so one compiled call computes every sample. Layers before the first
stochastic layer return the same value for each copy of a row, so for
Functional and Sequential models a weight-sharing twin is built with
`keras.models.clone_model` (every layer reused as it is) in which a tensor is
tiled only where it first meets a stochastic layer (or a tensor that is
already tiled): the deterministic prefix, often most of the cost (a CNN with
MC dropout before its head), runs once per input instead of T times.
Subclassed models get their inputs tiled.
"""

import contextlib
import warnings

import keras
import tensorflow as tf
from keras import tree

from keras_uncertainty import _keras_compat
from keras_uncertainty.sampling import keys


def is_stochastic(layer):
    """Whether `layer`, or a layer nested in it, samples at inference.

    A layer is stochastic when it has the attribute
    `stochastic_at_inference = True`, as every `ku.layers` MC layer does;
    custom layers can declare themselves the same way.

    Args:
        layer: A `keras.layers.Layer` (a model included).

    Returns:
        bool.
    """
    if not isinstance(layer, keras.layers.Layer):
        return bool(getattr(layer, "stochastic_at_inference", False))
    return any(
        getattr(sub, "stochastic_at_inference", False)
        for sub in _keras_compat.flatten_layers(layer)
    )


def stochastic_layers(model):
    """The layers of `model` (itself included) that sample at inference."""
    return [
        layer
        for layer in _keras_compat.flatten_layers(model)
        if getattr(layer, "stochastic_at_inference", False)
    ]


def functional_view(model):
    """A Functional model computing `model` with its layers, or None.

    A Functional model is its own view; a built Sequential model gets a
    Functional model over its graph (same layers and weights); a subclassed
    model, or a Sequential model without a known input, has none.
    """
    if not (hasattr(model, "inputs") and hasattr(model, "outputs")):
        return None
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


@contextlib.contextmanager
def quiet_input_names():
    """Silences Keras's warning that a dict of inputs is not named after its
    keys (`keras.Input(name=...)`) while a model's graph is rebuilt: the
    user's model already gave it (a keras_hub backbone is built that way),
    and its keys, not the names, match the inputs."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="When providing `inputs` as a dict", category=UserWarning
        )
        yield


def tile_rows(tensor, num_samples):
    """Repeats a batch `num_samples` times along axis 0, sample-major.

    Args:
        tensor: A tensor with n rows.
        num_samples: T, a Python int or a scalar int tensor.

    Returns:
        A tensor of `T * n` rows: row `s * n + i` is row i.
    """
    tensor = tf.convert_to_tensor(tensor)
    if isinstance(num_samples, int) and num_samples == 1:
        return tensor  # one sample per member: nothing to copy
    multiples = tf.concat(
        [[num_samples], tf.ones([tf.rank(tensor) - 1], tf.int32)], axis=0
    )
    return tf.tile(tensor, multiples)


class _TileRows(keras.layers.Layer):
    """Tiles the batch T times; T is the current sampling call's."""

    def call(self, inputs):
        return tile_rows(inputs, keys.current().num_samples)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


class TiledTwin:
    """A weight-sharing twin of a Functional model that tiles its batch.

    Called inside a sampling call (`keys.sampling_call`), `twin(inputs)`
    returns the model's outputs for the call's T copies of the batch
    (sample-major), tiling each tensor where it first meets a stochastic
    layer. `floats_per_row` estimates the activations of one
    input row (None when a shape is unknown), used to bound memory.
    """

    def __init__(self, model):
        tiled = set()
        keep_alive = []  # keeps the tiled tensors alive so that ids stay unique

        def tile_once(value):
            if not isinstance(value, keras.KerasTensor) or id(value) in tiled:
                return value
            result = _TileRows()(value)
            tiled.add(id(result))
            keep_alive.append(result)
            return result

        def call_layer(layer, *args, **kwargs):
            arguments = tree.flatten((args, kwargs))
            if is_stochastic(layer) or any(id(v) in tiled for v in arguments):
                args, kwargs = tree.map_structure(tile_once, (args, kwargs))
                outputs = layer(*args, **kwargs)
                for value in tree.flatten(outputs):
                    tiled.add(id(value))
                    keep_alive.append(value)
            else:
                outputs = layer(*args, **kwargs)
            return outputs

        with quiet_input_names():
            if getattr(model, "compiled", False):
                # `clone_model` also rebuilds a Functional model's compile
                # settings, and fails on a loss it cannot deserialize (a
                # user's unregistered function): clone an uncompiled view.
                model = keras.Model(model.input, model.output, name=model.name)
            clone = keras.models.clone_model(
                model, clone_function=lambda layer: layer, call_function=call_layer
            )
            # The model's output structure (a dict stays a dict), and its
            # input structure (`clone.input`, not the flat `clone.inputs`):
            # a dict of inputs is then matched by its keys, as the model
            # matches it, whatever the names of its `keras.Input`s.
            outputs = tree.map_structure(tile_once, clone.output)
            if not isinstance(outputs, (dict, list, tuple)):
                outputs = [outputs]
            self.model = keras.Model(clone.input, outputs, name=f"{model.name}_tiled")
        self.floats_per_row = floats_per_row(model)

    def __call__(self, inputs):
        """The outputs for the T copies of `inputs`, T of the current call."""
        return self.model(inputs, training=False)


def output_names(view):
    """The names of a Functional model's outputs in `model.outputs` order:
    a dict output's keys, else `view.output_names`; None without a view."""
    if view is None:
        return None
    output = view.output
    if isinstance(output, dict):
        return tuple(tree.flatten({key: key for key in output}))
    names = tuple(getattr(view, "output_names", ()) or ())
    count = len(tree.flatten(output))
    if len(names) != count or len(set(names)) != count:
        return tuple(range(count))
    return names


def floats_per_row(view):
    """Activations of one input row in a Functional model: the sizes of every
    layer's outputs, summed; None when a size is unknown. Used to pick a
    chunk size that bounds memory."""
    total = 0
    for layer in view.layers:
        for value in tree.flatten(layer.output):
            size = 1
            for dim in value.shape[1:]:
                if dim is None:
                    return None
                size *= dim
            total += size
    return total
