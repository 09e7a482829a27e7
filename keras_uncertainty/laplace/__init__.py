"""The Laplace approximation: a Gaussian posterior around trained weights.

`Laplace` fits, post hoc on a trained Keras network and its training data,
a Gaussian posterior over the last layer's weights (the model's last
`Dense` layer, found through trailing weightless softmax, activation and
reshape layers; or, for small models, all of them) with a KFAC, full or
diagonal generalized Gauss-Newton Hessian, and fits the prior precision
(and the observation noise of a regression) by the marginal likelihood.
`ku.predict_*(laplace, x)`, `ku.sample` and `ku.export` (and `predict`)
give the linearized (GLM) predictive in closed form (regression) or by the
probit approximation (classification), in one compiled pass
(`LaplaceGLMSampledModel`); `as_model("weights")` gives a `LaplaceModel`
sampled by drawing the last layer's weights (`LaplaceSampledModel`).
"""

from keras_uncertainty.laplace.laplace import Laplace
from keras_uncertainty.laplace.model import (
    GLMSummary,
    LaplaceGLMSampledModel,
    LaplaceModel,
    LaplaceSampledModel,
    LastLayerPosterior,
)

__all__ = [
    "Laplace",
    "LaplaceGLMSampledModel",
    "LaplaceModel",
    "LaplaceSampledModel",
    "LastLayerPosterior",
    "GLMSummary",
]
