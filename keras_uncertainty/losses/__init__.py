"""Proper scoring rules to train networks that predict a distribution."""

from keras_uncertainty.losses.gaussian_nll import (
    GaussianNLL,
    gaussian_nll,
    split_mean_log_var,
)

__all__ = ["GaussianNLL", "gaussian_nll", "split_mean_log_var"]
