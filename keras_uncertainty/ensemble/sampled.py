"""How the engine samples a `ku.Ensemble`: M members, each T samples."""

import keras
import tensorflow as tf
from keras import tree

from keras_uncertainty.layers.packed import share_across_members
from keras_uncertainty.sampling import SampledModel, graph, sampled_model


def _merge_member_axis(by_member):
    """`(M, rows, ...)` -> `(M * rows, ...)`: member-major rows."""
    rest = [
        size if size is not None else tf.shape(by_member)[i + 2]
        for i, size in enumerate(by_member.shape[2:])
    ]
    return tf.reshape(by_member, [-1, *rest])


class EnsembleSampledModel(SampledModel):
    """The `SampledModel` of a `ku.Ensemble`: member-major rows.

    Packed members run as one network of batched matmuls on the tiled
    inputs; other members are each sampled through their own
    `SampledModel` (a tiled twin for Functional members) and stacked.
    Members without a stochastic layer give one sample each.

    Args:
        ensemble: The `ku.Ensemble` sampled.
    """

    def __init__(self, ensemble):
        super().__init__(ensemble)
        template = ensemble.member_template
        self.input_view = graph.functional_view(template)
        self.num_members = ensemble.num_members
        self.stochastic = bool(self.stochastic_layers())
        self.per_member_inputs = bool(getattr(ensemble, "per_member_inputs", False))
        if self.per_member_inputs:
            self.input_view = None  # (n, M, ...) inputs: taken as they come
        elif self.input_view is not None:
            self.floats_per_row = graph.floats_per_row(self.input_view)
        if not ensemble.packed:
            self.member_models = [sampled_model(m) for m in ensemble.members]

    def forward(self, inputs, num_samples):
        ensemble = self.model
        if ensemble.packed:
            flat = tree.flatten(inputs)[0]
            tiled = graph.tile_rows(flat, num_samples)
            network = ensemble.packed_network
            if self.per_member_inputs:
                # (rows, M, ...) -> (M, rows, ...): member m reads column m.
                perm = (1, 0, *range(2, len(tiled.shape)))
                shared = keras.ops.transpose(tiled, perm)
            else:
                shared = share_across_members(tiled, network.num_members)
            # (M, T * n, ...) is member-major already: no transposes.
            return _merge_member_axis(network.member_major(shared, training=False))
        outputs = []
        for m, member in enumerate(self.member_models):
            member_inputs = inputs
            if self.per_member_inputs:
                member_inputs = tree.map_structure(lambda t, m=m: t[:, m], inputs)
            outputs.append(tree.flatten(member.forward(member_inputs, num_samples))[0])
        return _merge_member_axis(tf.stack(outputs))
