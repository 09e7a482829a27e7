"""The Laplace approximation: a Gaussian posterior around trained weights.

`Laplace` fits, post hoc on a trained Keras network and its training data,
a Gaussian posterior over the last layer's weights (the model's last
`Dense` layer, found through trailing weightless softmax, activation and
reshape layers; or, for small models, all of them) with a KFAC, full or
diagonal generalized Gauss-Newton Hessian, and fits the prior precision
(and the observation noise of a regression) by the marginal likelihood.
Its `predict` gives the linearized (GLM) predictive in closed form
(regression) or by the probit approximation (classification); `as_model()`
gives a `LaplaceModel` that `ku.predict_*`, `ku.sample` and `ku.export`
sample by drawing the last layer's weights.
"""

from keras_uncertainty.laplace.laplace import Laplace
from keras_uncertainty.laplace.model import (
    LaplaceModel,
    LaplaceSampledModel,
    LastLayerPosterior,
)

__all__ = ["Laplace", "LaplaceModel", "LaplaceSampledModel", "LastLayerPosterior"]
