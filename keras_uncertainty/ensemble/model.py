"""Deep Ensembles trained together in one compiled graph.

Lakshminarayanan et al. (2017): M networks of one architecture, each from its
own random initialization and trained with a proper scoring rule, combined at
prediction time as a uniform mixture. Training them one after another costs M
fits; here the members sit side by side in one Keras model, the loss of each
member is computed on its own output and the losses are summed, so one `fit`
updates every member with exactly the gradients it would get alone.
"""

import math
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops, tree
from keras.src.losses.losses import LossFunctionWrapper
from keras.src.saving import serialization_lib

from keras_uncertainty._validation import check_positive_int

_PACKAGE = "keras_uncertainty"


def _describe(value):
    return type(value).__name__


def _io_shapes(model):
    inputs = tuple(tuple(t.shape[1:]) for t in tree.flatten(model.inputs))
    outputs = tuple(tuple(t.shape[1:]) for t in tree.flatten(model.outputs))
    return inputs, outputs


def _check_members(members):
    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError(
            "Invalid value received for argument `models`. Expected a "
            f"non-empty list of keras.Model. Received: {members!r}"
        )
    for i, member in enumerate(members):
        if not isinstance(member, keras.Model):
            raise ValueError(
                f"Invalid value received for member {i}. Expected a "
                f"keras.Model. Received: {_describe(member)}"
            )
    shapes = []
    for i, member in enumerate(members):
        try:
            shapes.append(_io_shapes(member))
        except (AttributeError, ValueError):
            raise ValueError(
                f"Invalid value received for member {i} ('{member.name}'). "
                "Expected a built model with known inputs and outputs (a "
                "Functional or Sequential model with an Input). Received: a "
                "model without defined inputs"
            ) from None
    for i, (member, shape) in enumerate(zip(members, shapes)):
        if shape != shapes[0]:
            raise ValueError(
                "Expected every member to have the same input and output "
                f"shapes. Received: member 0 ('{members[0].name}') with inputs "
                f"{shapes[0][0]} and outputs {shapes[0][1]}, member {i} "
                f"('{member.name}') with inputs {shape[0]} and outputs {shape[1]}"
            )
    return list(members)


def _check_epsilon(value):
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(
            "Invalid value received for argument `adversarial_epsilon`. "
            "Expected None or a positive float (a fraction of each input "
            f"feature's range). Received: adversarial_epsilon={value!r}"
        )
    return float(value)


# Optimizers whose update of an entry uses only that entry's gradient and
# state, so that updating a stack of the members' variables is exact.
_ELEMENTWISE_OPTIMIZERS = tuple(
    getattr(keras.optimizers, name)
    for name in (
        "SGD",
        "Adam",
        "AdamW",
        "RMSprop",
        "Adagrad",
        "Adadelta",
        "Adamax",
        "Nadam",
        "Lion",
        "Ftrl",
    )
    if hasattr(keras.optimizers, name)
)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Ensemble(keras.Model):
    """A deep ensemble: M member networks trained at once, predicted as a mixture.

    Calling the ensemble returns the members' outputs stacked on axis 1,
    shape `(N, M, *output_shape)`. `compile` takes the loss of one member
    (for example `ku.losses.gaussian_nll` or
    `"sparse_categorical_crossentropy"`); `fit` applies it to each member's
    output separately and minimizes the sum, so every member receives its own
    gradients, as if trained alone on the same batches. The logs hold the
    total `loss` and each member's `member_<i>_loss`; metrics given to
    `compile` are computed on the mean of the members' outputs (for
    probabilities, the ensemble's predictive distribution).

    `ku.sample`, `ku.predict_regression` and `ku.predict_classification`
    treat the members as samples of a uniform mixture; members with MC
    layers (an ensemble of MC dropout networks) contribute `num_samples`
    samples each.

    Args:
        build_fn: Callable with no arguments returning a new `keras.Model`;
            called once per member, so each starts from its own random
            initialization.
        num_members: Positive integer M.
        bootstrap: Whether each member trains on its own bootstrap resample
            of the training set (drawn anew at every `fit` call, as
            per-member sample weights of resample counts). The Deep Ensembles
            paper found random initialization alone diverse enough; default
            False.
        adversarial_epsilon: Optional positive float: adversarial training
            with the fast gradient sign method, as in the paper. Each member's
            inputs are perturbed by `epsilon * range * sign(grad_x loss)`,
            with `range` the per-feature range of the training inputs of the
            `fit` call, and the member's loss is the sum of its loss on the
            clean and on the perturbed batch. The paper uses 0.01.
        seed: Optional integer seed for the bootstrap resamples.
        members: Existing models, used instead of `build_fn` (see
            `Ensemble.from_models`).
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Call arguments:
        inputs: Input of one member.
        training: Python boolean, passed on to every member.

    Example:

    >>> def build():
    ...     return ku.models.mlp(8, 2, hidden_units=(50,), dropout_rate=0)
    >>> ens = ku.Ensemble(build, num_members=5)
    >>> ens.compile("adam", loss=ku.losses.gaussian_nll)
    >>> ens.fit(x, y, epochs=40, batch_size=128)
    >>> pred = ku.predict_regression(ens, x_test)
    """

    def __init__(
        self,
        build_fn=None,
        num_members=5,
        bootstrap=False,
        adversarial_epsilon=None,
        seed=None,
        members=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "ensemble")
        super().__init__(**kwargs)
        if members is None:
            members = self._build_members(build_fn, num_members)
        self.members = _check_members(members)
        self.bootstrap = bool(bootstrap)
        self.adversarial_epsilon = _check_epsilon(adversarial_epsilon)
        self.seed = seed
        self._member_loss_trackers = [
            keras.metrics.Mean(name=f"member_{i}_loss")
            for i in range(len(self.members))
        ]
        self._member_loss = None
        self._feature_range = None
        # Stacked copies of the members' trainable variables, which the
        # optimizer updates in one go (see `_stack_for_optimizer`); kept out
        # of Keras's tracking, since the members' variables are the truth.
        object.__setattr__(self, "_stacked_variables", None)
        self._bootstrap_rng = np.random.default_rng(seed)

    @staticmethod
    def _build_members(build_fn, num_members):
        if not callable(build_fn):
            raise ValueError(
                "Invalid value received for argument `build_fn`. Expected a "
                "callable that returns a keras.Model. Received: "
                f"build_fn={build_fn!r}"
            )
        members = []
        for i in range(check_positive_int(num_members, "num_members")):
            member = build_fn()
            if not isinstance(member, keras.Model):
                raise ValueError(
                    "Invalid value received for argument `build_fn`. Expected "
                    "it to return a keras.Model. Received: a "
                    f"{_describe(member)} from call {i}"
                )
            if any(member is other for other in members):
                raise ValueError(
                    "Invalid value received for argument `build_fn`. Expected "
                    "a new model from each call. Received: the same model "
                    f"object twice (call {i})"
                )
            members.append(member)
        return members

    @classmethod
    def from_models(cls, models, **kwargs):
        """An ensemble of existing models (same input and output shapes).

        Args:
            models: Non-empty list of `keras.Model`; their weights are used
                as they are (trained or not).
            **kwargs: Other `Ensemble` arguments (`bootstrap`, ...).
        """
        return cls(members=_check_members(models), **kwargs)

    @property
    def num_members(self):
        return len(self.members)

    def call(self, inputs, training=None):
        outputs = [member(inputs, training=training) for member in self.members]
        return ops.stack(outputs, axis=1)

    def compute_output_shape(self, input_shape):
        output = self.members[0].compute_output_shape(input_shape)
        return (output[0], self.num_members, *output[1:])

    # Training ---------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training; `loss` is the loss of one member.

        Args:
            optimizer: As in `keras.Model.compile`.
            loss: Loss of one member: a Keras loss name, function or
                `keras.losses.Loss` (for example `ku.losses.gaussian_nll`).
            metrics: Metrics computed on the mean of the members' outputs.
            **kwargs: Other `keras.Model.compile` arguments (`jit_compile`,
                `steps_per_execution`, ...). `loss_weights` is not supported.
        """
        if loss is None:
            raise ValueError(
                "Invalid value received for argument `loss`. Expected the loss "
                "of one member (a name, function or keras.losses.Loss). "
                "Received: loss=None"
            )
        if kwargs.get("loss_weights") is not None:
            raise ValueError(
                "Invalid value received for argument `loss_weights`. Expected "
                "None: every member's loss has weight 1. Received: "
                f"loss_weights={kwargs['loss_weights']!r}"
            )
        loss_object = keras.losses.get(loss)
        if not isinstance(loss_object, keras.losses.Loss):
            loss_object = LossFunctionWrapper(loss_object)
        self._member_loss = loss_object
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)
        # Keep the user's loss visible as `model.loss` and in the compile
        # config, so that `load_model` compiles the ensemble the same way.
        self.loss = loss
        self._compile_config = serialization_lib.SerializableDict(
            **{**self._compile_config.config, "loss": loss}
        )

    def _member_losses(self, y, y_pred, sample_weight):
        losses = []
        for i in range(self.num_members):
            weight = sample_weight
            if sample_weight is not None and len(sample_weight.shape) == 2:
                weight = sample_weight[:, i]
            losses.append(self._member_loss(y, y_pred[:, i], sample_weight=weight))
        return losses

    def _adversarial_losses(self, x, y, sample_weight):
        """Each member's loss on its own fast-gradient-sign perturbation of x."""
        copies = [tf.identity(x) for _ in self.members]
        with tf.GradientTape() as tape:
            tape.watch(copies)
            clean = [
                member(copy, training=True)
                for member, copy in zip(self.members, copies)
            ]
            total = ops.sum(
                ops.stack(self._member_losses(y, ops.stack(clean, 1), sample_weight))
            )
        gradients = tape.gradient(total, copies)
        step = ops.cast(self.adversarial_epsilon * self._feature_range, x.dtype)
        perturbed = [
            member(tf.stop_gradient(copy + step * ops.sign(grad)), training=True)
            for member, copy, grad in zip(self.members, copies, gradients)
        ]
        return self._member_losses(y, ops.stack(perturbed, 1), sample_weight)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if self._member_loss is None:
            raise ValueError(
                "The ensemble has no loss: call `compile(optimizer, loss=...)` "
                "before training or evaluating it."
            )
        losses = self._member_losses(y, y_pred, sample_weight)
        if training and self.adversarial_epsilon is not None:
            adversarial = self._adversarial_losses(x, y, sample_weight)
            losses = [a + b for a, b in zip(losses, adversarial)]
        # Weighted by batch size, as Keras weighs its `loss` tracker, so the
        # epoch's `loss` is the sum of the members' epoch losses.
        batch_size = ops.shape(y_pred)[0]
        for tracker, value in zip(self._member_loss_trackers, losses):
            tracker.update_state(value, sample_weight=batch_size)
        total = ops.sum(ops.stack(losses))
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if sample_weight is not None and len(sample_weight.shape) == 2:
            sample_weight = None  # bootstrap counts weigh the loss only
        return super().compute_metrics(
            x, y, ops.mean(y_pred, axis=1), sample_weight=sample_weight
        )

    def fit(self, x=None, y=None, sample_weight=None, callbacks=None, **kwargs):
        """Trains every member at once; arguments as in `keras.Model.fit`.

        With `bootstrap=True` or `adversarial_epsilon`, `x` must be an array
        (the resample counts and the feature range are computed from it).
        A member whose loss becomes NaN or infinite stops training with a
        warning that names it.
        """
        if self.bootstrap or self.adversarial_epsilon is not None:
            x_array = self._array_inputs(x)
            if self.adversarial_epsilon is not None:
                self._feature_range = tf.constant(
                    np.ptp(x_array, axis=0).astype(keras.config.floatx())
                )
            if self.bootstrap:
                sample_weight = self._bootstrap_weights(len(x_array), sample_weight)
        callbacks = list(callbacks or []) + [_MemberLossMonitor()]
        self._stack_for_optimizer()
        return super().fit(
            x, y, sample_weight=sample_weight, callbacks=callbacks, **kwargs
        )

    def _stackable(self):
        """Whether one update of stacked variables equals M separate updates.

        True for the optimizers whose update of each entry depends only on
        that entry's gradient and state (and the shared step), when every
        member has the same trainable variable shapes, no variable has a
        constraint (a norm constraint would see the stack), and no
        distribution strategy is active.
        """
        optimizer = getattr(self, "optimizer", None)
        if type(optimizer) not in _ELEMENTWISE_OPTIMIZERS:
            return False
        if (
            optimizer.clipnorm is not None
            or getattr(optimizer, "_exclude_from_weight_decay", None)
            or getattr(optimizer, "_exclude_from_weight_decay_pattern", None)
        ):
            return False
        if tf.distribute.has_strategy() or getattr(self, "_distribute_strategy", None):
            return False
        lists = [member.trainable_variables for member in self.members]
        signature = [(tuple(v.shape), v.dtype) for v in lists[0]]
        return bool(signature) and all(
            [(tuple(v.shape), v.dtype) for v in variables] == signature
            and all(v.constraint is None for v in variables)
            for variables in lists
        )

    def _stack_for_optimizer(self):
        """Sets up stacked variables for the optimizer; returns whether it did.

        The optimizer's per-variable work (Adam: about ten ops per variable)
        dominates a training step of small members; updating one `(M, ...)`
        stack per variable instead of M variables cuts it M-fold, in the
        traced graph and at every step, with identical arithmetic.
        """
        if not self.built and all(member.built for member in self.members):
            self.build()
        if not self.built or not self._stackable():
            object.__setattr__(self, "_stacked_variables", None)
            return False
        lists = [member.trainable_variables for member in self.members]
        stacked = self._stacked_variables
        if stacked is None:
            stacked = [
                keras.Variable(
                    tf.stack([variables[k].value for variables in lists]),
                    trainable=True,
                    name=f"stacked_{lists[0][k].name}",
                )
                for k in range(len(lists[0]))
            ]
        else:
            for k, variable in enumerate(stacked):
                variable.assign(tf.stack([variables[k].value for variables in lists]))
        if self.optimizer.built and (
            [id(v) for v in self.optimizer._trainable_variables]
            != [id(v) for v in stacked]
        ):
            # Built on the members' own variables already: keep that.
            object.__setattr__(self, "_stacked_variables", None)
            return False
        if not self.optimizer.built:
            self.optimizer.build(stacked)
        object.__setattr__(self, "_stacked_variables", stacked)
        return True

    def train_step(self, data):
        stacked = self._stacked_variables
        if stacked is None:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            self._loss_tracker.update_state(
                loss, sample_weight=tf.shape(tree.flatten(x)[0])[0]
            )
            loss = self.optimizer.scale_loss(loss)
        member_variables = [member.trainable_variables for member in self.members]
        gradients = tape.gradient(loss, member_variables)
        stacked_gradients = []
        for k, variable in enumerate(stacked):
            column = [grads[k] for grads in gradients]
            if all(g is None for g in column):
                stacked_gradients.append(None)
                continue
            stacked_gradients.append(
                tf.stack(
                    [
                        tf.zeros(variable.shape[1:], variable.dtype)
                        if g is None
                        else tf.convert_to_tensor(g)
                        for g in column
                    ]
                )
            )
        self.optimizer.apply(stacked_gradients, stacked)
        for k, variable in enumerate(stacked):
            updated = tf.unstack(variable.value)
            for variables, value in zip(member_variables, updated):
                variables[k].assign(value)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _array_inputs(self, x):
        if tf.is_tensor(x):
            x = x.numpy()
        if not isinstance(x, np.ndarray):
            raise ValueError(
                "Invalid value received for argument `x`. Expected a numpy "
                "array or tensor when `bootstrap` or `adversarial_epsilon` is "
                f"set. Received: {_describe(x)}"
            )
        return x

    def _bootstrap_weights(self, num_rows, sample_weight):
        counts = self._bootstrap_rng.multinomial(
            num_rows, np.full(num_rows, 1.0 / num_rows), size=self.num_members
        ).T.astype(keras.config.floatx())
        if sample_weight is not None:
            counts = counts * np.asarray(sample_weight, counts.dtype).reshape(-1, 1)
        return counts

    # Serialization ----------------------------------------------------------

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "members": [keras.saving.serialize_keras_object(m) for m in self.members],
            "bootstrap": self.bootstrap,
            "adversarial_epsilon": self.adversarial_epsilon,
            "seed": self.seed,
        }
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        members = [
            keras.saving.deserialize_keras_object(m, custom_objects=custom_objects)
            for m in config.pop("members")
        ]
        return cls(members=members, **config)

    def get_compile_config(self):
        # `compile` keeps the member loss in the config; see there.
        return super().get_compile_config()

    def compile_from_config(self, config):
        self.compile(**serialization_lib.deserialize_keras_object(config))
        if self.built and not self._stack_for_optimizer():
            self.optimizer.build(self.trainable_variables)

    def build(self, input_shape=None):
        for member in self.members:
            if not member.built:
                member.build(input_shape)
        self.built = True


class _MemberLossMonitor(keras.callbacks.Callback):
    """Stops training, naming the member, when a member's loss is not finite."""

    def on_train_batch_end(self, batch, logs=None):
        bad = []
        for key, value in (logs or {}).items():
            if key.startswith("member_") and key.endswith("_loss"):
                if not math.isfinite(float(value)):
                    index = int(key[len("member_") : -len("_loss")])
                    bad.append(f"member {index} ('{self.model.members[index].name}')")
        if bad:
            warnings.warn(
                f"Ensemble '{self.model.name}': the loss of {', '.join(bad)} "
                f"became NaN or infinite at batch {batch}; training stopped. "
                "The other members' losses are finite.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.model.stop_training = True
