"""Grouped convolutions that run on every kernel set: one formulation chosen
once per device kind.

The packed ensemble's convolutions (`PackedConv1D/2D` on folded inputs),
`BatchEnsembleConv2D`'s member kernels and the per-sample perturbations of
the Flipout convolutions all compute G independent convolutions at once:
group g's input channels `[g * in, (g + 1) * in)` convolved with its own
kernel into output channels `[g * out, (g + 1) * out)`. Two formulations:

- `"grouped"`: one `tf.nn.convolution` with `G * in` input channels and an
  `(..., in, G * out)` kernel, which TensorFlow runs as a grouped
  convolution. Fastest where it is supported: oneDNN on x86 CPUs (LeNet-5's
  second convolution, 5 members, batch 64, forward and backward on 2 cores:
  4.1 ms, one member 2.4 ms) and cuDNN.
- `"split"`: G ordinary convolutions on the channel slices, concatenated (a
  static loop of at most `SPLIT_UNROLL_LIMIT` convolutions, unrolled when
  the graph is traced; more groups run as one `tf.map_fn`). It runs on every
  kernel set. TensorFlow's own CPU kernels (Eigen: oneDNN off, which
  TensorFlow picks on CPUs without AVX-512 VNNI / AMX and on ARM) compute a
  grouped convolution's forward pass but not its gradients
  ("Gradients for grouped convolutions are not supported on CPU"), nor a
  grouped convolution fused with its bias by the graph optimizer ("Fused
  conv implementation does not support grouped convolutions"). On those
  kernels the split form was the fastest of those measured for the same
  layer: split 10.5 ms (one member 3.0 ms), members in a `tf.vectorized_map`
  14.8 ms, block-diagonal kernel 19.1 ms, depthwise-and-sum 32.0 ms.

`"auto"` (the default) decides once per device kind (CPU, GPU, ...), the
first time a layer is traced on it: a probe runs a tiny grouped convolution
with a bias and an activation, forward and backward, inside a `tf.function`
on that device (so the graph optimizer's fusions apply), and picks
`"grouped"` if it runs, `"split"` otherwise. The choice is made when the
layer is traced, never by a per-step branch. Both formulations compute the
same sums in a different order: results agree to float32 rounding.
"""

import threading

import tensorflow as tf

FORMULATIONS = ("auto", "grouped", "split")

# Up to this many groups the split form is unrolled into that many
# convolutions (packed ensembles have a handful of members); beyond it (the
# T samples of a Flipout sampling call) one `tf.map_fn` keeps the graph small.
SPLIT_UNROLL_LIMIT = 16

_setting = "auto"
_probed = {}
_lock = threading.Lock()


def set_grouped_convolution_formulation(formulation):
    """Chooses how grouped convolutions run (for every device kind).

    Takes effect for layers traced afterwards (a model already compiled
    keeps the function it traced). Setting `"auto"` forgets the probes'
    results, so each device kind is probed again at its next trace.

    Args:
        formulation: `"auto"` (default: probe each device kind once, see
            `grouped_convolution_formulation`), `"grouped"` (one grouped
            convolution; fails where the kernels lack it) or `"split"` (one
            convolution per group, supported everywhere).

    Example:

    >>> ku.layers.set_grouped_convolution_formulation("split")
    >>> ku.layers.grouped_convolution_formulation("CPU")
    'split'
    >>> ku.layers.set_grouped_convolution_formulation("auto")
    """
    global _setting
    if formulation not in FORMULATIONS:
        raise ValueError(
            "Invalid value received for argument `formulation`. Expected one "
            f"of {FORMULATIONS}. Received: formulation={formulation!r}"
        )
    _setting = formulation
    if formulation == "auto":
        with _lock:
            _probed.clear()


def grouped_convolution_formulation(device_kind=None):
    """The formulation grouped convolutions use on a device kind.

    Args:
        device_kind: `"CPU"`, `"GPU"`, ...; default: the device the current
            scope places operations on (an explicit `tf.device`, else the
            first GPU if one is visible, else the CPU).

    Returns:
        `"grouped"` or `"split"`: the setting of
        `set_grouped_convolution_formulation` unless it is `"auto"`, else
        the result of the device kind's probe (run once, then cached).
    """
    if _setting != "auto":
        return _setting
    kind = (device_kind or current_device_kind()).upper()
    if kind not in _probed:
        with _lock:
            if kind not in _probed:
                _probed[kind] = "grouped" if _grouped_kernels_run(kind) else "split"
    return _probed[kind]


def current_device_kind():
    """The device type ops created here are placed on: the enclosing
    `tf.device` scope's, else GPU when one is visible, else CPU."""
    requested = tf.constant(0.0).device
    if requested:
        kind = tf.DeviceSpec.from_string(requested).device_type
        if kind:
            return kind.upper()
    with tf.init_scope():
        return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _probe_step(x, kernel, bias):
    convolved = tf.nn.convolution(x, kernel, padding="VALID")
    loss = tf.reduce_sum(tf.nn.relu(tf.nn.bias_add(convolved, bias)))
    # Symbolic gradients: the probe runs under `tf.init_scope`, which pauses
    # gradient tapes.
    return tf.gradients(loss, [x, kernel, bias])


def _grouped_kernels_run(kind):
    """Whether a grouped convolution + bias + relu, forward and backward,
    runs in a `tf.function` on the first device of `kind`."""
    with tf.init_scope():
        if not tf.config.list_logical_devices(kind):
            return False
        try:
            with tf.device(f"/{kind}:0"):
                x = tf.reshape(tf.range(2 * 5 * 5 * 6, dtype="float32"), (2, 5, 5, 6))
                kernel = tf.ones((3, 3, 3, 4)) / 27.0  # 2 groups of 3 -> 2
                bias = tf.zeros((4,))
                grads = tf.function(_probe_step)(x / 300.0, kernel, bias)
                return all(
                    g is not None and bool(tf.reduce_all(tf.math.is_finite(g)))
                    for g in grads
                )
        except (tf.errors.OpError, ValueError):
            return False


def grouped_convolution(inputs, kernel, strides=1, padding="VALID", dilations=1):
    """G convolutions at once: `(batch, *spatial, G * in)` inputs and an
    `(*window, in, G * out)` kernel -> `(batch, *spatial', G * out)`.

    Group g convolves channels `[g * in, (g + 1) * in)` with kernel slice
    `[..., g * out : (g + 1) * out]`, as `tf.nn.convolution` does for a
    grouped convolution, in the formulation chosen for the device kind (see
    the module docstring). Inputs with `in` channels (one group) are one
    ordinary convolution.

    Args:
        inputs: Channels-last tensor of rank `len(window) + 2`.
        kernel: `(*window, in, G * out)` tensor, `G * in` = the inputs'
            channels.
        strides, padding, dilations: As for `tf.nn.convolution`.

    Returns:
        Channels-last outputs with `G * out` channels.
    """
    channels = inputs.shape[-1]
    per_group = kernel.shape[-2]
    groups = channels // per_group
    options = {"strides": strides, "padding": padding, "dilations": dilations}
    if groups == 1 or grouped_convolution_formulation() == "grouped":
        return tf.nn.convolution(inputs, kernel, **options)
    window = kernel.shape[:-2]
    out = kernel.shape[-1] // groups
    if groups <= SPLIT_UNROLL_LIMIT:
        pieces = tf.split(inputs, groups, axis=-1)
        kernels = tf.split(kernel, groups, axis=-1)
        return tf.concat(
            [tf.nn.convolution(x, k, **options) for x, k in zip(pieces, kernels)],
            axis=-1,
        )
    rank = len(inputs.shape)
    # (batch, *spatial, G * in) -> (G, batch, *spatial, in), and the kernels
    # (*window, in, G * out) -> (G, *window, in, out).
    dims = tf.unstack(tf.shape(inputs))
    split = tf.reshape(inputs, tf.stack([*dims[:-1], groups, per_group]))
    by_group = tf.transpose(split, (rank - 1, *range(rank - 1), rank))
    kernels = tf.reshape(kernel, (*window, per_group, groups, out))
    axis = len(window)  # the kernels' `in` axis; groups follow it
    kernels = tf.transpose(kernels, (axis + 1, *range(axis + 1), axis + 2))
    outputs = tf.map_fn(
        lambda pair: tf.nn.convolution(pair[0], pair[1], **options),
        (by_group, kernels),
        fn_output_signature=inputs.dtype,
    )  # (G, batch, *spatial', out)
    moved = tf.transpose(outputs, (*range(1, rank), 0, rank))
    dims = tf.unstack(tf.shape(moved))
    return tf.reshape(moved, tf.stack([*dims[:-2], groups * out]))
