"""Metrics that say whether an uncertainty estimate is any good.

Flat numpy functions, one formula each (given in the docstring): arrays (or
Keras/TF tensors) in, floats or arrays out. They import no models.
"""

from keras_uncertainty.metrics.classification import (
    accuracy,
    auroc,
    brier_score,
    classification_nll,
    expected_calibration_error,
    max_calibration_error,
    reliability_bins,
)
from keras_uncertainty.metrics.conformal import (
    empirical_coverage,
    mean_interval_width,
    mean_set_size,
    set_coverage,
)
from keras_uncertainty.metrics.ood import (
    OODReport,
    aupr_in,
    aupr_out,
    average_precision,
    fpr_at_tpr,
    ood_report,
)
from keras_uncertainty.metrics.regression import (
    crps_gaussian,
    gaussian_log_density,
    gaussian_nll,
    gaussian_pit,
    interval_coverage,
    interval_score,
    mixture_log_density,
    mixture_nll,
    regression_calibration_curve,
    regression_calibration_error,
    rmse,
    sharpness,
)
from keras_uncertainty.metrics.reports import (
    classification_report,
    regression_report,
)
from keras_uncertainty.metrics.selective import RetentionCurve, aurc, retention_curve

__all__ = [
    "OODReport",
    "RetentionCurve",
    "accuracy",
    "aupr_in",
    "aupr_out",
    "aurc",
    "auroc",
    "average_precision",
    "brier_score",
    "classification_nll",
    "classification_report",
    "crps_gaussian",
    "empirical_coverage",
    "expected_calibration_error",
    "fpr_at_tpr",
    "gaussian_log_density",
    "gaussian_nll",
    "gaussian_pit",
    "interval_coverage",
    "interval_score",
    "max_calibration_error",
    "mean_interval_width",
    "mean_set_size",
    "mixture_log_density",
    "mixture_nll",
    "ood_report",
    "regression_calibration_curve",
    "regression_calibration_error",
    "regression_report",
    "reliability_bins",
    "retention_curve",
    "rmse",
    "set_coverage",
    "sharpness",
]
