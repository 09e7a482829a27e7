"""Validation of metric inputs: numpy arrays out, ValueError with a clear message.

The array checks live in `keras_uncertainty._validation` (one helper for
every package); they are re-exported here for the metrics' modules.
"""

import numpy as np

from keras_uncertainty._validation import (
    as_array,
    check_probs,
    classification_inputs,
    regression_inputs,
    same_shape,
    unit_interval,
)

__all__ = [
    "as_array",
    "binary_inputs",
    "check_probs",
    "classification_inputs",
    "regression_inputs",
    "same_shape",
    "unit_interval",
]


def binary_inputs(is_positive, scores):
    """Checked `(N,)` binary labels and scores of a ranking metric: the
    labels as booleans (from booleans or numbers all 0 or 1) and the scores
    as float64, 1-D and of one length."""
    is_positive = as_array(is_positive, "is_positive", dtype=None)
    scores = as_array(scores, "scores")
    if is_positive.shape != scores.shape or is_positive.ndim != 1:
        raise ValueError(
            "Expected `is_positive` and `scores` to be 1-D of the same length. "
            f"Received: shapes {is_positive.shape} and {scores.shape}"
        )
    if is_positive.dtype != bool:
        binary = np.issubdtype(is_positive.dtype, np.number) and np.all(
            (is_positive == 0) | (is_positive == 1)
        )
        if not binary:
            shown = np.unique(is_positive)[:5].tolist()
            raise ValueError(
                "Invalid value received for argument `is_positive`. Expected "
                "booleans, or numbers that are all 0 or 1. Received: values "
                f"{shown} (dtype {is_positive.dtype})"
            )
    positive = is_positive.astype(bool)
    return positive, scores
