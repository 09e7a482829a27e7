"""BatchEnsemble: M members that share their weights but for rank-1 factors.

Wen, Tran & Ba (2020). A network of `ku.layers.BatchEnsembleDense` /
`BatchEnsembleConv2D` layers (and any per-row layers: pooling, `Flatten`,
activations, MC dropout) computes M members at once on member-major rows
(rows `[m * B, (m + 1) * B)` are member m's). `BatchEnsemble` wraps such a
network: it tiles each batch M times, so every member sees it (the paper's
training), trains with the compiled loss applied to each member's output
against the same targets, and is predicted, sampled and exported as a
uniform mixture of its M members, as a `ku.Ensemble` is.
"""

import keras
import tensorflow as tf
from keras import ops, tree

from keras_uncertainty import _keras_compat
from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.layers.batch_ensemble import (
    BatchEnsembleConv2D,
    BatchEnsembleLayer,
    unfold_members_to_rows,
)
from keras_uncertainty.sampling import SampledModel, graph
from keras_uncertainty.sampling.mixture import declared_mixture, member_mixture

_PACKAGE = "keras_uncertainty"


def _network_members(network):
    """M of the network's BatchEnsemble layers (a ValueError when it has
    none, or when they disagree)."""
    counts = {
        layer.name: layer.num_members
        for layer in _keras_compat.flatten_layers(network)
        if isinstance(layer, BatchEnsembleLayer)
    }
    if not counts:
        raise ValueError(
            "Invalid value received for argument `network`. Expected a model "
            "with at least one ku.layers.BatchEnsembleDense or "
            f"BatchEnsembleConv2D layer. Received: '{network.name}' without one"
        )
    if len(set(counts.values())) > 1:
        raise ValueError(
            "Invalid value received for argument `network`. Expected every "
            "BatchEnsemble layer to have the same `num_members`. Received: "
            f"{counts}"
        )
    return next(iter(counts.values()))


def _folds(layer):
    """Whether `layer` runs on folded members `(B, h, w, M * C)`: a
    BatchEnsembleConv2D that forms its member kernels, with an entry-wise
    activation."""
    return isinstance(layer, BatchEnsembleConv2D) and layer.folds()


def _pools_folded(layer):
    """Whether `layer` works channel by channel on 2-D channels-last maps."""
    return (
        isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D))
        and getattr(layer, "data_format", "channels_last") == "channels_last"
    )


def _runs_folded(network):
    """Whether the network is a Sequential chain that starts with a folding
    BatchEnsembleConv2D (a CNN), run folded until its first other layer."""
    if not isinstance(network, keras.Sequential) or len(network.inputs or ()) != 1:
        return False
    layers = network.layers
    return bool(layers) and _folds(layers[0])


def _members_last(outputs, num_members):
    """Member-major `(M * B, ...)` rows -> `(B, M, ...)`."""
    dims = tf.shape(outputs)
    rest = [
        s if s is not None else dims[i + 1] for i, s in enumerate(outputs.shape[1:])
    ]
    by_member = tf.reshape(outputs, [num_members, -1, *rest])
    return tf.transpose(by_member, (1, 0, *range(2, len(outputs.shape) + 1)))


def _fold(tensor):
    """`(B, M, ...)` -> `(B * M, ...)`: row `b * M + m`."""
    dims = tf.shape(tensor)
    rest = [s if s is not None else dims[i + 2] for i, s in enumerate(tensor.shape[2:])]
    return tf.reshape(tensor, [-1, *rest])


class BatchEnsembleSampledModel(SampledModel):
    """The `SampledModel` of a `BatchEnsemble`: the inputs tiled T times
    (samples, when MC layers are inside) then M times (members), one pass of
    the network, member-major rows `(M * T * n, ...)`."""

    def __init__(self, model):
        super().__init__(model)
        self.input_view = graph.functional_view(model.network)
        self.num_members = model.num_members
        self.stochastic = bool(self.stochastic_layers())
        if self.input_view is not None:
            self.floats_per_row = graph.floats_per_row(self.input_view)

    def forward(self, inputs, num_samples):
        model = self.model
        network = model.network
        if (
            isinstance(inputs, (list, tuple))
            and len(inputs) == 1
            and len(getattr(network, "inputs", None) or ()) == 1
        ):
            inputs = inputs[0]  # one input: the tensor, as the network expects
        samples = tree.map_structure(lambda t: graph.tile_rows(t, num_samples), inputs)
        return model.member_rows(samples, training=False)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchEnsemble(keras.Model):
    """A BatchEnsemble (Wen et al. 2020): M members in one network.

    `network` is a model of `ku.layers.BatchEnsembleDense` /
    `BatchEnsembleConv2D` layers (any other layer in it is shared by every
    member and works on each row) whose rows are member-major: rows `[m *
    B, (m + 1) * B)` are member m's. The model tiles every batch M times
    (each member sees the whole batch, as in the paper), so it takes plain
    inputs, and calling it returns the members' outputs stacked on axis 1,
    `(B, M, *output_shape)`, as `ku.Ensemble` does.

    Training. `compile(loss=...)` takes the loss of one member, and
    `fit(x, y)` plain targets: each member's output is compared with `y`
    (the targets and sample weights are repeated M times), and the loss is
    the mean over the M * B rows, i.e. the mean of the members' losses, the
    paper's objective on a tiled batch (a `ku.Ensemble` sums them instead;
    Adam and the other scale-free optimizers do not notice the factor M).
    Compiled metrics are computed on the mixture, what `predict` returns.

    Prediction. `predict` returns the members' uniform mixture in one
    member's output shape (see `mixture`: the mean of probabilities, the
    logits of the mean probabilities for a loss with `from_logits=True`, the
    moment-matched Gaussian for `ku.losses.gaussian_nll`). `ku.sample`,
    `ku.predict_regression`, `ku.predict_classification`, `ku.export` and
    `ku.callbacks.UncertaintyMetrics` read it as M members (one sample each;
    T samples each with MC layers inside) computed in one tiled pass.

    Cost. Parameters: one network plus `in + 2 * out` per member and layer
    (1.07x one LeNet-5 for 4 members). Compute: M times the rows of one
    network, as a packed `ku.Ensemble`; a Sequential CNN runs its
    convolutions on folded members, as the packed ensemble does (see
    `member_rows`). Measured in `benchmarks/batch_ensemble.py`.

    Args:
        network: A `keras.Model` (Functional or Sequential, built) of
            BatchEnsemble layers, all with the same `num_members`; or a
            callable taking `num_members` and returning one.
        num_members: M; None reads it from the network's layers (required
            with a callable). Must equal the layers' `num_members`.
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Call arguments:
        inputs: The network's inputs, B rows (not tiled).
        training: Python boolean, passed on to the network.

    Example:

    >>> def network(m):
    ...     return keras.Sequential([
    ...         keras.Input((8,)),
    ...         ku.layers.BatchEnsembleDense(32, m, activation="relu"),
    ...         ku.layers.BatchEnsembleDense(3, m, activation="softmax")])
    >>> model = ku.BatchEnsemble(network, num_members=4)
    >>> model.compile("adam", loss="sparse_categorical_crossentropy")
    >>> model.fit(x, y, epochs=10)
    >>> pred = ku.predict_classification(model, x_test)  # 4 members, one pass
    """

    def __init__(self, network, num_members=None, **kwargs):
        kwargs.setdefault("name", "batch_ensemble")
        super().__init__(**kwargs)
        if num_members is not None:
            num_members = check_positive_int(num_members, "num_members")
        if not isinstance(network, keras.Model):
            if not callable(network):
                raise ValueError(
                    "Invalid value received for argument `network`. Expected a "
                    "keras.Model or a callable taking num_members and returning "
                    f"one. Received: {type(network).__name__}"
                )
            if num_members is None:
                raise ValueError(
                    "Invalid value received for argument `num_members`. "
                    "Expected a positive integer when `network` is a callable. "
                    "Received: num_members=None"
                )
            built = network(num_members)
            if not isinstance(built, keras.Model):
                raise ValueError(
                    "Invalid value received for argument `network`. Expected "
                    "the callable to return a keras.Model. Received: "
                    f"{type(built).__name__}"
                )
            network = built
        members = _network_members(network)
        if num_members is not None and num_members != members:
            raise ValueError(
                "Invalid value received for argument `num_members`. Expected "
                f"the network's num_members ({members}). Received: "
                f"num_members={num_members}"
            )
        self.network = network
        self.num_members = members
        self.runs_folded = _runs_folded(network)
        if network.built:
            self.built = True  # its variables exist: count_params, summary, ...

    def call(self, inputs, training=None):
        outputs = self.member_rows(inputs, training=training)
        return tree.map_structure(lambda t: _members_last(t, self.num_members), outputs)

    def member_rows(self, inputs, training=None):
        """Every member's outputs on the batch, member-major rows.

        `(B, ...)` inputs -> `(M * B, ...)` outputs, rows `[m * B, (m + 1)
        * B)` member m's: the network on the inputs tiled M times. A
        Sequential CNN that starts with BatchEnsembleConv2D layers runs its
        convolutions and pooling on folded members `(B, h, w, M * C)`, as a
        packed `ku.Ensemble` does (its first convolution on the untiled
        inputs, with the members' kernels side by side), and switches to
        member-major rows at its first other layer: the same outputs,
        without tiling the images or transposing between convolutions.

        Args:
            inputs: The network's inputs, B rows.
            training: Python boolean, passed on to the network's layers.

        Returns:
            The network's outputs for `M * B` member-major rows.
        """
        members = self.num_members
        if not self.runs_folded or isinstance(inputs, (dict, list, tuple)):
            tiled = tree.map_structure(lambda t: graph.tile_rows(t, members), inputs)
            return self.network(tiled, training=training)
        layers = self.network.layers
        outputs = ops.cast(inputs, layers[0].compute_dtype)
        layout = "shared"
        for layer in layers:
            if layout != "rows":
                if _folds(layer):
                    outputs, layout = layer.folded_call(outputs), "folded"
                    continue
                if layout == "folded" and _pools_folded(layer):
                    outputs = layer(outputs)
                    continue
                outputs = unfold_members_to_rows(outputs, members)
                layout = "rows"
            outputs = layer(outputs, training=training)
        if layout == "folded":
            outputs = unfold_members_to_rows(outputs, members)
        return outputs

    def build(self, input_shape=None):
        if not self.network.built and input_shape is not None:
            self.network.build(input_shape)
        self.built = True

    def compute_output_shape(self, input_shape):
        output = self.network.compute_output_shape(input_shape)
        return (output[0], self.num_members, *output[1:])

    def as_sampled_model(self):
        """How `ku.sample` and `ku.predict_*` sample the model: M members of
        a uniform mixture in one tiled pass (see `ku.sampling.SampledModel`).

        Returns:
            A `BatchEnsembleSampledModel`.
        """
        return BatchEnsembleSampledModel(self)

    # Training ---------------------------------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, **kwargs):
        members = self.num_members

        def repeat(tensor):
            return None if tensor is None else ops.repeat(tensor, members, axis=0)

        if y_pred is not None:
            y_pred = tree.map_structure(_fold, y_pred)
        if y is not None:
            y = tree.map_structure(repeat, y)
        if sample_weight is not None:
            sample_weight = tree.map_structure(repeat, sample_weight)
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(
            x, y, self.mixture(y_pred), sample_weight=sample_weight
        )

    # Prediction -------------------------------------------------------------

    def mixture(self, outputs):
        """The members' uniform mixture, in one member's output format.

        `(B, M, ...)` -> `(B, ...)`, as `ku.Ensemble.mixture`: for a loss
        declaring `variance_head` (`ku.losses.gaussian_nll`) the mixture's
        mean and log-variance; for a loss with `from_logits=True` the logits
        of the mean probabilities; otherwise the mean of the outputs.

        Args:
            outputs: The model's call output `(B, M, ...)` (or a structure).

        Returns:
            `(B, ...)` tensors, structured as `outputs`.
        """
        if isinstance(outputs, (dict, list, tuple)):
            return tree.map_structure(
                lambda t: member_mixture(t, self.num_members), outputs
            )
        return declared_mixture(self, outputs, self.num_members)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.mixture(self(x, training=False))

    # Serialization ----------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            "num_members": self.num_members,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(
            config.pop("network"), custom_objects=custom_objects
        )
        return cls(network=network, **config)
