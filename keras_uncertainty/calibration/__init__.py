"""Post-hoc calibration, scikit-learn style: `fit` on validation data, `transform`."""

from keras_uncertainty.calibration.scaling import TemperatureScaling, VarianceScaling

__all__ = ["TemperatureScaling", "VarianceScaling"]
