"""The public front of sampling: `ku.sample` and `ku.predict_*`.

Each function checks its arguments, picks the reducer of its task from one
table (`task_reducer`, also used by `ku.export` and the callbacks) and runs
the engine (`engine.reduce_samples`); the engine knows nothing of tasks.
The outputs of a multi-output model are reduced by `PerOutput`, one
reducer per output over the samples of one pass.
"""

import dataclasses
import warnings
import weakref

import keras
import numpy as np
from keras import tree

from keras_uncertainty import _budget
from keras_uncertainty._validation import check_bool, check_positive_int
from keras_uncertainty.sampling.contract import sampled_model
from keras_uncertainty.sampling.engine import (
    check_model,
    input_stream,
    reduce_samples,
    resolve_num_samples,
)
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    PerOutput,
    RawSamples,
    RegressionMoments,
)

TASKS = ("regression", "classification")
_TASK_OPTIONS = ("task", "from_logits", "votes", "variance_head")
_WARNED_VARIANCE_HEAD = weakref.WeakSet()

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


def output_names(model):
    """The names of `model`'s outputs, in `model.outputs` order.

    A dict output's keys, else `model.output_names` (a list output's
    layer names); positions for a model whose names are unknown.

    Args:
        model: A `keras.Model`.

    Returns:
        A tuple of names (one for a single-output model), or None when the
        model has no symbolic outputs (a subclassed model).

    Example:

    >>> ku.sampling.output_names(two_headed)
    ('kind', 'price')
    """
    return sampled_model(model).output_names


def _resolve_output(model, output, where="output"):
    """The name of `output` (a name or an index), or None for the only
    output of a single-output model; a multi-output model needs one."""
    names = output_names(model)
    if output is None:
        if names is not None and len(names) > 1:
            raise ValueError(
                f"Invalid value received for argument `{where}`. Expected one "
                f"of the model's outputs {list(names)} (a name or an index): "
                f"model '{model.name}' has {len(names)} outputs. To get them "
                "all from one pass, use `ku.predict(model, x, tasks={...})`. "
                "Received: None"
            )
        return None
    is_index = isinstance(output, int) and not isinstance(output, bool)
    if names is None:
        if is_index or isinstance(output, str):
            return output
    elif is_index and -len(names) <= output < len(names):
        name = names[output]
        return None if len(names) == 1 else name
    elif isinstance(output, str) and output in names:
        return None if len(names) == 1 else output
    raise ValueError(
        f"Invalid value received for argument `{where}`. Expected the name "
        f"or index of one of the model's outputs {list(names or [])}. "
        f"Received: {output!r}"
    )


def _output_tensor(model, name):
    view = sampled_model(model).input_view
    if view is None:
        return None
    if name is None:
        return tree.flatten(view.output)[0]
    if isinstance(view.output, dict):
        return view.output[name]
    return tree.flatten(view.output)[list(output_names(model)).index(name)]


def _output_width(model, name=None):
    tensor = _output_tensor(model, name)
    return None if tensor is None else tensor.shape[-1]


def _task_options(task):
    """`(task, options)` of a task given as a string or a dict."""
    if isinstance(task, dict):
        unknown = sorted(set(task) - set(_TASK_OPTIONS))
        if "task" not in task or unknown:
            raise ValueError(
                "Invalid value received for argument `task`. Expected a task "
                f"name {TASKS} or a dict with 'task' and any of "
                f"{_TASK_OPTIONS[1:]}. Received: {task!r}"
            )
        options = {k: v for k, v in task.items() if k != "task"}
        return task["task"], options
    return task, {}


def task_reducer(
    model, task, from_logits=False, votes=False, variance_head=None, output=None
):
    """The reducer of `task`: the one table of tasks and their reducers.

    Args:
        model: The `keras.Model` sampled (its loss and output width decide
            `variance_head` when it is None).
        task: `"regression"` (`RegressionMoments`) or `"classification"`
            (`ClassificationSummary`); or, for a model with several outputs,
            a dict `{output name or index: task}` whose tasks are names or
            dicts `{"task": ..., "from_logits": ..., "votes": ...,
            "variance_head": ...}`, giving a `PerOutput` reducer that
            summarises every output named from one pass.
        from_logits: Classification: whether the model outputs logits.
        votes: Classification: whether to count argmax votes.
        variance_head: Regression: whether the output is `(means,
            log-variances)`; None reads the model (see `predict_regression`).
        output: The output to summarise (a name or an index) of a model with
            several outputs; the result is then a `PerOutput` of one output.

    Returns:
        A `ku.sampling.Reducer`.

    Example:

    >>> reducer = ku.sampling.task_reducer(model, "classification")
    >>> both = ku.sampling.task_reducer(
    ...     two_headed, {"price": "regression", "kind": "classification"})
    """
    if isinstance(task, dict):
        if output is not None:
            raise ValueError(
                "Invalid value received for argument `output`. Expected None "
                "with a dict of tasks (it names the outputs). Received: "
                f"output={output!r}"
            )
        return PerOutput(
            {
                name: reducer
                for name, (_, reducer, _) in _per_output_tasks(
                    model, task, from_logits, votes, variance_head
                ).items()
            }
        )
    name = _resolve_output(model, output)
    reducer = _one_task_reducer(model, task, from_logits, votes, variance_head, name)
    return reducer if name is None else PerOutput({name: reducer})


def _per_output_tasks(model, tasks, from_logits, votes, variance_head):
    """`{output name: (key given, reducer, from_logits)}` of a dict of tasks."""
    if not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            "dict {output name or index: task}. Received: {}"
        )
    names = output_names(model)
    resolved = {}
    for key, spec in tasks.items():
        name = _resolve_output(model, key, where="tasks")
        if name is None:  # the only output of a single-output model
            name = names[0] if names else 0
        if name in resolved:
            raise ValueError(
                "Invalid value received for argument `tasks`. Expected each "
                f"output once. Received: output {name!r} twice"
            )
        task, options = _task_options(spec)
        options = {
            "from_logits": from_logits,
            "votes": votes,
            "variance_head": variance_head if task == "regression" else None,
            **options,
        }
        if task == "regression":
            options["from_logits"] = options["votes"] = False
        reducer = _one_task_reducer(model, task, output=name, **options)
        resolved[name] = (key, reducer, bool(options["from_logits"]))
    return resolved


def _one_task_reducer(
    model, task, from_logits=False, votes=False, variance_head=None, output=None
):
    if task not in TASKS:
        raise ValueError(
            "Invalid value received for argument `task`. Expected one of "
            f"{TASKS}. Received: task={task!r}"
        )
    check_bool(from_logits, "from_logits")
    check_bool(votes, "votes")
    supplied = _loss_reducer(model, output, task, from_logits, votes, variance_head)
    if supplied is not None:
        return supplied
    if task == "regression":
        if from_logits or votes:
            raise ValueError(
                "Invalid value received for argument `task`. `from_logits` and "
                "`votes` apply to task='classification'. Received: "
                f"task='regression' with from_logits={from_logits}, "
                f"votes={votes}"
            )
        return RegressionMoments(resolve_variance_head(model, variance_head, output))
    if variance_head is not None:
        raise ValueError(
            "Invalid value received for argument `variance_head`. It applies "
            "to task='regression'. Received: task='classification' with "
            f"variance_head={variance_head}"
        )
    return ClassificationSummary(from_logits, votes)


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
    asked = check_positive_int(num_samples, "num_samples", allow_none=True)
    check_model(model, asked)
    stream = input_stream(model, x)
    _check_result_size(adapter, stream, resolve_num_samples(asked))
    x = stream
    names = adapter.output_names
    raw = RawSamples(adapter.num_members)
    if names is None or len(names) == 1:
        out = reduce_samples(
            model,
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
        model,
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


def has_variance_head(model, output=None):
    """Whether `model`'s output is `(means, log-variances)`.

    True when the model (or, for a `ku.Ensemble`, its member loss) is
    compiled with a loss that declares `variance_head = True`, as
    `ku.losses.gaussian_nll` and `ku.losses.GaussianNLL` do (a custom
    heteroscedastic loss can declare it too); False when compiled with any
    other loss. An uncompiled model gives None: the caller decides.

    Args:
        model: A `keras.Model`.
        output: For a model with several outputs compiled with a dict or
            list of losses, the output (name or index) whose loss is read.

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
    return bool(getattr(_output_loss(model, output), "variance_head", False))


def _output_loss(model, output=None):
    """The compiled loss object of `model` (of `output` for a model compiled
    with a dict or list of losses), a registered name resolved; None when
    there is none or it cannot be resolved."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if isinstance(loss, (dict, list, tuple)):
        names = output_names(model) or ()
        if isinstance(loss, dict):
            if isinstance(output, int) and 0 <= output < len(names):
                output = names[output]
            loss = loss.get(output)
        elif isinstance(output, str) and output in names:
            loss = loss[list(names).index(output)]
        elif isinstance(output, int) and -len(loss) <= output < len(loss):
            loss = loss[output]
        else:
            loss = None
        if loss is None:
            return None
    if isinstance(loss, str):
        resolved = keras.saving.get_registered_object(loss)
        if resolved is None:
            try:
                resolved = keras.losses.get(loss)
            except ValueError:
                return None
        loss = resolved
    return loss


def _loss_reducer(model, output, task, from_logits, votes, variance_head):
    """The reducer the output's compiled loss supplies, or None.

    A loss whose output is not a sample of means (and log-variances) or
    probabilities (an evidential head's distribution parameters, which the
    generic reducers would read silently wrong) says how to reduce it: its
    `task_reducer(task, from_logits=..., votes=..., variance_head=...)`
    returns the `Reducer` (or raises a ValueError for a task or option it
    does not support)."""
    if not isinstance(model, keras.Model):
        return None
    supply = getattr(_output_loss(model, output), "task_reducer", None)
    if supply is None:
        return None
    return supply(
        task, from_logits=from_logits, votes=votes, variance_head=variance_head
    )


def resolve_variance_head(model, variance_head, output=None):
    """`variance_head` as given, or read from the compiled loss (see
    `predict_regression`), checked against the output width.

    An uncompiled model whose output width is even is read as (means,
    log-variances), with a warning (once per model) that says how to state
    it."""
    is_model = isinstance(model, keras.Model)
    width = _output_width(model, output) if is_model else None
    if variance_head is None:
        variance_head = has_variance_head(model, output) if is_model else None
        if variance_head is None:
            variance_head = width is not None and width % 2 == 0
            if variance_head and model not in _WARNED_VARIANCE_HEAD:
                _WARNED_VARIANCE_HEAD.add(model)
                warnings.warn(
                    f"Model '{model.name}' is not compiled, so its output of "
                    f"even width {width} is read as (means, log-variances): "
                    f"{width // 2} means, then {width // 2} log-variances. "
                    "Say which it is with `variance_head=True` (a "
                    "`ku.losses.gaussian_nll` head) or `variance_head=False` "
                    f"({width} means), or compile the model with its loss.",
                    UserWarning,
                    stacklevel=5,
                )
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


def _run_one(model, x, reducer, args):
    """Runs the reducer of one output; a `PerOutput` of one gives its result."""
    result = reduce_samples(model, x, reducer, **args)
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
    reducer = task_reducer(
        model, "regression", variance_head=variance_head, output=output
    )
    prediction = _run_one(
        model,
        x,
        reducer,
        _engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call),
    )
    _check_finite_output(model, **_fields(prediction))
    _check_aleatoric_underflow(model, reducer, prediction)
    return prediction


def predict_classification(
    model,
    x,
    num_samples=None,
    batch_size=None,
    seed=None,
    from_logits=False,
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
        from_logits: Whether the model outputs logits. Without it the
            outputs must be probabilities (in [0, 1], each row summing to
            1), else a ValueError suggests `from_logits=True`.
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
    reducer = task_reducer(
        model,
        "classification",
        from_logits=from_logits,
        votes=votes,
        output=output,
    )
    prediction = _run_one(
        model,
        x,
        reducer,
        _engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call),
    )
    _check_probabilities(prediction, from_logits)
    _check_finite_output(model, **_fields(prediction))
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
    resolved = _per_output_tasks(model, tasks, False, False, None)
    reducer = PerOutput({name: r for name, (_, r, _) in resolved.items()})
    by_name = reduce_samples(
        model,
        x,
        reducer,
        **_engine_args(num_samples, batch_size, seed, verbose, max_rows_per_call),
    )
    results = {}
    for name, (key, reducer, from_logits) in resolved.items():
        prediction = by_name[name]
        if isinstance(reducer, ClassificationSummary):
            _check_probabilities(prediction, from_logits)
        _check_finite_output(model, **_fields(prediction))
        _check_aleatoric_underflow(model, reducer, prediction, stacklevel=4)
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
