"""Moved in 0.3 to `keras_uncertainty.batch_ensemble`: the 0.2 module path, kept
one release; each name warns when used."""

from keras_uncertainty import _deprecation

__getattr__ = _deprecation.moved_names(
    __name__,
    {
        "BatchEnsemble": "keras_uncertainty.batch_ensemble",
        "BatchEnsembleSampledModel": "keras_uncertainty.batch_ensemble",
    },
)
