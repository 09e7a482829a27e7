"""Post-hoc methods: fitted on held-out predictions, applied to new ones.

`PostHocMethod` is the public base of `ku.calibration.TemperatureScaling`,
`ku.calibration.VarianceScaling` and your own methods (see its docstring).
"""

from keras_uncertainty.posthoc.base import NotFittedError, PostHocMethod

__all__ = ["NotFittedError", "PostHocMethod"]
