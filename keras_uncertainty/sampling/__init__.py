"""Compiled Monte Carlo sampling and the combination of samples."""

from keras_uncertainty.sampling.graph import is_stochastic
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    RegressionPrediction,
)
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    RawSamples,
    Reducer,
    RegressionMoments,
)
from keras_uncertainty.sampling.sampler import (
    has_variance_head,
    predict_classification,
    predict_regression,
    reduce_samples,
    sample,
)

__all__ = [
    "ClassificationPrediction",
    "ClassificationSummary",
    "RawSamples",
    "Reducer",
    "RegressionMoments",
    "RegressionPrediction",
    "has_variance_head",
    "is_stochastic",
    "predict_classification",
    "predict_regression",
    "reduce_samples",
    "sample",
]
