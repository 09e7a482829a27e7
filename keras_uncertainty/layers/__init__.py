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
from keras_uncertainty.layers.mc_layer import MCLayer
from keras_uncertainty.layers.packed import (
    PackedConv1D,
    PackedConv2D,
    PackedDense,
    PackedDropout,
    PackedFlatten,
    PackedL2,
    PackedNormalization,
    PackedPooling,
)

__all__ = [
    "MCDropout",
    "MCGaussianDropout",
    "MCLayer",
    "MCSpatialDropout1D",
    "MCSpatialDropout2D",
    "MCSpatialDropout3D",
    "PackedConv1D",
    "PackedConv2D",
    "PackedDense",
    "PackedDropout",
    "PackedFlatten",
    "PackedL2",
    "PackedNormalization",
    "PackedPooling",
    "to_mc_dropout",
]
