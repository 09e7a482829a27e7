"""What a sampling call computes: a reduction per chunk, a merge, a result.

Sampling runs in chunks (of inputs, and of samples for the same inputs) so
that memory stays bounded. A `Reducer` says what to do with the samples of
one chunk and how chunks combine:

- `reduce(samples)`, inside the compiled call: `(t, n, ...)` samples (t
  samples of n inputs, member-major for an ensemble) -> a tuple of tensors;
- `merge(a, count_a, b, count_b)`, in numpy: combines the reductions of two
  chunks of samples of the same inputs, exactly;
- `finalize(state, num_samples)`: the merged reduction of every input
  (chunks of inputs concatenated on axis `row_axis` of each entry, 0 unless
  the reducer says otherwise) -> the result;
- `summary(state, num_samples)` (optional): the result as a dict of
  tensors, computed in-graph, for `ku.export`.

`key` names the compiled graph: two reducers with the same key share it.
To add a summary, subclass `Reducer` and pass it to `ku.sampling.run`.
"""

import numpy as np

from keras_uncertainty.sampling import formulas
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    RegressionPrediction,
    classification_summary,
    regression_summary,
)


class Reducer:
    """Base class; see the module docstring for the three steps."""

    row_axis = 0

    @property
    def key(self):
        return (type(self).__name__,)

    def reduce(self, samples):
        raise NotImplementedError

    def merge(self, a, count_a, b, count_b):
        raise NotImplementedError

    def finalize(self, state, num_samples):
        raise NotImplementedError

    def summary(self, state, num_samples):
        raise NotImplementedError(
            f"{type(self).__name__} has no in-graph summary to export."
        )


class RawSamples(Reducer):
    """The samples themselves, `(members * T, N, ...)`, member-major.

    Args:
        num_members: M; chunks of samples are merged per member, so that a
            member's samples stay together.
    """

    row_axis = 1  # samples first, then inputs

    def __init__(self, num_members=1):
        self.num_members = num_members

    def reduce(self, samples):
        return (samples,)

    def merge(self, a, count_a, b, count_b):
        def by_member(values):
            return values.reshape((self.num_members, -1) + values.shape[1:])

        merged = np.concatenate([by_member(a[0]), by_member(b[0])], axis=1)
        return (merged.reshape((-1,) + merged.shape[2:]),)

    def finalize(self, state, num_samples):
        return state[0]


class RegressionMoments(Reducer):
    """Mean, spread and mean variance of regression samples.

    Per chunk, `formulas.regression_moments` (two-pass); chunks merge by
    Chan et al.'s pairwise update of the mean and the sum of squared
    deviations. Finalizes to a `RegressionPrediction`.

    Args:
        variance_head: Whether the outputs are `(means, log-variances)`.
    """

    def __init__(self, variance_head):
        self.variance_head = bool(variance_head)

    @property
    def key(self):
        return (type(self).__name__, self.variance_head)

    def reduce(self, samples):
        return formulas.regression_moments(samples, self.variance_head)

    def merge(self, a, count_a, b, count_b):
        (mean_a, m2_a, var_a), (mean_b, m2_b, var_b) = a, b
        total = count_a + count_b
        delta = mean_b.astype(np.float64) - mean_a
        return (
            mean_a + delta * count_b / total,
            m2_a + m2_b + delta**2 * count_a * count_b / total,
            (var_a * count_a + var_b.astype(np.float64) * count_b) / total,
        )

    def finalize(self, state, num_samples):
        mean_mu, m2_mu, mean_var = state
        return RegressionPrediction.from_moments(
            mean_mu.astype(np.float64), m2_mu, mean_var, num_samples
        )

    def summary(self, state, num_samples):
        return regression_summary(*state, num_samples)


class ClassificationSummary(Reducer):
    """Summed probabilities and entropies (and votes, when asked for).

    Finalizes to a `ClassificationPrediction`.

    Args:
        from_logits: Whether the outputs are logits.
        votes: Whether to count the argmax votes of the samples (costs an
            argmax and a count per sample).
    """

    def __init__(self, from_logits=False, votes=False):
        self.from_logits = bool(from_logits)
        self.votes = bool(votes)

    @property
    def key(self):
        return (type(self).__name__, self.from_logits, self.votes)

    def reduce(self, samples):
        return formulas.classification_moments(samples, self.from_logits, self.votes)

    def merge(self, a, count_a, b, count_b):
        return tuple(x.astype(np.float64) + y for x, y in zip(a, b))

    def finalize(self, state, num_samples):
        sum_probs, sum_entropy, *votes = state
        return ClassificationPrediction.from_moments(
            sum_probs,
            sum_entropy,
            votes[0] if votes else None,
            num_samples=num_samples,
        )

    def summary(self, state, num_samples):
        sum_probs, sum_entropy, *votes = state
        fields = classification_summary(sum_probs, sum_entropy, num_samples)
        if votes:
            fields["votes"] = votes[0]
        return fields
