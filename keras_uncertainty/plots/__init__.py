"""Matplotlib figures that show whether the uncertainty is any good.

Each function takes `ax=None` (a new figure) and returns the Axes, with
title, axis labels and legend set.
"""

from keras_uncertainty.plots.classification import reliability_diagram, vote_histogram
from keras_uncertainty.plots.regression import (
    regression_calibration,
    regression_uncertainty,
)
from keras_uncertainty.plots.selective import retention_curve

__all__ = [
    "regression_calibration",
    "regression_uncertainty",
    "reliability_diagram",
    "retention_curve",
    "vote_histogram",
]
