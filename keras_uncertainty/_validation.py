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
