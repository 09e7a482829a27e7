"""Argument checks shared by the public functions, with Keras-style messages."""

import math
import numbers

import numpy as np

# Dropout masks compare 16-bit draws with `round(rate * 2**16)` (see
# `layers/_masks.py`): a rate must leave at least one of the 65536 levels
# kept, `round(rate * 2**16) <= 2**16 - 1`, else nothing is kept and the
# inverse keep probability divides by zero.
MASK_LEVELS = 2**16


def check_rate(rate, name="rate"):
    """Checks a dropout rate (argument `name`): a real number in [0, 1) that
    the 16-bit dropout mask can represent, `round(rate * 2**16) <= 2**16 - 1`
    (at most 0.99998: at least one level in 65536 is kept)."""
    if (
        isinstance(rate, bool)
        or not isinstance(rate, numbers.Real)
        or not 0 <= rate < 1
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a float "
            f"in the range [0, 1). Received: {name}={rate!r}"
        )
    if round(float(rate) * MASK_LEVELS) > MASK_LEVELS - 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a rate "
            f"of at most 0.99998 (the 16-bit mask keeps at least one level "
            f"in 65536: round({name} * 2**16) <= 65535). Received: "
            f"{name}={rate!r}"
        )
    return float(rate)


def check_bool(value, name):
    """Checks that `value` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected True or "
            f"False. Received: {name}={value!r}"
        )
    return value


def check_positive_int(value, name, allow_none=False):
    """Checks that `value` is an integer >= 1 (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected "
            f"{expected}. Received: {name}={value!r}"
        )
    return int(value)


def check_finite(
    value,
    name,
    low=None,
    low_open=False,
    high=None,
    high_open=False,
    allow_none=False,
    hint="",
):
    """Checks that `value` is a finite real number (not a bool) within the
    bounds given: `> low` (`low_open`) or `>= low`, `< high` (`high_open`)
    or `<= high`; None too when `allow_none`. Else a ValueError "Expected a
    finite number >= low and <= high{hint}" naming `name`.

    Returns:
        `float(value)` (None for an allowed None).
    """
    if value is None and allow_none:
        return None
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        expected = " ".join(["a finite number", " and ".join(bounds)]).strip()
        if allow_none:
            expected = f"None or {expected}"
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected "
            f"{expected}{hint}. Received: {name}={value!r}"
        )
    return float(value)


def check_positive_finite(value, name):
    """Checks that `value` is a finite real number > 0."""
    return check_finite(value, name, 0, low_open=True)


# The largest seed: every seed becomes an int64 (a seed generator's state,
# the key hash of `sampling.keys`).
MAX_SEED = 2**63 - 1


def check_seed(seed, name="seed"):
    """Checks a random seed: None or an integer in [0, 2**63 - 1]."""
    if seed is None:
        return None
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= seed <= MAX_SEED
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected None or a "
            f"non-negative integer of at most 2**63 - 1. Received: {name}={seed!r}"
        )
    return int(seed)


def value_errors_from_config(cls):
    """Class decorator: `cls.from_config` raises the `ValueError` that
    `__init__` raises for an invalid saved value as it is.

    Keras's `Operation.from_config` (which a layer without its own inherits)
    wraps every error of `__init__` in a `TypeError` ("Error when
    deserializing class ..."), so a `.keras` file with a dropout rate of 5
    would fail with a `TypeError` holding the message; `keras.models.
    load_model` passes a `ValueError` raised by `from_config` through
    unchanged, so the user sees the one-line `ValueError` naming the
    argument. Other errors stay as Keras raises them.
    """
    own = vars(cls).get("from_config")

    def from_config(klass, config, *args, **kwargs):
        try:
            if own is not None:
                return own.__get__(None, klass)(config, *args, **kwargs)
            return super(cls, klass).from_config(config, *args, **kwargs)
        except TypeError as error:
            cause = error.__context__
            if isinstance(cause, ValueError):
                raise cause from None
            raise

    from_config.__doc__ = (
        "Creates the layer from its config; an invalid value raises the "
        "`ValueError` of `__init__`."
    )
    cls.from_config = classmethod(from_config)
    return cls


# Arrays ---------------------------------------------------------------------


def as_array(value, name, dtype=np.float64, *, allow_inf=False):
    """The one array check: `value` (an array, a list, a Keras or TensorFlow
    tensor) as a non-empty numpy array, refusing what would be silently
    wrong.

    Refused, with a ValueError naming `name`, what was expected and what was
    received: None; complex values (a real dtype would drop the imaginary
    parts, which NumPy only warns about); values that do not convert to
    `dtype` (strings, ragged lists); an empty array; NaN, and infinities
    unless `allow_inf`.

    Args:
        value: The argument's value.
        name: The argument's name, for the messages.
        dtype: The dtype of the result (float64 by default); None keeps the
            value's own dtype (integer labels, booleans).
        allow_inf: Whether `+-inf` is accepted (NaN never is).

    Returns:
        The numpy array (a copy only where the conversion needs one).
    """
    if value is None:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an array. "
            f"Received: {name}=None"
        )
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    what = type(value).__name__
    try:
        array = np.asarray(value)
        if array.ndim:
            what = f"dtype {array.dtype}"
        if array.dtype.kind == "c" and (dtype is None or np.dtype(dtype).kind != "c"):
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected an "
                f"array of real numbers. Received: complex values ({what})"
            )
        if dtype is not None:
            array = array.astype(dtype, copy=False)
    except (TypeError, ValueError) as error:
        if str(error).startswith("Invalid value received"):
            raise
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an array "
            f"of real numbers. Received: {what}"
        ) from None
    if array.size == 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"non-empty array. Received: shape {array.shape}"
        )
    if array.dtype.kind in "fc":
        bad = np.isnan(array) if allow_inf else ~np.isfinite(array)
        if np.any(bad):
            expected = "no NaN" if allow_inf else "finite values"
            kind = "NaN" if allow_inf else "NaN or infinite"
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected "
                f"{expected}. Received: {int(np.count_nonzero(bad))} {kind} "
                "entries"
            )
    return array


def same_shape(**arrays):
    """Checks that every array has the shape of the first (keyword names are
    the argument names in the message)."""
    names = list(arrays)
    first = arrays[names[0]]
    for name in names[1:]:
        if arrays[name].shape != first.shape:
            raise ValueError(
                f"Expected `{names[0]}` and `{name}` to have the same shape. "
                f"Received: {names[0]} with shape {first.shape} and {name} "
                f"with shape {arrays[name].shape}"
            )


def check_positive_std(std, name="std", strict=True):
    """Checks standard deviations: `> 0` (or `>= 0` with `strict=False`)."""
    bad = std <= 0 if strict else std < 0
    if np.any(bad):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected standard "
            f"deviations {bound}. Received: {int(np.sum(bad))} entries "
            f"{'<= 0' if strict else '< 0'} (smallest {std.min()!r})"
        )
    return std


def regression_inputs(y_true, mean, std=None):
    """Checked float64 `y_true`, `mean` (and `std > 0`) of one shape; a
    `(N,)` target may meet `(N, 1)` predictions.

    Returns:
        `(y_true, mean)`, or `(y_true, mean, std)` when `std` is given.
    """
    y_true = as_array(y_true, "y_true")
    mean = as_array(mean, "mean")
    if y_true.ndim == mean.ndim - 1 and mean.shape[-1] == 1:
        y_true = y_true[..., None]
    same_shape(y_true=y_true, mean=mean)
    if std is None:
        return y_true, mean
    std = as_array(std, "std")
    same_shape(mean=mean, std=std)
    return y_true, mean, check_positive_std(std)


def check_probs(value, name="probs", tolerance=1e-3):
    """Checked `(N, C)` probabilities: a finite, non-empty 2-D float64 array
    of non-negative rows that each sum to 1 within `tolerance`.

    Args:
        value: The argument's value (array, list or tensor).
        name: The argument's name, for the messages.
        tolerance: The largest accepted `|sum_c p_c - 1|` of a row.

    Returns:
        The float64 `(N, C)` array, unchanged.
    """
    return check_distributions(shaped_array(value, name, "(N, C)"), name, tolerance)


def shaped_array(value, name, shape="(N, C)", hint=""):
    """`as_array(value, name)` of the rank that `shape` spells: `"(N, C)"` a
    2-D array, `"(T, N, C)"` a 3-D one; else a ValueError "Expected shape
    {shape}{hint}. Received: shape ..." naming `name`.

    Args:
        value: The argument's value (array, list or tensor).
        name: The argument's name, for the messages.
        shape: The expected shape, as the message writes it.
        hint: Text after the expected shape in the message (": one ...").

    Returns:
        The float64 numpy array.
    """
    array = as_array(value, name)
    if array.ndim != len(shape.split(",")):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected shape "
            f"{shape}{hint}. Received: shape {array.shape}"
        )
    return array


def check_distributions(array, name, tolerance=1e-3):
    """Checks that every row of `array` (its last axis, any rank) is a
    probability vector: non-negative entries summing to 1 within
    `tolerance`, else a ValueError naming `name`.

    Returns:
        `array`, unchanged.
    """
    sums = array.sum(-1)
    if np.any(array < 0) or np.any(np.abs(sums - 1) > tolerance):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected "
            f"non-negative rows that sum to 1 (within {tolerance}). Received: "
            f"row sums from {sums.min():.4g} to {sums.max():.4g}"
            f" and smallest entry {array.min():.4g}"
        )
    return array


def classification_inputs(labels, probs, tolerance=1e-3):
    """Checked integer labels `(N,)` in `[0, C)` and probabilities `(N, C)`
    (see `check_probs`).

    Returns:
        `(labels, probs)`.
    """
    probs = check_probs(probs, "probs", tolerance)
    return class_indices(labels, *probs.shape), probs


def class_indices(labels, num_rows, num_classes=None):
    """Checked integer labels: shape `(num_rows,)`, values in
    `[0, num_classes)` (any integers when `num_classes` is None).

    Returns:
        The labels as a numpy array of their own integer dtype.
    """
    labels = as_array(labels, "labels", dtype=None)
    if labels.shape != (num_rows,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            "Invalid value received for argument `labels`. Expected integer "
            f"class indices of shape {(num_rows,)}. Received: dtype "
            f"{labels.dtype} and shape {labels.shape}"
        )
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            "Invalid value received for argument `labels`. Expected class "
            f"indices in [0, {num_classes - 1}]. Received: values from "
            f"{labels.min()} to {labels.max()}"
        )
    return labels


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


# Layer arguments --------------------------------------------------------------


def check_choice(value, name, choices, lower=False):
    """Checks that `value` is one of `choices` (compared in lower case when
    `lower`, and then returned in lower case); else a ValueError "Expected
    one of [...]" naming `name`."""
    candidate = value.lower() if lower and isinstance(value, str) else value
    try:
        ok = (isinstance(value, str) or not lower) and candidate in choices
    except (TypeError, ValueError):  # an array compared with the choices
        ok = False
    if not ok:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected one of "
            f"{list(choices)}. Received: {name}={value!r}"
        )
    return candidate


def int_tuple(value, rank, name):
    """A positive integer, or `rank` of them (a tuple, list or other
    sequence), as a tuple of `rank` Python ints: a convolution's
    `kernel_size`, `strides` or `dilation_rate`."""
    values = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = (value,) * rank
    elif not isinstance(value, (str, bytes, bool)):
        try:
            values = tuple(value)
        except TypeError:
            values = None
    if (
        values is None
        or len(values) != rank
        or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
            for v in values
        )
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"positive integer or a tuple of {rank} positive integers. "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in values)


def check_conv_arguments(rank, kernel_size, strides, padding, dilation_rate):
    """The checked arguments of a convolution with `rank` spatial axes:
    `kernel_size`, `strides` and `dilation_rate` as `int_tuple`s, `padding`
    `"valid"` or `"same"` (any case, returned in lower case), and not both
    `strides` and `dilation_rate` above 1 (as Keras's convolutions).

    Returns:
        `(kernel_size, strides, padding, dilation_rate)`.
    """
    kernel_size = int_tuple(kernel_size, rank, "kernel_size")
    strides = int_tuple(strides, rank, "strides")
    padding = check_choice(padding, "padding", ("valid", "same"), lower=True)
    dilation_rate = int_tuple(dilation_rate, rank, "dilation_rate")
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(
            "Invalid value received for arguments `strides` and "
            "`dilation_rate`. Expected at most one of them above 1. "
            f"Received: strides={strides}, dilation_rate={dilation_rate}"
        )
    return kernel_size, strides, padding, dilation_rate
