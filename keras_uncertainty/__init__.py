"""keras_uncertainty: predictive uncertainty for Keras 3 models.

MC dropout layers, the Gaussian NLL loss, and compiled Monte Carlo prediction
that splits predictive uncertainty into aleatoric and epistemic parts.
"""

from keras_uncertainty import (
    calibration,
    callbacks,
    datasets,
    layers,
    losses,
    metrics,
    models,
    plots,
)
from keras_uncertainty.ensemble import Ensemble
from keras_uncertainty.sampling import (
    ClassificationPrediction,
    RegressionPrediction,
    has_variance_head,
    predict_classification,
    predict_regression,
    sample,
)

__version__ = "0.1.0"

__all__ = [
    "ClassificationPrediction",
    "Ensemble",
    "RegressionPrediction",
    "calibration",
    "callbacks",
    "datasets",
    "has_variance_head",
    "layers",
    "losses",
    "metrics",
    "models",
    "plots",
    "predict_classification",
    "predict_regression",
    "sample",
]
