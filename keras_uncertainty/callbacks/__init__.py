"""Keras callbacks that serve every method: `UncertaintyMetrics` judges the
uncertainty of any model `ku.predict_*` predicts, during training.

A method's own callbacks live with the method: `ku.sngp.SNGPCovarianceReset`,
`ku.ensemble.TerminateOnNonFiniteMember`, `ku.swag.SWAGCallback`,
`ku.evidential.KLAnnealing`.
"""

from keras_uncertainty import _deprecation
from keras_uncertainty.callbacks.uncertainty_metrics import UncertaintyMetrics

__all__ = ["UncertaintyMetrics"]

# Moved in 0.3 (see the CHANGELOG): kept here one release, with a warning.
__getattr__ = _deprecation.moved_names(
    __name__,
    {
        "SNGPCovarianceReset": "keras_uncertainty.sngp",
        "TerminateOnNonFiniteMember": "keras_uncertainty.ensemble",
    },
)
