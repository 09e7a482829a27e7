"""Deep Ensembles: M networks of one architecture, predicted as a uniform mixture.

Lakshminarayanan et al. (2017): M networks, each from its own random
initialization and trained with a proper scoring rule, combined at prediction
time as a uniform mixture. `Ensemble` is the container: its members, its call,
its config and its compile. Members that pack (see `packing.py`) are held as
one network of packed layers, so one `fit` costs little more than one member;
others sit side by side with their own variables. Either way the loss of each
member is computed on its own output and the losses are summed, so every
member gets exactly the gradients it would get alone. How it trains lives in
`training.py`, adversarial training in `adversarial.py`.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops, tree

from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.ensemble import adversarial, packing, training
from keras_uncertainty.ensemble.callbacks import TerminateOnNonFiniteMember
from keras_uncertainty.ensemble.sampled import EnsembleSampledModel
from keras_uncertainty.layers.packed import share_across_members
from keras_uncertainty.sampling import graph
from keras_uncertainty.sampling.inputs import flatten_inputs, is_streamed
from keras_uncertainty.sampling.mixture import declared_mixture

_PACKAGE = "keras_uncertainty"


def _describe(value):
    return type(value).__name__


def _io_shapes(model):
    inputs = tuple(tuple(t.shape[1:]) for t in tree.flatten(model.inputs))
    outputs = tuple(tuple(t.shape[1:]) for t in tree.flatten(model.outputs))
    return inputs, outputs


def _warn_if_shared(members):
    """Members that are one object, or share variables, always agree: their
    disagreement, the epistemic uncertainty, is zero by construction."""
    owner = {}
    for i, member in enumerate(members):
        for variable in member.weights:
            first = owner.setdefault(id(variable), i)
            if first != i:
                same = member is members[first]
                warnings.warn(
                    f"Members {first} and {i} ('{member.name}') "
                    + ("are the same model" if same else "share weights")
                    + ", so they always agree and the ensemble's epistemic "
                    "uncertainty between them is zero. Pass separately built "
                    "models (e.g. `keras.models.clone_model(m)` for a fresh "
                    "initialization).",
                    UserWarning,
                    stacklevel=4,
                )
                return


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
    _warn_if_shared(members)
    for i, (member, shape) in enumerate(zip(members, shapes)):
        if shape != shapes[0]:
            raise ValueError(
                "Expected every member to have the same input and output "
                f"shapes. Received: member 0 ('{members[0].name}') with inputs "
                f"{shapes[0][0]} and outputs {shapes[0][1]}, member {i} "
                f"('{member.name}') with inputs {shape[0]} and outputs {shape[1]}"
            )
    return list(members)


def _member_axis_first(tensor):
    """`(batch, M, ...)` -> `(M, batch, ...)`."""
    return ops.transpose(tensor, (1, 0, *range(2, len(tensor.shape))))


class _Untracked:
    """Holds the member models of a packed ensemble out of Keras's tracking:
    their weights are copies; the packed network's variables are the truth."""

    def __init__(self, models):
        self.models = models


class _PredictFunctions:
    """The compiled predict function of each `predict` output (the mixture,
    or every member's), so that switching between them traces each once.
    Held out of Keras's tracking."""

    def __init__(self):
        self.per_member = None  # what `predict_step` returns now
        self.cache = {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Ensemble(keras.Model):
    """A deep ensemble: M member networks trained at once, predicted as a mixture.

    Calling the ensemble returns the members' outputs stacked on axis 1,
    shape `(N, M, *output_shape)`; `predict` returns, as Keras's `predict`
    does, one prediction per input in one member's output shape: the
    ensemble's uniform mixture (see `predict`; `predict(x, per_member=True)`
    or `ku.sample(ensemble, x)` give every member's). `evaluate` returns
    what Keras's returns: the scalar `loss` (the sum of the members' losses,
    the training objective) without compiled metrics, else `[loss,
    *metrics]`; `return_dict=True` adds each member's `member_<i>_loss`.
    `compile` takes the loss of one member
    (for example `ku.losses.gaussian_nll` or
    `"sparse_categorical_crossentropy"`); `fit` applies it to each member's
    output separately and minimizes the sum, so every member receives its own
    gradients, as if trained alone on the same batches. The logs hold the
    total `loss` and each member's `member_<i>_loss`; metrics given to
    `compile` are computed on the members' mixture, what `predict` returns
    (for probabilities, the mean of the members' outputs, the ensemble's
    predictive distribution).

    Members that are chains of layers with a packed twin (`Dense`,
    `Conv1D` / `Conv2D`, pooling, `Flatten`, `Normalization`, dropout and
    activation layers: the MLPs of the Deep Ensembles paper, `ku.models.mlp`,
    and CNNs such as `ku.models.lenet5`) are packed: their weights live in
    one network of `ku.layers.Packed*` layers with a member axis, so the
    optimizer makes one update per kind of variable instead of one per
    member (exact for the element-wise optimizers: SGD, Adam, AdamW,
    RMSprop, Adagrad, Adadelta, Adamax, Nadam, Lion, Ftrl, also inside the
    `LossScaleOptimizer` that `mixed_float16` compiles with; compiling a
    packed ensemble with another optimizer, or with `clipnorm`, raises an
    error that says to pass `pack=False`). Other members (BatchNormalization,
    ...) train side by side with their own variables.

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
        per_member_inputs: Whether each member has its own rows. Then `x`
            is `(batch, M, ...)` and member m reads `x[:, m]`; `y` is
            `(batch, M, ...)` and member m's targets are `y[:, m]`; and a
            `(batch, M)` `sample_weight` weighs member m's rows by its
            column m (0/1 masks of each member's own rows, or resample
            counts). The call returns `(batch, M, ...)` as always; compiled
            metrics compare each member's outputs with its own targets, and
            `weighted_metrics` weigh its rows by its weights. For
            protocols that train many networks at once on different data
            (every split of a benchmark, every cell of a grid), each with its
            own standardization (a `keras.layers.Normalization` with the
            member's statistics), rates and weight decay. `ku.sample` then
            takes `(n, M, ...)` inputs and returns every member's samples of
            its own column, member-major; `ku.predict_*` pools all members
            into one mixture, which is meaningful only when the members
            share their targets (score groups with a reducer of your own, as
            the UCI protocol does). Default False: every member reads the
            same `x` and fits the same `y`.
        weighted_mean: Whether each member's loss is its weighted mean,
            `sum(w * loss) / sum(w)` over the batch, instead of Keras's
            default `sum(w * loss) / batch`. With 0/1 row masks that is the
            mean over the member's own rows of the batch, the loss it would
            have trained alone on those rows; a member with no row in a batch
            has loss 0 there. A loss with Keras's
            `reduction="mean_with_sample_weight"` implies it. Default False.
        member_logs: Whether the logs hold each member's `member_<i>_loss`
            (default True). With hundreds of members (a benchmark's every
            split and grid cell) the M logs cost more than the training step
            itself; False logs the total `loss` only, and `fit` then adds no
            `TerminateOnNonFiniteMember` (it reads the member logs).
        members: Existing models, used instead of `build_fn` (see
            `Ensemble.from_models`).
        pack: None (pack when the members allow it), True (require it: an
            error if they do not) or False (never: each member keeps its own
            variables).
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

    Many networks on their own rows (for example one per data split), each
    with its own input standardization and dropout rate:

    >>> def member(mean, variance, rate):
    ...     inputs = keras.Input((d,))
    ...     h = keras.layers.Normalization(mean=mean, variance=variance)(inputs)
    ...     h = ku.layers.MCDropout(rate)(h)
    ...     h = keras.layers.Dense(50, activation="relu")(h)
    ...     return keras.Model(inputs, keras.layers.Dense(1)(h))
    >>> ens = ku.Ensemble.from_models(
    ...     [member(*stats) for stats in per_split], per_member_inputs=True,
    ...     weighted_mean=True)
    >>> ens.compile("adam", loss="mse")
    >>> ens.fit(x_rows, y_rows, sample_weight=row_masks)  # (N, M, d), (N, M, 1), (N, M)
    """

    def __init__(
        self,
        build_fn=None,
        num_members=5,
        bootstrap=False,
        adversarial_epsilon=None,
        seed=None,
        members=None,
        pack=None,
        per_member_inputs=False,
        weighted_mean=False,
        member_logs=True,
        **kwargs,
    ):
        kwargs.setdefault("name", "ensemble")
        super().__init__(**kwargs)
        if members is None:
            members = self._build_members(build_fn, num_members)
        members = _check_members(members)
        if pack not in (None, True, False):
            raise ValueError(
                "Invalid value received for argument `pack`. Expected None, "
                f"True or False. Received: pack={pack!r}"
            )
        can_pack = packing.packable(members)
        if pack and not can_pack:
            raise ValueError(
                "Invalid value received for argument `pack`. Expected members "
                "that pack (chains of one architecture made of layers with a "
                "packed twin: Dense, Conv1D/Conv2D, pooling, Flatten, "
                "Normalization, dropout, activations). Received: "
                f"pack=True with members such as '{members[0].name}' that do not"
            )
        self.packed = can_pack if pack is None else bool(pack)
        self.member_names = [member.name for member in members]
        self.bootstrap = bool(bootstrap)
        self.adversarial_epsilon = adversarial.check_epsilon(adversarial_epsilon)
        self.seed = seed
        self.per_member_inputs = bool(per_member_inputs)
        self.weighted_mean = bool(weighted_mean)
        if self.packed:
            self.packed_network = packing.pack(members)
            self.member_store = _Untracked(members)
        else:
            self.member_models = members
        self.member_logs = bool(member_logs)
        self.member_loss_tracker = (
            training.MemberMeans(len(members)) if self.member_logs else None
        )
        self.member_loss = None
        self.adversarial_step = None
        self.bootstrap_rng = np.random.default_rng(seed)
        self._predict_outputs = _PredictFunctions()

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
            **kwargs: Other `Ensemble` arguments (`bootstrap`, `pack`, ...).
        """
        return cls(members=_check_members(models), **kwargs)

    def save(self, filepath, *args, **kwargs):
        """Saves the ensemble; only the `.keras` format can hold it.

        Raises:
            ValueError: for a legacy `.h5` / `.hdf5` path, before anything is
                written.
        """
        if str(filepath).lower().endswith((".h5", ".hdf5")):
            raise ValueError(
                "Invalid value received for argument `filepath`. Expected a "
                "path ending in `.keras`: an Ensemble (its members and packed "
                "layers) cannot be stored in the legacy HDF5 format. "
                f"Received: filepath={str(filepath)!r}"
            )
        return super().save(filepath, *args, **kwargs)

    @property
    def num_members(self):
        """M, the number of member networks."""
        return len(self.member_names)

    @property
    def members(self):
        """The member networks, as plain Keras models.

        For a packed ensemble these are copies, refreshed from the packed
        weights at every access: use them to inspect, save or serve one
        member; changing them does not change the ensemble.
        """
        if not self.packed:
            return list(self.member_models)
        models = self.member_store.models
        packing.store_members(self.packed_network, models)
        return list(models)

    @property
    def member_template(self):
        """Member 0 as built (its weights may be stale when packed): for
        shapes and architecture only."""
        return self._member_models()[0]

    def call(self, inputs, training=None):
        if self.per_member_inputs:
            return self.member_major(_member_axis_first(inputs), training=training)
        if self.packed:
            return self.packed_network(inputs, training=training)
        outputs = [member(inputs, training=training) for member in self.member_models]
        return ops.stack(outputs, axis=1)

    def _member_major_inputs(self, x):
        """The batch as `(M, batch, ...)`, one slice per member."""
        if self.per_member_inputs:
            return _member_axis_first(x)
        return share_across_members(x, self.num_members)

    def member_major(self, inputs, training=None):
        """`(M, batch, ...)` inputs, one slice per member -> `(batch, M, ...)`."""
        if self.packed:
            outputs = self.packed_network.member_major(inputs, training=training)
            return ops.transpose(outputs, (1, 0, *range(2, len(outputs.shape))))
        outputs = [
            member(inputs[m], training=training)
            for m, member in enumerate(self.member_models)
        ]
        return ops.stack(outputs, axis=1)

    def as_sampled_model(self):
        """How `ku.sample` and `ku.predict_*` sample the ensemble: the
        members as a uniform mixture, member-major (see
        `ku.sampling.SampledModel`).

        Returns:
            An `EnsembleSampledModel`.
        """
        return EnsembleSampledModel(self)

    # Prediction -------------------------------------------------------------

    def mixture(self, outputs):
        """The members' uniform mixture, in one member's output format.

        `(batch, M, ...)` member outputs -> `(batch, ...)`:

        - a Gaussian member (compiled with a loss that declares
          `variance_head`, as `ku.losses.gaussian_nll` does): the mixture's
          mean and the log of its variance, `mean_m sigma_m^2 + var_m mu_m`
          (Lakshminarayanan et al. 2017, section 2.4);
        - a classifier compiled with `from_logits=True`: logits of the mean
          probabilities, `log mean_m softmax(z_m)` (for one sigmoid unit, the
          logit of `mean_m sigmoid(z_m)`), so a softmax gives the mixture;
        - otherwise (probabilities, means, an uncompiled ensemble): the mean
          of the members' outputs.

        Args:
            outputs: The ensemble's call output, `(batch, M, ...)`.

        Returns:
            A `(batch, ...)` tensor.
        """
        return declared_mixture(self, outputs, self.num_members)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self(x, training=False)
        if self._predict_outputs.per_member:
            return outputs
        return self.mixture(outputs)

    def _use_predict_output(self, per_member):
        """Selects what `predict_step` returns, with its own compiled
        function (each traced once, until `compile` resets them)."""
        if per_member is None:
            per_member = self.per_member_inputs
        if per_member not in (True, False):
            raise ValueError(
                "Invalid value received for argument `per_member`. Expected "
                f"None, True or False. Received: per_member={per_member!r}"
            )
        functions = self._predict_outputs
        if self.predict_function is None:
            functions.cache.clear()  # the first call, or compiled anew
        elif functions.per_member is not None:
            functions.cache[functions.per_member] = self.predict_function
        functions.per_member = bool(per_member)
        self.predict_function = functions.cache.get(bool(per_member))

    def predict(
        self,
        x,
        batch_size=None,
        verbose="auto",
        steps=None,
        callbacks=None,
        per_member=None,
    ):
        """One prediction per input, as `keras.Model.predict`: the mixture.

        Returns `mixture(self(x))` batch by batch: for probabilities the
        ensemble's predictive distribution, for a Gaussian member the
        moment-matched Gaussian of the mixture `(mean, log-variance)`, for
        logits the logits of the mean probabilities (see `mixture`). For the
        epistemic / aleatoric split, use `ku.predict_regression` /
        `ku.predict_classification`.

        Args:
            x: Inputs, anything `keras.Model.predict` takes.
            batch_size: As in `keras.Model.predict`.
            verbose: As in `keras.Model.predict`.
            steps: As in `keras.Model.predict`.
            callbacks: As in `keras.Model.predict`.
            per_member: True: every member's output, `(N, M, ...)` (the
                ensemble's call output). None (default): False, or True
                with `per_member_inputs` (members that read their own rows
                have no common mixture).

        Returns:
            numpy array `(N, *output_shape)` of one member's output shape,
            or `(N, M, *output_shape)` with `per_member`.

        Example:

        >>> probs = ens.predict(x_test)  # (N, C): the mean of the members
        >>> each = ens.predict(x_test, per_member=True)  # (N, M, C)
        """
        self._use_predict_output(per_member)
        return super().predict(
            x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
        )

    def predict_on_batch(self, x):
        """`predict` on one batch (the mixture; see `predict`).

        Args:
            x: One batch of inputs.

        Returns:
            numpy array `(batch, *output_shape)`.
        """
        self._use_predict_output(None)
        return super().predict_on_batch(x)

    def evaluate(
        self,
        x=None,
        y=None,
        batch_size=None,
        verbose="auto",
        sample_weight=None,
        steps=None,
        callbacks=None,
        return_dict=False,
        **kwargs,
    ):
        """Loss and metrics, returned as `keras.Model.evaluate` returns them.

        `loss` is the sum of the members' losses (the training objective,
        the `val_loss` of `fit`); compiled metrics are computed on
        `mixture` of the outputs.

        Args:
            x: Inputs, as in `keras.Model.evaluate`.
            y: Targets, as in `keras.Model.evaluate`.
            batch_size: As in `keras.Model.evaluate`.
            verbose: As in `keras.Model.evaluate`.
            sample_weight: As in `keras.Model.evaluate`.
            steps: As in `keras.Model.evaluate`.
            callbacks: As in `keras.Model.evaluate`.
            return_dict: Whether to return a dict of every log, each
                member's `member_<i>_loss` included.
            **kwargs: Other `keras.Model.evaluate` arguments.

        Returns:
            The scalar `loss` when compiled without metrics, else the list
            `[loss, *metrics]` in compile order; with `return_dict`, a dict.

        Example:

        >>> loss = ens.evaluate(x_val, y_val, verbose=0)  # a float
        >>> logs = ens.evaluate(x_val, y_val, verbose=0, return_dict=True)
        >>> logs["member_0_loss"]
        """
        logs = super().evaluate(
            x,
            y,
            batch_size=batch_size,
            verbose=verbose,
            sample_weight=sample_weight,
            steps=steps,
            callbacks=callbacks,
            return_dict=True,
            **kwargs,
        )
        if return_dict:
            return logs
        # Keras's order: the loss, then the compiled metrics in their order.
        skipped = {"loss", *(f"member_{m}_loss" for m in range(self.num_members))}
        results = [logs["loss"]]
        results += [value for key, value in logs.items() if key not in skipped]
        return results[0] if len(results) == 1 else results

    def compute_output_shape(self, input_shape):
        output = self.member_template.compute_output_shape(
            self._member_input_shape(input_shape)
        )
        return (output[0], self.num_members, *output[1:])

    # Training ---------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Configures training; `loss` is the loss of one member.

        Args:
            optimizer: As in `keras.Model.compile`.
            loss: Loss of one member: a Keras loss name, function or
                `keras.losses.Loss` (for example `ku.losses.gaussian_nll`).
            metrics: Metrics computed on the members' mixture (see
                `mixture`: for probabilities, their mean).
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
        member_loss = training.as_loss_object(loss)
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)
        if self.packed and not training.packed_update_is_exact(self.optimizer):
            # A loss-scale wrapper (mixed_float16) is judged by what it wraps.
            inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
            raise ValueError(
                "Invalid value received for argument `optimizer`. A packed "
                "ensemble updates its members through shared (M, ...) "
                "variables, exact only for element-wise optimizers without "
                "`clipnorm` (SGD, Adam, AdamW, RMSprop, ...). Received: "
                f"{_describe(inner)} (clipnorm="
                f"{inner.clipnorm}). Build the ensemble with "
                "`pack=False` to train each member with its own variables."
            )
        self.member_loss = member_loss
        # `model.loss` shows the member loss (`ku.has_variance_head` reads it).
        self.loss = loss
        self.compiled_loss_config = keras.saving.serialize_keras_object(loss)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True, **kwargs
    ):
        if self.member_loss is None:
            raise ValueError(
                "The ensemble has no loss: call `compile(optimizer, loss=...)` "
                "before training or evaluating it."
            )
        losses = self._losses_of_members(y, y_pred, sample_weight)
        if training and self.adversarial_step is not None:
            _, perturbed = adversarial.fast_gradient_sign_losses(
                lambda inputs: self.member_major(inputs, training=True),
                lambda outputs: self._losses_of_members(y, outputs, sample_weight),
                self._member_major_inputs(x),
                self.adversarial_step,
            )
            losses = losses + perturbed
        # Weighted by batch size, as Keras weighs its `loss` tracker, so the
        # epoch's `loss` is the sum of the members' epoch losses.
        batch_size = ops.shape(y_pred)[0]
        if self.member_loss_tracker is not None:
            self.member_loss_tracker.update_state(losses, sample_weight=batch_size)
        total = ops.sum(losses)
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def _losses_of_members(self, y, y_pred, sample_weight):
        return training.member_losses(
            self.member_loss,
            y,
            y_pred,
            sample_weight,
            per_member_targets=self.per_member_inputs,
            weighted_mean=self.weighted_mean,
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if self.per_member_inputs:
            # Every member's outputs against its own targets: the member axis
            # folded into the batch (`weighted_metrics` weigh each member's
            # rows by its column of the sample weights).
            def fold(tensor):
                return ops.reshape(tensor, (-1, *tensor.shape[2:]))

            if sample_weight is not None:
                sample_weight = (
                    fold(sample_weight) if len(sample_weight.shape) == 2 else None
                )
            return super().compute_metrics(
                x, fold(y), fold(y_pred), sample_weight=sample_weight
            )
        if sample_weight is not None and len(sample_weight.shape) == 2:
            sample_weight = None  # bootstrap counts weigh the loss only
        return super().compute_metrics(
            x, y, self.mixture(y_pred), sample_weight=sample_weight
        )

    def fit(
        self,
        x=None,
        y=None,
        sample_weight=None,
        callbacks=None,
        terminate_on_nan=True,
        feature_range=None,
        **kwargs,
    ):
        """Trains every member at once; arguments as in `keras.Model.fit`.

        With `bootstrap=True`, or `adversarial_epsilon` without
        `feature_range`, `x` must be an array (the resample counts and the
        feature range are computed from it). In-memory inputs are checked
        against the members' inputs (shape and dtype) before training: a
        mismatch (28x28 images for a 32x32 LeNet) is one ValueError naming
        `x`, not an error from inside the compiled step.

        Args:
            terminate_on_nan: Whether to add a
                `ku.ensemble.TerminateOnNonFiniteMember` (unless `callbacks`
                holds one, or `member_logs=False`): a member whose loss
                becomes NaN or infinite stops training with a warning that
                names it.
            feature_range: Optional per-feature range of the inputs for the
                adversarial step (`epsilon * feature_range`), for inputs that
                are not an array (a `tf.data.Dataset`, ...): one input's
                shape, or with `per_member_inputs` `(M, ...)`, each member's
                own. Default: the range over the rows of `x` (with
                `per_member_inputs`, over each member's rows of positive
                `sample_weight`).
            **kwargs: `keras.Model.fit` arguments.
        """
        self._check_inputs(x)
        if self.adversarial_epsilon is not None:
            self._set_adversarial_step(x, sample_weight, feature_range)
        elif feature_range is not None:
            raise ValueError(
                "Invalid value received for argument `feature_range`. Expected "
                "None: it sets the adversarial step, and the ensemble has no "
                "`adversarial_epsilon`. Received: an array"
            )
        if self.bootstrap:
            x_array = self._array_inputs(x)
            sample_weight = training.bootstrap_counts(
                self.bootstrap_rng, len(x_array), self.num_members, sample_weight
            )
        callbacks = list(callbacks or [])
        if (
            terminate_on_nan
            and self.member_logs
            and not any(isinstance(c, TerminateOnNonFiniteMember) for c in callbacks)
        ):
            callbacks.append(TerminateOnNonFiniteMember())
        history = super().fit(
            x, y, sample_weight=sample_weight, callbacks=callbacks, **kwargs
        )
        if self.packed:
            # The member models given to the ensemble end where they would
            # have, trained alone.
            packing.store_members(self.packed_network, self.member_store.models)
        return history

    def _check_inputs(self, x):
        """In-memory `x` against member 0's inputs (`flatten_inputs`: the
        same rules as sampling), before any work; streamed inputs and
        subclassed members are left to Keras."""
        if x is None or is_streamed(x):
            return
        view = graph.functional_view(self.member_template)
        if view is None:
            return
        if self.per_member_inputs:
            if not hasattr(x, "shape"):
                return  # a structure of per-member inputs: left to Keras
            if len(x.shape) < 2 or x.shape[1] != self.num_members:
                raise ValueError(
                    "Invalid value received for argument `x`. Expected "
                    f"per-member inputs (batch, {self.num_members}, ...), "
                    f"one slice per member. Received: shape {tuple(x.shape)}"
                )
            x = x[:, 0]
        flatten_inputs(view, x, "x")

    def _set_adversarial_step(self, x, sample_weight, feature_range):
        epsilon = self.adversarial_epsilon
        if feature_range is None:
            if sample_weight is not None and tf.is_tensor(sample_weight):
                sample_weight = sample_weight.numpy()
            step = adversarial.feature_range_step(
                self._array_inputs(x),
                epsilon,
                sample_weight,
                per_member_inputs=self.per_member_inputs,
            )
        elif self.per_member_inputs:
            feature_range = np.asarray(feature_range)
            if feature_range.ndim < 2 or feature_range.shape[0] != self.num_members:
                raise ValueError(
                    "Invalid value received for argument `feature_range`. "
                    f"Expected one range per member, shape ({self.num_members}, "
                    "*features), with `per_member_inputs`. Received: shape "
                    f"{feature_range.shape}"
                )
            step = adversarial.member_range_step(feature_range, epsilon)
        else:
            step = (epsilon * np.asarray(feature_range)).astype("float32")
        previous = self.adversarial_step
        if previous is not None and not (
            previous.shape == step.shape and np.array_equal(previous.numpy(), step)
        ):
            # The compiled step holds the previous step as a constant.
            self.train_function = None
        self.adversarial_step = tf.constant(step)

    def _array_inputs(self, x):
        if tf.is_tensor(x):
            x = x.numpy()
        if not isinstance(x, np.ndarray):
            raise ValueError(
                "Invalid value received for argument `x`. Expected a numpy "
                "array or tensor when `bootstrap` is set or "
                "`adversarial_epsilon` is set without `feature_range`. "
                f"Received: {_describe(x)}"
            )
        return x

    # Serialization ----------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            # Architectures only (weights are saved with the variables), so
            # the packed weights need not be copied into the members here.
            "members": [
                keras.saving.serialize_keras_object(m) for m in self._member_models()
            ],
            "bootstrap": self.bootstrap,
            "adversarial_epsilon": self.adversarial_epsilon,
            "seed": self.seed,
            "pack": self.packed,
            "per_member_inputs": self.per_member_inputs,
            "weighted_mean": self.weighted_mean,
            "member_logs": self.member_logs,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        members = [
            keras.saving.deserialize_keras_object(m, custom_objects=custom_objects)
            for m in config.pop("members")
        ]
        return cls(members=members, **config)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and self.member_loss is not None:
            # `compile` passed loss=None to Keras; the member loss goes here
            # so that `load_model` compiles the ensemble the same way.
            config = {**config, "loss": self.compiled_loss_config}
        return config

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _member_models(self):
        """The member models as held, without refreshing packed weights."""
        return self.member_store.models if self.packed else list(self.member_models)

    def _member_input_shape(self, input_shape):
        """One member's input shape: with `per_member_inputs`, the member
        axis (axis 1) left out."""
        if self.per_member_inputs and input_shape is not None:
            input_shape = tuple(input_shape)
            return (input_shape[0], *input_shape[2:])
        return input_shape

    def build(self, input_shape=None):
        for member in self._member_models():
            if not member.built:
                member.build(self._member_input_shape(input_shape))
        self.built = True
