"""keras_uncertainty: predictive uncertainty for Keras 3 models.

MC dropout layers, the Gaussian NLL loss, and compiled Monte Carlo prediction
that splits predictive uncertainty into aleatoric and epistemic parts.

Importing the package loads neither Keras nor TensorFlow: each public name
is imported on first use (PEP 562), so `keras-uncertainty` checks its
arguments in a fraction of a second. The first part that loads Keras checks
that Keras runs on TensorFlow (see `keras_uncertainty._backend`). Once Keras
is imported (before or after this package), the package's Keras classes are
registered, so `keras.models.load_model` loads the models it saves (see
`keras_uncertainty._registration`).
"""

import importlib
import typing

from keras_uncertainty import _backend, _registration

__version__ = "0.2.0"

# Public name -> the module that defines it; a name equal to its module's
# last part is the submodule itself.
_LAZY = {
    "batch_ensemble": "keras_uncertainty.batch_ensemble",
    "calibration": "keras_uncertainty.calibration",
    "callbacks": "keras_uncertainty.callbacks",
    "conformal": "keras_uncertainty.conformal",
    "datasets": "keras_uncertainty.datasets",
    "evidential": "keras_uncertainty.evidential",
    "laplace": "keras_uncertainty.laplace",
    "layers": "keras_uncertainty.layers",
    "losses": "keras_uncertainty.losses",
    "metrics": "keras_uncertainty.metrics",
    "mimo": "keras_uncertainty.mimo",
    "models": "keras_uncertainty.models",
    "ood": "keras_uncertainty.ood",
    "plots": "keras_uncertainty.plots",
    "posthoc": "keras_uncertainty.posthoc",
    "sampling": "keras_uncertainty.sampling",
    "serving": "keras_uncertainty.serving",
    "sngp": "keras_uncertainty.sngp",
    "swag": "keras_uncertainty.swag",
    "testing": "keras_uncertainty.testing",
    "BatchEnsemble": "keras_uncertainty.batch_ensemble",
    "Ensemble": "keras_uncertainty.ensemble",
    "MIMO": "keras_uncertainty.mimo",
    "ClassificationPrediction": "keras_uncertainty.sampling",
    "RegressionPrediction": "keras_uncertainty.sampling",
    "has_variance_head": "keras_uncertainty.sampling",
    "predict": "keras_uncertainty.sampling",
    "predict_classification": "keras_uncertainty.sampling",
    "predict_regression": "keras_uncertainty.sampling",
    "sample": "keras_uncertainty.sampling",
    "export": "keras_uncertainty.serving",
}

__all__ = [
    "BatchEnsemble",
    "ClassificationPrediction",
    "Ensemble",
    "MIMO",
    "RegressionPrediction",
    "batch_ensemble",
    "calibration",
    "callbacks",
    "conformal",
    "datasets",
    "evidential",
    "export",
    "has_variance_head",
    "laplace",
    "layers",
    "losses",
    "metrics",
    "mimo",
    "models",
    "ood",
    "plots",
    "posthoc",
    "predict",
    "predict_classification",
    "predict_regression",
    "sample",
    "sngp",
    "swag",
    "testing",
]

if typing.TYPE_CHECKING:  # what IDEs and type checkers see
    from keras_uncertainty import (
        batch_ensemble,
        calibration,
        callbacks,
        conformal,
        datasets,
        evidential,
        laplace,
        layers,
        losses,
        metrics,
        mimo,
        models,
        ood,
        plots,
        posthoc,
        sngp,
        swag,
        testing,
    )
    from keras_uncertainty import sampling as sampling
    from keras_uncertainty import serving as serving
    from keras_uncertainty.batch_ensemble import BatchEnsemble
    from keras_uncertainty.ensemble import Ensemble
    from keras_uncertainty.mimo import MIMO
    from keras_uncertainty.sampling import (
        ClassificationPrediction,
        RegressionPrediction,
        has_variance_head,
        predict,
        predict_classification,
        predict_regression,
        sample,
    )
    from keras_uncertainty.serving import export

# Any import of a part that loads Keras checks the backend first.
_backend.install()


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _backend.check()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        # A name listed ahead of its module (hasattr() answers False).
        raise AttributeError(
            f"module {__name__!r} has no attribute {name!r} ({module_name} is "
            "not installed)"
        ) from None
    is_the_module = module_name.rpartition(".")[2] == name
    value = module if is_the_module else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# Last, as it may import the package's parts now (Keras already imported):
# the package's Keras classes are registered once Keras is imported.
_registration.install()
