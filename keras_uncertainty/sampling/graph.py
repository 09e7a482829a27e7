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

import weakref

import keras
import tensorflow as tf
from keras import tree

from keras_uncertainty import _keras_compat
from keras_uncertainty.ensemble.model import Ensemble
from keras_uncertainty.layers.packed import share_across_members


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


def num_members(model):
    """M for a `ku.Ensemble`, None for other models."""
    return model.num_members if isinstance(model, Ensemble) else None


def functional_view(model):
    """A Functional model computing `model` with its layers, or None.

    A Functional model is its own view; a built Sequential model gets a
    Functional model over its graph (same layers and weights); a subclassed
    model, or a Sequential model without a known input, has none. For an
    ensemble, the view of its first member (they share their input and
    output shapes).
    """
    if isinstance(model, Ensemble):
        return functional_view(model.member_template)
    if not (hasattr(model, "inputs") and hasattr(model, "outputs")):
        return None
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


class ModelStructure:
    """What sampling needs to know of a model, computed once per model.

    Attributes:
        view: `functional_view(model)`, or None.
        stochastic_layers: `stochastic_layers(model)`.
        num_members: M for a `ku.Ensemble`, else None.
    """

    def __init__(self, model):
        self.view = functional_view(model)
        self.stochastic_layers = stochastic_layers(model)
        self.num_members = num_members(model)


_STRUCTURES = weakref.WeakKeyDictionary()


def structure_of(model):
    """The cached `ModelStructure` of `model`; recomputed when its list of
    layers changes (a Sequential model that gained a layer)."""
    layers = tuple(id(layer) for layer in model.layers)
    cached = _STRUCTURES.get(model)
    if cached is None or cached[0] != layers:
        cached = (layers, ModelStructure(model))
        _STRUCTURES[model] = cached
    return cached[1]


def tile_rows(tensor, num_samples):
    """Repeats a batch `num_samples` times along axis 0, sample-major."""
    tensor = tf.convert_to_tensor(tensor)
    if isinstance(num_samples, int) and num_samples == 1:
        return tensor  # one sample per member: nothing to copy
    multiples = tf.concat(
        [[num_samples], tf.ones([tf.rank(tensor) - 1], tf.int32)], axis=0
    )
    return tf.tile(tensor, multiples)


class _SampleCount:
    """The T of the call being traced; read by the twin's tiling layers."""

    value = 1


class _TileRows(keras.layers.Layer):
    """Tiles the batch `count.value` times; the count is set per trace."""

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = count

    def call(self, inputs):
        return tile_rows(inputs, self.count.value)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


class TiledTwin:
    """A weight-sharing twin of a Functional model that tiles its batch.

    `twin(inputs, num_samples)` returns the model's outputs for T copies of
    the batch (sample-major), tiling each tensor where it first meets a
    stochastic layer. `floats_per_row` estimates the activations of one
    input row (None when a shape is unknown), used to bound memory.
    """

    def __init__(self, model):
        count = _SampleCount()
        tiled = set()
        keep_alive = []  # keeps the tiled tensors alive so that ids stay unique

        def tile_once(value):
            if not isinstance(value, keras.KerasTensor) or id(value) in tiled:
                return value
            result = _TileRows(count)(value)
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

        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call_layer
        )
        outputs = [tile_once(value) for value in clone.outputs]
        self.model = keras.Model(clone.inputs, outputs, name=f"{model.name}_tiled")
        self.count = count
        self.floats_per_row = floats_per_row(model)

    def __call__(self, inputs, num_samples):
        self.count.value = num_samples
        return self.model(inputs, training=False)


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


def make_tiled_forward(model):
    """Returns `(forward, floats_per_row)`.

    `forward(inputs, num_samples)` gives the model's output for `T * n` rows,
    sample s of input i at row `s * n + i` (for an ensemble of M members,
    `M * T * n` rows, member-major). `inputs` has the structure the model
    accepts, n rows each. The forward holds the model weakly, so caching it
    does not keep the model alive.
    """
    if isinstance(model, Ensemble):
        return _ensemble_forward(model)
    view = functional_view(model)
    if view is not None:
        twin = TiledTwin(view)
        return twin, twin.floats_per_row
    model_ref = weakref.ref(model)

    def forward_tiled_inputs(inputs, num_samples):
        tiled = tree.map_structure(lambda t: tile_rows(t, num_samples), inputs)
        return model_ref()(tiled, training=False)

    return forward_tiled_inputs, None


def _merge_member_axis(by_member):
    """`(M, rows, ...)` -> `(M * rows, ...)`: member-major rows."""
    rest = [
        size if size is not None else tf.shape(by_member)[i + 2]
        for i, size in enumerate(by_member.shape[2:])
    ]
    return tf.reshape(by_member, [-1, *rest])


def _ensemble_forward(ensemble):
    ensemble_ref = weakref.ref(ensemble)
    if ensemble.packed:
        # Packed members are one network of batched matmuls: tiling its
        # inputs is all there is to it.
        def forward_packed(inputs, num_samples):
            tiled = tile_rows(tree.flatten(inputs)[0], num_samples)
            network = ensemble_ref().packed_network
            shared = share_across_members(tiled, network.num_members)
            # (M, T * n, ...) is member-major already: no transposes.
            return _merge_member_axis(network.member_major(shared, training=False))

        view = functional_view(ensemble.member_template)
        floats = None if view is None else floats_per_row(view)
        return forward_packed, None if floats is None else floats * ensemble.num_members

    parts = [make_tiled_forward(member) for member in ensemble.members]
    forwards = [forward for forward, _ in parts]

    def forward_members(inputs, num_samples):
        # Member-major rows: sample s of input i from member m is row
        # (m * T + s) * n + i, so a reshape to (M * T, n, ...) lists samples.
        outputs = [tree.flatten(f(inputs, num_samples))[0] for f in forwards]
        return _merge_member_axis(tf.stack(outputs))

    sizes = [floats for _, floats in parts]
    return forward_members, None if None in sizes else sum(sizes)
