"""Results of `ku.predict_regression` and `ku.predict_classification`."""

import dataclasses

import numpy as np

from keras_uncertainty.sampling.formulas import entropy


@dataclasses.dataclass(frozen=True)
class RegressionPrediction:
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
        epistemic_var = np.asarray(m2_mu, np.float64) / num_samples
        aleatoric_var = np.asarray(mean_var, np.float64)
        return cls(
            mean=np.asarray(mean_mu, np.float64),
            std=np.sqrt(aleatoric_var + epistemic_var),
            aleatoric_std=np.sqrt(aleatoric_var),
            epistemic_std=np.sqrt(epistemic_var),
        )


@dataclasses.dataclass(frozen=True)
class ClassificationPrediction:
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
        probs = np.asarray(sum_probs, np.float64) / num_samples
        total = entropy(probs)
        expected = np.asarray(sum_entropy, np.float64) / num_samples
        return cls(
            probs=probs,
            label=np.argmax(probs, axis=-1),
            entropy=total,
            expected_entropy=expected,
            mutual_information=np.maximum(total - expected, 0.0),
            votes=None if votes is None else np.asarray(votes, np.int64),
        )
