"""Compiled, chunked Monte Carlo prediction: `sample` and `predict_*`.

One `tf.function` per model, task and input signature (batch size and number
of samples are dynamic, so neither retraces) draws a chunk of samples for a
chunk of inputs in one call and, for `predict_*`, reduces them inside the
graph to statistics that merge across chunks. Only the model's MC layers are
random: the model runs with `training=False`, so BatchNormalization uses its
moving statistics and never updates them.
"""

import contextlib
import dataclasses
import logging
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from keras_uncertainty._validation import check_positive_int, check_seed
from keras_uncertainty.sampling.graph import (
    make_tiled_forward,
    num_members,
    structure_of,
)
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    RawSamples,
    Reducer,
    RegressionMoments,
)

# Rows (samples x inputs) per compiled call when `batch_size` is None: as many
# as keep the activations of one call near this many bytes.
_ROW_BUDGET_BYTES = 256 * 2**20
_MIN_ROWS, _MAX_ROWS, _UNKNOWN_MODEL_ROWS = 1024, 2**18, 16384

_COMPILED = weakref.WeakKeyDictionary()


class _BoundedTracingFilter(logging.Filter):
    """Drops TensorFlow's "frequent retracing" warning about our step
    function. TensorFlow counts traces per code object, so sampling a few
    models in a row (each with its own compiled step, traced a bounded
    number of times) looks to it like retracing in a loop."""

    def filter(self, record):
        return "_compiled_step.<locals>.step" not in record.getMessage()


@contextlib.contextmanager
def _bounded_tracing_quiet():
    """Installs the filter on TensorFlow's logger for one sampling call."""
    logger = tf.get_logger()
    log_filter = _BoundedTracingFilter()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


_WARNED_DETERMINISTIC = weakref.WeakSet()


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: {type(model).__name__}"
        )
    structure = structure_of(model)
    view = structure.view
    if view is not None and len(view.outputs) != 1:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a model "
            f"with a single output tensor. Received: a model with "
            f"{len(view.outputs)} outputs"
        )
    if (
        model not in _WARNED_DETERMINISTIC
        and structure.num_members is None
        and not structure.stochastic_layers
    ):
        _WARNED_DETERMINISTIC.add(model)
        warnings.warn(
            f"Model '{model.name}' has no layer that is stochastic at "
            "inference, so every sample is identical and the epistemic "
            "uncertainty is zero. Use `ku.layers.MCDropout` (or "
            "`ku.layers.to_mc_dropout(model)`) to sample with dropout.",
            UserWarning,
            stacklevel=4,
        )
    return structure


def _prepare_inputs(view, x):
    """Flattens `x` to numpy arrays of the model's input dtypes and checks it."""
    if x is None:
        raise ValueError(
            "Invalid value received for argument `x`. Expected an array or a "
            "structure of arrays. Received: x=None"
        )
    flat = [
        np.asarray(keras.ops.convert_to_numpy(v) if tf.is_tensor(v) else v)
        for v in tree.flatten(x)
    ]
    specs = None
    if view is not None and len(view.inputs) == len(flat) and not isinstance(x, dict):
        specs = view.inputs
    for i, array in enumerate(flat):
        name = "x" if len(flat) == 1 else f"x[{i}]"
        if array.ndim == 0:
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected an "
                f"array with a batch dimension. Received: a scalar {array!r}"
            )
        if specs is not None:
            expected = tuple(specs[i].shape)
            if len(expected) != array.ndim or any(
                e is not None and e != r for e, r in zip(expected, array.shape)
            ):
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected "
                    f"an array of rank {len(expected)} with shape {expected} "
                    f"(None: any size). Received: shape {array.shape}"
                )
            dtype = specs[i].dtype
        else:
            floating = np.issubdtype(array.dtype, np.floating)
            dtype = keras.config.floatx() if floating else array.dtype
        flat[i] = array.astype(dtype, copy=False)
        if np.issubdtype(flat[i].dtype, np.inexact) and not np.all(
            np.isfinite(flat[i])
        ):
            bad = int(np.size(flat[i]) - np.count_nonzero(np.isfinite(flat[i])))
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected "
                f"finite values. Received: {bad} NaN or infinite entries"
            )
    num_rows = {array.shape[0] for array in flat}
    if len(num_rows) != 1:
        raise ValueError(
            "Invalid value received for argument `x`. Expected every input "
            f"to have the same number of rows. Received: {sorted(num_rows)}"
        )
    n = num_rows.pop()
    if n == 0:
        raise ValueError(
            "Invalid value received for argument `x`. Expected at least one "
            "row. Received: 0 rows"
        )
    return flat, n


def _chunks(total, size):
    return [(start, min(start + size, total)) for start in range(0, total, size)]


class _CompiledStep:
    """A `tf.function(inputs, num_samples)` with a bounded number of traces.

    Static shapes let TensorFlow's graph optimizer do more, so the first few
    values of `num_samples` are passed as Python ints (one trace each) and
    the batch shape is left to `reduce_retracing`, which traces the first
    shape exactly and relaxes to an unknown batch size at the second. Later
    values of `num_samples` share one trace with a tensor-valued T. A call
    never retraces for a signature it has seen.
    """

    max_static_sample_counts = 4

    def __init__(self, step, floats_per_row):
        self.function = tf.function(step, reduce_retracing=True)
        self.floats_per_row = floats_per_row
        self.static_counts = set()

    def __call__(self, inputs, num_samples):
        if (
            num_samples in self.static_counts
            or len(self.static_counts) < self.max_static_sample_counts
        ):
            self.static_counts.add(num_samples)
        else:
            num_samples = tf.constant(num_samples, tf.int32)
        return self.function(inputs, num_samples)

    def tracing_count(self):
        return self.function.experimental_get_tracing_count()


def _compiled_step(model, reducer, structure, flat):
    """The cached `_CompiledStep` for this model, reducer and input signature."""
    specs = tuple((a.shape[1:], a.dtype.str) for a in flat)
    # The layers are part of the key: a Sequential model that gained a layer
    # gets a new twin.
    layers = tuple(id(layer) for layer in model.layers)
    key = (reducer.key, repr(structure), specs, layers)
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        forward, floats_per_row = make_tiled_forward(model)
        members = num_members(model) or 1

        def step(flat_inputs, num_samples):
            inputs = tree.pack_sequence_as(structure, list(flat_inputs))
            outputs = tree.flatten(forward(inputs, num_samples))
            if len(outputs) != 1:
                raise ValueError(
                    "Invalid value received for argument `model`. Expected a "
                    "model with a single output tensor. Received: "
                    f"{len(outputs)} outputs"
                )
            output = outputs[0]
            # Static sizes where known, so the reshape keeps shape information.
            dims = [
                static if static is not None else tf.shape(output)[i + 1]
                for i, static in enumerate(output.shape[1:])
            ]
            n = flat_inputs[0].shape[0]
            if n is None:
                n = tf.shape(flat_inputs[0])[0]
            by_sample = tf.reshape(output, [members * num_samples, n, *dims])
            return reducer.reduce(by_sample)

        per_model[key] = _CompiledStep(step, floats_per_row)
    return per_model[key]


def _seed_generators(model):
    """The seed generator of every stochastic layer; an error for a
    stochastic layer without one (a seed could not reach it)."""
    generators = []
    for layer in structure_of(model).stochastic_layers:
        generator = getattr(layer, "seed_generator", None)
        if not isinstance(generator, keras.random.SeedGenerator):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected every "
                "stochastic layer to draw from a `seed_generator` attribute "
                "(a keras.random.SeedGenerator) so that the seed reaches it. "
                f"Received: layer '{layer.name}' ({type(layer).__name__}) "
                "without one. Give it a `self.seed_generator`, or sample "
                "with seed=None."
            )
        generators.append(generator)
    return generators


def _reseed(model, seed):
    """Restarts every stochastic layer's random stream from `seed`."""
    generators = _seed_generators(model)
    # One independent key per generator; the counter half starts at 0 and
    # advances by one per call. Keys stay below 2**31 - 1 because the
    # TensorFlow backend reduces seeds modulo that before use.
    keys = np.random.SeedSequence(seed).generate_state(len(generators), np.uint32)
    for generator, key in zip(generators, keys):
        state = np.array([int(key) % (2**31 - 1), 0], dtype=np.int64)
        generator.state.assign(state.astype(generator.state.dtype))


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the samples of one call are arranged.

    Each of `members` networks (1 unless the model is an `Ensemble`) gives
    `per_member` samples for each of the `n` inputs: `num_samples` when the
    model has a stochastic layer, else 1 (an ensemble of deterministic
    networks gives one sample per member).
    """

    n: int
    members: int
    per_member: int

    @property
    def total(self):
        return self.members * self.per_member


def _rows_per_call(step, batch_size):
    if batch_size is not None:
        return batch_size
    if not step.floats_per_row:
        return _UNKNOWN_MODEL_ROWS
    rows = _ROW_BUDGET_BYTES // (4 * step.floats_per_row)
    return int(min(max(rows, _MIN_ROWS), _MAX_ROWS))


def reduce_samples(model, x, reducer, num_samples=20, batch_size=None, seed=None):
    """Draws Monte Carlo samples and reduces them with `reducer`.

    The engine under `ku.sample` and `ku.predict_*`: inputs and samples are
    cut into chunks that bound memory, each chunk is drawn and reduced by one
    compiled call (`reducer.reduce`), chunks of samples of the same inputs
    are merged (`reducer.merge`) and the result is built by
    `reducer.finalize`.

    Args:
        model: A `keras.Model` with a single output (see `ku.sample`).
        x: Inputs with N rows.
        reducer: A `ku.sampling.Reducer`.
        num_samples: Positive integer T.
        batch_size: Rows (samples x inputs) per compiled call; None picks it
            from the model's activation sizes.
        seed: Optional non-negative integer for reproducible samples.

    Returns:
        What `reducer.finalize` returns.
    """
    if not isinstance(reducer, Reducer):
        raise ValueError(
            "Invalid value received for argument `reducer`. Expected a "
            f"ku.sampling.Reducer. Received: {type(reducer).__name__}"
        )
    model_structure = _check_model(model)
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    seed = check_seed(seed)
    flat, n = _prepare_inputs(model_structure.view, x)
    structure = tree.map_structure(lambda _: 0, x)
    members = model_structure.num_members or 1
    stochastic = members == 1 or bool(model_structure.stochastic_layers)
    layout = _Layout(n, members, num_samples if stochastic else 1)
    if seed is not None:
        _reseed(model, seed)
    with _bounded_tracing_quiet():
        step = _compiled_step(model, reducer, structure, flat)
        rows = _rows_per_call(step, batch_size)
        inputs_per_call = max(1, rows // layout.total)
        samples_per_call = max(1, min(layout.per_member, rows // members))
        states = []
        for start, stop in _chunks(n, inputs_per_call):
            chunk = tuple(tf.convert_to_tensor(a[start:stop]) for a in flat)
            state, count = None, 0
            for t_start, t_stop in _chunks(layout.per_member, samples_per_call):
                part = tuple(np.asarray(v) for v in step(chunk, t_stop - t_start))
                part_count = members * (t_stop - t_start)
                state = (
                    part
                    if state is None
                    else reducer.merge(state, count, part, part_count)
                )
                count += part_count
            states.append(state)
    if len(states) == 1:
        merged = states[0]
    else:
        merged = tuple(
            np.concatenate(column, axis=reducer.row_axis) for column in zip(*states)
        )
    return reducer.finalize(merged, layout.total)


def sample(model, x, num_samples=20, batch_size=None, seed=None):
    """Draws Monte Carlo samples of a model's output.

    The batch is tiled so that one compiled call draws many samples (no Python
    loop over samples); only the model's stochastic layers (`ku.layers`) are
    random, everything else runs in inference mode.

    Args:
        model: A `keras.Model` with a single output, usually with MC layers.
            A model without any warns once: its samples are all identical.
        x: Inputs: an array (or a structure of arrays for a multi-input
            model) with N rows. Must be finite.
        num_samples: Positive integer T, the number of samples per input.
        batch_size: Rows (samples x inputs) per compiled call, which bounds
            memory. None: chosen from the model's activation sizes (about
            256 MiB of activations per call).
        seed: Optional non-negative integer. The same seed (with the same
            `x`, `num_samples` and `batch_size`) gives the same samples.

    Returns:
        numpy array of shape `(num_samples, N, *output_shape)`; for a
        `ku.Ensemble` of M members, `(M * num_samples, N, ...)` (member-major)
        when the members are stochastic, else `(M, N, ...)`.

    Example:

    >>> samples = ku.sample(model, x_test, num_samples=50, seed=0)
    >>> samples.std(axis=0)  # spread of the predictions
    """
    reducer = RawSamples(num_members(model) or 1)
    out = reduce_samples(model, x, reducer, num_samples, batch_size, seed)
    _check_finite_output(out, model)
    return out


def has_variance_head(model):
    """Whether `model`'s output is `(means, log-variances)`.

    True when the model (or, for a `ku.Ensemble`, its member loss) is
    compiled with a loss that declares `variance_head = True`, as
    `ku.losses.gaussian_nll` and `ku.losses.GaussianNLL` do (a custom
    heteroscedastic loss can declare it too); False when compiled with any
    other loss. An uncompiled model gives None: the caller decides.

    Args:
        model: A `keras.Model`.

    Returns:
        True, False, or None when the model has no loss.

    Example:

    >>> model.compile("adam", loss=ku.losses.gaussian_nll)
    >>> ku.has_variance_head(model)
    True
    """
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if isinstance(loss, str):
        resolved = keras.saving.get_registered_object(loss)
        if resolved is None:
            try:
                resolved = keras.losses.get(loss)
            except ValueError:
                return False
        loss = resolved
    return bool(getattr(loss, "variance_head", False))


def _output_width(view):
    return view.outputs[0].shape[-1] if view is not None else None


def _resolve_variance_head(model, variance_head):
    width = (
        _output_width(structure_of(model).view)
        if isinstance(model, keras.Model)
        else None
    )
    if variance_head is None:
        variance_head = (
            has_variance_head(model) if isinstance(model, keras.Model) else None
        )
        if variance_head is None:
            variance_head = width is not None and width % 2 == 0
    elif not isinstance(variance_head, bool):
        raise ValueError(
            "Invalid value received for argument `variance_head`. Expected "
            f"True, False or None. Received: variance_head={variance_head!r}"
        )
    if variance_head and width is not None and width % 2:
        raise ValueError(
            "Invalid value received for argument `model`. Expected an output "
            "whose last dimension is 2*k (k means, then k log-variances). "
            f"Received: last dimension {width}"
        )
    return variance_head


def predict_regression(
    model, x, num_samples=20, batch_size=None, seed=None, variance_head=None
):
    """Predictive mean and its aleatoric and epistemic standard deviations.

    Draws T samples of `(mu_t, log_var_t)` as `ku.sample` does and combines
    them inside the compiled call (see `RegressionPrediction` for the
    formulas); memory stays bounded whatever T and N are.

    Args:
        model: A `keras.Model` whose output is `(N, 2k)`, k means then k
            log-variances (trained with `ku.losses.gaussian_nll`), or `(N, k)`
            means only, in which case `aleatoric_std` is 0.
        x: Inputs with N rows; must be finite.
        num_samples: Positive integer T.
        batch_size: Rows per compiled call; None picks one (see `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        variance_head: Whether the output carries log-variances. None:
            `ku.has_variance_head(model)` (the compiled loss), and for an
            uncompiled model yes exactly when the last dimension is even.

    Returns:
        A `RegressionPrediction` of `(N, k)` arrays.

    Example:

    >>> pred = ku.predict_regression(model, x_test, num_samples=100)
    >>> pred.mean, pred.aleatoric_std, pred.epistemic_std
    """
    reducer = RegressionMoments(_resolve_variance_head(model, variance_head))
    prediction = reduce_samples(model, x, reducer, num_samples, batch_size, seed)
    _check_finite_output(prediction.std, model)
    return prediction


def predict_classification(
    model, x, num_samples=20, batch_size=None, seed=None, from_logits=False, votes=False
):
    """Predictive class probabilities with total, aleatoric and epistemic parts.

    Draws T samples of the class probabilities as `ku.sample` does and
    combines them inside the compiled call (see `ClassificationPrediction`
    for the formulas): predictive entropy, expected entropy, mutual
    information and, when asked for, the argmax votes of the samples.

    Args:
        model: A `keras.Model` whose output is `(N, C)` probabilities (or
            logits with `from_logits=True`); a single sigmoid unit `(N, 1)`
            is read as two classes.
        x: Inputs with N rows; must be finite.
        num_samples: Positive integer T.
        batch_size: Rows per compiled call; None picks one (see `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        from_logits: Whether the model outputs logits.
        votes: Whether to count how many samples choose each class
            (`prediction.votes`; None otherwise). It costs an argmax per
            sample, so it is off by default.

    Returns:
        A `ClassificationPrediction`.

    Example:

    >>> pred = ku.predict_classification(model, x_test, num_samples=100, votes=True)
    >>> pred.votes[61]  # how many of the 100 samples chose each digit
    """
    for name, value in (("from_logits", from_logits), ("votes", votes)):
        if not isinstance(value, bool):
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected True "
                f"or False. Received: {name}={value!r}"
            )
    reducer = ClassificationSummary(from_logits, votes)
    prediction = reduce_samples(model, x, reducer, num_samples, batch_size, seed)
    _check_finite_output(prediction.probs, model)
    return prediction


def _check_finite_output(values, model):
    if not np.all(np.isfinite(values)):
        warnings.warn(
            f"Model '{model.name}' produced NaN or infinite outputs for "
            "finite inputs (for a log-variance head: exp(log_var) overflows "
            "float32 above about 88). The returned values contain them.",
            RuntimeWarning,
            stacklevel=3,
        )
