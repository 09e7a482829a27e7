"""Keras layers, and only layers: the ones that keep Monte Carlo sampling on
at inference (MC dropout, Flipout and reparameterization layers), packed and
BatchEnsemble layers that hold many members' weights on a member axis, and
the SNGP layers.

A method's model, its sampling adapter and its callbacks live in the
method's own package (`ku.sngp`, `ku.batch_ensemble`, `ku.mimo`,
`ku.ensemble`, ...); its layers stay here, next to each other, because they
are building blocks a user composes into any network, as `keras.layers`.
"""

from keras_uncertainty import _deprecation
from keras_uncertainty.layers.batch_ensemble import (
    BatchEnsembleConv2D,
    BatchEnsembleDense,
)
from keras_uncertainty.layers.conversion import ConversionReport, to_mc_dropout
from keras_uncertainty.layers.gaussian_head import (
    BatchEnsembleGaussianHead,
    GaussianHead,
    PackedGaussianHead,
)
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
    "BatchEnsembleGaussianHead",
    "Conv1DFlipout",
    "Conv2DFlipout",
    "ConversionReport",
    "DenseFlipout",
    "DenseReparameterization",
    "GaussianHead",
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
    "PackedGaussianHead",
    "PackedL2",
    "PackedNormalization",
    "PackedPooling",
    "RandomFeatureGaussianProcess",
    "SNGPSpectralNormalization",
    "grouped_convolution_formulation",
    "set_grouped_convolution_formulation",
    "set_kl_weight",
    "to_mc_dropout",
]

# Moved in 0.3 (see the CHANGELOG): kept here one release, with a warning.
__getattr__ = _deprecation.moved_names(
    __name__, {"SNGPModel": "keras_uncertainty.sngp"}
)
