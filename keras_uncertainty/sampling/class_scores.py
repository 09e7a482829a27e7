"""Streamed scores of a classifier's Monte Carlo mixture against its labels.

`ClassificationScores` is a `Reducer` with targets: each compiled call keeps,
per input, the log of the summed class probabilities of its samples
(`logsumexp_t log p_t`, from a log-softmax for logits, so a true class whose
probability underflows float32 still gets a finite log-likelihood) and the
summed entropies of the samples; chunks of samples merge by `logaddexp` and
addition, so memory stays bounded by the `(N, C)` float32 state whatever T
is. `finalize` turns that into a `ClassificationScore`: sums over the rows
(log-likelihood, correct predictions, Brier terms, mutual information) and
per-bin counts, confidence sums and correct counts for the ECE, so the scores
of disjoint sets of rows merge exactly (`ClassificationScore.merge`).
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from keras_uncertainty.sampling import formulas
from keras_uncertainty.sampling.reducers import Reducer

# The floor of `ku.metrics.classification_nll`: probabilities are floored at
# the smallest normal float64 before the log.
_LOG_FLOOR = math.log(np.finfo(np.float64).tiny)


def log_class_probabilities(samples, from_logits):
    """In-graph log-probabilities `(t, n, C)` of `(t, n, C)` samples.

    Logits go through a log-softmax; one sigmoid unit (`C = 1`) becomes two
    classes, `(log(1 - p), log p)` (`log_sigmoid(-z), log_sigmoid(z)` for a
    logit z). Zero probabilities give `-inf`.
    """
    samples = formulas.float32_samples(samples, from_logits)
    if samples.shape[-1] == 1:
        if from_logits:
            return tf.concat(
                [tf.math.log_sigmoid(-samples), tf.math.log_sigmoid(samples)], -1
            )
        return tf.math.log(tf.concat([1.0 - samples, samples], -1))
    if from_logits:
        return tf.nn.log_softmax(samples, axis=-1)
    return tf.math.log(samples)


@dataclasses.dataclass(frozen=True)
class ClassificationScore:
    """Scores of a classifier's predictive mixture `p = mean_t p_t` on N rows.

    Kept as sums, so the scores of disjoint sets of rows merge exactly
    (`merge`). With labels `y` (one-hot or probability rows `q`: the
    cross-entropy `-sum_c q_c log p_c`, and the most probable class of `q` as
    the label):

    - `nll = -mean_i log p_i[y_i]` (nats; `p` floored at the smallest normal
      float64 before the log, as `ku.metrics.classification_nll` does);
    - `accuracy`: the fraction of rows whose `argmax p` is the label;
    - `ece = sum_b |correct_b - confidence_b| / N` over `num_bins`
      equal-width bins `(lo, hi]` of the confidence `max_c p_c`, as
      `ku.metrics.expected_calibration_error`;
    - `brier = mean_i sum_c (p_ic - q_ic)^2`;
    - `mutual_information = mean_i (H[p_i] - mean_t H[p_ti])` (BALD,
      clipped at 0 per row).

    Attributes:
        count: N, the number of rows.
        nll_sum: `sum_i -log p_i[y_i]`.
        correct_sum: The number of correct rows.
        brier_sum: The summed Brier terms.
        mutual_information_sum: The summed mutual information.
        bin_counts: `(num_bins,)` rows per confidence bin.
        bin_confidence: `(num_bins,)` summed confidence per bin.
        bin_correct: `(num_bins,)` correct rows per bin.

    Example:

    >>> score = ku.sampling.reduce_samples(
    ...     model, x, ku.sampling.ClassificationScores(), 50, y=labels)
    >>> score.nll, score.accuracy, score.ece, score.mutual_information
    """

    count: int
    nll_sum: float
    correct_sum: float
    brier_sum: float
    mutual_information_sum: float
    bin_counts: np.ndarray
    bin_confidence: np.ndarray
    bin_correct: np.ndarray

    @property
    def nll(self):
        """Mean negative log-likelihood of the mixture, nats per row."""
        return self.nll_sum / self.count

    @property
    def accuracy(self):
        """Fraction of rows whose most probable class is the label."""
        return self.correct_sum / self.count

    @property
    def ece(self):
        """Expected calibration error over the fixed bins."""
        gaps = np.abs(self.bin_correct - self.bin_confidence)
        return float(np.sum(gaps) / self.count)

    @property
    def brier(self):
        """Mean Brier score, in [0, 2]."""
        return self.brier_sum / self.count

    @property
    def mutual_information(self):
        """Mean mutual information (epistemic uncertainty), nats."""
        return self.mutual_information_sum / self.count

    def merge(self, other):
        """The score of the rows of `self` and of `other` together (exact).

        Args:
            other: A `ClassificationScore` of other rows, with as many bins.

        Returns:
            A `ClassificationScore`.
        """
        if len(other.bin_counts) != len(self.bin_counts):
            raise ValueError(
                "Invalid value received for argument `other`. Expected a "
                f"score with {len(self.bin_counts)} bins. Received: "
                f"{len(other.bin_counts)} bins"
            )
        return ClassificationScore(
            *(
                getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self)
            )
        )


class ClassificationScores(Reducer):
    """Streamed NLL, accuracy, ECE, Brier and mutual information of a classifier.

    Scores the uniform mixture of the samples, `p = (1/T) sum_t p_t`, against
    the targets: `log p[y] = logsumexp_t log p_t[y] - log T`, with
    `log p_t` a log-softmax of the logits when `from_logits`, so the
    log-likelihood is exact in log space. Per chunk of samples it keeps
    `logsumexp_t log p_t` `(n, C)` and `sum_t H[p_t]` `(n,)`; chunks merge by
    `logaddexp` and addition, so memory is bounded whatever T is. Needs the
    targets (`y=` of `reduce_samples`, or a dataset of `(x, y)` batches):
    integer labels `(N,)` or `(N, 1)` in `[0, C)`, or one-hot / probability
    rows `(N, C)`. A single sigmoid unit (`C = 1`) is a two-class classifier
    with 0/1 labels.

    It is the streamed counterpart of `ku.metrics.classification_report`:
    for integer labels its `nll`, `accuracy`, `ece`, `brier` and
    `mutual_information` are the report's `nll`, `accuracy`, `ece`,
    `brier` and `mean_mutual_information` of the samples' mixture (up to
    float rounding; the NLL here stays in log space, so a true class whose
    probability underflows float32 keeps its exact value). It keeps its own
    sums because they merge over chunks of rows (`ClassificationScore.merge`)
    and score one-hot / probability rows as a cross-entropy, which the
    report's integer labels cannot.

    Args:
        from_logits: Whether the model outputs logits.
        num_bins: The number of equal-width confidence bins of the ECE.

    Returns (from `finalize`):
        A `ClassificationScore`.

    Example:

    >>> score = ku.sampling.reduce_samples(
    ...     model, x_val, ku.sampling.ClassificationScores(from_logits=True),
    ...     100, y=labels)
    >>> score.nll, score.ece
    """

    needs_targets = True

    def __init__(self, from_logits=False, num_bins=15):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(
                "Invalid value received for argument `from_logits`. Expected "
                f"True or False. Received: from_logits={from_logits!r}"
            )
        if (
            isinstance(num_bins, bool)
            or not isinstance(num_bins, (int, np.integer))
            or num_bins < 1
        ):
            raise ValueError(
                "Invalid value received for argument `num_bins`. Expected a "
                f"positive integer. Received: num_bins={num_bins!r}"
            )
        self.from_logits = bool(from_logits)
        self.num_bins = int(num_bins)

    def reduce(self, samples, targets):
        log_probs = log_class_probabilities(samples, self.from_logits)
        num_classes = log_probs.shape[-1]
        log_sum = tf.reduce_logsumexp(log_probs, axis=0)
        # p log p with 0 log 0 = 0 (log p = -inf where p = 0).
        plogp = tf.math.multiply_no_nan(log_probs, tf.exp(log_probs))
        sum_entropy = -tf.reduce_sum(plogp, axis=[0, 2])
        targets = tf.convert_to_tensor(targets)
        if targets.shape.rank == 2 and targets.shape[-1] == num_classes != 1:
            targets = tf.cast(targets, tf.float32)  # one-hot / probability rows
        else:
            targets = tf.cast(tf.reshape(targets, [-1]), tf.int32)
        return log_sum, sum_entropy, targets

    def merge(self, a, count_a, b, count_b):
        return (
            np.logaddexp(a[0], b[0]),
            a[1].astype(np.float64) + b[1],
            a[2],  # the same rows' targets
        )

    def finalize(self, state, num_samples):
        log_sum, sum_entropy, targets = state
        log_mean = log_sum.astype(np.float64) - math.log(num_samples)
        probs = np.exp(log_mean)
        rows = np.arange(len(probs))
        if targets.ndim == 1:
            labels = targets.astype(np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[-1]):
                raise ValueError(
                    "Invalid value received for argument `y`. Expected integer "
                    f"labels in [0, {probs.shape[-1]}). Received: labels from "
                    f"{labels.min()} to {labels.max()}"
                )
            log_likelihood = log_mean[rows, labels]
            brier = np.sum(np.square(probs), -1) - 2.0 * probs[rows, labels] + 1.0
        else:
            labels = np.argmax(targets, axis=-1)
            terms = np.where(targets > 0, np.maximum(log_mean, _LOG_FLOOR), 0.0)
            log_likelihood = np.sum(targets * terms, axis=-1)
            brier = np.sum(np.square(probs - targets), axis=-1)
        log_likelihood = np.maximum(log_likelihood, _LOG_FLOOR)
        confidence = probs.max(axis=-1)
        correct = np.argmax(probs, axis=-1) == labels
        edges = np.linspace(0.0, 1.0, self.num_bins + 1)
        bins = np.clip(
            np.searchsorted(edges, confidence, side="left") - 1, 0, self.num_bins - 1
        )
        entropy = -np.sum(np.where(probs > 0, probs * log_mean, 0.0), axis=-1)
        mutual_information = np.maximum(entropy - sum_entropy / num_samples, 0.0)
        return ClassificationScore(
            count=len(probs),
            nll_sum=float(-np.sum(log_likelihood)),
            correct_sum=float(np.sum(correct)),
            brier_sum=float(np.sum(brier)),
            mutual_information_sum=float(np.sum(mutual_information)),
            bin_counts=np.bincount(bins, minlength=self.num_bins),
            bin_confidence=np.bincount(
                bins, weights=confidence, minlength=self.num_bins
            ),
            bin_correct=np.bincount(bins, weights=correct, minlength=self.num_bins),
        )

    def summary(self, state, num_samples):
        raise NotImplementedError(
            "ClassificationScores scores targets: it is not exported."
        )
