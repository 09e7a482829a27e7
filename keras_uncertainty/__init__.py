"""keras_uncertainty: predictive uncertainty for Keras 3 models.

MC dropout layers, the Gaussian NLL loss, and compiled Monte Carlo prediction
that splits predictive uncertainty into aleatoric and epistemic parts.
"""

import keras

if keras.backend.backend() != "tensorflow":
    # Sampling, packed ensembles and export are built on TensorFlow ops;
    # failing here beats an unrelated error from deep inside a later call.
    raise ImportError(
        "keras_uncertainty needs Keras's TensorFlow backend. Received: the "
        f"'{keras.backend.backend()}' backend. Set the environment variable "
        'KERAS_BACKEND=tensorflow before Python starts (or "backend": '
        '"tensorflow" in ~/.keras/keras.json).'
    )

from keras_uncertainty import (  # noqa: E402
    calibration,
    callbacks,
    datasets,
    layers,
    losses,
    metrics,
    models,
    plots,
)
from keras_uncertainty.ensemble import Ensemble  # noqa: E402
from keras_uncertainty.sampling import (  # noqa: E402
    ClassificationPrediction,
    RegressionPrediction,
    has_variance_head,
    predict_classification,
    predict_regression,
    sample,
)
from keras_uncertainty.serving import export  # noqa: E402

__version__ = "0.2.0"

__all__ = [
    "ClassificationPrediction",
    "Ensemble",
    "RegressionPrediction",
    "calibration",
    "callbacks",
    "datasets",
    "export",
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
