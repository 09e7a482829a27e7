"""The public front of sampling: `ku.sample` and `ku.predict_*`.

Each function resolves the model's `SampledModel` once, reads what its
output means from its `OutputSpec` (`outputs.py`, also read by
`ku.export` and the callbacks; the reducer of the task comes with it) and
runs the engine (`engine.reduce_samples`) on that `SampledModel`; the
engine knows nothing of tasks. The outputs of a multi-output model are
reduced by `PerOutput`, one reducer per output over the samples of one
pass.
"""

import dataclasses
import warnings

import keras
import numpy as np
from keras import tree

from keras_uncertainty import _budget
from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.sampling.contract import sampled_model
from keras_uncertainty.sampling.engine import (
    check_model,
    input_stream,
    reduce_samples,
    resolve_num_samples,
)
from keras_uncertainty.sampling.outputs import output_spec, output_specs
from keras_uncertainty.sampling.reducers import PerOutput, RawSamples

# The most bytes `ku.sample` returns, and one `ku.export` serve call may hold
# in activations for a single input row: a larger request is refused before
# any work, with its size and how to split it. Defined with the package's
# other memory budgets in `keras_uncertainty._budget`.
MAX_RESULT_BYTES = _budget.MAX_RESULT_BYTES
format_bytes = _budget.format_bytes


def _check_result_size(adapter, stream, num_samples):
    """Refuses a `ku.sample` whose result would exceed `MAX_RESULT_BYTES`."""
    view = adapter.input_view
    n = stream.num_rows
    if view is None or n is None:
        return
    per_input = 0
    for tensor in tree.flatten(view.output):
        dims = tensor.shape[1:]
        if any(d is None for d in dims):
            return
        itemsize = np.dtype(keras.backend.standardize_dtype(tensor.dtype)).itemsize
        per_input += int(np.prod(dims, dtype=np.int64)) * itemsize
    draws = adapter.num_members * adapter.samples_per_member(num_samples)
    size = draws * n * per_input
    if size <= MAX_RESULT_BYTES:
        return
    fits = MAX_RESULT_BYTES // (draws * per_input)
    if fits >= 1:
        how = (
            f"call ku.sample on slices of x of at most {fits} inputs and "
            "process each before the next"
        )
    else:
        how = "draw fewer samples per call and concatenate several calls"
    raise ValueError(
        "Invalid value received for argument `num_samples`. Expected a "
        f"result of at most {MAX_RESULT_BYTES // 2**30} GiB "
        "(ku.sampling.sampler.MAX_RESULT_BYTES). Received: "
        f"num_samples={num_samples} for {n} inputs, a result of "
        f"{format_bytes(size)} ({draws} samples x {n} inputs x {per_input} "
        f"bytes per output row). To chunk it, {how}; or summarize in-graph "
        "with ku.predict_regression / ku.predict_classification / ku.predict, "
        "which keep no samples."
    )


def sample(
    model,
    x,
    num_samples=None,
    batch_size=None,
    seed=None,
    verbose="auto",
    max_rows_per_call=None,
):
    """Draws Monte Carlo samples of a model's output.

    The batch is tiled so that one compiled call draws many samples (no Python
    loop over samples); only the model's stochastic layers (`ku.layers`) are
    random, everything else runs in inference mode. A model with several
    outputs is sampled once for all of them: every output's sample t comes
    from the same forward pass (the same dropout masks).

    Args:
        model: A `keras.Model`, usually with MC layers. A model without any
            warns once: its samples are all identical.
        x: Inputs with N rows, anything `model.predict` takes: an array, a
            tensor, a list of rows, strings (for a model that starts with
            `TextVectorization` or `StringLookup`), a structure of arrays for
            a multi-input model, a batched `tf.data.Dataset` (elements `x`,
            `(x,)`, `(x, y)` or `(x, y, w)`; targets are ignored), a
            `keras.utils.PyDataset` or a generator of batches. Datasets are
            streamed. Numeric inputs must be finite.
        num_samples: Positive integer T, the number of samples per input.
            None: 100, the default of `ku.predict_*` and `ku.export` too
            (the relative error of a standard deviation estimated from T
            samples is about `1 / sqrt(2 (T - 1))`: 7% at T = 100).
        batch_size: Inputs per compiled call, as in `model.predict`. None:
            as many as `max_rows_per_call` allows. When `batch_size` inputs
            times T samples exceed `max_rows_per_call`, the samples are drawn
            in several calls.
        seed: Optional non-negative integer. The same seed gives the same
            samples in any thread or process, whatever `batch_size`, the
            chunking, or whether `x` is in memory or streamed (sample s of
            input i depends only on the seed, s and i). None: a fresh key
            per call, drawn from numpy's global generator (so
            `keras.utils.set_random_seed` makes a script repeatable).
        verbose: "auto", 0, 1 or 2, as in `model.predict`. "auto" shows a
            progress bar only on a terminal or notebook, and only once the
            call has lasted a second.
        max_rows_per_call: Positive integer, the most rows (samples x
            inputs) one compiled call holds, which bounds memory. None:
            chosen from the model's activation sizes (about 256 MiB of
            activations per call).

    Raises:
        ValueError: before any work, when the result would exceed
            `MAX_RESULT_BYTES` (16 GiB): `T x N x prod(output_shape) x 4`
            bytes for float32 outputs (times M for an ensemble), e.g. 80 GB
            for `num_samples=10**9` of 10 scalars. The message gives the
            size and the most inputs per call that fit: sample slices of
            `x`, or summarize in-graph with `ku.predict_*`.

    Returns:
        numpy array of shape `(num_samples, N, *output_shape)`; for a
        `ku.Ensemble` of M members, `(M * num_samples, N, ...)` (member-major)
        when the members are stochastic, else `(M, N, ...)`. A model with
        several outputs gives its output structure of such arrays (a dict
        for a dict output, a list for a list output).

    Example:

    >>> samples = ku.sample(model, x_test, num_samples=50, seed=0)
    >>> samples.std(axis=0)  # spread of the predictions
    """
    adapter = sampled_model(model)
    model = adapter.model
    asked = check_positive_int(num_samples, "num_samples", allow_none=True)
    check_model(adapter, asked)
    stream = input_stream(adapter, x)
    _check_result_size(adapter, stream, resolve_num_samples(asked))
    x = stream
    names = adapter.output_names
    raw = RawSamples(adapter.num_members)
    if names is None or len(names) == 1:
        out = reduce_samples(
            adapter,
            x,
            raw,
            num_samples,
            batch_size,
            seed,
            verbose,
            max_rows_per_call=max_rows_per_call,
        )
        _check_finite_output(model, samples=out)
        return out
    reducer = PerOutput({name: raw for name in names})
    by_name = reduce_samples(
        adapter,
        x,
        reducer,
        num_samples,
        batch_size,
        seed,
        verbose,
        max_rows_per_call=max_rows_per_call,
    )
    _check_finite_output(model, **{str(k): v for k, v in by_name.items()})
    if isinstance(adapter.input_view.output, dict):
        return by_name
    return [by_name[name] for name in names]


def _run_one(adapter, x, reducer, args):
    """Runs the reducer of one output; a `PerOutput` of one gives its result."""
    result = reduce_samples(adapter, x, reducer, **args)
    if isinstance(reducer, PerOutput):
        (result,) = result.values()
    return result


def predict_regression(
    model,
    x,
    num_samples=None,
    batch_size=None,
    seed=None,
    variance_head=None,
    verbose="auto",
    output=None,
    max_rows_per_call=None,
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
            `ku.sample`); numeric inputs must be finite.
        num_samples: Positive integer T; None: 100 (see `ku.sample`).
        batch_size: Inputs per compiled call, as in `model.predict`; None
            picks it (see `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        variance_head: Whether the output carries log-variances. None:
            `ku.has_variance_head(model)` (the compiled loss), and for an
            uncompiled model yes exactly when the last dimension is even,
            with a warning (once per model) to say it.
        verbose: "auto", 0, 1 or 2 (see `ku.sample`).
        output: For a model with several outputs, the one to summarise: its
            name (see `ku.sampling.output_names`) or index. Required then; for
            several at once, see `ku.predict`.
        max_rows_per_call: The most rows (samples x inputs) per compiled
            call; None picks it (see `ku.sample`).

    Returns:
        A `RegressionPrediction` of `(N, k)` arrays.

    Example:

    >>> pred = ku.predict_regression(model, x_test, num_samples=100)
    >>> pred.mean, pred.aleatoric_std, pred.epistemic_std
    """
    adapter = sampled_model(model)
    spec = output_spec(adapter, "regression", output, variance_head=variance_head)
    prediction = _run_one(
        adapter,
        x,
        spec.reducer,
        _engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call),
    )
    _check_finite_output(adapter.model, **_fields(prediction))
    _check_aleatoric_underflow(adapter.model, spec.reducer, prediction)
    return prediction


def predict_classification(
    model,
    x,
    num_samples=None,
    batch_size=None,
    seed=None,
    from_logits=None,
    votes=False,
    verbose="auto",
    output=None,
    max_rows_per_call=None,
):
    """Predictive class probabilities with total, aleatoric and epistemic parts.

    Draws T samples of the class probabilities as `ku.sample` does and
    combines them inside the compiled call (see `ClassificationPrediction`
    for the formulas): predictive entropy, expected entropy, mutual
    information and, when asked for, the argmax votes of the samples.

    Args:
        model: A `keras.Model` whose output is `(N, C)` probabilities (or
            logits with `from_logits=True`); a single sigmoid unit `(N, 1)`
            is read as two classes. An output `(N,)` without a class axis is
            refused.
        x: Inputs with N rows, anything `model.predict` takes (see
            `ku.sample`); numeric inputs must be finite.
        num_samples: Positive integer T; None: 100 (see `ku.sample`).
        batch_size: Inputs per compiled call, as in `model.predict`; None
            picks it (see `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        from_logits: Whether the model outputs logits. None: what the
            model's compiled loss declares (a Keras crossentropy's
            `from_logits`), else probabilities. Probabilities must be in
            [0, 1], each row summing to 1, else a ValueError suggests
            `from_logits=True`.
        votes: Whether to count how many samples choose each class
            (`prediction.votes`; None otherwise). It costs an argmax per
            sample, so it is off by default.
        verbose: "auto", 0, 1 or 2 (see `ku.sample`).
        output: For a model with several outputs, the one to summarise: its
            name or index (see `predict_regression`).
        max_rows_per_call: The most rows (samples x inputs) per compiled
            call; None picks it (see `ku.sample`).

    Returns:
        A `ClassificationPrediction`.

    Example:

    >>> pred = ku.predict_classification(model, x_test, num_samples=100, votes=True)
    >>> pred.votes[61]  # how many of the 100 samples chose each digit
    """
    adapter = sampled_model(model)
    spec = output_spec(adapter, "classification", output, from_logits, votes)
    prediction = _run_one(
        adapter,
        x,
        spec.reducer,
        _engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call),
    )
    if spec.layout == "probabilities":
        _check_probabilities(prediction)
    _check_finite_output(adapter.model, **_fields(prediction))
    return prediction


def predict(
    model,
    x,
    tasks,
    num_samples=None,
    batch_size=None,
    seed=None,
    verbose="auto",
    max_rows_per_call=None,
):
    """The predictions of several outputs of one model, from one pass.

    Every output named in `tasks` is summarised from the same samples: one
    compiled forward pass per chunk draws sample t of every output with the
    same dropout masks (the shared trunk runs once per sample, never once
    per output), and each output's samples go to its task's reducer
    (`ku.sampling.PerOutput`).

    Args:
        model: A `keras.Model` with one or more outputs.
        x: Inputs with N rows, anything `model.predict` takes (see
            `ku.sample`).
        tasks: A dict `{output: task}`: an output is a name (see
            `ku.sampling.output_names`) or an index; a task is
            `"regression"` or `"classification"`, or a dict of the task and
            its options, e.g. `{"task": "classification", "from_logits":
            True, "votes": True}` or `{"task": "regression",
            "variance_head": False}`.
        num_samples: Positive integer T; None: 100 (see `ku.sample`).
        batch_size: Inputs per compiled call; None picks it (see
            `ku.sample`).
        seed: Optional non-negative integer for reproducible samples.
        verbose: "auto", 0, 1 or 2 (see `ku.sample`).
        max_rows_per_call: The most rows (samples x inputs) per compiled
            call; None picks it (see `ku.sample`).

    Returns:
        A dict with the keys of `tasks`: a `RegressionPrediction` or a
        `ClassificationPrediction` each.

    Example:

    >>> pred = ku.predict(model, x, tasks={"price": "regression",
    ...                                    "kind": "classification"})
    >>> pred["price"].epistemic_std, pred["kind"].mutual_information
    """
    if not isinstance(tasks, dict):
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a dict "
            "{output name or index: task}, e.g. {'price': 'regression'}. "
            f"Received: {tasks!r}"
        )
    adapter = sampled_model(model)
    resolved = output_specs(adapter, tasks)
    reducer = PerOutput({name: spec.reducer for name, (_, spec) in resolved.items()})
    by_name = reduce_samples(
        adapter,
        x,
        reducer,
        **_engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call),
    )
    results = {}
    for name, (key, spec) in resolved.items():
        prediction = by_name[name]
        if spec.layout == "probabilities":
            _check_probabilities(prediction)
        _check_finite_output(adapter.model, **_fields(prediction))
        _check_aleatoric_underflow(
            adapter.model, spec.reducer, prediction, stacklevel=4
        )
        results[key] = prediction
    return results


def _engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call):
    return {
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "verbose": verbose,
        "max_rows_per_call": max_rows_per_call,
    }


# How far the mean of T probability vectors may stray from [0, 1] and from
# summing to 1 before it is taken for something else (float16 softmax rounds
# to about 1e-3 per row).
_PROBABILITY_TOLERANCE = 5e-3


def _check_probabilities(prediction):
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


def _fields(prediction):
    """A result's fields by name, without copying them (`dataclasses.asdict`
    deep-copies every array)."""
    return {f.name: getattr(prediction, f.name) for f in dataclasses.fields(prediction)}


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
            "exp(log_var), taken in float64, overflows above about 709). The "
            "returned values contain them.",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_aleatoric_underflow(model, reducer, prediction, stacklevel=4):
    """Warns when a variance head's aleatoric std is exactly 0 for finite
    log-variances: `exp(log_var)`, taken in float64
    (`formulas.regression_moments`), underflows below about -745, so the
    noise the model predicts is lost, not zero."""
    if isinstance(reducer, PerOutput):
        inner = list(reducer.reducers.values())
        reducer = inner[0] if len(inner) == 1 else None
    if not getattr(reducer, "variance_head", False):
        return
    std = getattr(prediction, "aleatoric_std", None)
    if std is None:
        return
    std = np.asarray(std)
    zero = int(np.count_nonzero(std == 0))
    if zero:
        warnings.warn(
            f"Model '{model.name}' produced an aleatoric_std of exactly 0 in "
            f"{zero} of {std.size} entries: exp(log_var), taken in float64, "
            "underflows below about -745, so those log-variances (finite but "
            "very negative) lose the noise they predict. aleatoric_std (and "
            "std) contain the zeros.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
