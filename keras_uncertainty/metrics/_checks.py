"""Validation of metric inputs: numpy arrays out, ValueError with a clear message."""

import numbers

import numpy as np


def as_array(value, name, dtype=np.float64):
    """Converts arrays, lists and Keras/TF tensors to a finite numpy array."""
    if value is None:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an array. "
            f"Received: {name}=None"
        )
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    if np.asarray(value).dtype.kind == "c" and np.dtype(dtype).kind != "c":
        # A real dtype would drop the imaginary parts (NumPy only warns).
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected real "
            f"numbers. Received: complex values"
        )
    array = np.asarray(value, dtype=dtype)
    if array.size == 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"non-empty array. Received: shape {array.shape}"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected finite "
            f"values. Received: {bad} NaN or infinite entries"
        )
    return array


def same_shape(**arrays):
    """Checks that every array has the shape of the first."""
    names = list(arrays)
    first = arrays[names[0]]
    for name in names[1:]:
        if arrays[name].shape != first.shape:
            raise ValueError(
                f"Expected `{names[0]}` and `{name}` to have the same shape. "
                f"Received: {names[0]} with shape {first.shape} and {name} "
                f"with shape {arrays[name].shape}"
            )


def regression_inputs(y_true, mean, std=None):
    """Checked float arrays; a `(N,)` target may meet `(N, 1)` predictions."""
    y_true = as_array(y_true, "y_true")
    mean = as_array(mean, "mean")
    if y_true.ndim == mean.ndim - 1 and mean.shape[-1] == 1:
        y_true = y_true[..., None]
    same_shape(y_true=y_true, mean=mean)
    if std is None:
        return y_true, mean
    std = as_array(std, "std")
    same_shape(mean=mean, std=std)
    if np.any(std <= 0):
        raise ValueError(
            "Invalid value received for argument `std`. Expected standard "
            f"deviations > 0. Received: {int(np.sum(std <= 0))} entries <= 0 "
            f"(smallest {std.min()!r})"
        )
    return y_true, mean, std


def classification_inputs(labels, probs, tolerance=1e-3):
    """Integer labels `(N,)` and probabilities `(N, C)` that sum to 1."""
    probs = as_array(probs, "probs")
    if probs.ndim != 2:
        raise ValueError(
            "Invalid value received for argument `probs`. Expected shape "
            f"(N, C). Received: shape {probs.shape}"
        )
    if np.any(probs < 0) or np.any(np.abs(probs.sum(-1) - 1) > tolerance):
        raise ValueError(
            "Invalid value received for argument `probs`. Expected "
            f"non-negative rows that sum to 1 (within {tolerance}). Received: "
            f"row sums from {probs.sum(-1).min():.4g} to {probs.sum(-1).max():.4g}"
            f" and smallest entry {probs.min():.4g}"
        )
    labels = as_array(labels, "labels", dtype=None)
    if labels.shape != probs.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Invalid value received for argument `labels`. Expected integer "
            f"class indices of shape {probs.shape[:1]}. Received: dtype "
            f"{labels.dtype} and shape {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            "Invalid value received for argument `labels`. Expected class "
            f"indices in [0, {probs.shape[1] - 1}]. Received: values from "
            f"{labels.min()} to {labels.max()}"
        )
    return labels, probs


def unit_interval(value, name, closed=False):
    """A level in (0, 1), or a fraction in [0, 1] with `closed=True`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        ok = False
    else:
        ok = 0 <= value <= 1 if closed else 0 < value < 1
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a number "
            f"in {interval}. Received: {name}={value!r}"
        )
    return float(value)


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
