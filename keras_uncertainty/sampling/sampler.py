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

from keras_uncertainty._validation import check_bool, check_positive_int, check_seed
from keras_uncertainty.sampling.graph import (
    make_tiled_forward,
    num_members,
    structure_of,
)
from keras_uncertainty.sampling.inputs import InputStream
from keras_uncertainty.sampling.progress import Progress, check_verbose
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
        return f"{reducing_forward.__name__}.<locals>.step" not in record.getMessage()


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


def check_model(model):
    """Checks `model` for sampling and returns its `ModelStructure`."""
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


def input_stream(model, x, keep_targets=False):
    """`x` as the `InputStream` sampling `model` reads (see `inputs.py`)."""
    return InputStream(structure_of(model).view, x, keep_targets=keep_targets)


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


def reducing_forward(model, reducer, structure):
    """A function `(flat_inputs, num_samples) -> reducer.reduce(samples)`.

    Not compiled: `_compiled_step` wraps it in a `tf.function`, and
    `ku.export` traces it into a SavedModel.

    Returns:
        `(function, floats_per_row)`, the second for sizing chunks.
    """
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

    return step, floats_per_row


def _compiled_step(model, reducer, structure, flat):
    """The cached `_CompiledStep` for this model, reducer and input signature."""
    specs = tuple((a.shape[1:], a.dtype.str) for a in flat)
    # The layers are part of the key: a Sequential model that gained a layer
    # gets a new twin.
    layers = tuple(id(layer) for layer in model.layers)
    key = (reducer.key, repr(structure), specs, layers)
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _CompiledStep(*reducing_forward(model, reducer, structure))
    return per_model[key]


def seed_generators(model):
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
    generators = seed_generators(model)
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
    `per_member` samples for each input: `num_samples` when the
    model has a stochastic layer, else 1 (an ensemble of deterministic
    networks gives one sample per member).
    """

    members: int
    per_member: int

    @property
    def total(self):
        return self.members * self.per_member


def sample_layout(structure, num_samples):
    """The `_Layout` of T samples of a model with `ModelStructure` `structure`:
    an ensemble of deterministic members gives one sample per member."""
    members = structure.num_members or 1
    stochastic = members == 1 or bool(structure.stochastic_layers)
    return _Layout(members, num_samples if stochastic else 1)


def _rows_per_call(step, batch_size):
    if batch_size is not None:
        return batch_size
    if not step.floats_per_row:
        return _UNKNOWN_MODEL_ROWS
    rows = _ROW_BUDGET_BYTES // (4 * step.floats_per_row)
    return int(min(max(rows, _MIN_ROWS), _MAX_ROWS))


def reduce_samples(
    model, x, reducer, num_samples=20, batch_size=None, seed=None, verbose="auto"
):
    """Draws Monte Carlo samples and reduces them with `reducer`.

    The engine under `ku.sample` and `ku.predict_*`: inputs and samples are
    cut into chunks that bound memory, each chunk is drawn and reduced by one
    compiled call (`reducer.reduce`), chunks of samples of the same inputs
    are merged (`reducer.merge`) and the result is built by
    `reducer.finalize`. A dataset is streamed through the same chunks as the
    arrays it holds would be, so the results are the same.

    Args:
        model: A `keras.Model` with a single output (see `ku.sample`).
        x: Inputs with N rows: anything `model.predict` takes.
        reducer: A `ku.sampling.Reducer`.
        num_samples: Positive integer T.
        batch_size: Rows (samples x inputs) per compiled call; None picks it
            from the model's activation sizes.
        seed: Optional non-negative integer for reproducible samples.
        verbose: "auto", 0, 1 or 2, as in `model.predict`: a progress bar
            over the compiled calls ("auto": only on an interactive display,
            and only for work that lasts more than a second).

    Returns:
        What `reducer.finalize` returns.
    """
    if not isinstance(reducer, Reducer):
        raise ValueError(
            "Invalid value received for argument `reducer`. Expected a "
            f"ku.sampling.Reducer. Received: {type(reducer).__name__}"
        )
    model_structure = check_model(model)
    num_samples = check_positive_int(num_samples, "num_samples")
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    seed = check_seed(seed)
    check_verbose(verbose)
    stream = x if isinstance(x, InputStream) else InputStream(model_structure.view, x)
    layout = sample_layout(model_structure, num_samples)
    members = layout.members
    if seed is not None:
        _reseed(model, seed)
    with _bounded_tracing_quiet():
        step = _compiled_step(model, reducer, stream.structure, stream.first)
        rows = _rows_per_call(step, batch_size)
        inputs_per_call = max(1, rows // layout.total)
        samples_per_call = max(1, min(layout.per_member, rows // members))
        sample_chunks = _chunks(layout.per_member, samples_per_call)
        target = None
        if stream.num_rows is not None:
            target = -(-stream.num_rows // inputs_per_call) * len(sample_chunks)
        progress = Progress(verbose, target)
        states, calls = [], 0
        for chunk in stream.chunks(inputs_per_call):
            chunk = tuple(tf.convert_to_tensor(a) for a in chunk)
            state, count = None, 0
            for t_start, t_stop in sample_chunks:
                part = tuple(np.asarray(v) for v in step(chunk, t_stop - t_start))
                part_count = members * (t_stop - t_start)
                state = (
                    part
                    if state is None
                    else reducer.merge(state, count, part, part_count)
                )
                count += part_count
                calls += 1
                progress.update(calls)
            states.append(state)
        progress.finish(calls)
    if len(states) == 1:
        merged = states[0]
    else:
        merged = tuple(
            np.concatenate(column, axis=reducer.row_axis) for column in zip(*states)
        )
    return reducer.finalize(merged, layout.total)


def sample(model, x, num_samples=20, batch_size=None, seed=None, verbose="auto"):
    """Draws Monte Carlo samples of a model's output.

    The batch is tiled so that one compiled call draws many samples (no Python
    loop over samples); only the model's stochastic layers (`ku.layers`) are
    random, everything else runs in inference mode.

    Args:
        model: A `keras.Model` with a single output, usually with MC layers.
            A model without any warns once: its samples are all identical.
        x: Inputs with N rows, anything `model.predict` takes: an array, a
            tensor, a list of rows, a structure of arrays for a multi-input
            model, a batched `tf.data.Dataset` (elements `x`, `(x,)`,
            `(x, y)` or `(x, y, w)`; targets are ignored), a
            `keras.utils.PyDataset` or a generator of batches. Datasets are
            streamed. Must be finite.
        num_samples: Positive integer T, the number of samples per input.
        batch_size: Rows (samples x inputs) per compiled call, which bounds
            memory. None: chosen from the model's activation sizes (about
            256 MiB of activations per call).
        seed: Optional non-negative integer. The same seed (with the same
            `x`, `num_samples` and `batch_size`) gives the same samples,
            whether `x` is in memory or streamed.
        verbose: "auto", 0, 1 or 2, as in `model.predict`. "auto" shows a
            progress bar only on a terminal or notebook, and only once the
            call has lasted a second.

    Returns:
        numpy array of shape `(num_samples, N, *output_shape)`; for a
        `ku.Ensemble` of M members, `(M * num_samples, N, ...)` (member-major)
        when the members are stochastic, else `(M, N, ...)`.

    Example:

    >>> samples = ku.sample(model, x_test, num_samples=50, seed=0)
    >>> samples.std(axis=0)  # spread of the predictions
    """
    reducer = RawSamples(num_members(model) or 1)
    out = reduce_samples(model, x, reducer, num_samples, batch_size, seed, verbose)
    _check_finite_output(model, samples=out)
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


def resolve_variance_head(model, variance_head):
    """`variance_head` as given, or read from the compiled loss (see
    `predict_regression`), checked against the output width."""
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
    model,
    x,
    num_samples=20,
    batch_size=None,
    seed=None,
    variance_head=None,
    verbose="auto",
):
    """Predictive mean and its aleatoric and epistemic standard deviations.

    Draws T samples of `(mu_t, log_var_t)` as `ku.sample` does and combines
    them inside the compiled call (see `RegressionPrediction` for the
    formulas); memory stays bounded whatever T and N are.

    Args:
        model: A `keras.Model` whose output is `(N, 2k)`, k means then k
            log-variances (trained with `ku.losses.gaussian_nll`), or `(N, k)`
            means only, in which case `aleatoric_std` is 0.
        x: Inputs with N rows, anything `model.predict` takes (see
            `ku.sample`); must be finite.
        num_samples: Positive integer T.
        batch_size: Rows per compiled call; None picks one (see `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        variance_head: Whether the output carries log-variances. None:
            `ku.has_variance_head(model)` (the compiled loss), and for an
            uncompiled model yes exactly when the last dimension is even.
        verbose: "auto", 0, 1 or 2 (see `ku.sample`).

    Returns:
        A `RegressionPrediction` of `(N, k)` arrays.

    Example:

    >>> pred = ku.predict_regression(model, x_test, num_samples=100)
    >>> pred.mean, pred.aleatoric_std, pred.epistemic_std
    """
    reducer = RegressionMoments(resolve_variance_head(model, variance_head))
    prediction = reduce_samples(
        model, x, reducer, num_samples, batch_size, seed, verbose
    )
    _check_finite_output(model, **dataclasses.asdict(prediction))
    return prediction


def predict_classification(
    model,
    x,
    num_samples=20,
    batch_size=None,
    seed=None,
    from_logits=False,
    votes=False,
    verbose="auto",
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
        x: Inputs with N rows, anything `model.predict` takes (see
            `ku.sample`); must be finite.
        num_samples: Positive integer T.
        batch_size: Rows per compiled call; None picks one (see `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        from_logits: Whether the model outputs logits. Without it the
            outputs must be probabilities (in [0, 1], each row summing to
            1), else a ValueError suggests `from_logits=True`.
        votes: Whether to count how many samples choose each class
            (`prediction.votes`; None otherwise). It costs an argmax per
            sample, so it is off by default.
        verbose: "auto", 0, 1 or 2 (see `ku.sample`).

    Returns:
        A `ClassificationPrediction`.

    Example:

    >>> pred = ku.predict_classification(model, x_test, num_samples=100, votes=True)
    >>> pred.votes[61]  # how many of the 100 samples chose each digit
    """
    check_bool(from_logits, "from_logits")
    check_bool(votes, "votes")
    reducer = ClassificationSummary(from_logits, votes)
    prediction = reduce_samples(
        model, x, reducer, num_samples, batch_size, seed, verbose
    )
    _check_probabilities(prediction, from_logits)
    _check_finite_output(model, **dataclasses.asdict(prediction))
    return prediction


# How far the mean of T probability vectors may stray from [0, 1] and from
# summing to 1 before it is taken for something else (float16 softmax rounds
# to about 1e-3 per row).
_PROBABILITY_TOLERANCE = 5e-3


def _check_probabilities(prediction, from_logits):
    if from_logits:
        return
    probs = prediction.probs
    finite = np.isfinite(probs).all(axis=-1)
    low = float(np.min(probs[finite], initial=0.0))
    high = float(np.max(probs[finite], initial=1.0))
    off_by = np.abs(probs[finite].sum(axis=-1) - 1.0)
    worst = float(np.max(off_by, initial=0.0))
    if (
        low < -_PROBABILITY_TOLERANCE
        or high > 1 + _PROBABILITY_TOLERANCE
        or (worst > _PROBABILITY_TOLERANCE)
    ):
        raise ValueError(
            "Invalid value received for argument `model`. Expected outputs "
            "that are probabilities (in [0, 1], each row summing to 1). "
            f"Received: values in [{low:.3g}, {high:.3g}] with rows summing "
            f"up to {worst:.3g} away from 1. If the model outputs logits, "
            "pass from_logits=True."
        )


def _check_finite_output(model, **fields):
    bad = [
        name
        for name, values in fields.items()
        if values is not None
        and np.issubdtype(np.asarray(values).dtype, np.inexact)
        and not np.all(np.isfinite(values))
    ]
    if bad:
        warnings.warn(
            f"Model '{model.name}' produced NaN or infinite values in "
            f"{', '.join(bad)} for finite inputs (for a log-variance head: "
            "exp(log_var) overflows float32 above about 88). The returned "
            "values contain them.",
            RuntimeWarning,
            stacklevel=3,
        )
