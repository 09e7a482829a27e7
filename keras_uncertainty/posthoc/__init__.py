"""Post-hoc methods: fitted on held-out predictions, applied to new ones.

`PostHocMethod` is the public base of `ku.calibration.TemperatureScaling`,
`ku.calibration.VarianceScaling` and your own methods (see its docstring);
`FittedMethod`, its base, holds the estimator habits that
`ku.laplace.Laplace` (fitted on a network's training inputs) shares.
"""

from keras_uncertainty.posthoc.base import (
    FittedMethod,
    NotFittedError,
    PostHocMethod,
)

__all__ = ["FittedMethod", "NotFittedError", "PostHocMethod"]
