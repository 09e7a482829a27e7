"""Keras callbacks that judge the uncertainty during training."""

from keras_uncertainty.callbacks.non_finite import TerminateOnNonFiniteMember
from keras_uncertainty.callbacks.sngp import SNGPCovarianceReset
from keras_uncertainty.callbacks.uncertainty_metrics import UncertaintyMetrics

__all__ = [
    "SNGPCovarianceReset",
    "TerminateOnNonFiniteMember",
    "UncertaintyMetrics",
]
