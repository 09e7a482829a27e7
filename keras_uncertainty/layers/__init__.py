"""Layers that keep Monte Carlo sampling on at inference, and packed layers
that hold many member networks' weights on a leading member axis."""

from keras_uncertainty.layers.conversion import to_mc_dropout
from keras_uncertainty.layers.mc_dropout import (
    MCDropout,
    MCGaussianDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
)
from keras_uncertainty.layers.packed import PackedDense, PackedDropout, PackedL2

__all__ = [
    "MCDropout",
    "MCGaussianDropout",
    "MCSpatialDropout1D",
    "MCSpatialDropout2D",
    "MCSpatialDropout3D",
    "PackedDense",
    "PackedDropout",
    "PackedL2",
    "to_mc_dropout",
]
