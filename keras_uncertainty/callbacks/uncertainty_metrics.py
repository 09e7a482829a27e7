"""Monte Carlo validation metrics written into Keras `logs`."""

import keras
import numpy as np

from keras_uncertainty import metrics
from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.sampling import sampler
from keras_uncertainty.sampling.predictions import RegressionPrediction

_TASKS = ("auto", "regression", "classification")


class UncertaintyMetrics(keras.callbacks.Callback):
    """Draws MC (or ensemble) samples on validation data after an epoch.

    The figures go into `logs`, so the History, `EarlyStopping(monitor=...)`,
    `ModelCheckpoint` and TensorBoard see them (put this callback before
    those in the `callbacks` list). Keys:

    - regression: `val_mc_nll` (the mixture NLL of the samples, or the
      Gaussian NLL of the predictive mean and std for a model without a
      variance head), `val_mc_rmse`, `val_mc_coverage95` (coverage of the
      central 95% interval);
    - classification: `val_mc_nll`, `val_mc_accuracy`, `val_mc_ece`
      (15 bins), `val_mc_brier`.

    It uses the compiled sampling of `ku.sample`, traced once and reused.

    Args:
        validation_data: `(x_val, y_val)`.
        num_samples: Samples per input (members contribute one each, or
            `num_samples` each when they are stochastic).
        every: Compute every `every` epochs (and not in between).
        task: `"regression"`, `"classification"` or `"auto"`: regression if
            the model is compiled with `ku.losses.gaussian_nll`/`GaussianNLL`
            or `y_val` is floating point, else classification.
        seed: Optional seed, so every epoch draws the same masks.

    Example:

    >>> model.fit(x, y, epochs=50, callbacks=[
    ...     ku.callbacks.UncertaintyMetrics((x_val, y_val), num_samples=20),
    ...     keras.callbacks.EarlyStopping(monitor="val_mc_nll", mode="min"),
    ... ])
    """

    def __init__(
        self, validation_data, num_samples=20, every=1, task="auto", seed=None
    ):
        super().__init__()
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(
                "Invalid value received for argument `validation_data`. "
                "Expected a tuple (x_val, y_val). Received: "
                f"{type(validation_data).__name__}"
            )
        if task not in _TASKS:
            raise ValueError(
                "Invalid value received for argument `task`. Expected one of "
                f"{_TASKS}. Received: task={task!r}"
            )
        self.x_val, y_val = validation_data
        self.y_val = np.asarray(y_val)
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.every = check_positive_int(every, "every")
        self.task = task
        self.seed = seed

    def _resolved_task(self):
        if self.task != "auto":
            return self.task
        if sampler.has_variance_head(self.model):
            return "regression"
        if np.issubdtype(self.y_val.dtype, np.floating):
            return "regression"
        return "classification"

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        if self._resolved_task() == "regression":
            logs.update(self._regression())
        else:
            logs.update(self._classification())

    def _regression(self):
        # During `fit` the model is compiled, so its loss decides.
        variance_head = bool(sampler.has_variance_head(self.model))
        samples = sampler.sample(
            self.model, self.x_val, self.num_samples, seed=self.seed
        ).astype(np.float64)
        y = self.y_val.reshape(samples.shape[1], -1)
        if variance_head:
            k = samples.shape[-1] // 2
            means, variances = samples[..., :k], np.exp(samples[..., k:])
        else:
            means, variances = samples, np.zeros_like(samples)
        prediction = RegressionPrediction.from_moments(
            means.mean(0),
            np.sum(np.square(means - means.mean(0)), axis=0),
            variances.mean(0),
            len(samples),
        )
        mean, std = prediction.mean, prediction.std
        if variance_head:
            nll = metrics.mixture_nll(y, means, np.sqrt(variances))
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
        prediction = sampler.predict_classification(
            self.model, self.x_val, self.num_samples, seed=self.seed
        )
        labels = self.y_val.reshape(-1).astype(np.int64)
        probs = prediction.probs / prediction.probs.sum(-1, keepdims=True)
        return {
            "val_mc_nll": metrics.classification_nll(labels, probs),
            "val_mc_accuracy": metrics.accuracy(labels, probs),
            "val_mc_ece": metrics.expected_calibration_error(labels, probs),
            "val_mc_brier": metrics.brier_score(labels, probs),
        }
