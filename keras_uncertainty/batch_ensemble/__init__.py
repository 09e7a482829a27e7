"""BatchEnsemble (Wen, Tran & Ba 2020): M members sharing their weights but
for rank-1 factors.

- `BatchEnsemble`: the model (`ku.BatchEnsemble`), trained on the batch
  tiled M times and predicted by `ku.predict_*` as an M-member mixture
  (`BatchEnsembleSampledModel`).

Its layers, `ku.layers.BatchEnsembleDense` and `BatchEnsembleConv2D`, stay
in `ku.layers` with the other layers.
"""

from keras_uncertainty.batch_ensemble.model import (
    BatchEnsemble,
    BatchEnsembleSampledModel,
)

__all__ = ["BatchEnsemble", "BatchEnsembleSampledModel"]
