"""Forward passes that draw T Monte Carlo samples in one call.

The batch is tiled T times (sample-major: rows `[s * n + i]` are sample s of
input i), so one compiled call computes every sample. Layers before the first
stochastic layer return the same value for each copy of a row, so for
Functional and Sequential models the graph is walked node by node and a
tensor is tiled only where it first meets a stochastic layer (or a tensor
that is already tiled): the deterministic prefix, often most of the cost
(a CNN with MC dropout before its head), runs once per input instead of T
times. Other models (subclassed ones) get their inputs tiled.
"""

import weakref

import keras
import tensorflow as tf
from keras import tree

from keras_uncertainty.ensemble.model import Ensemble


def is_stochastic(layer):
    """Whether `layer`, or a layer nested in it, samples at inference.

    A layer is stochastic when it has the class attribute
    `stochastic_at_inference = True`, as every `ku.layers` MC layer does;
    custom layers can declare themselves the same way.
    """
    if getattr(layer, "stochastic_at_inference", False):
        return True
    if isinstance(layer, keras.layers.Layer):
        return any(
            getattr(sub, "stochastic_at_inference", False)
            for sub in layer._flatten_layers(include_self=False, recursive=True)
        )
    return False


def stochastic_layers(model):
    """The layers of `model` (itself included) that sample at inference."""
    return [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if getattr(layer, "stochastic_at_inference", False)
    ]


def ensemble_members(model):
    """The member networks of a `ku.Ensemble`, or None for other models."""
    return list(model.members) if isinstance(model, Ensemble) else None


def graph_of(model):
    """The Functional graph that runs `model`, or None for subclassed models.

    For an ensemble, the graph of its first member (they share their input
    and output shapes).
    """
    members = ensemble_members(model)
    if members is not None:
        return graph_of(members[0])
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if hasattr(model, "_run_through_graph") and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def tile_rows(tensor, num_samples):
    """Repeats a batch `num_samples` times along axis 0, sample-major."""
    tensor = tf.convert_to_tensor(tensor)
    multiples = tf.concat(
        [[num_samples], tf.ones([tf.rank(tensor) - 1], tf.int32)], axis=0
    )
    return tf.tile(tensor, multiples)


def _accepts_training(operation):
    # Keras >= 3.10 lists call-context arguments; earlier 3.x has a flag.
    if "training" in getattr(operation, "_call_context_args", ()):
        return True
    return bool(getattr(operation, "_call_has_training_arg", False))


def make_tiled_forward(model):
    """Returns `forward(inputs, num_samples) -> outputs` of `T * n` rows.

    `inputs` has the structure the model accepts, n rows each; the outputs
    hold sample s of input i at row `s * n + i`. The returned function holds
    the model weakly, so caching it does not keep the model alive.
    """
    members = ensemble_members(model)
    if members is not None:
        return _make_ensemble_forward(members)
    model_ref = weakref.ref(model)

    def forward_tiled_inputs(inputs, num_samples):
        tiled = tree.map_structure(lambda t: tile_rows(t, num_samples), inputs)
        return model_ref()(tiled, training=False)

    if graph_of(model) is None:
        return forward_tiled_inputs

    def forward_split(inputs, num_samples):
        graph = graph_of(model_ref())
        tiled_ids = set()
        # Keeps the tiled tensors alive so that their ids stay unique.
        keep_alive = []

        def tile_once(value):
            if not tf.is_tensor(value) or id(value) in tiled_ids:
                return value
            tiled = tile_rows(value, num_samples)
            tiled_ids.add(id(tiled))
            keep_alive.append(tiled)
            return tiled

        def call_node(operation, *args, **kwargs):
            if _accepts_training(operation):
                kwargs["training"] = False
            arguments = tree.flatten((args, kwargs))
            if is_stochastic(operation) or any(
                id(value) in tiled_ids for value in arguments
            ):
                args, kwargs = tree.map_structure(tile_once, (args, kwargs))
                outputs = operation(*args, **kwargs)
                for value in tree.flatten(outputs):
                    tiled_ids.add(id(value))
                    keep_alive.append(value)
                return outputs
            return operation(*args, **kwargs)

        outputs = graph._run_through_graph(
            graph._standardize_inputs(inputs),
            operation_fn=lambda operation: operation,
            call_fn=call_node,
        )
        return tree.map_structure(tile_once, outputs)

    return forward_split


def _make_ensemble_forward(members):
    forwards = [make_tiled_forward(member) for member in members]

    def forward_members(inputs, num_samples):
        # Member-major rows: sample s of input i from member m is row
        # (m * T + s) * n + i, so a reshape to (M * T, n, ...) lists samples.
        stacked = tf.stack(
            [tree.flatten(forward(inputs, num_samples))[0] for forward in forwards]
        )
        rest = [
            size if size is not None else tf.shape(stacked)[i + 2]
            for i, size in enumerate(stacked.shape[2:])
        ]
        return tf.reshape(stacked, [-1, *rest])

    return forward_members


def floats_per_row(model):
    """Estimated float activations per input row, or None when unknown.

    Sums the sizes of every intermediate output of the graph; used to pick a
    chunk size that bounds memory.
    """
    graph = graph_of(model)
    if graph is None:
        return None
    total = 0
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            for tensor in node.outputs:
                size = 1
                for dim in tensor.shape[1:]:
                    if dim is None:
                        return None
                    size *= dim
                total += size
    return total
