"""Keras callbacks that judge the uncertainty during training."""

from keras_uncertainty.callbacks.uncertainty_metrics import UncertaintyMetrics
from keras_uncertainty.ensemble.callbacks import TerminateOnNonFiniteMember

__all__ = ["TerminateOnNonFiniteMember", "UncertaintyMetrics"]
