"""SWAG: a Gaussian over the weights from the SGD trajectory (Maddox et al. 2019).

`SWAGCallback` collects, during an ordinary `model.fit`, the running mean,
the running uncentered second moment (diagonal) and the last K deviations
of the trainable weights into a `SWAGState`; `SWAG(model, callback)` is a
model that `ku.sample`, `ku.predict_regression`, `ku.predict_classification`
and `ku.export` sample by drawing one weight vector per sample from
N(mean, scale * (diag(var) + D^T D / (K - 1))) and evaluating the network
for all samples in one vectorized call.

Example:

>>> swag_callback = ku.swag.SWAGCallback(start_epoch=10, max_rank=20)
>>> model.fit(x, y, epochs=20, callbacks=[swag_callback])
>>> swag = ku.swag.SWAG(model, swag_callback)
>>> prediction = ku.predict_regression(swag, x_test)
"""

from keras_uncertainty.swag.callback import SWAGCallback
from keras_uncertainty.swag.model import SWAG, VAR_CLAMP, SWAGSampledModel
from keras_uncertainty.swag.state import SWAGState

__all__ = ["SWAG", "SWAGCallback", "SWAGSampledModel", "SWAGState", "VAR_CLAMP"]
