"""MIMO (Havasi et al. 2021): M subnetworks inside one network, one pass.

A multi-input multi-output network: M inputs are concatenated on the
channel (last) axis and fed to one backbone, whose last layer is split into
M heads. During training each head sees its own independently shuffled
examples of the batch, so the heads learn to ignore the other inputs and
behave as M independent subnetworks; at test time the same input is
repeated M times and the M heads' outputs are the members of an ensemble,
computed in a single forward pass.
"""

import inspect
import numbers

import keras
import tensorflow as tf
from keras import ops, tree

from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.sampling import SampledModel
from keras_uncertainty.sampling.mixture import declared_mixture

_PACKAGE = "keras_uncertainty"


def _check_probability(value):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 <= value < 1
    ):
        raise ValueError(
            "Invalid value received for argument `repetition_probability`. "
            "Expected a float in the range [0, 1). Received: "
            f"repetition_probability={value!r}"
        )
    return float(value)


def _check_shape(input_shape):
    if (
        not isinstance(input_shape, (tuple, list))
        or not input_shape
        or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1
            for d in input_shape
        )
    ):
        raise ValueError(
            "Invalid value received for argument `input_shape`. Expected the "
            "shape of one example without the batch axis, a non-empty tuple of "
            f"positive integers, e.g. (28, 28, 1). Received: {input_shape!r}"
        )
    return tuple(int(d) for d in input_shape)


def build_mimo_network(
    build_fn, input_shape, num_outputs, num_members, output_activation=None
):
    """The Functional MIMO network: `(N, M, *input_shape)` -> `(N, M, K)`.

    The M inputs are concatenated on the last (channel) axis, member-major
    (channels `[m * C, (m + 1) * C)` are member m's), the backbone built by
    `build_fn` maps them to features, and a `Dense(M * K)` split into M heads
    of K outputs (each with `output_activation`) ends it.

    Args:
        build_fn: Callable `build_fn(input_shape)` returning a `keras.Model`
            (or a callable on a `keras.Input`) from `input_shape` (the last
            axis M times wider) to `(N, d)` features.
        input_shape: The shape of one example, channels last.
        num_outputs: Positive integer K, outputs per head.
        num_members: Positive integer M.
        output_activation: Activation of each head (e.g. `"softmax"`).

    Returns:
        A Functional `keras.Model`.
    """
    if not callable(build_fn):
        raise ValueError(
            "Invalid value received for argument `build_fn`. Expected a "
            "callable build_fn(input_shape) returning a keras.Model. "
            f"Received: {type(build_fn).__name__}"
        )
    input_shape = _check_shape(input_shape)
    num_outputs = check_positive_int(num_outputs, "num_outputs")
    num_members = check_positive_int(num_members, "num_members")
    inputs = keras.Input((num_members, *input_shape), name="member_inputs")
    rank = len(input_shape)
    # (M, d1..dk, C) -> (d1..dk, M, C) -> (d1..dk, M * C)
    order = (*range(2, rank + 1), 1, rank + 1)
    h = inputs
    if order != tuple(range(1, rank + 2)):
        h = keras.layers.Permute(order, name="members_to_channels")(h)
    concatenated = (*input_shape[:-1], num_members * input_shape[-1])
    h = keras.layers.Reshape(concatenated, name="concatenate_members")(h)
    backbone = build_fn(concatenated)
    if not callable(backbone):
        raise ValueError(
            "Invalid value received for argument `build_fn`. Expected a "
            "callable build_fn(input_shape) returning a keras.Model (or a "
            f"callable on a keras.Input). Received: build_fn({concatenated}) "
            f"returned {type(backbone).__name__} {backbone!r:.80}"
        )
    features = backbone(h)
    if not isinstance(features, keras.KerasTensor):
        raise ValueError(
            "Invalid value received for argument `build_fn`. Expected a "
            "backbone that maps a keras.Input to one (N, d) tensor of "
            f"features. Received: a backbone returning {type(features).__name__}"
        )
    if len(features.shape) != 2:
        raise ValueError(
            "Invalid value received for argument `build_fn`. Expected a "
            "backbone whose output is (N, d) features. Received: an output of "
            f"shape {tuple(features.shape)} (end it with Flatten or pooling)"
        )
    heads = keras.layers.Dense(num_members * num_outputs, name="mimo_heads")(features)
    heads = keras.layers.Reshape((num_members, num_outputs), name="split_heads")(heads)
    if output_activation is not None:
        heads = keras.layers.Activation(output_activation, name="head_activation")(
            heads
        )
    return keras.Model(inputs, heads, name="mimo_network")


_FOLDABLE = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
)


class _FoldedStem:
    """The test-time shortcut of a MIMO network (held untracked: its layers
    are the network's own).

    With the same input in all M slots, the backbone's first layer, a Dense
    or convolution over the concatenated channels with kernel
    `[W_1; ...; W_M]`, equals that layer on one input with kernel
    `W_1 + ... + W_M` (linearity): the stem runs on C channels instead of
    M * C. `tail` is the rest of the backbone."""

    def __init__(self, stem, tail, heads, split, activation, num_members):
        self.stem = stem
        self.tail = tail
        self.heads = heads
        self.split = split
        self.activation = activation
        self.num_members = num_members

    @classmethod
    def of(cls, network, num_members):
        """The shortcut of `network`, or None when its stem does not fold."""
        names = [layer.name for layer in network.layers]
        if not {"concatenate_members", "mimo_heads", "split_heads"} <= set(names):
            return None
        backbones = [
            layer for layer in network.layers if isinstance(layer, keras.Model)
        ]
        if len(backbones) != 1 or len(backbones[0].inputs) != 1:
            return None
        backbone = backbones[0]
        source = backbone.inputs[0]
        readers = [
            layer
            for layer in backbone.layers
            if not isinstance(layer, keras.layers.InputLayer)
            and any(t is source for t in tree.flatten(layer.input))
        ]
        if len(readers) != 1 or type(readers[0]) not in _FOLDABLE:
            return None
        stem = readers[0]
        if getattr(stem, "groups", 1) != 1 or getattr(stem, "lora_enabled", False):
            return None
        if getattr(stem, "data_format", "channels_last") != "channels_last":
            return None
        if stem.output is backbone.outputs[0]:  # the stem is the backbone

            def tail(h, training=None):
                return h

        else:
            tail = keras.Model(stem.output, backbone.outputs[0], name="mimo_tail")
        activation = (
            network.get_layer("head_activation") if "head_activation" in names else None
        )
        return cls(
            stem,
            tail,
            network.get_layer("mimo_heads"),
            network.get_layer("split_heads"),
            activation,
            num_members,
        )

    def __call__(self, inputs):
        stem = self.stem
        kernel = ops.convert_to_tensor(stem.kernel)
        *window, channels, units = kernel.shape
        per_member = channels // self.num_members
        kernel = ops.sum(
            ops.reshape(kernel, (*window, self.num_members, per_member, units)),
            axis=-3,
        )
        inputs = ops.cast(inputs, kernel.dtype)
        if isinstance(stem, keras.layers.Dense):
            h = ops.matmul(inputs, kernel)
        else:
            h = ops.conv(
                inputs,
                kernel,
                strides=stem.strides,
                padding=stem.padding,
                data_format="channels_last",
                dilation_rate=stem.dilation_rate,
            )
        if stem.use_bias:
            h = h + stem.bias
        if stem.activation is not None:
            h = stem.activation(h)
        outputs = self.split(self.heads(self.tail(h, training=False)))
        return outputs if self.activation is None else self.activation(outputs)


def _training_argument(training):
    """`{"training": training}` where `keras.Model.compute_loss` takes it
    (Keras >= 3.4), else `{}` (Keras 3.3's has no such argument)."""
    if "training" in inspect.signature(keras.Model.compute_loss).parameters:
        return {"training": training}
    return {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MIMO(keras.Model):
    """A MIMO network: an ensemble of M subnetworks in one forward pass.

    Havasi et al. (2021). One backbone takes M inputs concatenated on the
    channel axis and ends in M heads. `fit(x, y)` builds the paper's
    training batches in-graph (a `train_step` override, no `tf.data`
    needed): the batch of B rows is repeated `batch_repetitions` times and
    shuffled, and each member gets its own shuffle of it, except a fraction
    `repetition_probability` of the rows, where all members get the same
    example (the paper's input repetition, which trades member
    independence for capacity). The training loss is the compiled loss of
    each head against its own targets, averaged over the heads and rows
    (the paper sums the heads' losses: a factor M, which Adam ignores);
    metrics during training compare every head with its own targets.
    `x` is a single tensor; `fit` under a `tf.distribute` strategy is not
    supported (the step does not rescale the loss across replicas).

    At test time (`call`, `evaluate`, `predict`, `ku.predict_*`) the input
    is repeated M times: `call` returns `(N, M, K)`, the M heads' outputs;
    `evaluate` averages the loss over the heads and computes compiled
    metrics on the mixture; `predict` returns the mixture (the mean of the
    heads, as for a `ku.Ensemble` of probabilities or means; for `(mean,
    log-variance)` heads the Gaussian mixture's mean and log-variance).
    `ku.sample`, `ku.predict_classification` and `ku.predict_regression`
    treat the heads as M deterministic members of a uniform mixture, from
    one forward pass (`as_sampled_model`).

    Args:
        build_fn: Callable `build_fn(input_shape)` returning the backbone: a
            `keras.Model` from `input_shape` (the example's shape with its
            last axis M times wider) to `(N, d)` features. The heads are
            added by MIMO.
        input_shape: Shape of one example, channels last (e.g. `(28, 28, 1)`
            or `(8,)`).
        num_outputs: Positive integer K, outputs of each head (classes, or
            2k for a `ku.losses.gaussian_nll` head).
        num_members: Positive integer M (the paper uses 3 or 4).
        output_activation: Each head's activation: `"softmax"` for a
            classifier, None for regression.
        repetition_probability: Float in [0, 1), the fraction of training
            rows every member shares (0 in most of the paper's runs; 0.5 for
            ImageNet). Raise it, or widen the backbone, when the network is
            small for its task: M independent subnetworks then each get too
            little capacity (the MNIST benchmark's 3-head LeNet-5, 10 epochs
            on 6,000 digits: 94.3% with 0, 97.5% with 0.5, 97.8% with 0.5 and
            1.5x the width, against 96.7% for one plain LeNet-5; the
            benchmark uses the last).
        batch_repetitions: Positive integer, how many times the batch is
            repeated before shuffling (the paper's batch repetition; 1).
        seed: Optional integer seed of the shuffles.
        fold_stem: Whether prediction (`predict`, `ku.predict_*`,
            `ku.sample`, `ku.export`) runs the backbone's first layer once on
            the input, with the M members' slices of its kernel summed,
            instead of on the M copies concatenated: exact (the layer is
            linear in its input before the activation), and it removes the
            M-fold cost of the stem. Applies when the backbone's input feeds
            a single `Dense` or `Conv1D/2D/3D` (channels last, one group);
            otherwise, and with False, the repeated input goes through the
            network as `call` does.
        network: A built MIMO network (`build_mimo_network`) used instead of
            `build_fn` (for `from_config`).
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Call arguments:
        inputs: `(N, *input_shape)`: repeated M times. Use `member_outputs`
            for `(N, M, *input_shape)` inputs, one per member.
        training: Passed to the network.

    Example:

    >>> def backbone(shape):
    ...     inputs = keras.Input(shape)
    ...     h = keras.layers.Dense(64, activation="relu")(inputs)
    ...     return keras.Model(inputs, h)
    >>> mimo = ku.MIMO(backbone, (8,), num_outputs=3, num_members=3,
    ...                         output_activation="softmax")
    >>> mimo.compile("adam", "sparse_categorical_crossentropy")
    >>> mimo.fit(x, y, epochs=10)
    >>> pred = ku.predict_classification(mimo, x_test)  # one pass
    """

    def __init__(
        self,
        build_fn=None,
        input_shape=None,
        num_outputs=None,
        num_members=3,
        output_activation=None,
        repetition_probability=0.0,
        batch_repetitions=1,
        seed=None,
        fold_stem=True,
        network=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "mimo")
        super().__init__(**kwargs)
        self.repetition_probability = _check_probability(repetition_probability)
        self.batch_repetitions = check_positive_int(
            batch_repetitions, "batch_repetitions"
        )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
        ):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected an "
                f"integer or None. Received: seed={seed!r}"
            )
        self.seed = seed
        if network is None:
            network = build_mimo_network(
                build_fn, input_shape, num_outputs, num_members, output_activation
            )
        elif not isinstance(network, keras.Model) or len(network.inputs[0].shape) < 3:
            raise ValueError(
                "Invalid value received for argument `network`. Expected a "
                "keras.Model from (N, M, *input_shape) to (N, M, K). Received: "
                f"{network!r}"
            )
        self.network = network
        self.num_members = int(network.inputs[0].shape[1])
        self.example_shape = tuple(network.inputs[0].shape[2:])
        self.output_activation = output_activation
        self.seed_generator = keras.random.SeedGenerator(seed)
        if not isinstance(fold_stem, bool):
            raise ValueError(
                "Invalid value received for argument `fold_stem`. Expected True "
                f"or False. Received: fold_stem={fold_stem!r}"
            )
        self.fold_stem = fold_stem
        self.folded = _Untracked(
            _FoldedStem.of(network, self.num_members) if fold_stem else None
        )
        self.built = True

    # Forward ---------------------------------------------------------------

    def repeat_inputs(self, inputs):
        """`(N, *input_shape)` -> `(N, M, *input_shape)`, the input repeated."""
        if not isinstance(inputs, keras.KerasTensor):  # Keras 3.3 refuses those
            inputs = ops.convert_to_tensor(inputs)
        return ops.repeat(ops.expand_dims(inputs, 1), self.num_members, axis=1)

    def member_outputs(self, member_inputs, training=None):
        """The heads' outputs for one input per member.

        Args:
            member_inputs: `(N, M, *input_shape)`: member m reads column m.
            training: Passed to the network.

        Returns:
            `(N, M, K)`.
        """
        return self.network(member_inputs, training=training)

    def call(self, inputs, training=None):
        return self.member_outputs(self.repeat_inputs(inputs), training=training)

    def predict_heads(self, inputs):
        """The heads' outputs at test time, `(N, M, K)`: `call` in inference
        mode, through the folded stem when `fold_stem` applies.

        Args:
            inputs: `(N, *input_shape)`.

        Returns:
            `(N, M, K)`.
        """
        if self.folded.value is not None:
            return self.folded.value(inputs)
        return self(inputs, training=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.network.outputs[0].shape[1:])

    def as_sampled_model(self):
        """How `ku.sample` and `ku.predict_*` sample MIMO: its M heads as
        deterministic members, member-major, from one forward pass.

        Returns:
            A `MIMOSampledModel`.
        """
        return MIMOSampledModel(self)

    # Training --------------------------------------------------------------

    def training_indices(self, batch_size):
        """The rows each member reads in a training step.

        Args:
            batch_size: B, the rows of the batch (a scalar tensor or int).

        Returns:
            `(M, B * batch_repetitions)` int32 indices into the batch; the
            last `repetition_probability` share of the columns is the same
            for every member.
        """
        rows = ops.tile(ops.arange(batch_size, dtype="int32"), [self.batch_repetitions])
        main = keras.random.shuffle(rows, seed=self.seed_generator)
        total = ops.shape(main)[0]
        shuffled = ops.cast(
            ops.floor(ops.cast(total, "float32") * (1.0 - self.repetition_probability)),
            "int32",
        )
        members = []
        for _ in range(self.num_members):
            own = keras.random.shuffle(main[:shuffled], seed=self.seed_generator)
            members.append(ops.concatenate([own, main[shuffled:]], axis=0))
        return ops.stack(members)

    def training_batch(self, x, y, sample_weight=None):
        """The paper's MIMO batch: `(x, y, w)` of B rows -> member inputs
        `(B', M, ...)` and member targets and weights `(B', M, ...)`, with
        `B' = B * batch_repetitions`.

        Args:
            x: `(B, *input_shape)` inputs.
            y: `(B, ...)` targets.
            sample_weight: Optional `(B,)` weights.

        Returns:
            `(member_x, member_y, member_weight)` (the last None without
            weights).
        """
        x = ops.convert_to_tensor(x)
        indices = self.training_indices(ops.shape(x)[0])  # (M, B')

        def gather(t):
            if t is None:
                return None
            t = ops.convert_to_tensor(t)
            taken = ops.take(t, indices, axis=0)  # (M, B', ...)
            return ops.moveaxis(taken, 0, 1)

        return gather(x), tree.map_structure(gather, y), gather(sample_weight)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if len(tree.flatten(x)) != 1:
            raise ValueError(
                "MIMO trains on a single input tensor `x`. Received: "
                f"{len(tree.flatten(x))} inputs"
            )
        member_x, member_y, member_w = self.training_batch(
            tree.flatten(x)[0], y, sample_weight
        )
        folded_y = tree.map_structure(_fold, member_y)
        folded_w = None if member_w is None else _fold(member_w)
        with tf.GradientTape() as tape:
            y_pred = self.member_outputs(member_x, training=True)
            loss = self.compute_loss_of_members(member_x, folded_y, y_pred, folded_w)
            scaled = loss
            if self.optimizer is not None and hasattr(self.optimizer, "scale_loss"):
                scaled = self.optimizer.scale_loss(loss)  # Keras >= 3.4
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(gradients, weights))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=ops.shape(y_pred)[0])
        return super().compute_metrics(
            member_x, folded_y, _fold(y_pred), sample_weight=folded_w
        )

    def compute_loss_of_members(self, member_x, folded_y, y_pred, folded_w):
        """The compiled loss of every head against its own targets:
        `(B', M, K)` outputs folded to `(B' * M, K)` rows."""
        return super().compute_loss(
            x=member_x,
            y=folded_y,
            y_pred=_fold(y_pred),
            sample_weight=folded_w,
            **_training_argument(True),
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True, **kwargs
    ):
        # The test-time path (`evaluate`): every head against the same
        # targets, y repeated over the member axis.
        y_rep = tree.map_structure(self._repeat_fold, y)
        w_rep = None if sample_weight is None else self._repeat_fold(sample_weight)
        return super().compute_loss(
            x=x,
            y=y_rep,
            y_pred=_fold(y_pred),
            sample_weight=w_rep,
            **_training_argument(training),
            **kwargs,
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Test time: the metrics of the mixture, as for `ku.Ensemble`.
        return super().compute_metrics(
            x, y, self.mixture(y_pred), sample_weight=sample_weight
        )

    def _repeat_fold(self, t):
        t = ops.convert_to_tensor(t)
        return _fold(ops.repeat(ops.expand_dims(t, 1), self.num_members, axis=1))

    # Prediction ------------------------------------------------------------

    def mixture(self, outputs):
        """The heads' uniform mixture in one head's format.

        `(N, M, K)` -> `(N, K)`, as `ku.Ensemble.mixture`: for `(mean,
        log-variance)` heads (compiled with a loss that declares
        `variance_head`) the mixture's mean and log-variance `log(mean_m
        sigma_m^2 + var_m mu_m)`; for logits (a loss with `from_logits=True`)
        the logits of the mean probabilities; otherwise the mean of the
        heads (the mixture's probabilities for softmax heads).

        Args:
            outputs: `(N, M, K)` head outputs.

        Returns:
            `(N, K)`.
        """
        return declared_mixture(self, outputs, self.num_members)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.mixture(self.predict_heads(x))

    # Serialization ---------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "network": keras.saving.serialize_keras_object(self.network),
            "output_activation": self.output_activation,
            "repetition_probability": self.repetition_probability,
            "batch_repetitions": self.batch_repetitions,
            "seed": self.seed,
            "fold_stem": self.fold_stem,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"], custom_objects=custom_objects
        )
        return cls(**config)


class _Untracked:
    """Holds a value out of Keras's attribute tracking."""

    def __init__(self, value):
        self.value = value


def _fold(t):
    """`(B, M, ...)` -> `(B * M, ...)`."""
    shape = ops.shape(t)
    return ops.reshape(t, (-1, *shape[2:]))


class MIMOSampledModel(SampledModel):
    """The `SampledModel` of a `MIMO`: M deterministic members, member-major
    rows `(M * n, K)`, from one forward pass of the repeated input.

    Args:
        mimo: The `MIMO` model sampled.
    """

    stochastic = False

    def __init__(self, mimo):
        super().__init__(mimo)
        self.num_members = mimo.num_members
        inputs = keras.Input(mimo.example_shape, name="inputs")
        first_head = mimo.network(mimo.repeat_inputs(inputs))[:, 0]
        self.input_view = keras.Model(inputs, first_head, name="mimo_view")

    def forward(self, inputs, num_samples):
        x = tree.flatten(inputs)[0]
        outputs = self.model.predict_heads(x)  # (n, M, K)
        outputs = ops.moveaxis(outputs, 1, 0)  # (M, n, K)
        return ops.reshape(outputs, (-1, *outputs.shape[2:]))
