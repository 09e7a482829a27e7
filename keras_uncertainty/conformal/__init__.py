"""Conformal prediction: intervals and sets with a finite-sample guarantee.

Split conformal methods on the post-hoc base (`ku.posthoc.PostHocMethod`):
`fit(prediction, y)` on a held-out calibration set, then
`predict_interval` (regression) or `predict_set` (classification) on new
predictions. For exchangeable data the result covers the truth with
probability at least `1 - alpha`, whatever the model, from any uncertainty
estimate: MC dropout or ensemble std, a quantile head, softmax
probabilities.

- `SplitConformalRegressor`: absolute residuals, `mean +- q`.
- `NormalizedConformalRegressor`: `|y - mean| / std`, `mean +- q std`.
- `ConformalizedQuantileRegressor`: CQR on a quantile head trained with
  `ku.losses.PinballLoss` (`QuantilePrediction` holds its output).
- Every regressor takes `groups` (Mondrian: coverage within each group).
- `ConformalClassifier`: LAC / APS / RAPS sets, randomized or not,
  optionally class-conditional; boolean `(N, C)` set matrices.

`q` is always the `ceil((n + 1)(1 - alpha))`-th smallest of the n
calibration scores (`+inf`, with a warning, when that exceeds n). Served
in-graph by `ku.export(..., conformal=fitted)`; judged by
`ku.metrics.empirical_coverage`, `mean_interval_width`,
`set_coverage` and `mean_set_size`.
"""

from keras_uncertainty.conformal._core import Interval
from keras_uncertainty.conformal.classification import ConformalClassifier
from keras_uncertainty.conformal.regression import (
    ConformalizedQuantileRegressor,
    NormalizedConformalRegressor,
    QuantilePrediction,
    SplitConformalRegressor,
)

__all__ = [
    "ConformalClassifier",
    "ConformalizedQuantileRegressor",
    "Interval",
    "NormalizedConformalRegressor",
    "QuantilePrediction",
    "SplitConformalRegressor",
]
