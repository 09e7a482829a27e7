"""Bernoulli dropout masks drawn from 16 random bits per unit.

Drawing the mask dominates the cost of an MC forward pass (a small MLP spends
most of its time in the random number generator). TensorFlow's dropout draws
one 32-bit float per unit; 16 bits suffice, which halves the generator's work:
a unit is dropped when its 16-bit draw is below `round(rate * 2**16)`, so the
realized drop probability is `round(rate * 2**16) / 2**16` (within 2**-17 of
`rate`). Kept units are scaled by the inverse of the realized keep
probability, so the layer's expected output equals its input exactly.
"""

import tensorflow as tf

from keras_uncertainty.sampling import keys

_LEVELS = 2**16


def realized_rate(rate):
    """The drop probability the 16-bit mask actually uses for `rate`."""
    return threshold(rate) / _LEVELS


def noise_dims(inputs, noise_shape=None):
    """The mask's dimensions: Python ints where known statically, else tensors."""
    dynamic = tf.shape(inputs)
    dims = []
    for i, static in enumerate(inputs.shape):
        wanted = None if noise_shape is None else noise_shape[i]
        if wanted is not None:
            dims.append(wanted)
        else:
            dims.append(static if static is not None else dynamic[i])
    return dims


def random_bits16(dims, seed_generator, row_axis=0):
    """Uniform 16-bit draws (uint16) of shape `dims`: from the sampling
    call's key inside `ku.sample` / `ku.predict_*` / an export, else from
    `seed_generator` (see `keras_uncertainty.sampling.keys`). `row_axis` is
    the axis of the rows (samples x inputs); axes before it are members."""
    return keys.random_bits16(dims, seed_generator, row_axis=row_axis)


def threshold(rate):
    """The 16-bit draw below which a unit is dropped at `rate`."""
    return round(rate * _LEVELS)


def keep_scale(thresholds):
    """`1 / realized keep probability` for 16-bit `thresholds`."""
    return _LEVELS / (_LEVELS - thresholds)


def dropout(inputs, rate, noise_shape, seed_generator, row_axis=0):
    """Inverted dropout of `inputs` with a mask of `noise_shape` (broadcast)."""
    cut = threshold(rate)
    if cut == 0:
        return inputs
    dims = noise_dims(inputs, noise_shape)
    draws = random_bits16(dims, seed_generator, row_axis=row_axis)
    mask = tf.cast(draws >= cut, inputs.dtype) * tf.cast(keep_scale(cut), inputs.dtype)
    return inputs * mask
