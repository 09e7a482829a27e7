"""Post-hoc calibration on `ku.posthoc.PostHocMethod`, scikit-learn style: `fit` on
held-out predictions, `transform` new ones."""

from keras_uncertainty.calibration.scaling import TemperatureScaling, VarianceScaling

__all__ = ["TemperatureScaling", "VarianceScaling"]
