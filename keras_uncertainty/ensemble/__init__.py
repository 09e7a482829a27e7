"""Deep Ensembles: members trained together, predicted as a uniform mixture."""

from keras_uncertainty.callbacks.non_finite import TerminateOnNonFiniteMember
from keras_uncertainty.ensemble.adversarial import fast_gradient_sign_losses
from keras_uncertainty.ensemble.mimo import MIMO, MIMOSampledModel, build_mimo_network
from keras_uncertainty.ensemble.model import Ensemble

__all__ = [
    "Ensemble",
    "MIMO",
    "MIMOSampledModel",
    "TerminateOnNonFiniteMember",
    "build_mimo_network",
    "fast_gradient_sign_losses",
]
