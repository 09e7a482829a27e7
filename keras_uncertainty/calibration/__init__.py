"""Post-hoc calibration on `ku.posthoc.PostHocMethod`, scikit-learn style: `fit` on
held-out predictions, `transform` new ones.

- One parameter: `TemperatureScaling` (classification), `VarianceScaling`
  (regression).
- Classification, binary or multiclass, from a `ClassificationPrediction`,
  logits or probabilities: `VectorScaling` (a scale and a bias per class),
  `HistogramBinning` and `IsotonicCalibration` (one-vs-rest). Each
  `transform` returns a new `ClassificationPrediction`.
- Regression: `QuantileRecalibration`, the isotonic recalibration of the
  predictive CDF (Kuleshov et al. 2018); `transform` returns a
  `RecalibratedRegression`, read through its `cdf`, `quantile` and
  `interval`.
"""

from keras_uncertainty.calibration.classification import (
    HistogramBinning,
    IsotonicCalibration,
    VectorScaling,
)
from keras_uncertainty.calibration.regression import (
    QuantileRecalibration,
    RecalibratedRegression,
)
from keras_uncertainty.calibration.scaling import TemperatureScaling, VarianceScaling

__all__ = [
    "TemperatureScaling",
    "VarianceScaling",
    "VectorScaling",
    "HistogramBinning",
    "IsotonicCalibration",
    "QuantileRecalibration",
    "RecalibratedRegression",
]
