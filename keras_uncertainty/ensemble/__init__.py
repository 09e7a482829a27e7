"""Deep Ensembles: members trained together, predicted as a uniform mixture."""

from keras_uncertainty.ensemble.model import Ensemble

__all__ = ["Ensemble"]
