"""Deep Ensembles (Lakshminarayanan et al. 2017): independently initialized
members trained together and predicted as a uniform mixture.

- `Ensemble`: the model (`ku.Ensemble`), with optional bootstrap,
  adversarial training and packed (one-network) training, predicted by
  `ku.predict_*` through `EnsembleSampledModel`.
- `TerminateOnNonFiniteMember`: the callback that stops training when a
  member diverges.
- `fast_gradient_sign_losses`: the paper's adversarial training term.

The other ensemble-like methods have their own packages: `ku.batch_ensemble`
(`ku.BatchEnsemble`) and `ku.mimo` (`ku.MIMO`).
"""

from keras_uncertainty import _deprecation
from keras_uncertainty.ensemble.adversarial import fast_gradient_sign_losses
from keras_uncertainty.ensemble.callbacks import TerminateOnNonFiniteMember
from keras_uncertainty.ensemble.model import Ensemble
from keras_uncertainty.ensemble.sampled import EnsembleSampledModel

__all__ = [
    "Ensemble",
    "EnsembleSampledModel",
    "TerminateOnNonFiniteMember",
    "fast_gradient_sign_losses",
]

# Moved in 0.3 (see the CHANGELOG): kept here one release, with a warning.
__getattr__ = _deprecation.moved_names(
    __name__,
    {
        "MIMO": "keras_uncertainty.mimo",
        "MIMOSampledModel": "keras_uncertainty.mimo",
        "build_mimo_network": "keras_uncertainty.mimo",
    },
)
