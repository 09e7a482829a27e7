"""Layers that keep Monte Carlo sampling on at inference, and packed layers
that hold many member networks' weights on a leading member axis."""

from keras_uncertainty.layers.batch_ensemble import (
    BatchEnsembleConv2D,
    BatchEnsembleDense,
)
from keras_uncertainty.layers.conversion import ConversionReport, to_mc_dropout
from keras_uncertainty.layers.grouped_conv import (
    grouped_convolution_formulation,
    set_grouped_convolution_formulation,
)
from keras_uncertainty.layers.mc_attention import MCMultiHeadAttention
from keras_uncertainty.layers.mc_dropout import (
    MCDropout,
    MCGaussianDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
)
from keras_uncertainty.layers.mc_layer import MCLayer
from keras_uncertainty.layers.mc_recurrent import (
    MCGRU,
    MCLSTM,
    MCConvLSTM1D,
    MCConvLSTM2D,
    MCConvLSTM3D,
    MCGRUCell,
    MCLSTMCell,
    MCSimpleRNN,
    MCSimpleRNNCell,
)
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
from keras_uncertainty.layers.sngp import (
    RandomFeatureGaussianProcess,
    SNGPModel,
    SNGPSpectralNormalization,
)
from keras_uncertainty.layers.variational import (
    Conv1DFlipout,
    Conv2DFlipout,
    DenseFlipout,
    DenseReparameterization,
    set_kl_weight,
)

__all__ = [
    "BatchEnsembleConv2D",
    "BatchEnsembleDense",
    "Conv1DFlipout",
    "Conv2DFlipout",
    "ConversionReport",
    "DenseFlipout",
    "DenseReparameterization",
    "MCConvLSTM1D",
    "MCConvLSTM2D",
    "MCConvLSTM3D",
    "MCGRU",
    "MCGRUCell",
    "MCLSTM",
    "MCLSTMCell",
    "MCMultiHeadAttention",
    "MCSimpleRNN",
    "MCSimpleRNNCell",
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
    "RandomFeatureGaussianProcess",
    "SNGPModel",
    "SNGPSpectralNormalization",
    "grouped_convolution_formulation",
    "set_grouped_convolution_formulation",
    "set_kl_weight",
    "to_mc_dropout",
]
