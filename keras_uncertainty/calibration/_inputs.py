"""What every classification calibrator reads: a `ClassificationPrediction`,
or an array of logits or probabilities with an explicit `from_logits`; and
the `ClassificationPrediction` each returns."""

import dataclasses

import numpy as np

from keras_uncertainty._validation import as_array, check_probs, classification_inputs
from keras_uncertainty.sampling.formulas import entropy, log_softmax
from keras_uncertainty.sampling.predictions import ClassificationPrediction

TINY = np.finfo(np.float64).tiny


@dataclasses.dataclass(frozen=True)
class Scores:
    """One classifier output, read: probabilities, logits, and its source."""

    probs: np.ndarray  # (N, C)
    logits: np.ndarray  # (N, C): given logits, or log(probs)
    prediction: object  # the ClassificationPrediction, or None for an array


def log_probs(probs):
    """`log(probs)`, 0 clipped to the smallest float (a class with
    probability 0 stays all but impossible): logits up to a constant per
    row, which softmax ignores."""
    return np.log(np.maximum(probs, TINY))


def read_scores(prediction, from_logits):
    """Reads a `ClassificationPrediction` (with `from_logits=None`) or an
    array with `from_logits` True or False: `(N, C)`, or `(N,)` / `(N, 1)`
    scores of the positive class of a binary task, read as the two columns
    `(1 - p, p)` (logits `(0, z)`)."""
    if isinstance(prediction, ClassificationPrediction):
        if from_logits is not None:
            raise ValueError(
                "Invalid value received for argument `from_logits`. Expected "
                "None with a ClassificationPrediction, which holds "
                f"probabilities. Received: from_logits={from_logits!r}"
            )
        probs = check_probs(prediction.probs, "probs")
        return Scores(probs, log_probs(probs), prediction)
    if dataclasses.is_dataclass(prediction):
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            "ClassificationPrediction or an array. Received: "
            f"{type(prediction).__name__}"
        )
    if not isinstance(from_logits, bool):
        raise ValueError(
            "Invalid value received for argument `from_logits`. Expected True "
            "(the array holds logits) or False (it holds probabilities) with "
            f"an array. Received: from_logits={from_logits!r}"
        )
    name = "logits" if from_logits else "probs"
    values = as_array(prediction, name)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 1:  # a binary task: the positive class's score
        if from_logits:
            logits = np.stack([np.zeros_like(values), values], axis=1)
            return Scores(np.exp(log_softmax(logits)), logits, None)
        if np.any(values < 0) or np.any(values > 1):
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected "
                "probabilities of the positive class in [0, 1]. Received: "
                f"values from {values.min():.4g} to {values.max():.4g}"
            )
        probs = np.stack([1.0 - values, values], axis=1)
        return Scores(probs, log_probs(probs), None)
    if values.ndim != 2:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected shape "
            f"(N, C), or (N,) or (N, 1) for a binary task. Received: shape "
            f"{values.shape}"
        )
    if from_logits:
        return Scores(np.exp(log_softmax(values)), values, None)
    probs = check_probs(values, name)
    return Scores(probs, log_probs(probs), None)


def read_labels(labels, scores):
    """`(N,)` integer labels in `[0, C)` for the read `scores`."""
    labels, _ = classification_inputs(labels, scores.probs)
    return labels


def result(scores, probs):
    """The new `ClassificationPrediction` of recalibrated `probs`: `label`
    and `entropy` recomputed; from a prediction, its `expected_entropy`,
    `mutual_information` and `votes` kept; from an array, one sample
    (`ClassificationPrediction.from_probs`)."""
    if scores.prediction is None:
        return ClassificationPrediction.from_probs(probs)
    return dataclasses.replace(
        scores.prediction,
        probs=probs,
        label=np.argmax(probs, axis=-1),
        entropy=entropy(probs),
    )
