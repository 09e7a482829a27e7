"""Compiled Monte Carlo sampling and the combination of samples."""

from keras_uncertainty.sampling.graph import is_stochastic
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    RegressionPrediction,
)
from keras_uncertainty.sampling.sampler import (
    predict_classification,
    predict_regression,
    sample,
)

__all__ = [
    "ClassificationPrediction",
    "RegressionPrediction",
    "is_stochastic",
    "predict_classification",
    "predict_regression",
    "sample",
]
