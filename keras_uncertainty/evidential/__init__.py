"""Evidential networks: uncertainty from one forward pass of a prior's head.

- Deep evidential regression (Amini et al. 2020): `NormalInverseGammaHead`,
  `EvidentialRegressionLoss`.
- Evidential classification (Sensoy et al. 2018): `DirichletHead`,
  `EvidentialClassificationLoss` with the `KLAnnealing` callback.

The heads (and the losses) declare their output, so `ku.predict_regression`
/ `ku.predict_classification`, `ku.export` and `UncertaintyMetrics` read it
with the reducers below, in one compiled pass, and return the usual
`ku.RegressionPrediction` / `ku.ClassificationPrediction` fields
(`ku.evidential.predict_*`, the 0.2 functions, are deprecated). Known
criticisms: the evidential "epistemic" quantities are not proper epistemic
uncertainty (Meinert, Gawlikowski & Lavin 2023; Bengs, Huellermeier &
Waegeman 2022); read them as heuristic scores.
"""

from keras_uncertainty.evidential.classification import (
    DirichletHead,
    EvidentialClassificationLoss,
    EvidentialClassificationPrediction,
    EvidentialClassificationSummary,
    KLAnnealing,
    dirichlet_digamma_loss,
    dirichlet_expected_entropy,
    dirichlet_kl_uniform,
    dirichlet_log_loss,
    dirichlet_mse,
    predict_classification,
)
from keras_uncertainty.evidential.regression import (
    EvidentialRegressionLoss,
    EvidentialRegressionSummary,
    NormalInverseGammaHead,
    nig_nll,
    nig_regularizer,
    nig_variances,
    predict_regression,
    split_nig,
)

__all__ = [
    "DirichletHead",
    "EvidentialClassificationLoss",
    "EvidentialClassificationPrediction",
    "EvidentialClassificationSummary",
    "EvidentialRegressionLoss",
    "EvidentialRegressionSummary",
    "KLAnnealing",
    "NormalInverseGammaHead",
    "dirichlet_digamma_loss",
    "dirichlet_expected_entropy",
    "dirichlet_kl_uniform",
    "dirichlet_log_loss",
    "dirichlet_mse",
    "nig_nll",
    "nig_regularizer",
    "nig_variances",
    "predict_classification",
    "predict_regression",
    "split_nig",
]
