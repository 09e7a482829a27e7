"""Moved in 0.3 to `keras_uncertainty.mimo`: the 0.2 module path, kept
one release; each name warns when used."""

from keras_uncertainty import _deprecation

__getattr__ = _deprecation.moved_names(
    __name__,
    {
        "MIMO": "keras_uncertainty.mimo",
        "MIMOSampledModel": "keras_uncertainty.mimo",
        "build_mimo_network": "keras_uncertainty.mimo",
    },
)
