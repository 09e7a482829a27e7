"""Monte Carlo validation metrics written into Keras `logs`."""

import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_uncertainty import _keras_compat, metrics
from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.sampling import (
    MixtureNLL,
    has_variance_head,
    input_stream,
    reduce_samples,
    task_reducer,
)

_TASKS = ("auto", "regression", "classification")


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
      central 95% interval);
    - classification: `val_mc_nll`, `val_mc_accuracy`, `val_mc_ece`
      (15 bins), `val_mc_brier`.

    It uses the compiled sampling of `ku.sample`, traced once and reused.

    Args:
        validation_data: `(x_val, y_val)` (a third entry, sample weights, is
            ignored with a warning), or a batched `tf.data.Dataset` or
            `keras.utils.PyDataset` of `(x, y)` or `(x, y, w)` batches,
            streamed each time the metrics are computed.
        num_samples: Samples per input (members contribute one each, or
            `num_samples` each when they are stochastic).
        every: Compute every `every` epochs (and not in between).
        task: `"regression"`, `"classification"` or `"auto"`: regression if
            the model is compiled with `ku.losses.gaussian_nll`/`GaussianNLL`
            or `y_val` is floating point, else classification.
        seed: Optional seed, so every epoch draws the same masks.

    Example:

    >>> model.fit(x, y, epochs=50, callbacks=[
    ...     keras.callbacks.CSVLogger("log.csv"),
    ...     ku.callbacks.UncertaintyMetrics((x_val, y_val), num_samples=20),
    ...     keras.callbacks.EarlyStopping(monitor="val_mc_nll", mode="min"),
    ... ])
    """

    def __init__(
        self, validation_data, num_samples=20, every=1, task="auto", seed=None
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
            self.x_val, self.y_val = validation_data[0], np.asarray(validation_data[1])
        else:
            raise ValueError(
                "Invalid value received for argument `validation_data`. "
                "Expected a tuple (x_val, y_val), a tf.data.Dataset or a "
                "keras.utils.PyDataset of (x, y) batches. Received: "
                f"{type(validation_data).__name__}"
            )
        if task not in _TASKS:
            raise ValueError(
                "Invalid value received for argument `task`. Expected one of "
                f"{_TASKS}. Received: task={task!r}"
            )
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.every = check_positive_int(every, "every")
        self.task = task
        self.seed = seed

    def on_train_begin(self, logs=None):
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
        if self._resolved_task() == "regression":
            logs.update(self._regression())
        else:
            logs.update(self._classification())

    def _target_dtype(self):
        if not self._streamed:
            return self.y_val.dtype
        if isinstance(self.x_val, tf.data.Dataset):
            spec = self.x_val.element_spec
            if isinstance(spec, tuple) and len(spec) >= 2:
                return spec[1].dtype.as_numpy_dtype
            return None
        element = keras.utils.unpack_x_y_sample_weight(self.x_val[0])
        return None if element[1] is None else np.asarray(element[1]).dtype

    def _resolved_task(self):
        if self.task != "auto":
            return self.task
        if has_variance_head(self.model):
            return "regression"
        dtype = self._target_dtype()
        if dtype is not None and np.issubdtype(dtype, np.floating):
            return "regression"
        return "classification"

    def _inputs(self):
        """The validation inputs, and a function that gives their targets
        once the inputs have been read."""
        if not self._streamed:
            return self.x_val, lambda: self.y_val
        stream = input_stream(self.model, self.x_val, keep_targets=True)
        return stream, stream.targets

    def _regression(self):
        # During `fit` the model is compiled, so its loss decides.
        variance_head = bool(has_variance_head(self.model))
        x, targets = self._inputs()
        if variance_head:
            # One streamed pass: the prediction and the mixture's NLL.
            score = reduce_samples(
                self.model,
                x,
                MixtureNLL(variance_head=True),
                self.num_samples,
                seed=self.seed,
                verbose=0,
                y=None if self._streamed else self.y_val,
            )
            prediction = score.prediction
        else:
            reducer = task_reducer(self.model, "regression", variance_head=False)
            prediction = reduce_samples(
                self.model, x, reducer, self.num_samples, seed=self.seed, verbose=0
            )
        mean, std = prediction.mean, prediction.std
        y = np.asarray(targets(), np.float64).reshape(mean.shape)
        if variance_head:
            nll = score.nll
        else:
            # No variance head: the moment-matched Gaussian, with a floor so
            # that identical samples do not give std = 0.
            std = np.maximum(std, 1e-6 * (1.0 + np.abs(mean)))
            nll = metrics.gaussian_nll(y, mean, std)
        coverage, _ = metrics.interval_coverage(y, mean, std, level=0.95)
        return {
            "val_mc_nll": nll,
            "val_mc_rmse": metrics.rmse(y, mean),
            "val_mc_coverage95": coverage,
        }

    def _classification(self):
        x, targets = self._inputs()
        reducer = task_reducer(self.model, "classification")
        prediction = reduce_samples(
            self.model, x, reducer, self.num_samples, seed=self.seed, verbose=0
        )
        labels = targets().reshape(-1).astype(np.int64)
        probs = prediction.probs / prediction.probs.sum(-1, keepdims=True)
        return {
            "val_mc_nll": metrics.classification_nll(labels, probs),
            "val_mc_accuracy": metrics.accuracy(labels, probs),
            "val_mc_ece": metrics.expected_calibration_error(labels, probs),
            "val_mc_brier": metrics.brier_score(labels, probs),
        }
