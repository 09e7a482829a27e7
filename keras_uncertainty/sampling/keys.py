"""Per-call random keys: stateless, thread-safe, chunk-invariant draws.

A sampling call (`ku.sample`, `ku.predict_*`, an exported `serve`) takes one
key: a hash of the seed given, or a fresh draw (from numpy's global
generator in Python, from the operating system's entropy in an export). The key
enters the compiled step as a tensor, with the offset of the chunk's first
sample and first input, so no generator state is shared between calls, and
two threads (or two requests to one SavedModel) never touch the same state.

Every random draw during the call is a hash of (key, draw, member, sample,
input, unit): sample `s` of input `i` gets the same mask whatever chunk of
samples or inputs it falls in, whatever `batch_size`, on any device, replica
or kernel set. The random bits (and the masks and uniforms made of them) are
bit-identical; normal draws (the inverse normal CDF of those uniforms, which
CPU kernels compute with vector or scalar code by an entry's position in
the tensor) and what the network computes from the draws are equal to
float32 rounding (`SEEDED_TOLERANCE`), and bit-identical
only for the same call shape on the same kernels: matrix and convolution
kernels (Eigen's, oneDNN's, cuDNN's) block their sums by the number of rows
in a call, so the same draws in a call of another shape can round
differently. `draw` numbers the random draws of the traced forward pass in the
order the layers run, so each layer (and each call of a shared layer) has
its own stream.

The hash is Wellons' `lowbias32` (xor-shift-multiply, full avalanche), a
counter-based generator in the spirit of Salmon et al.'s Philox: on a 2-core
CPU it draws 2.5M 32-bit words in 11.6 ms against 15.3 ms for TensorFlow's
stateless Philox. Outside a sampling call (training, or calling a model
directly) the same functions draw from the layer's `keras.random.SeedGenerator`
as Keras layers do.

Layers use these draws through `ku.layers.MCLayer` (or the functions below);
custom sampled methods (`ku.sampling.SampledModel`) use them directly.
"""

import contextlib
import threading

import keras
import numpy as np
import tensorflow as tf

# How far apart two seeded results of the same draws may be when the calls
# differ in shape, device or kernel set (a few float32 roundings of a
# layer's sums); `np.testing.assert_allclose(a, b, **SEEDED_TOLERANCE)`.
SEEDED_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}

_LOCAL = threading.local()
# Odd constants of the hash (Wellons' lowbias32) and of the counter steps.
_MIX_1, _MIX_2 = 0x7FEB352D, 0x846CA68B
_GOLDEN, _WORD_STEP, _MEMBER_STEP = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35


class CallKey:
    """The randomness of one compiled sampling call, read while tracing.

    Attributes:
        key: uint32 tensor `(2,)`, the call's key.
        sample_offset: int32 scalar tensor, the global index of the chunk's
            first sample (per member).
        row_offset: int32 scalar tensor, the global index of the chunk's
            first input row.
        num_samples: T of the chunk (Python int or int32 scalar tensor).
        num_rows: n, inputs in the chunk (int32 scalar tensor).
    """

    def __init__(self, key, sample_offset, row_offset, num_samples, num_rows):
        self.key = tf.cast(key, tf.uint32)
        self.sample_offset = sample_offset
        self.row_offset = row_offset
        self.num_samples = num_samples
        self.num_rows = num_rows
        self.draws = 0

    def next_draw(self):
        """The index of the next random draw of this trace."""
        self.draws += 1
        return self.draws


def current():
    """The `CallKey` of the sampling call being traced in this thread, or None."""
    return getattr(_LOCAL, "call_key", None)


@contextlib.contextmanager
def sampling_call(call_key):
    """Makes `call_key` the current key of this thread while tracing."""
    previous = current()
    _LOCAL.call_key = call_key
    try:
        yield call_key
    finally:
        _LOCAL.call_key = previous


_SEED_SALT_1, _SEED_SALT_2 = 0x6A09E667, 0xBB67AE85


def key_from_seed(seed):
    """A `(2,)` uint32 numpy key: a hash of `seed` (reproducible; the same
    as `key_tensor_from_seed` computes in a graph), or, when `seed` is None,
    a new key drawn from numpy's global generator: a different key every
    call, and the same sequence of keys after `keras.utils.set_random_seed`
    (which seeds numpy), as Keras's own unseeded layers do."""
    if seed is None:
        return np.random.randint(0, 2**32, size=2, dtype=np.uint64).astype(np.uint32)
    # One formula for both: the graph's, run eagerly.
    return key_tensor_from_seed(tf.constant(int(seed), tf.int64)).numpy()


def key_tensor_from_seed(seed):
    """`key_from_seed` of an int64 scalar tensor, in a graph."""
    seed = tf.cast(seed, tf.int64)
    low = tf.cast(tf.bitwise.bitwise_and(seed, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(
        tf.bitwise.bitwise_and(tf.bitwise.right_shift(seed, 32), 0xFFFFFFFF),
        tf.uint32,
    )
    first = mix(low + mix(high ^ _u32(_SEED_SALT_1)))
    second = mix(first ^ _u32(_SEED_SALT_2))
    return tf.stack([first, second])


def _u32(value):
    return tf.constant(value & 0xFFFFFFFF, tf.uint32)


def mix(x):
    """Wellons' lowbias32 hash of uint32 `x`, elementwise."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))
    x = x * _u32(_MIX_1)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(15)))
    x = x * _u32(_MIX_2)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def _as_u32(value):
    return tf.cast(value, tf.uint32)


def _draw_key(call_key):
    draw = call_key.next_draw()
    return mix(call_key.key[0] ^ mix(call_key.key[1] + _u32(draw * _GOLDEN)))


def _row_keys(call_key, dims, row_axis, per_sample):
    """uint32 keys of shape `dims[: row_axis + 1]`: one per (member, row).

    Rows are sample-major: with T samples in the chunk and R rows on the row
    axis, row `r` is sample `r // (R // T)`; within a sample, rows count from
    `row_offset * (R // T) / n` so that a layer that folds time steps into
    the batch (R = T * n * steps) still numbers them globally.
    """
    draw = _draw_key(call_key)
    rows = tf.cast(dims[row_axis], tf.int32)
    # At least 1: a mask broadcast over the batch (one row) is one row of
    # sample 0, not a division by zero.
    per_sample_rows = tf.maximum(rows // tf.cast(call_key.num_samples, tf.int32), 1)
    samples = (rows + per_sample_rows - 1) // per_sample_rows
    # The key of row (s, j) is mix(A_s ^ B_j): A over the samples and B over
    # the rows of one sample are hashed apart (t + n hashes, not t * n), and
    # only their combination runs over every row.
    sample = _as_u32(call_key.sample_offset + tf.range(samples, dtype=tf.int32))
    by_sample = mix(draw + sample * _u32(_GOLDEN))  # (t,)
    if per_sample:
        keys = tf.repeat(by_sample, per_sample_rows)[:rows]
    else:
        scale = per_sample_rows // tf.maximum(tf.cast(call_key.num_rows, tf.int32), 1)
        row = _as_u32(call_key.row_offset * scale + tf.range(per_sample_rows))
        by_row = mix(row + _u32(_MEMBER_STEP))  # (n,)
        keys = tf.reshape(mix(by_sample[:, None] ^ by_row[None, :]), [-1])[:rows]
    # Member axes (before the row axis) are folded in one at a time.
    for axis in range(row_axis - 1, -1, -1):
        member = _as_u32(tf.range(tf.cast(dims[axis], tf.int32)))
        shape = [-1] + [1] * (keys.shape.rank)
        keys = mix(keys[None] + tf.reshape(member * _u32(_MEMBER_STEP), shape))
    return keys


def _words(call_key, dims, row_axis, count, per_sample=False):
    """uint32 words `(*dims[: row_axis + 1], count)` for the rows of `dims`."""
    keys = _row_keys(call_key, dims, row_axis, per_sample)
    steps = _as_u32(tf.range(count)) * _u32(_WORD_STEP)
    return mix(keys[..., None] + steps)


def _unit_count(dims, row_axis):
    size = 1
    for dim in dims[row_axis + 1 :]:
        size = size * dim
    return size


def _static_or_tensor_dims(dims):
    return [d if isinstance(d, int) else tf.cast(d, tf.int32) for d in dims]


def random_bits16(dims, seed_generator, row_axis=0):
    """Uniform 16-bit draws (uint16) of shape `dims`.

    In a sampling call, a hash of the call key and each entry's (member,
    sample, input, unit) position; otherwise drawn from `seed_generator`.

    Args:
        dims: The shape: a list of Python ints or scalar int tensors.
        seed_generator: The layer's `keras.random.SeedGenerator` (used
            outside a sampling call).
        row_axis: The axis of `dims` that lists the rows (samples x inputs,
            sample-major); axes before it are member axes.

    Returns:
        A uint16 tensor of shape `dims`.
    """
    dims = _static_or_tensor_dims(list(dims))
    call_key = current()
    if call_key is None:
        return _generator_bits16(dims, seed_generator)
    units = _unit_count(dims, row_axis)
    words = _words(call_key, dims, row_axis, (units + 1) // 2)
    draws = tf.bitcast(words, tf.uint16)  # (..., words, 2)
    lead = dims[: row_axis + 1]
    draws = tf.reshape(draws, tf.stack([*lead, -1]))
    if not isinstance(units, int) or units % 2:
        draws = draws[..., :units]
    return tf.reshape(draws, tf.stack(dims))


def _generator_bits16(dims, seed_generator):
    last = dims[-1]
    words_per_row = (last + 1) // 2
    seed = tf.cast(tf.math.floormod(seed_generator.next(), tf.int32.max - 1), tf.int32)
    words = tf.random.stateless_uniform(
        tf.stack(dims[:-1] + [words_per_row]),
        seed=seed,
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


def random_uniform(
    shape, seed_generator, row_axis=0, per_sample=False, dtype="float32"
):
    """Uniform draws in (0, 1) of `shape`, 24 bits of resolution.

    Args:
        shape: The shape (ints or scalar tensors).
        seed_generator: Used outside a sampling call.
        row_axis: As in `random_bits16`.
        per_sample: Whether the draw depends on the sample only (one value
            per sample shared by all inputs: a weight perturbation), not on
            the input. `shape[row_axis]` is then the number of rows all the
            same and each row gets its sample's value.
        dtype: Float dtype of the result.

    Returns:
        A tensor of `shape`, uniform on (0, 1) (never exactly 0 or 1).
    """
    dims = _static_or_tensor_dims(list(shape))
    call_key = current()
    if call_key is None:
        return keras.random.uniform(
            tf.stack(dims) if not all(isinstance(d, int) for d in dims) else dims,
            minval=2.0**-25,
            maxval=1.0,
            dtype=dtype,
            seed=seed_generator,
        )
    units = _unit_count(dims, row_axis)
    words = _words(call_key, dims, row_axis, units, per_sample=per_sample)
    uniform = unit_interval(words)
    return tf.cast(tf.reshape(uniform, tf.stack(dims)), dtype)


# The largest float32 below 1: `(2**24 - 1 + 0.5) * 2**-24` rounds to 1.0 in
# float32, which `ndtri` maps to +inf (once in 2**24 draws).
_BELOW_ONE = 1.0 - 2.0**-24


def unit_interval(words):
    """uint32 hash words -> float32 in (0, 1): the top 24 bits, centred in
    their cell, `(top + 0.5) * 2**-24`; the top cell is capped at the
    largest float32 below 1 (where float32 would round it to 1)."""
    top = tf.cast(tf.bitwise.right_shift(words, _u32(8)), tf.float32)
    return tf.minimum((top + 0.5) * (2.0**-24), _BELOW_ONE)


def random_normal(shape, seed_generator, row_axis=0, per_sample=False, dtype="float32"):
    """Standard normal draws of `shape` (inverse CDF of `random_uniform`).

    Args:
        shape: The shape (ints or scalar tensors).
        seed_generator: Used outside a sampling call.
        row_axis: As in `random_bits16`.
        per_sample: As in `random_uniform`.
        dtype: Float dtype of the result.

    Returns:
        A tensor of `shape` of standard normal draws.
    """
    uniform = random_uniform(shape, seed_generator, row_axis, per_sample, "float32")
    return tf.cast(tf.math.ndtri(uniform), dtype)
