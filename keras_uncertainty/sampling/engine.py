"""The engine: chunked, compiled sampling of any `SampledModel`, reduced.

One `tf.function` per model, reducer and input signature draws a chunk of
samples for a chunk of inputs in one call and reduces them in the graph
(`reducer.reduce`); chunks of samples of the same inputs merge
(`reducer.merge`), chunks of inputs are concatenated, and the result is
built by `reducer.finalize`. Batch size, number of samples, the call's key
and the chunk's offsets are arguments of the compiled step, so none of them
retraces and no state is shared between calls: sampling is thread-safe.

Only the model's stochastic layers are random: the model runs with
`training=False`, so BatchNormalization uses its moving statistics.

Under a `tf.distribute` strategy (the model's, or the one in scope) each
chunk of inputs is split across the replicas; the draws depend on the
inputs' global positions, so the results equal the single-device ones.
"""

import contextlib
import json
import logging
import threading
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from keras_uncertainty._validation import check_positive_int, check_seed
from keras_uncertainty.sampling import keys
from keras_uncertainty.sampling.contract import named_outputs, sampled_model
from keras_uncertainty.sampling.inputs import InputStream
from keras_uncertainty.sampling.progress import Progress, check_verbose
from keras_uncertainty.sampling.reducers import Reducer

# Rows (samples x inputs) per compiled call when `batch_size` is None: as many
# as keep the activations of one call near this many bytes.
_ROW_BUDGET_BYTES = 256 * 2**20
_MIN_ROWS, _MAX_ROWS, _UNKNOWN_MODEL_ROWS = 1024, 2**18, 16384

_COMPILED = weakref.WeakKeyDictionary()
_COMPILED_LOCK = threading.Lock()
# Layers that draw from their own generator (not from the call key) share
# state between calls: seeded calls on such models run one at a time.
_LEGACY_LOCK = threading.RLock()
_WARNED = weakref.WeakSet()
_WARNED_ONE_PER_MEMBER = weakref.WeakSet()

# Samples per input when `num_samples` is None, in `ku.sample`, `ku.predict_*`
# and `ku.export` alike: the relative standard error of a standard deviation
# estimated from T samples is about 1 / sqrt(2 (T - 1)), 7% at T = 100
# against 16% at T = 20, and the mean's error falls as 1 / sqrt(T).
DEFAULT_NUM_SAMPLES = 100


class _BoundedTracingFilter(logging.Filter):
    """Drops TensorFlow's "frequent retracing" warning about our step
    function. TensorFlow counts traces per code object, so sampling a few
    models in a row (each with its own compiled step, traced a bounded
    number of times) looks to it like retracing in a loop."""

    def filter(self, record):
        return f"{reducing_step.__name__}.<locals>.step" not in record.getMessage()


@contextlib.contextmanager
def _bounded_tracing_quiet():
    logger = tf.get_logger()
    log_filter = _BoundedTracingFilter()
    logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.removeFilter(log_filter)


def resolve_num_samples(num_samples):
    """`num_samples` checked, or `DEFAULT_NUM_SAMPLES` for None."""
    if num_samples is None:
        return DEFAULT_NUM_SAMPLES
    return check_positive_int(num_samples, "num_samples", allow_none=True)


def check_model(model, num_samples=None, reducer=None):
    """Checks `model` for sampling; returns its `SampledModel`.

    Warns once per model when its samples cannot differ: a model without a
    stochastic layer (unless `reducer` reads the uncertainty from one pass,
    `Reducer.uncertainty_in_output`), or a mixture of deterministic members
    (`ku.Ensemble`) asked for `num_samples > 1` (it gives one sample per
    member whatever `num_samples` says).

    Args:
        model: A `keras.Model`, or its `SampledModel` (see
            `ku.sampling.sampled_model`).
        num_samples: The number of samples asked for explicitly, or None
            (the default).
        reducer: The `ku.sampling.Reducer` the samples go to, or None.

    Returns:
        The model's `SampledModel` (see `ku.sampling.sampled_model`).
    """
    adapter = sampled_model(model)
    model = adapter.model
    if (
        num_samples is not None
        and num_samples > 1
        and adapter.num_members > 1
        and not adapter.stochastic
        and model not in _WARNED_ONE_PER_MEMBER
    ):
        _WARNED_ONE_PER_MEMBER.add(model)
        warnings.warn(
            f"Model '{model.name}' is a mixture of {adapter.num_members} "
            "members without a stochastic layer: it gives one sample per "
            f"member ({adapter.num_members} in all) whatever `num_samples` "
            f"says (num_samples={num_samples} asked for). Leave num_samples "
            "at its default, or give the members MC layers.",
            UserWarning,
            stacklevel=4,
        )
    if (
        model not in _WARNED
        and not adapter.stochastic
        and adapter.num_members == 1
        and not adapter.uncertainty_in_output
        and not getattr(reducer, "uncertainty_in_output", False)
    ):
        _WARNED.add(model)
        warnings.warn(
            f"Model '{model.name}' has no layer that is stochastic at "
            "inference, so every sample is identical and the epistemic "
            "uncertainty is zero. Use `ku.layers.MCDropout` (or "
            "`ku.layers.to_mc_dropout(model)`) to sample with dropout.",
            UserWarning,
            stacklevel=4,
        )
    return adapter


def input_stream(model, x, keep_targets=False):
    """`x` as the `InputStream` that sampling `model` reads.

    Args:
        model: A `keras.Model`, or its `SampledModel`.
        x: Anything `model.predict` takes.
        keep_targets: Whether to keep the targets of a streamed `x`.

    Returns:
        An `InputStream`.
    """
    return InputStream(sampled_model(model).input_view, x, keep_targets=keep_targets)


class _CompiledStep:
    """A `tf.function` of one chunk with a bounded number of traces.

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
        self.concrete = {}
        self.lock = threading.Lock()

    def sample_count(self, num_samples):
        """`num_samples` as the step takes it: a Python int for the first
        few values seen, then a tensor."""
        with self.lock:
            if (
                num_samples in self.static_counts
                or len(self.static_counts) < self.max_static_sample_counts
            ):
                self.static_counts.add(num_samples)
                return num_samples
        return tf.constant(num_samples, tf.int32)

    # Concrete functions kept per exact call signature (a few chunk shapes a
    # run): calling one skips `tf.function`'s dispatch, about 0.3 ms a call,
    # which is most of the engine's fixed cost on a small model.
    max_concrete = 32

    def __call__(self, inputs, num_samples, position, targets):
        num_samples = self.sample_count(num_samples)
        key = (
            tuple((tuple(a.shape), a.dtype) for a in inputs),
            num_samples if isinstance(num_samples, int) else None,
            None if targets is None else (tuple(targets.shape), targets.dtype),
        )
        with self.lock:
            concrete = self.concrete.get(key)
        if concrete is None:
            concrete = self.function.get_concrete_function(
                inputs, num_samples, position, targets
            )
            with self.lock:
                if len(self.concrete) >= self.max_concrete:
                    self.concrete.clear()
                self.concrete[key] = concrete
        return concrete(inputs, num_samples, position, targets)

    def tracing_count(self):
        return self.function.experimental_get_tracing_count()


def reducing_step(model, reducer, structure):
    """The engine's step for `model` and `reducer`, not compiled.

    `step(flat_inputs, num_samples, position, targets)` draws `num_samples`
    samples per member of the n inputs `flat_inputs` (flat, in `structure`)
    with the randomness of `position`, a uint32 tensor `(key_0, key_1,
    sample_offset, row_offset)`: the call's key and the global index of the
    chunk's first sample and first input (see `call_position`). It returns
    `reducer.reduce(samples)` (or `reducer.reduce(samples, targets)` for a
    reducer with `needs_targets`). `ku.export` traces it into a SavedModel.

    Args:
        model: A `keras.Model`, or its `SampledModel`.
        reducer: A `ku.sampling.Reducer`.
        structure: The structure of the model's inputs (a tree of 0s).

    Returns:
        `(step, floats_per_row)`, the second for sizing chunks.
    """
    adapter = sampled_model(model)
    members = adapter.num_members

    def step(flat_inputs, num_samples, position, targets=None):
        inputs = tree.pack_sequence_as(structure, list(flat_inputs))
        n = flat_inputs[0].shape[0]
        if n is None:
            n = tf.shape(flat_inputs[0])[0]
        position = tf.convert_to_tensor(position, tf.uint32)
        call_key = keys.CallKey(
            position[:2],
            tf.cast(position[2], tf.int32),
            tf.cast(position[3], tf.int32),
            num_samples,
            n,
        )
        with keys.sampling_call(call_key):
            outputs = adapter.forward(inputs, num_samples)

        def by_sample(output):
            # Static sizes where known, so the reshape keeps shape information.
            dims = [
                static if static is not None else tf.shape(output)[i + 1]
                for i, static in enumerate(output.shape[1:])
            ]
            return tf.reshape(output, [members * num_samples, n, *dims])

        flat = tree.flatten(outputs)
        if reducer.takes_structure:
            samples = {
                name: by_sample(value)
                for name, value in named_outputs(outputs, adapter.output_names)
            }
        elif len(flat) == 1:
            samples = by_sample(flat[0])
        else:
            names = [name for name, _ in named_outputs(outputs, adapter.output_names)]
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                f"model with a single output for {type(reducer).__name__}, or "
                "one output chosen (`output=`). Received: a model with "
                f"{len(flat)} outputs {names}"
            )
        if reducer.needs_targets:
            return reducer.reduce(samples, targets)
        return reducer.reduce(samples)

    floats = adapter.floats_per_row
    return step, None if floats is None else floats * members


def reducer_key(reducer):
    """The compile-cache key of `reducer`: its qualified class name and its
    configuration, so reducers with different parameters never share a
    graph."""
    cls = type(reducer)
    config = reducer.get_config()
    try:
        text = json.dumps(config, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(config)
    return (f"{cls.__module__}.{cls.__qualname__}", text)


def _compiled_step(adapter, reducer, structure, flat, targets):
    model = adapter.model
    specs = tuple((a.shape[1:], a.dtype.str) for a in flat)
    target_spec = None if targets is None else (targets.shape[1:], targets.dtype.str)
    layers = tuple(id(layer) for layer in getattr(model, "layers", ()))
    token = getattr(adapter, "compile_token", None)
    key = (reducer_key(reducer), repr(structure), specs, target_spec, layers, token)
    with _COMPILED_LOCK:
        per_model = _COMPILED.setdefault(model, {})
        if key not in per_model:
            per_model[key] = _CompiledStep(*reducing_step(adapter, reducer, structure))
        return per_model[key]


def release_compiled(adapter):
    """Drops the compiled steps traced for `adapter` (kept per model until
    the model goes): for an adapter that is replaced while its model lives
    on, such as a refitted Laplace posterior's predictive over its network,
    whose steps hold the old posterior as constants."""
    token = getattr(adapter, "compile_token", None)
    model = adapter.model
    with _COMPILED_LOCK:
        per_model = _COMPILED.get(model) if model is not None else None
        if per_model:
            for key in [key for key in per_model if key[-1] == token]:
                del per_model[key]


def _legacy_layers(adapter):
    """Stochastic layers whose draws do not follow the call key."""
    return [
        layer
        for layer in adapter.stochastic_layers()
        if not getattr(layer, "draws_from_call_key", False)
    ]


def _legacy_generators(layers):
    generators = []
    for layer in layers:
        generator = getattr(layer, "seed_generator", None)
        if not isinstance(generator, keras.random.SeedGenerator):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected every "
                "stochastic layer to draw from a `seed_generator` attribute "
                "(a keras.random.SeedGenerator) so that the seed reaches it. "
                f"Received: layer '{layer.name}' ({type(layer).__name__}) "
                "without one. Subclass `ku.layers.MCLayer`, or sample with "
                "seed=None."
            )
        generators.append(generator)
    return generators


@contextlib.contextmanager
def _legacy_randomness(model, layers, seed):
    """Layers that draw from their own generator: the seed restarts their
    streams, and seeded calls hold a lock so that threads do not interleave
    (their results still depend on chunking and `batch_size`)."""
    if not layers:
        yield
        return
    if model not in _WARNED:
        _WARNED.add(model)
        warnings.warn(
            f"Model '{model.name}': layer '{layers[0].name}' "
            f"({type(layers[0]).__name__}) draws from its own generator, "
            "not from the sampling call's key, so its samples depend on "
            "`batch_size` and chunking, and seeded calls run one at a time. "
            "Subclass `ku.layers.MCLayer` and draw with `self.random_*`.",
            UserWarning,
            stacklevel=5,
        )
    if seed is None:
        yield
        return
    generators = _legacy_generators(layers)
    with _LEGACY_LOCK:
        # One independent key per generator, below 2**31 - 1 (the TensorFlow
        # backend reduces seeds modulo that before use).
        states = np.random.SeedSequence(seed).generate_state(len(generators), np.uint32)
        for generator, state in zip(generators, states):
            value = np.array([int(state) % (2**31 - 1), 0], dtype=np.int64)
            generator.state.assign(value.astype(generator.state.dtype))
        yield


def sample_floats(adapter):
    """Floats one sample holds whatever its rows (its weight draws): the
    adapter's `floats_per_sample`, else the sum of its stochastic layers'."""
    floats = adapter.floats_per_sample
    if floats is None:
        floats = sum(
            int(getattr(layer, "floats_per_sample", 0) or 0)
            for layer in adapter.stochastic_layers()
        )
    return int(floats)


def _samples_per_call(per_member, rows, members, inputs_per_call, per_sample):
    """Samples per member in one call: as many as the rows allow, and, for
    a model that draws weights per sample, as many as keep those draws near
    `_ROW_BUDGET_BYTES` (at least one)."""
    samples = max(1, min(per_member, rows // (members * inputs_per_call)))
    if per_sample:
        samples = min(samples, max(1, _ROW_BUDGET_BYTES // (4 * per_sample)))
    return samples


def _rows_per_call(step, max_rows_per_call):
    """Rows (samples x inputs) one compiled call may hold: `max_rows_per_call`
    when given, else as many as keep its activations near
    `_ROW_BUDGET_BYTES`."""
    if max_rows_per_call is not None:
        return max_rows_per_call
    if not step.floats_per_row:
        return _UNKNOWN_MODEL_ROWS
    rows = _ROW_BUDGET_BYTES // (4 * step.floats_per_row)
    return int(min(max(rows, _MIN_ROWS), _MAX_ROWS))


def _chunks(total, size):
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _strategy(model):
    """The distribution strategy to split rows over, or None for one device."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return None
    return strategy


def call_position(key, sample_offset, row_offset):
    """The step's `position` argument: the uint32 tensor `(key_0, key_1,
    sample_offset, row_offset)`.

    Args:
        key: `(2,)` uint32 key (`keys.key_from_seed`).
        sample_offset: Global index of the chunk's first sample.
        row_offset: Global index of the chunk's first input.

    Returns:
        A `(4,)` uint32 tensor.
    """
    return tf.constant(np.array([key[0], key[1], sample_offset, row_offset], np.uint32))


class _Runner:
    """Runs the compiled step on one chunk, on one device or across the
    replicas of a strategy (each replica a contiguous part of the rows)."""

    def __init__(self, step, strategy, key):
        self.step = step
        self.strategy = strategy
        self.key = key

    def __call__(self, chunk, targets, num_samples, sample_offset, row_offset):
        replicas = 1 if self.strategy is None else self.strategy.num_replicas_in_sync
        rows = chunk[0].shape[0]
        if replicas == 1 or rows < replicas:
            result = self.step(
                tuple(tf.convert_to_tensor(a) for a in chunk),
                num_samples,
                call_position(self.key, sample_offset, row_offset),
                None if targets is None else tf.convert_to_tensor(targets),
            )
            return [tree.map_structure(np.asarray, result)]
        bounds = np.linspace(0, rows, replicas + 1).astype(int)
        parts = [
            (
                tuple(tf.convert_to_tensor(a[lo:hi]) for a in chunk),
                None if targets is None else tf.convert_to_tensor(targets[lo:hi]),
                call_position(self.key, sample_offset, row_offset + int(lo)),
            )
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]
        values = self.strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group]
        )
        num_samples = self.step.sample_count(num_samples)

        def replica_step(part):
            inputs, part_targets, position = part
            return self.step.function(inputs, num_samples, position, part_targets)

        with _bounded_tracing_quiet():
            outputs = self.strategy.run(replica_step, args=(values,))
        # Per-replica values are leaves of tf.nest (not of keras.tree).
        local = [
            self.strategy.experimental_local_results(value)
            for value in tf.nest.flatten(outputs)
        ]
        return [
            tf.nest.pack_sequence_as(outputs, [np.asarray(v[r]) for v in local])
            for r in range(len(parts))
        ]


def _check_targets(reducer, y, stream):
    if not reducer.needs_targets:
        if y is not None:
            raise ValueError(
                "Invalid value received for argument `y`. Expected None: "
                f"{type(reducer).__name__} does not use targets. Received: "
                f"an argument of type {type(y).__name__}"
            )
        return None
    if y is None:
        if stream.num_rows is not None:
            raise ValueError(
                "Invalid value received for argument `y`. Expected the "
                f"targets that {type(reducer).__name__} scores (one row per "
                "input), or a dataset of (x, y) batches. Received: y=None"
            )
        return None
    y = np.asarray(keras.ops.convert_to_numpy(y) if tf.is_tensor(y) else y)
    if stream.num_rows is None or y.shape[0] != stream.num_rows:
        raise ValueError(
            "Invalid value received for argument `y`. Expected one row per "
            f"input ({stream.num_rows} in-memory rows). Received: shape "
            f"{y.shape}"
        )
    if np.issubdtype(y.dtype, np.inexact) and not np.all(np.isfinite(y)):
        raise ValueError(
            "Invalid value received for argument `y`. Expected finite "
            "targets. Received: NaN or infinite values"
        )
    return y


def reduce_samples(
    model,
    x,
    reducer,
    num_samples=None,
    batch_size=None,
    seed=None,
    verbose="auto",
    y=None,
    max_rows_per_call=None,
):
    """Draws Monte Carlo samples and reduces them with `reducer`.

    The engine under `ku.sample` and `ku.predict_*`: inputs and samples are
    cut into chunks that bound memory, each chunk is drawn and reduced by one
    compiled call (`reducer.reduce`), chunks of samples of the same inputs
    are merged (`reducer.merge`) and the result is built by
    `reducer.finalize`. A dataset is streamed through the same chunks as the
    arrays it holds would be. Sample s of input i is the same whatever the
    chunking, `batch_size`, thread or device, given the same seed.

    A model with several outputs is sampled once per call for all of them:
    a reducer with `takes_structure = True` (`ku.sampling.PerOutput`) gets
    the samples of every output by name; any other reducer needs a model
    with a single output.

    Args:
        model: A `keras.Model` (see `ku.sample`), one with
            `as_sampled_model()` (see `ku.sampling.SampledModel`), or that
            `SampledModel` itself (resolved once by the caller).
        x: Inputs with N rows: anything `model.predict` takes.
        reducer: A `ku.sampling.Reducer`.
        num_samples: Positive integer T; None: `DEFAULT_NUM_SAMPLES` (100).
        batch_size: Inputs per compiled call, as in `model.predict`; None
            picks it from `max_rows_per_call`. When `batch_size` inputs times
            T samples exceed that budget, the samples are drawn in several
            calls and merged.
        seed: Optional non-negative integer for reproducible samples; None
            draws a fresh key from numpy's global generator for this call.
        verbose: "auto", 0, 1 or 2, as in `model.predict`.
        y: Targets with N rows, for a reducer that scores them
            (`reducer.needs_targets`, e.g. `ku.sampling.MixtureNLL`); with a
            dataset of `(x, y)` batches, leave it None.
        max_rows_per_call: Positive integer, the most rows (samples x
            inputs) one compiled call holds, which bounds its memory; None
            picks it from the model's activation sizes (about 256 MiB of
            activations per call).

    Returns:
        What `reducer.finalize` returns.

    Example:

    >>> result = ku.sampling.reduce_samples(model, x, MyReducer(), 100)
    """
    if not isinstance(reducer, Reducer):
        raise ValueError(
            "Invalid value received for argument `reducer`. Expected a "
            f"ku.sampling.Reducer. Received: {type(reducer).__name__}"
        )
    asked = check_positive_int(num_samples, "num_samples", allow_none=True)
    adapter = check_model(model, asked, reducer)
    model = adapter.model
    num_samples = resolve_num_samples(asked)
    batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
    max_rows_per_call = check_positive_int(
        max_rows_per_call, "max_rows_per_call", allow_none=True
    )
    seed = check_seed(seed)
    check_verbose(verbose)
    keep_targets = reducer.needs_targets and y is None
    if isinstance(x, InputStream):
        stream = x
    else:
        stream = InputStream(adapter.input_view, x, keep_targets=keep_targets)
    y = _check_targets(reducer, y, stream)
    members = adapter.num_members
    per_member = adapter.samples_per_member(num_samples)
    total = members * per_member
    legacy = _legacy_layers(adapter)
    with _legacy_randomness(model, legacy, seed), _bounded_tracing_quiet():
        first_targets = None
        if reducer.needs_targets:
            first_targets = y[:1] if y is not None else stream.target_rows(0, 1)
        step = _compiled_step(
            adapter, reducer, stream.structure, stream.first, first_targets
        )
        rows = _rows_per_call(step, max_rows_per_call)
        inputs_per_call = batch_size or max(1, rows // total)
        samples_per_call = _samples_per_call(
            per_member, rows, members, inputs_per_call, sample_floats(adapter)
        )
        sample_chunks = _chunks(per_member, samples_per_call)
        target = None
        if stream.num_rows is not None:
            target = -(-stream.num_rows // inputs_per_call) * len(sample_chunks)
        progress = Progress(verbose, target)
        runner = _Runner(step, _strategy(model), keys.key_from_seed(seed))
        states, calls, row_offset = [], 0, 0
        for chunk in stream.chunks(inputs_per_call):
            n = chunk[0].shape[0]
            targets = None
            if reducer.needs_targets:
                targets = (
                    y[row_offset : row_offset + n]
                    if y is not None
                    else stream.target_rows(row_offset, row_offset + n)
                )
            state, count = None, 0
            for t_start, t_stop in sample_chunks:
                parts = runner(chunk, targets, t_stop - t_start, t_start, row_offset)
                part = parts[0] if len(parts) == 1 else reducer.concat(parts)
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
            row_offset += n
        progress.finish(calls)
    state = states[0] if len(states) == 1 else reducer.concat(states)
    return reducer.finalize(state, total)
