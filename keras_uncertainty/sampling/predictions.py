"""Results of `ku.predict_regression` and `ku.predict_classification`."""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_uncertainty._validation import as_array, check_probs
from keras_uncertainty.sampling.formulas import (
    entropy,
    entropy_split,
    entropy_split_graph,
    log_softmax,
)


def _math(value):
    """numpy for numpy arrays, TensorFlow otherwise: the summaries below are
    computed in numpy by `ku.predict_*` and in-graph by `ku.export`."""
    return np if isinstance(value, np.ndarray) else tf.math


def regression_summary(mean_mu, m2_mu, mean_var, num_samples):
    """The fields of a `RegressionPrediction` from merged moments.

    Args:
        mean_mu, m2_mu, mean_var: `formulas.regression_moments` output,
            merged over all T samples (numpy arrays or tensors).
        num_samples: T.

    Returns:
        A dict with `mean`, `std`, `aleatoric_std` and `epistemic_std`.
    """
    math = _math(mean_var)
    epistemic_var = m2_mu / num_samples
    return {
        "mean": mean_mu,
        "std": math.sqrt(mean_var + epistemic_var),
        "aleatoric_std": math.sqrt(mean_var),
        "epistemic_std": math.sqrt(epistemic_var),
    }


def classification_summary(sum_probs, sum_entropy, num_samples):
    """The fields of a `ClassificationPrediction` from summed samples.

    Args:
        sum_probs, sum_entropy: `formulas.classification_moments` output,
            summed over all T samples (numpy arrays or tensors).
        num_samples: T.

    Returns:
        A dict with `probs`, `entropy`, `expected_entropy` and
        `mutual_information` (`formulas.entropy_split` of numpy arrays,
        `formulas.entropy_split_graph` of tensors).
    """
    probs = sum_probs / num_samples
    split = entropy_split if isinstance(probs, np.ndarray) else entropy_split_graph
    total, expected, mutual_information = split(probs, sum_entropy / num_samples)
    return {
        "probs": probs,
        "entropy": total,
        "expected_entropy": expected,
        "mutual_information": mutual_information,
    }


class _Rows:
    """Row selection of a prediction: `prediction[rows]` is the same kind of
    prediction with every per-input array indexed by `rows` (an int, a
    slice, an index array or a boolean mask over the N inputs)."""

    def __len__(self):
        return len(getattr(self, dataclasses.fields(self)[0].name))

    def __getitem__(self, rows):
        if isinstance(rows, (int, np.integer)):
            rows = [rows]  # keep the input axis
        selected = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, _Rows):
                value = value[rows]
            elif isinstance(value, np.ndarray):
                value = value[rows]
            selected[field.name] = value
        return type(self)(**selected)


@dataclasses.dataclass(frozen=True)
class RegressionPrediction(_Rows):
    """Predictive distribution of a regression model from T samples.

    With T samples (dropout masks or ensemble members) of means `mu_t` and
    variances `sigma_t^2 = exp(log_var_t)`, for each input and target:

    - `mean = mean_t mu_t`, the prediction;
    - `aleatoric_std^2 = mean_t sigma_t^2`, the noise the model sees in the
      data (0 for a model without a variance head);
    - `epistemic_std^2 = var_t mu_t = mean_t (mu_t - mean)^2`, the model's
      disagreement with itself;
    - `std^2 = mean_t(sigma_t^2 + mu_t^2) - mean^2
      = aleatoric_std^2 + epistemic_std^2`, the total predictive variance of
      the uniform mixture of the T Gaussians.

    Attributes:
        mean: `(N, k)` float64.
        std: `(N, k)` float64.
        aleatoric_std: `(N, k)` float64.
        epistemic_std: `(N, k)` float64.
    """

    mean: np.ndarray
    std: np.ndarray
    aleatoric_std: np.ndarray
    epistemic_std: np.ndarray

    @classmethod
    def from_moments(cls, mean_mu, m2_mu, mean_var, num_samples):
        """Builds the prediction from `formulas.regression_moments` output."""
        moments = (np.asarray(v, np.float64) for v in (mean_mu, m2_mu, mean_var))
        return cls(**regression_summary(*moments, num_samples))


@dataclasses.dataclass(frozen=True)
class ClassificationPrediction(_Rows):
    """Predictive distribution of a classifier from T samples.

    With T probability vectors `p_t` (dropout masks or ensemble members):

    - `probs = mean_t p_t`, the predictive distribution, and `label` its
      argmax;
    - `entropy = H[probs] = -sum_c probs_c log probs_c`, the total
      uncertainty (nats);
    - `expected_entropy = mean_t H[p_t]`, the aleatoric part;
    - `mutual_information = H[probs] - mean_t H[p_t]`, the epistemic part
      (BALD); it is >= 0 by Jensen's inequality, and float rounding below 0 is
      clipped to 0;
    - `votes[:, c]`: how many of the T samples put their argmax on class c
      (only when asked for with `votes=True`; else None).

    `prediction[rows]` selects inputs (an int, a slice, indices or a boolean
    mask), `len(prediction)` is N.

    Attributes:
        probs: `(N, C)` float64.
        label: `(N,)` int64.
        entropy: `(N,)` float64.
        expected_entropy: `(N,)` float64.
        mutual_information: `(N,)` float64.
        votes: `(N, C)` int64, each row sums to T; None unless requested.
    """

    probs: np.ndarray
    label: np.ndarray
    entropy: np.ndarray
    expected_entropy: np.ndarray
    mutual_information: np.ndarray
    votes: np.ndarray

    @classmethod
    def from_moments(cls, sum_probs, sum_entropy, votes, num_samples):
        """Builds the prediction from summed `classification_moments` output."""
        sums = (np.asarray(v, np.float64) for v in (sum_probs, sum_entropy))
        fields = classification_summary(*sums, num_samples)
        return cls(
            **fields,
            label=np.argmax(fields["probs"], axis=-1),
            votes=None if votes is None else np.asarray(votes, np.int64),
        )

    @classmethod
    def from_probs(cls, probs, tolerance=1e-3):
        """The prediction of one probability vector per input (a
        deterministic classifier's softmax, or probabilities averaged
        elsewhere), read as one sample.

        `probs` is kept as given (float64); `label = argmax_c probs_c`
        (lowest index on ties); `entropy = expected_entropy =
        -sum_c probs_c log probs_c` (nats, `0 log 0 = 0`);
        `mutual_information = 0` (one sample cannot disagree with itself);
        `votes` is None.

        Args:
            probs: `(N, C)` probabilities: finite, non-negative, each row
                summing to 1 within `tolerance`.
            tolerance: The largest accepted `|sum_c probs_c - 1|` per row.

        Returns:
            A `ClassificationPrediction`.

        Raises:
            ValueError: `probs` is not 2-D, not finite, has a negative
                entry or a row whose sum is off 1 by more than `tolerance`
                (the message names `probs`, what was expected and what was
                received).

        Example:

        >>> pred = ku.ClassificationPrediction.from_probs(model.predict(x))
        >>> ku.conformal.ConformalClassifier(0.1).fit(pred, labels)
        """
        probs = check_probs(probs, "probs", tolerance)
        return cls._one_sample(probs)

    @classmethod
    def from_logits(cls, logits):
        """The prediction of one logit vector per input, read as one sample:
        `probs = softmax(logits) = exp(log_softmax(logits))` (computed
        stably, `formulas.log_softmax`), then the fields of `from_probs`.

        Args:
            logits: `(N, C)` finite logits.

        Returns:
            A `ClassificationPrediction` (see `from_probs` for each field).

        Raises:
            ValueError: `logits` is not 2-D or not finite (the message names
                `logits`, what was expected and what was received).

        Example:

        >>> pred = ku.ClassificationPrediction.from_logits(logit_model.predict(x))
        """
        logits = as_array(logits, "logits")
        if logits.ndim != 2:
            raise ValueError(
                "Invalid value received for argument `logits`. Expected shape "
                f"(N, C). Received: shape {logits.shape}"
            )
        return cls._one_sample(np.exp(log_softmax(logits)))

    @classmethod
    def _one_sample(cls, probs):
        total = entropy(probs)
        return cls(
            probs=probs,
            label=np.argmax(probs, axis=-1),
            entropy=total,
            expected_entropy=total.copy(),
            mutual_information=np.zeros_like(total),
            votes=None,
        )


@dataclasses.dataclass(frozen=True)
class MixtureScore(_Rows):
    """A regression prediction and its test log-likelihood, per input.

    `log_likelihood = log((1/T) sum_t N(y | mu_t, sigma_t^2))`, the test
    log-likelihood of the uniform mixture of the T samples' Gaussians (the
    MC dropout and Deep Ensembles papers' figure), in the units of `y`.

    Attributes:
        prediction: The `RegressionPrediction` of the same samples.
        log_likelihood: `(N, k)` float64.
    """

    prediction: RegressionPrediction
    log_likelihood: np.ndarray

    @property
    def nll(self):
        """Mean negative log-likelihood per point and target (nats)."""
        return float(-np.mean(self.log_likelihood))
