"""Out-of-distribution scores read off a classifier's output.

Convention: every score is one float64 per input, and **higher means more
likely out-of-distribution** (OOD). A confidence (the top probability, the
top logit) is negated to follow it; an uncertainty (entropy, mutual
information, variation ratio, energy) is returned as it is. Feed the scores
of in-distribution and OOD inputs to `ku.metrics.ood_report`.

Each function takes numpy arrays, lists or Keras/TF tensors (converted to
float64 numpy), and those that read probabilities also take a
`ku.ClassificationPrediction`.
"""

import numpy as np

from keras_uncertainty._validation import (
    check_distributions,
    check_positive_finite,
    check_probs,
    shaped_array,
)
from keras_uncertainty.sampling import formulas
from keras_uncertainty.sampling.predictions import ClassificationPrediction

# Rows of probabilities must sum to 1 within this (float32 softmax output).
_SUM_TOLERANCE = 1e-3


def _probs(value, name="probs"):
    if isinstance(value, ClassificationPrediction):
        value = value.probs
    return check_probs(value, name, _SUM_TOLERANCE)


def msp(probs):
    """Negated maximum softmax probability (Hendrycks & Gimpel 2017).

    `score = -max_c p_c`, in `[-1, -1/C]`: the baseline detector, negated so
    that higher means more likely OOD (a confident input scores near -1).

    Args:
        probs: `(N, C)` predictive probabilities (rows summing to 1), or a
            `ku.ClassificationPrediction` (its `probs`, the mean over the
            Monte Carlo samples).

    Returns:
        `(N,)` float64 scores.
    """
    return -np.max(_probs(probs), axis=-1)


def max_logit(logits):
    """Negated maximum logit (Hendrycks et al. 2022, "MaxLogit").

    `score = -max_c z_c`: like `msp`, but on the logits, which keep the
    scale that the softmax normalises away.

    Args:
        logits: `(N, C)` logits (pre-softmax outputs).

    Returns:
        `(N,)` float64 scores.
    """
    return -np.max(shaped_array(logits, "logits"), axis=-1)


def energy(logits, temperature=1.0):
    """The free energy of the logits (Liu et al. 2020).

    `score = E(x) = -T log sum_c exp(z_c / T)`; in-distribution inputs have
    lower energy. Computed as `-T (m + log sum_c exp(z_c / T - m))` with
    `m = max_c z_c / T`, so logits of any size give a finite score (for
    large logits the score tends to `-max_c z_c`, the `max_logit` score).

    Args:
        logits: `(N, C)` logits (pre-softmax outputs).
        temperature: Finite number > 0, `T` (1 in the paper).

    Returns:
        `(N,)` float64 scores.
    """
    temperature = check_positive_finite(temperature, "temperature")
    scaled = shaped_array(logits, "logits") / temperature
    return -temperature * formulas.logsumexp(scaled, axis=-1)


def entropy(probs):
    """Predictive entropy, the total uncertainty.

    `score = H[p] = -sum_c p_c log p_c` (nats, `0 log 0 = 0`), in
    `[0, log C]`. For a `ku.ClassificationPrediction`, `p` is the mean over
    the Monte Carlo samples and the score is its `entropy` field.

    Args:
        probs: `(N, C)` predictive probabilities (rows summing to 1), or a
            `ku.ClassificationPrediction`.

    Returns:
        `(N,)` float64 scores.
    """
    if isinstance(probs, ClassificationPrediction):
        return np.asarray(probs.entropy, np.float64)
    return formulas.entropy(_probs(probs))


def mutual_information(samples):
    """Mutual information between the prediction and the model (BALD).

    `score = H[mean_t p_t] - mean_t H[p_t]` (nats), the epistemic part of
    the entropy over T Monte Carlo samples (dropout masks or ensemble
    members); `>= 0` by Jensen's inequality (float rounding below 0 is
    clipped to 0) and 0 for a deterministic model (T = 1).

    Args:
        samples: A `ku.ClassificationPrediction` (its `mutual_information`
            field), or the `(T, N, C)` sampled probabilities (each row
            summing to 1), as `ku.sample` returns them.

    Returns:
        `(N,)` float64 scores.
    """
    if isinstance(samples, ClassificationPrediction):
        return np.asarray(samples.mutual_information, np.float64)
    array = check_distributions(
        shaped_array(samples, "samples", "(T, N, C)"), "samples", _SUM_TOLERANCE
    )
    return formulas.entropy_split_of_samples(array)[2]


def variation_ratio(votes):
    """Variation ratio: the fraction of samples that disagree with the mode.

    `score = 1 - max_c votes_c / T`, where `votes_c` counts the Monte Carlo
    samples whose argmax is class c and `T = sum_c votes_c` (per row); in
    `[0, 1 - 1/C]`, 0 when every sample agrees.

    Args:
        votes: A `ku.ClassificationPrediction` made with
            `ku.predict_classification(..., votes=True)` (its `votes`), or
            `(N, C)` non-negative whole-number vote counts, each row with at
            least one vote.

    Returns:
        `(N,)` float64 scores.
    """
    if isinstance(votes, ClassificationPrediction):
        if votes.votes is None:
            raise ValueError(
                "Invalid value received for argument `votes`. Expected a "
                "ClassificationPrediction with votes, made by "
                "`ku.predict_classification(..., votes=True)`. Received: a "
                "prediction with votes=None"
            )
        votes = votes.votes
    counts = shaped_array(votes, "votes")
    totals = counts.sum(-1)
    if np.any(counts < 0) or np.any(counts != np.round(counts)) or np.any(totals < 1):
        raise ValueError(
            "Invalid value received for argument `votes`. Expected "
            "non-negative whole-number counts with at least one vote per row. "
            f"Received: entries from {counts.min():.4g} to {counts.max():.4g} "
            f"and row totals from {totals.min():.4g} to {totals.max():.4g}"
        )
    return 1.0 - counts.max(-1) / totals


def scores_from_prediction(prediction, logits=None, temperature=1.0):
    """Every OOD score that a prediction (and optionally its logits) supports.

    Args:
        prediction: A `ku.ClassificationPrediction`.
        logits: None, or the `(N, C)` logits of the same inputs (from a
            deterministic pass, or averaged over samples); they add the
            `max_logit` and `energy` scores.
        temperature: The `energy` temperature (used only with `logits`).

    Returns:
        A dict from score name to `(N,)` float64 scores, higher = more likely
        OOD: `"msp"`, `"entropy"`, `"mutual_information"`, then
        `"variation_ratio"` when the prediction has votes, then `"max_logit"`
        and `"energy"` when `logits` is given.

    Example:

    >>> prediction = ku.predict_classification(model, x, votes=True)
    >>> scores = ku.ood.scores_from_prediction(prediction)
    >>> sorted(scores)
    ['entropy', 'msp', 'mutual_information', 'variation_ratio']
    """
    if not isinstance(prediction, ClassificationPrediction):
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            f"ClassificationPrediction. Received: {type(prediction).__name__}"
        )
    scores = {
        "msp": msp(prediction),
        "entropy": entropy(prediction),
        "mutual_information": mutual_information(prediction),
    }
    if prediction.votes is not None:
        scores["variation_ratio"] = variation_ratio(prediction)
    if logits is not None:
        logits_array = shaped_array(logits, "logits")
        if logits_array.shape != np.shape(prediction.probs):
            raise ValueError(
                "Expected `logits` to have the shape of `prediction.probs`. "
                f"Received: logits with shape {logits_array.shape} and probs "
                f"with shape {np.shape(prediction.probs)}"
            )
        scores["max_logit"] = max_logit(logits_array)
        scores["energy"] = energy(logits_array, temperature)
    return scores
