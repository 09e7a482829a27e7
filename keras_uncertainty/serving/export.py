"""`ku.export`: a SavedModel whose endpoint returns the uncertainty summary."""

import contextlib
import ctypes
import errno
import inspect
import io
import os
import re
import shutil
import sys
import tempfile
import warnings

import keras
import tensorflow as tf
from keras import tree

from keras_uncertainty._budget import MAX_RESULT_BYTES, format_bytes
from keras_uncertainty._validation import check_bool, check_positive_int
from keras_uncertainty.conformal import serving as conformal_serving
from keras_uncertainty.sampling import (
    ClassificationSummary,
    PerOutput,
    RegressionMoments,
    check_model,
    keys,
    output_spec,
    reducing_step,
    sampled_model,
)
from keras_uncertainty.sampling.engine import resolve_num_samples, sample_floats
from keras_uncertainty.sampling.inputs import flatten_with_path
from keras_uncertainty.sampling.outputs import output_specs


def _signature_name(tensor, index, count):
    """The input's name in the signature: the `keras.Input(name=...)` if one
    was given, else `inputs` (or `inputs_<i>` for several inputs)."""
    name = re.sub(r"\W", "_", str(getattr(tensor, "name", "") or ""))
    if not name or name[0].isdigit() or re.fullmatch(r"keras_tensor(_\d+)?", name):
        return "inputs" if count == 1 else f"inputs_{index}"
    return name


def _path_signature_name(path, index):
    """The name of an input of a dict (or nested) structure in the
    signature: its path of keys, `token_ids` or `pair_0`, the name a
    TensorFlow Serving request uses."""
    name = re.sub(r"\W", "_", "_".join(str(key) for key in path))
    if not name or name[0].isdigit():
        return f"inputs_{index}"
    return name


def _is_flat(inputs):
    """Whether a model's inputs are one tensor or a flat list of them (the
    endpoints then take them as separate arguments)."""
    if isinstance(inputs, keras.KerasTensor):
        return True
    return isinstance(inputs, (list, tuple)) and all(
        isinstance(t, keras.KerasTensor) for t in inputs
    )


def _input_specs(adapter):
    """`(structure, specs, structured)` of the sampled model's inputs.

    `specs` are the `tf.TensorSpec`s of the flat inputs (`model.inputs`
    order); `structured` says whether the endpoints take them as one
    argument in the model's input structure (a dict of inputs, or a nested
    structure, as `model.export` takes it: `serve({"token_ids": ...})`)
    rather than as separate arguments (`serve(a, b)`)."""
    view = adapter.input_view  # checked by the caller
    model = adapter.model
    if view is None:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            "Functional or Sequential model with known inputs (or a "
            "ku.Ensemble of them). Received: a model without symbolic inputs "
            f"({type(model).__name__}); build it with `keras.Input`."
        )
    inputs = view.input
    structured = not _is_flat(inputs)
    paths = flatten_with_path(inputs)
    specs = [
        tf.TensorSpec(
            (None, *tensor.shape[1:]),
            tensor.dtype,
            name=(
                _path_signature_name(path, i)
                if structured
                else _signature_name(tensor, i, len(paths))
            ),
        )
        for i, (path, tensor) in enumerate(paths)
    ]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names) or "seed" in names:  # `serve_seeded`'s
        specs = [
            tf.TensorSpec(spec.shape, spec.dtype, name=f"inputs_{i}")
            for i, spec in enumerate(specs)
        ]
    return tree.map_structure(lambda _: 0, inputs), specs, structured


def _check_call_size(num_samples, per_member, floats_per_row, per_sample=0):
    """Refuses a `num_samples` whose serve call, even for one input row,
    would hold more than `MAX_RESULT_BYTES` of activations and per-sample
    weight draws (`per_sample` floats a sample)."""
    per_one = (floats_per_row or 0) + per_sample
    if not per_one:
        return
    size = per_member * per_one * 4
    if size <= MAX_RESULT_BYTES:
        return
    most = max(1, MAX_RESULT_BYTES // (per_one * 4))
    raise ValueError(
        "Invalid value received for argument `num_samples`. Expected samples "
        "whose serve call fits in "
        f"{format_bytes(MAX_RESULT_BYTES)} of activations and weight draws for "
        "one input row (ku.sampling.sampler.MAX_RESULT_BYTES). Received: "
        f"num_samples={num_samples}, which needs {format_bytes(size)} per "
        f"input row ({per_member} samples x {per_one} floats x 4 "
        f"bytes). Export with num_samples <= {most} and, for more samples, "
        "average the summaries of several serve calls on the client."
    )


def _max_rows_per_call(num_samples, per_member, floats_per_row):
    """The most input rows one serve call may hold: T samples of each row
    take `per_member * floats_per_row * 4` bytes of activations, and a call
    is kept within `MAX_RESULT_BYTES`. None when the model's size per row is
    unknown."""
    if not floats_per_row:
        return None
    return max(1, MAX_RESULT_BYTES // (per_member * floats_per_row * 4))


def _finite_rows(flat_inputs):
    """Per row of the batch, whether every numeric input value is finite
    (None when no input is floating point)."""
    finite = None
    for tensor in flat_inputs:
        if not tensor.dtype.is_floating:
            continue
        ok = tf.math.is_finite(tensor)
        if tensor.shape.rank > 1:
            ok = tf.reduce_all(ok, axis=list(range(1, tensor.shape.rank)))
        finite = ok if finite is None else tf.logical_and(finite, ok)
    return finite


def _without_nonfinite(flat_inputs, finite):
    """The inputs with the rows that hold a NaN or infinity zeroed (so they
    cannot reach other rows through any layer)."""
    out = []
    for tensor in flat_inputs:
        if tensor.dtype.is_floating:
            shape = tf.concat(
                [tf.shape(finite), tf.ones([tensor.shape.rank - 1], tf.int32)], 0
            )
            keep = tf.reshape(finite, shape)
            tensor = tf.where(keep, tensor, tf.zeros_like(tensor))
        out.append(tensor)
    return out


def _nan_rows(summary, finite):
    """NaN in every floating output of the rows that had non-finite inputs;
    integer outputs (`votes`) are 0 there."""

    def mask(value):
        shape = tf.concat(
            [tf.shape(finite), tf.ones([value.shape.rank - 1], tf.int32)], 0
        )
        keep = tf.reshape(finite, shape)
        if value.dtype.is_floating:
            fill = tf.fill(tf.shape(value), tf.constant(float("nan"), value.dtype))
        else:
            fill = tf.zeros_like(value)
        return tf.where(keep, value, fill)

    return tree.map_structure(mask, summary)


def _served_kind(spec):
    """What a served summary holds: the task's fields (a reducer of means
    and variances, or of probabilities, a Laplace GLM predictive's too), or,
    for an output whose declaration brings a reducer of its own (an
    evidential head), that reducer's, which no conformal method reads."""
    if isinstance(spec.reducer, (RegressionMoments, ClassificationSummary)):
        return spec.task
    return type(spec.reducer).__name__


def _conformal_plan(conformal, reducer, kinds):
    """`[(prefix, fitted method)]` of the conformal outputs to serve, each
    checked against its output's kind (`kinds`: one for a single task, a
    dict by output name for several)."""
    if conformal is None:
        return []
    if not isinstance(reducer, PerOutput):
        if isinstance(conformal, dict):
            raise ValueError(
                "Invalid value received for argument `conformal`. Expected one "
                "fitted ku.conformal method for a model with one task (a dict "
                "only with a dict of tasks). Received: a dict"
            )
        conformal_serving.check_servable(conformal, kinds)
        return [("", conformal)]
    if not isinstance(conformal, dict) and len(reducer.reducers) == 1:
        conformal = {next(iter(reducer.reducers)): conformal}
    if not isinstance(conformal, dict) or not set(conformal) <= set(reducer.reducers):
        raise ValueError(
            "Invalid value received for argument `conformal`. Expected a dict "
            "{output name: fitted ku.conformal method} with output names among "
            f"{list(reducer.reducers)}. Received: "
            f"{list(conformal) if isinstance(conformal, dict) else conformal!r}"
        )
    plan = []
    for name, method in conformal.items():
        conformal_serving.check_servable(
            method, kinds[name], f"conformal[{name!r}]"
        )
        plan.append((f"{name}_", method))
    return plan


def _target_folder(filepath, overwrite):
    """The absolute path of the folder to write; refuses an existing path
    unless `overwrite`, and then anything there but a folder."""
    target = os.path.abspath(os.fspath(filepath))
    if not os.path.lexists(target):
        return target
    if not overwrite:
        raise ValueError(
            "Invalid value received for argument `filepath`. Expected a path "
            "that does not exist yet, or `overwrite=True` to replace the "
            f"folder there. Received: filepath={os.fspath(filepath)!r}, which "
            "exists (overwrite=False)"
        )
    if os.path.islink(target) or not os.path.isdir(target):
        kind = "a symbolic link" if os.path.islink(target) else "not a folder"
        raise ValueError(
            "Invalid value received for argument `filepath`. Expected, with "
            "overwrite=True, a folder to replace (a file or a symbolic link is "
            f"never replaced). Received: filepath={os.fspath(filepath)!r}, "
            f"which is {kind}"
        )
    return target


def _exchange(a, b):
    """Swaps the folders `a` and `b` in one step (Linux's `renameat2` with
    `RENAME_EXCHANGE`), so that a reader of `b` sees the old folder or the
    new one, never neither. False where the system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p] * 2 + [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if not renameat2(
        at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange
    ):
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), b)


def _remove_old(path):
    """Removes the replaced export; the new one is in place, so a failure
    here warns instead of failing the export."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        warnings.warn(
            f"ku.export: the replaced export could not be removed from {path}; "
            "remove it by hand.",
            RuntimeWarning,
            stacklevel=4,
        )


def _move_into_place(staging, target, overwrite, filepath):
    """Renames the complete export `staging` to `target`. With `overwrite`,
    an existing `target` is swapped out in one step where the system can,
    else renamed aside just before (and back if the rename fails), then
    removed."""
    if overwrite and os.path.isdir(target) and not os.path.islink(target):
        if _exchange(staging, target):
            _remove_old(staging)  # the old export, swapped out
            return
        aside = tempfile.mkdtemp(prefix=".ku-export-", dir=os.path.dirname(target))
        try:
            os.rename(target, aside)  # over the empty folder `aside`
        except BaseException:
            os.rmdir(aside)
            raise
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        _remove_old(aside)
        return
    try:
        os.rename(staging, target)  # fails on a folder made meanwhile
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        _target_folder(filepath, overwrite)  # raises the ValueError
        raise


def _write_atomically(archive, target, filepath, verbose, overwrite):
    """Writes the SavedModel to a temporary folder beside `target` and
    renames it into place; on any failure the temporary folder is removed
    and what was at `target` is left as it was."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".ku-export-", dir=parent)
    try:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            if "verbose" in inspect.signature(archive.write_out).parameters:
                archive.write_out(staging, verbose=verbose)
            else:  # Keras < 3.6 always prints the summary
                archive.write_out(staging)
        _move_into_place(staging, target, overwrite, filepath)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        sys.stdout.write(printed.getvalue().replace(staging, os.fspath(filepath)))


def export(
    model,
    filepath,
    task,
    num_samples=None,
    from_logits=None,
    votes=False,
    variance_head=None,
    verbose=False,
    conformal=None,
    overwrite=False,
):
    """Writes a TensorFlow SavedModel that serves predictive uncertainty.

    The SavedModel (written with `keras.export.ExportArchive`) has two
    endpoints, and TensorFlow Serving's `serving_default` is the first:

    - `serve(inputs)`: draws `num_samples` Monte Carlo samples (dropout masks,
      or every member of a `ku.Ensemble`) of a batch of inputs and returns
      their summary, computed in-graph with the same formulas as
      `ku.predict_regression` / `ku.predict_classification`. Every call
      draws fresh masks: its key comes from an unseeded random op, seeded
      by the operating system when the SavedModel is loaded, and no state
      is shared between calls, so concurrent requests never share masks and
      no two loads (server replicas) replay the same sequence.
    - `serve_seeded(inputs, seed)`: the same with an int64 scalar seed; the
      same seed gives each input row the same samples, in any process and
      whatever else is in the batch (row i of a batch counts as input i).

    The inputs are taken as the model takes them. A model built on a dict
    of inputs (a keras_hub backbone's `{"token_ids": ..., "padding_mask":
    ...}`) or on a nested structure takes one argument of that structure,
    as `model.export` does: `served.serve({"token_ids": t, "padding_mask":
    m})`, its keys in any order, whatever the `keras.Input` names; the
    signature names each input by its key (`token_ids`), the name a
    TensorFlow Serving request uses. A model with one input, or a list of
    inputs, takes them as separate arguments: `served.serve(x)`,
    `served.serve(a, b)`, `served.serve_seeded(a, b, seed)`.

    The outputs are a dict: `mean`, `std`, `aleatoric_std`, `epistemic_std`
    (float32, `(batch, k)`) for regression; `probs` (float32,
    `(batch, C)`), `entropy`, `expected_entropy`, `mutual_information`
    (float32, `(batch,)`) and, with `votes=True`, `votes` (int32,
    `(batch, C)`) for classification. A call draws all T samples of its batch
    in one pass, so its memory grows with batch size times T: send batches
    sized for the server.

    With `conformal=fitted` (a fitted `ku.conformal` method) the outputs
    also hold its guarantee, computed in-graph from the served summary and
    the method's fitted quantile at its `alpha` (a constant of the graph):
    `lower` and `upper` (float32, shaped like `mean`) for
    `SplitConformalRegressor` (`mean -+ q`), `NormalizedConformalRegressor`
    (`mean -+ q std`) and `ConformalizedQuantileRegressor` (`mean` then holds
    the head's lower and upper quantiles, averaged over the samples: export
    with `variance_head=False`); `sets` (bool, `(batch, C)`) for
    `ConformalClassifier`. They equal `predict_interval` / `predict_set` on
    the served `mean`, `std` or `probs`. A quantile of `+inf` (too few
    calibration points) serves infinite bounds or full sets. Not servable
    (ValueError): regressors fitted with `groups` (the signature has no
    group input) and randomized classifiers (served sets are repeatable); a
    class-conditional classifier is served. A row with non-finite inputs
    gets NaN bounds and an all-False set.

    A row whose numeric inputs hold a NaN or an infinity gets NaN in every
    float output (`mean`, `std`, ..., `probs`, `entropy`, ...; `votes` 0)
    instead of a finite but meaningless summary; the batch's other rows are
    served as usual (the row is zeroed before the forward pass, so it cannot
    disturb them). Check for NaN outputs rather than for an error.

    A model with several outputs serves the summary of each output named in
    `task` (a dict), all from the same samples (one forward pass per call),
    with keys prefixed by the output's name: `task={"price": "regression",
    "kind": "classification"}` serves `price_mean`, ..., `kind_probs`, ...

    The SavedModel is written to a temporary folder beside `filepath` and
    renamed into place once complete, so a failed or interrupted export
    leaves no half-written folder (and no temporary one) behind, and an
    earlier export at `filepath` is never mixed with the new one.

    Args:
        model: A Functional or Sequential `keras.Model` with MC layers, a
            model of a method (`ku.Ensemble`, `ku.swag.SWAG`, ...), or a
            fitted `ku.laplace.Laplace` (its GLM predictive).
        filepath: Folder to write the SavedModel to; it must not exist yet,
            unless `overwrite=True`. Missing parent folders are created.
        task: `"regression"` or `"classification"` for a model with one
            output; for several, a dict `{output name or index: task}` whose
            tasks are names or dicts of a task and its options (see
            `ku.predict`).
        num_samples: Positive integer T, samples per call. None: 100, the
            default of `ku.sample` and `ku.predict_*` too. Refused (ValueError,
            naming the size) when one serve call would need more than
            `ku.sampling.sampler.MAX_RESULT_BYTES` (16 GiB) of activations
            even for a single input row (T x the model's floats per row x 4
            bytes). A serve call with more rows than fit in that bound fails
            with `InvalidArgumentError` ("serves at most R rows per call"),
            before any work, instead of running out of memory.
        from_logits: Classification: whether the model outputs logits. None:
            what the compiled loss declares, else probabilities (as
            `ku.predict_classification`).
        votes: Classification: whether to return the argmax vote counts.
        variance_head: Regression: whether the output is `(means,
            log-variances)`; None reads the compiled loss as
            `ku.predict_regression` does.
        verbose: Whether to print Keras's summary of the written endpoints.
        conformal: None, or a fitted `ku.conformal` method whose intervals
            or sets the endpoints also return (see above); for a dict of
            tasks, a dict `{output name: fitted method}`, whose keys are
            then prefixed like the summary's.
        overwrite: Whether to replace a folder that exists at `filepath`
            (ValueError if False, the default). The old folder is replaced
            only by a complete new export: on Linux in one step (`renameat2`
            exchanging the two folders), elsewhere renamed aside just before
            the new one is renamed into place; then it is removed. A file or
            a symbolic link at `filepath` is never replaced.

    Returns:
        The `filepath` written.

    Example:

    >>> ku.export(model, "served/1", task="regression", num_samples=100)
    >>> served = tf.saved_model.load("served/1")  # TensorFlow only
    >>> served.serve(x_test)["epistemic_std"]
    >>> fitted = ku.conformal.NormalizedConformalRegressor(alpha=0.1)
    >>> fitted.fit(ku.predict_regression(model, x_cal), y_cal)
    >>> ku.export(model, "served/2", task="regression", conformal=fitted)
    >>> tf.saved_model.load("served/2").serve(x_test)["lower"]  # 90% intervals
    """
    adapter = sampled_model(model)
    model = adapter.model
    if not isinstance(filepath, (str, os.PathLike)):
        raise ValueError(
            "Invalid value received for argument `filepath`. Expected a path "
            f"(str or os.PathLike). Received: {type(filepath).__name__}"
        )
    check_bool(overwrite, "overwrite")
    target = _target_folder(filepath, overwrite)
    asked = check_positive_int(num_samples, "num_samples", allow_none=True)
    num_samples = resolve_num_samples(asked)
    if from_logits is not None:
        check_bool(from_logits, "from_logits")
    for name, value in (
        ("votes", votes),
        ("verbose", verbose),
    ):
        check_bool(value, name)
    names = adapter.output_names
    if not isinstance(task, dict) and names is not None and len(names) > 1:
        raise ValueError(
            "Invalid value received for argument `task`. Expected a dict "
            f"{{output: task}} for a model with outputs {list(names)}, e.g. "
            f"{{{names[0]!r}: 'regression'}}. Received: task={task!r}"
        )
    if isinstance(task, dict):
        resolved = output_specs(adapter, task, from_logits, votes, variance_head)
        reducer = PerOutput({n: spec.reducer for n, (_, spec) in resolved.items()})
        kinds = {n: _served_kind(spec) for n, (_, spec) in resolved.items()}
    else:
        spec = output_spec(adapter, task, None, from_logits, votes, variance_head)
        reducer, kinds = spec.reducer, _served_kind(spec)
    conformal_plan = _conformal_plan(conformal, reducer, kinds)
    check_model(adapter, asked, reducer)
    structure, specs, structured = _input_specs(adapter)
    step, floats_per_row = reducing_step(adapter, reducer, structure)
    per_member = adapter.samples_per_member(num_samples)
    total = adapter.num_members * per_member
    _check_call_size(num_samples, per_member, floats_per_row, sample_floats(adapter))
    max_rows = _max_rows_per_call(num_samples, per_member, floats_per_row)
    max_rows_message = (
        f"ku.export: this SavedModel draws {num_samples} samples per input row "
        f"and serves at most {max_rows} rows per call (the activations of a "
        f"call are kept within {format_bytes(MAX_RESULT_BYTES)}); send the "
        "batch in smaller calls"
    )

    def summarize(flat_inputs, key):
        if max_rows is not None:  # a clear error, not an out-of-memory crash
            rows = tf.shape(flat_inputs[0], out_type=tf.int64)[0]
            tf.debugging.assert_less_equal(
                rows, tf.constant(max_rows, tf.int64), message=max_rows_message
            )
        # The key, then sample and row offsets 0: one chunk holds the call.
        position = tf.concat([tf.cast(key, tf.uint32), tf.zeros([2], tf.uint32)], 0)
        finite = _finite_rows(flat_inputs)
        if finite is not None:
            flat_inputs = _without_nonfinite(flat_inputs, finite)
        state = step(flat_inputs, per_member, position)
        summary = reducer.summary(state, total)
        if finite is not None:
            summary = _nan_rows(summary, finite)
        for prefix, method in conformal_plan:
            summary.update(conformal_serving.serving_outputs(method, summary, prefix))
        return summary

    def fresh_key():
        # seed=0, seed2=0: the kernel takes its seed from the operating
        # system when the graph is loaded, whatever the global seed was at
        # export time; each call draws a new key.
        return tf.raw_ops.RandomUniformInt(
            shape=[2],
            minval=tf.constant(0, tf.int64),
            maxval=tf.constant(2**32, tf.int64),
            seed=0,
            seed2=0,
        )

    def seeded_key(seed):
        return keys.key_tensor_from_seed(tf.ensure_shape(seed, [], name="seed"))

    # The endpoints take inputs of any shape (their dtypes fixed) and check
    # the shape in-graph, an InvalidArgumentError naming the input and the
    # expected shape: a loaded tf.function whose input binding fails (a
    # request of another width or rank) keeps its lock in TensorFlow 2.21,
    # and every later call from another thread would wait forever.
    relaxed = [tf.TensorSpec(None, spec.dtype, name=spec.name) for spec in specs]

    def checked(flat_inputs):
        return [
            tf.ensure_shape(x, spec.shape, name=spec.name)
            for x, spec in zip(flat_inputs, specs)
        ]

    seed_spec = tf.TensorSpec(None, tf.int64, name="seed")
    if structured:
        # One argument in the model's input structure, matched by key as
        # the model matches it (`tree.flatten` orders it as `specs`).
        signature = [tree.pack_sequence_as(structure, relaxed)]

        def serve(inputs):
            return summarize(checked(tree.flatten(inputs)), fresh_key())

        def serve_seeded(inputs, seed):
            return summarize(checked(tree.flatten(inputs)), seeded_key(seed))

    else:
        signature = list(relaxed)

        def serve(*flat_inputs):
            return summarize(checked(flat_inputs), fresh_key())

        def serve_seeded(*args):
            *flat_inputs, seed = args
            return summarize(checked(flat_inputs), seeded_key(seed))

    if not model.built:
        # Keras exports only built models; one call on a row of zeros builds
        # it (an Ensemble builds its members lazily).
        model(
            tree.pack_sequence_as(
                structure, [tf.zeros((1, *s.shape[1:]), s.dtype) for s in specs]
            )
        )
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=signature)
    archive.add_endpoint(
        "serve_seeded", serve_seeded, input_signature=[*signature, seed_spec]
    )
    _write_atomically(archive, target, filepath, verbose, overwrite)
    return filepath
