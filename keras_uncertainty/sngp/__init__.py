"""SNGP (Liu et al. 2020): distance-aware uncertainty in one forward pass.

- `SNGPModel`: a Functional model whose output is a
  `ku.layers.RandomFeatureGaussianProcess` (hidden layers wrapped in
  `ku.layers.SNGPSpectralNormalization`), predicted by `ku.predict_*` and
  served by `ku.export` in one deterministic pass (`SNGPSampledModel`).
- `SNGPCovarianceReset`: the callback that keeps the GP covariance to the
  last epoch, as the paper does.

The two layers stay in `ku.layers`, with the other Keras layers: they are
building blocks a user places in a network, the way `keras.layers` are.

Example:

>>> inputs = keras.Input((2,))
>>> h = ku.layers.SNGPSpectralNormalization(keras.layers.Dense(64, "relu"))(inputs)
>>> outputs = ku.layers.RandomFeatureGaussianProcess(3, num_inducing=256)(h)
>>> model = ku.sngp.SNGPModel(inputs, outputs)
>>> model.compile("adam", "sparse_categorical_crossentropy")
>>> model.fit(x, y, epochs=5, callbacks=[ku.sngp.SNGPCovarianceReset()])
>>> prediction = ku.predict_classification(model, x_test)
"""

from keras_uncertainty.sngp.callbacks import SNGPCovarianceReset
from keras_uncertainty.sngp.model import (
    SNGPModel,
    SNGPSampledModel,
    gaussian_process_layers,
)

__all__ = [
    "SNGPCovarianceReset",
    "SNGPModel",
    "SNGPSampledModel",
    "gaussian_process_layers",
]
