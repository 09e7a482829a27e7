"""MIMO (Havasi et al. 2021): M subnetworks inside one network, one pass.

- `MIMO`: the model (`ku.MIMO`), trained on M independently shuffled
  inputs and predicted by `ku.predict_*` as an M-member mixture from one
  forward pass of the repeated input (`MIMOSampledModel`).
- `build_mimo_network`: the M-input, M-head network from a backbone.
"""

from keras_uncertainty.mimo.model import MIMO, MIMOSampledModel, build_mimo_network

__all__ = ["MIMO", "MIMOSampledModel", "build_mimo_network"]
