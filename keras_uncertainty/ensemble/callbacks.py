"""Kept for imports of the 0.2 layout: the callback lives in `ku.callbacks`."""

from keras_uncertainty.callbacks.non_finite import TerminateOnNonFiniteMember

__all__ = ["TerminateOnNonFiniteMember"]
