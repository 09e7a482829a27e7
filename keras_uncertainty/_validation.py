"""Argument checks shared by the public functions, with Keras-style messages."""

import math
import numbers

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


def check_positive_finite(value, name):
    """Checks that `value` is a finite real number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a finite "
            f"number > 0. Received: {name}={value!r}"
        )
    return float(value)


def check_seed(seed):
    """Checks a random seed: None or a non-negative integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(
            "Invalid value received for argument `seed`. Expected None or a "
            f"non-negative integer. Received: seed={seed!r}"
        )
    return int(seed)
