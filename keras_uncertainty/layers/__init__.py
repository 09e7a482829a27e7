"""Layers that keep Monte Carlo sampling on at inference."""

from keras_uncertainty.layers.conversion import to_mc_dropout
from keras_uncertainty.layers.mc_dropout import (
    MCDropout,
    MCGaussianDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
)

__all__ = [
    "MCDropout",
    "MCGaussianDropout",
    "MCSpatialDropout1D",
    "MCSpatialDropout2D",
    "MCSpatialDropout3D",
    "to_mc_dropout",
]
