"""Proper scoring rules to train networks that predict a distribution."""

from keras_uncertainty.losses.gaussian_nll import (
    GaussianNLL,
    gaussian_nll,
    split_mean_log_var,
)
from keras_uncertainty.losses.pinball import PinballLoss, pinball_loss

__all__ = [
    "GaussianNLL",
    "PinballLoss",
    "gaussian_nll",
    "pinball_loss",
    "split_mean_log_var",
]
