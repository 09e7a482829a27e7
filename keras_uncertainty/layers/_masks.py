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

_LEVELS = 2**16


def realized_rate(rate):
    """The drop probability the 16-bit mask actually uses for `rate`."""
    return threshold(rate) / _LEVELS


def _seed_pair(seed_generator):
    # Stateless TF ops (and XLA) want int32 seeds; the generator's state is
    # int64, reduced the way Keras's TensorFlow backend reduces it.
    seed = seed_generator.next()
    return tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)


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


def random_bits16(dims, seed_generator):
    """Uniform 16-bit draws (uint16) of shape `dims`: a list of ints or scalar
    tensors (a tensor last entry is allowed for a 1-D shape)."""
    last = dims[-1]
    words_per_row = (last + 1) // 2
    words = tf.random.stateless_uniform(
        tf.stack(dims[:-1] + [words_per_row]),
        seed=_seed_pair(seed_generator),
        dtype=tf.uint32,
        minval=None,
        maxval=None,
    )
    # Each 32-bit word holds the 16-bit draws of two neighbouring units.
    draws = tf.reshape(
        tf.bitcast(words, tf.uint16), tf.stack(dims[:-1] + [2 * words_per_row])
    )
    if not isinstance(last, int) or last % 2:
        draws = draws[..., :last]
    return draws


def threshold(rate):
    """The 16-bit draw below which a unit is dropped at `rate`."""
    return round(rate * _LEVELS)


def keep_scale(thresholds):
    """`1 / realized keep probability` for 16-bit `thresholds`."""
    return _LEVELS / (_LEVELS - thresholds)


def dropout(inputs, rate, noise_shape, seed_generator):
    """Inverted dropout of `inputs` with a mask of `noise_shape` (broadcast)."""
    cut = threshold(rate)
    if cut == 0:
        return inputs
    dims = noise_dims(inputs, noise_shape)
    flattened = not isinstance(dims[-1], int)
    if flattened:
        # Unknown last dimension: draw for the flattened mask instead.
        dims = [tf.reduce_prod(tf.stack(dims))]
    draws = random_bits16(dims, seed_generator)
    mask = tf.cast(draws >= cut, inputs.dtype) * tf.cast(keep_scale(cut), inputs.dtype)
    if flattened:
        mask = tf.reshape(mask, _noise_dims_tensor(inputs, noise_shape))
    return inputs * mask


def _noise_dims_tensor(inputs, noise_shape):
    return tf.stack(noise_dims(inputs, noise_shape))
