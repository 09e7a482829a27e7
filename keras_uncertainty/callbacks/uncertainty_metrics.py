"""Monte Carlo validation metrics written into Keras `logs`."""

import dataclasses
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from keras_uncertainty import _keras_compat, metrics
from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.sampling import (
    ClassificationScores,
    MixtureNLL,
    has_variance_head,
    input_stream,
    output_spec,
    reduce_samples,
    sampled_model,
)
from keras_uncertainty.sampling.outputs import (
    activation_says_logits,
    declared_task,
    loss_from_logits,
    output_loss,
)

_TASKS = ("auto", "regression", "classification")
_ARG = "Invalid value received for argument `validation_data`. "
_NUM_BINS = 15


def task_of_loss(model):
    """What the compiled loss says: `(task, from_logits)`, None where it
    does not say (no loss, a custom loss, several losses)."""
    loss = output_loss(model)
    task = declared_task(loss)
    if task != "classification":
        return task, None
    return task, loss_from_logits(loss)


def _output_shape(model):
    """The shape of one member's output, `(N, ...)`; None when unknown."""
    try:
        view = sampled_model(model).input_view
    except (ValueError, AttributeError, TypeError):
        return None
    if view is None or len(view.outputs) != 1:
        return None
    return tuple(view.outputs[0].shape)


def _is_probability_rows(y):
    return (
        np.issubdtype(y.dtype, np.floating)
        and np.all((y >= 0) & (y <= 1))
        and np.allclose(y.sum(-1), 1.0, atol=1e-3)
    )


class UncertaintyMetrics(keras.callbacks.Callback):
    """Draws MC (or ensemble) samples on validation data after an epoch.

    The figures go into the epoch's `logs`, so the History,
    `EarlyStopping(monitor=...)`, `ModelCheckpoint`, `CSVLogger` and
    TensorBoard see them wherever this callback sits in the list: at the
    start of training it moves itself to the front of the running list (the
    list you passed is not changed), so its `on_epoch_end` runs before
    theirs. Keys:

    - regression: `val_mc_nll` (the mixture NLL of the samples, or the
      Gaussian NLL of the predictive mean and std for a model without a
      variance head), `val_mc_rmse`, `val_mc_coverage95` (coverage of the
      central 95% interval): the `mixture_nll` (or `gaussian_nll`), `rmse`
      and `coverage_95` of `ku.metrics.regression_report`;
    - classification: `val_mc_nll` (of the mixture `mean_t p_t`),
      `val_mc_accuracy`, `val_mc_ece` (15 equal-width bins),
      `val_mc_brier` and `val_mc_mutual_information` (mean over the rows),
      streamed by `ku.sampling.ClassificationScores`: for integer labels,
      the `nll`, `accuracy`, `ece`, `brier` and `mean_mutual_information`
      of `ku.metrics.classification_report` on the same samples.

    The task is read from the compiled loss: crossentropy losses (names,
    functions or `keras.losses.Loss` objects such as
    `SparseCategoricalCrossentropy(from_logits=True)`, whose `from_logits`
    is read too) make a classifier; `ku.losses.gaussian_nll` and the
    squared / absolute error losses a regressor. Otherwise it is guessed
    from the targets (integer labels or one-hot rows: classification) and
    the last layer's activation (linear: logits), with a warning that says
    how to state it (`task=`, `from_logits=`).

    The validation data are checked when training starts, before any epoch:
    one target row per input row, and targets that fit the model's output
    (regression: `(N,)` or `(N, k)` for k means; classification: `(N,)`
    integer labels in `[0, C)`, or `(N, C)` one-hot or probability rows).

    Samples are reduced as they are drawn (`ku.sampling.MixtureNLL`,
    `ku.sampling.ClassificationScores`) by the compiled sampling of
    `ku.sample`, traced once and reused: memory stays that of one chunk of
    samples plus a few floats per validation row, whatever `num_samples`.

    Args:
        validation_data: `(x_val, y_val)` (a third entry, sample weights, is
            ignored with a warning), or a batched `tf.data.Dataset` or
            `keras.utils.PyDataset` of `(x, y)` or `(x, y, w)` batches,
            streamed each time the metrics are computed.
        num_samples: Samples per input (members contribute one each, or
            `num_samples` each when they are stochastic).
        every: Compute every `every` epochs (and not in between).
        task: `"regression"`, `"classification"` or `"auto"` (read from
            the compiled loss, else guessed with a warning; see above).
        seed: Optional seed, so every epoch draws the same masks.
        from_logits: Classification: whether the model outputs logits; None
            reads it from the loss (or guesses it from the last layer's
            activation, with a warning).

    Example:

    >>> model.fit(x, y, epochs=50, callbacks=[
    ...     keras.callbacks.CSVLogger("log.csv"),
    ...     ku.callbacks.UncertaintyMetrics((x_val, y_val), num_samples=20),
    ...     keras.callbacks.EarlyStopping(monitor="val_mc_nll", mode="min"),
    ... ])
    """

    def __init__(
        self,
        validation_data,
        num_samples=20,
        every=1,
        task="auto",
        seed=None,
        from_logits=None,
    ):
        super().__init__()
        self._streamed = isinstance(
            validation_data, (tf.data.Dataset, keras.utils.PyDataset)
        )
        if self._streamed:
            self.x_val, self.y_val = validation_data, None
        elif isinstance(validation_data, (tuple, list)) and len(validation_data) in (
            2,
            3,
        ):
            if len(validation_data) == 3:
                warnings.warn(
                    "UncertaintyMetrics ignores the sample weights in "
                    "`validation_data`: every validation row counts once.",
                    UserWarning,
                    stacklevel=2,
                )
            y_val = validation_data[1]
            if tf.is_tensor(y_val):
                y_val = keras.ops.convert_to_numpy(y_val)
            self.x_val, self.y_val = validation_data[0], np.asarray(y_val)
        else:
            raise ValueError(
                _ARG + "Expected a tuple (x_val, y_val), a tf.data.Dataset or a "
                "keras.utils.PyDataset of (x, y) batches. Received: "
                f"{type(validation_data).__name__}"
            )
        if task not in _TASKS:
            raise ValueError(
                "Invalid value received for argument `task`. Expected one of "
                f"{_TASKS}. Received: task={task!r}"
            )
        if from_logits not in (None, True, False):
            raise ValueError(
                "Invalid value received for argument `from_logits`. Expected "
                f"None, True or False. Received: from_logits={from_logits!r}"
            )
        if task == "regression" and from_logits:
            raise ValueError(
                "Invalid value received for argument `from_logits`. It applies "
                "to task='classification'. Received: task='regression' with "
                "from_logits=True"
            )
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.every = check_positive_int(every, "every")
        self.task = task
        self.seed = seed
        self.from_logits = from_logits
        self._resolved = None  # (task, from_logits, targets) once checked
        self._warned = False

    def on_train_begin(self, logs=None):
        # Checked before the first epoch: a wrong `validation_data` fails
        # now, not after an epoch of training.
        if self.model is not None:
            self._resolve()
        # TensorBoard, CSVLogger and EarlyStopping read `logs` in their own
        # `on_epoch_end`, so this callback runs first. Moving it to the front
        # of the running list during this loop calls no hook twice: the
        # callbacks before it have had theirs and stay before the next one.
        callback_list = _keras_compat.running_callback_list()
        if callback_list is None:
            warnings.warn(
                "UncertaintyMetrics cannot find the list of callbacks it runs "
                "in, so only the callbacks listed after it (not TensorBoard "
                "or CSVLogger listed before it) will see its val_mc_* "
                "values. List it first in `callbacks`.",
                UserWarning,
                stacklevel=2,
            )
            return
        callbacks = callback_list.callbacks
        if callbacks and callbacks[0] is not self:
            callbacks.remove(self)
            callbacks.insert(0, self)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        task, from_logits, targets = self._resolved or self._resolve()
        if task == "regression":
            logs.update(self._regression(targets))
        else:
            logs.update(self._classification(from_logits, targets))

    # The task and the checks ----------------------------------------------

    def _first_targets(self):
        """In-memory: `(rows of x, y)`; streamed: `(rows of the first
        batch's x, its y)`, or `(None, None)` when a batch has no targets."""
        if not self._streamed:
            try:
                rows = input_stream(self.model, self.x_val).num_rows
            except ValueError as error:
                if "argument `x`" not in str(error):
                    raise
                raise ValueError(
                    _ARG + "Expected x_val that the model takes. Received: "
                    f"an x_val it refuses ({error})"
                ) from None
            return rows, self.y_val
        if isinstance(self.x_val, tf.data.Dataset):
            batch = next(iter(self.x_val.take(1)), None)
        else:
            batch = self.x_val[0] if len(self.x_val) else None
        if batch is None:
            raise ValueError(
                _ARG + "Expected a dataset with at least one batch. "
                "Received: an empty dataset"
            )
        x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
        if y is None:
            raise ValueError(
                _ARG + "Expected a dataset of (x, y) or (x, y, w) batches: "
                "the metrics score the targets. Received: batches without y"
            )
        rows = int(np.shape(tree.flatten(x)[0])[0])
        return rows, np.asarray(keras.ops.convert_to_numpy(y))

    def _resolve(self):
        """Reads the task and `from_logits`, checks the validation targets
        against them and the model's output; returns `(task, from_logits,
        targets)` (targets None when streamed)."""
        rows, y = self._first_targets()
        what = "y_val" if not self._streamed else "the first batch's y"
        if y.ndim == 0 or y.shape[0] != rows:
            raise ValueError(
                _ARG + f"Expected {what} with one row per input row ({rows} "
                f"rows). Received: {what} of shape {y.shape}"
            )
        shape = _output_shape(self.model)
        loss_task, loss_logits = task_of_loss(self.model)
        task, from_logits, guessed = self.task, self.from_logits, []
        if task == "auto":
            task = loss_task or self._guess_task(y, shape)
            if loss_task is None:
                guessed.append(f"task={task!r}")
        if task == "classification" and from_logits is None:
            if loss_task == "classification":
                from_logits = loss_logits
            else:
                from_logits = bool(activation_says_logits(self.model))
                guessed.append(f"from_logits={from_logits}")
        if guessed and not self._warned:
            self._warned = True
            warnings.warn(
                "UncertaintyMetrics cannot read the task from the model's "
                f"loss and guessed {', '.join(guessed)} from the targets and "
                "the last layer. State it: UncertaintyMetrics(..., "
                "task='classification' or 'regression', from_logits=True or "
                "False).",
                UserWarning,
                stacklevel=3,
            )
        if task == "regression":
            targets = self._check_regression(y, shape, what)
        else:
            targets = self._check_classification(y, shape, what)
        self._resolved = (task, from_logits, None if self._streamed else targets)
        return self._resolved

    @staticmethod
    def _guess_task(y, shape):
        if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
            return "classification"
        width = None if shape is None else shape[-1]
        if (
            y.ndim == 2
            and width is not None
            and width > 1
            and y.shape[1] == width
            and _is_probability_rows(y)
        ):
            return "classification"
        return "regression"

    def _check_regression(self, y, shape, what):
        if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            raise ValueError(
                _ARG + f"Expected numeric regression targets. Received: {what} "
                f"of dtype {y.dtype}"
            )
        if shape is not None:
            width = shape[-1]
            # Output columns per target: 2 for (mean, log-variance), 4 for
            # a loss that says so (an evidential NIG head).
            per_target = getattr(
                getattr(self.model, "loss", None), "outputs_per_target", 1
            )
            if has_variance_head(self.model):
                per_target = 2
            if width is not None:
                width //= per_target
            expected = (*shape[1:-1], width)
            accepted = [expected]
            if width == 1:
                accepted.append(expected[:-1])
            if None not in expected and tuple(y.shape[1:]) not in accepted:
                shown = " or ".join(str(("N", *a)) for a in accepted[::-1])
                raise ValueError(
                    _ARG + f"Expected regression targets of shape {shown} for "
                    f"a model with {width} mean(s) per row. Received: {what} "
                    f"of shape {y.shape}"
                )
        return y.astype(np.float32)

    def _check_classification(self, y, shape, what):
        width = None if shape is None else shape[-1]
        if shape is not None and len(shape) != 2:
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                "classifier whose output is (N, C) for the classification "
                f"metrics. Received: output shape {shape}"
            )
        num_classes = None if width is None else max(width, 2)
        if y.ndim == 2 and y.shape[1] != 1:
            if width is not None and (width == 1 or y.shape[1] != width):
                raise ValueError(
                    _ARG + f"Expected classification targets of shape (N,) "
                    f"(integer labels in [0, {num_classes})) or (N, {width}) "
                    f"(one-hot or probability rows). Received: {what} of "
                    f"shape {y.shape}"
                )
            if not _is_probability_rows(y):
                raise ValueError(
                    _ARG + "Expected one-hot or probability rows (values in "
                    "[0, 1], each row summing to 1). Received: "
                    f"{what} with rows summing to "
                    f"{np.round(y.sum(-1)[:3], 4).tolist()}... and values from "
                    f"{y.min()} to {y.max()}"
                )
            return y.astype(np.float32)
        if y.ndim > 2:
            raise ValueError(
                _ARG + "Expected classification targets of shape (N,) or "
                f"(N, C). Received: {what} of shape {y.shape}"
            )
        labels = y.reshape(-1)
        integral = np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
        if not integral and np.issubdtype(labels.dtype, np.floating):
            integral = bool(np.all(labels == np.round(labels)))
        if not integral:
            raise ValueError(
                _ARG + "Expected integer class labels (N,). Received: "
                f"{what} of dtype {y.dtype} with non-integer values such as "
                f"{labels[labels != np.round(labels)][:3].tolist()}"
            )
        low, high = labels.min(initial=0), labels.max(initial=0)
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = "" if num_classes is None else f", {num_classes}"
            raise ValueError(
                _ARG + f"Expected class labels in [0{bound}) for a model "
                f"with {width} output unit(s). Received: {what} with labels "
                f"from {low} to {high}"
            )
        return labels.astype(np.int32)

    # The metrics ----------------------------------------------------------

    def _supplied_classification(self, x, read_targets, reducer):
        """Scores the prediction of the reducer the output declares (an
        evidential head's), with the `ku.metrics` formulas."""
        prediction = reduce_samples(
            self.model, x, reducer, self.num_samples, seed=self.seed, verbose=0
        )
        labels = np.asarray(read_targets())
        if labels.ndim == 2 and labels.shape[1] == prediction.probs.shape[1] > 1:
            labels = np.argmax(labels, axis=1)
        labels = labels.reshape(-1).astype(np.int64)
        probs = prediction.probs
        return {
            "val_mc_nll": metrics.classification_nll(labels, probs),
            "val_mc_accuracy": metrics.accuracy(labels, probs),
            "val_mc_ece": metrics.expected_calibration_error(
                labels, probs, num_bins=_NUM_BINS
            ),
            "val_mc_brier": metrics.brier_score(labels, probs),
            "val_mc_mutual_information": float(np.mean(prediction.mutual_information)),
        }

    def _inputs(self, targets):
        """The validation inputs, and a function that gives their targets
        once the inputs have been read."""
        if not self._streamed:
            return self.x_val, lambda: targets
        stream = input_stream(self.model, self.x_val, keep_targets=True)
        return stream, stream.targets

    def _regression(self, targets):
        # During `fit` the model is compiled: its output spec reads the
        # declaration (a head, the loss).
        spec = output_spec(self.model, "regression")
        variance_head = spec.variance_head
        x, read_targets = self._inputs(targets)
        if variance_head:
            # One streamed pass: the prediction and the mixture's NLL.
            score = reduce_samples(
                self.model,
                x,
                MixtureNLL(variance_head=True),
                self.num_samples,
                seed=self.seed,
                verbose=0,
                y=targets,
            )
            prediction = score.prediction
        else:
            prediction = reduce_samples(
                self.model, x, spec.reducer, self.num_samples, seed=self.seed, verbose=0
            )
        y = np.asarray(read_targets(), np.float64).reshape(prediction.mean.shape)
        if variance_head:
            scored, nll_key = score, "mixture_nll"
        else:
            # No variance head: the moment-matched Gaussian, with a floor so
            # that identical samples do not give std = 0.
            mean = prediction.mean
            std = np.maximum(prediction.std, 1e-6 * (1.0 + np.abs(mean)))
            scored = dataclasses.replace(prediction, std=std)
            nll_key = "gaussian_nll"
        report = metrics.regression_report(y, scored, levels=(0.95,))
        return {
            "val_mc_nll": report[nll_key],
            "val_mc_rmse": report["rmse"],
            "val_mc_coverage95": report["coverage_95"],
        }

    def _classification(self, from_logits, targets):
        x, read_targets = self._inputs(targets)
        # The output's declaration first (an evidential head's reducer); else
        # the samples are probabilities or logits, as resolved (`_resolve`).
        spec = output_spec(self.model, "classification")
        if spec.layout == "declared":
            return self._supplied_classification(x, read_targets, spec.reducer)
        score = reduce_samples(
            self.model,
            x,
            ClassificationScores(from_logits=from_logits, num_bins=_NUM_BINS),
            self.num_samples,
            seed=self.seed,
            verbose=0,
            y=targets,
        )
        return {
            "val_mc_nll": score.nll,
            "val_mc_accuracy": score.accuracy,
            "val_mc_ece": score.ece,
            "val_mc_brier": score.brier,
            "val_mc_mutual_information": score.mutual_information,
        }
