"""`ku.export`: a SavedModel whose endpoint returns the uncertainty summary."""

import contextlib
import inspect
import io
import os
import re

import keras
import tensorflow as tf
from keras import tree

from keras_uncertainty._validation import check_bool, check_positive_int
from keras_uncertainty.sampling import sampler
from keras_uncertainty.sampling.graph import structure_of
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    RegressionMoments,
)

_TASKS = ("regression", "classification")
# The TensorFlow backend reduces seeds modulo 2**31 - 1 before use.
_KEY_RANGE = 2**31 - 1


def _signature_name(tensor, index, count):
    """The input's name in the signature: the `keras.Input(name=...)` if one
    was given, else `inputs` (or `inputs_<i>` for several inputs)."""
    name = re.sub(r"\W", "_", str(getattr(tensor, "name", "") or ""))
    if not name or name[0].isdigit() or re.fullmatch(r"keras_tensor(_\d+)?", name):
        return "inputs" if count == 1 else f"inputs_{index}"
    return name


def _input_specs(model):
    view = structure_of(model).view
    if view is None:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            "Functional or Sequential model with known inputs (or a "
            "ku.Ensemble of them). Received: a model without symbolic inputs "
            f"({type(model).__name__}); build it with `keras.Input`."
        )
    inputs = view.input
    flat = tree.flatten(inputs)
    specs = [
        tf.TensorSpec(
            (None, *tensor.shape[1:]),
            tensor.dtype,
            name=_signature_name(tensor, i, len(flat)),
        )
        for i, tensor in enumerate(flat)
    ]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        specs = [
            tf.TensorSpec(spec.shape, spec.dtype, name=f"inputs_{i}")
            for i, spec in enumerate(specs)
        ]
    return tree.map_structure(lambda _: 0, inputs), specs


def _reducer(model, task, from_logits, votes, variance_head):
    if task == "regression":
        if from_logits or votes:
            raise ValueError(
                "Invalid value received for argument `task`. `from_logits` and "
                "`votes` apply to task='classification'. Received: "
                f"task='regression' with from_logits={from_logits}, "
                f"votes={votes}"
            )
        return RegressionMoments(sampler.resolve_variance_head(model, variance_head))
    if variance_head is not None:
        raise ValueError(
            "Invalid value received for argument `variance_head`. It applies "
            "to task='regression'. Received: task='classification' with "
            f"variance_head={variance_head}"
        )
    return ClassificationSummary(from_logits, votes)


def export(
    model,
    filepath,
    task,
    num_samples=100,
    from_logits=False,
    votes=False,
    variance_head=None,
    verbose=False,
):
    """Writes a TensorFlow SavedModel that serves predictive uncertainty.

    The SavedModel (written with `keras.export.ExportArchive`) has two
    endpoints, and TensorFlow Serving's `serving_default` is the first:

    - `serve(inputs)`: draws `num_samples` Monte Carlo samples (dropout masks,
      or every member of a `ku.Ensemble`) of a batch of inputs and returns
      their summary, computed in-graph with the same formulas as
      `ku.predict_regression` / `ku.predict_classification`. Every call
      draws fresh masks, in every process: a call's random keys come from
      an unseeded random op, seeded anew by the operating system each time
      the SavedModel is loaded, so no two loads (server replicas) replay the
      same sequence.
    - `serve_seeded(inputs, seed)`: the same with an int64 scalar seed; the
      same seed and inputs give the same summary, in any process.

    The outputs are a dict: `mean`, `std`, `aleatoric_std`, `epistemic_std`
    (float32, `(batch, k)`) for regression; `probs` (float32,
    `(batch, C)`), `entropy`, `expected_entropy`, `mutual_information`
    (float32, `(batch,)`) and, with `votes=True`, `votes` (int32,
    `(batch, C)`) for classification. A call draws all T samples of its batch
    in one pass, so its memory grows with batch size times T: send batches
    sized for the server.

    Args:
        model: A Functional or Sequential `keras.Model` with MC layers, or a
            `ku.Ensemble`, with a single output.
        filepath: Folder to write the SavedModel to.
        task: `"regression"` or `"classification"`.
        num_samples: Positive integer T, samples per call.
        from_logits: Classification: whether the model outputs logits.
        votes: Classification: whether to return the argmax vote counts.
        variance_head: Regression: whether the output is `(means,
            log-variances)`; None reads the compiled loss as
            `ku.predict_regression` does.
        verbose: Whether to print Keras's summary of the written endpoints.

    Returns:
        The `filepath` written.

    Example:

    >>> ku.export(model, "served/1", task="regression", num_samples=100)
    >>> served = tf.saved_model.load("served/1")  # TensorFlow only
    >>> served.serve(x_test)["epistemic_std"]
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: {type(model).__name__}"
        )
    if not isinstance(filepath, (str, os.PathLike)):
        raise ValueError(
            "Invalid value received for argument `filepath`. Expected a path "
            f"(str or os.PathLike). Received: {type(filepath).__name__}"
        )
    if task not in _TASKS:
        raise ValueError(
            "Invalid value received for argument `task`. Expected one of "
            f"{_TASKS}. Received: task={task!r}"
        )
    num_samples = check_positive_int(num_samples, "num_samples")
    for name, value in (
        ("from_logits", from_logits),
        ("votes", votes),
        ("verbose", verbose),
    ):
        check_bool(value, name)
    sampler.check_model(model)
    reducer = _reducer(model, task, from_logits, votes, variance_head)
    structure, specs = _input_specs(model)
    generators = sampler.seed_generators(model)
    step, _ = sampler.reducing_forward(model, reducer, structure)
    layout = sampler.sample_layout(structure_of(model), num_samples)

    def summarize(flat_inputs, keys):
        for index, generator in enumerate(generators):
            state = tf.stack([keys[index], tf.constant(0, tf.int64)])
            generator.state.assign(tf.cast(state, generator.state.dtype))
        return reducer.summary(step(flat_inputs, layout.per_member), layout.total)

    def fresh_keys():
        # seed=0, seed2=0: the kernel takes its seed from the operating
        # system when the graph is loaded, whatever the global seed was at
        # export time.
        return tf.raw_ops.RandomUniformInt(
            shape=[len(generators)],
            minval=tf.constant(0, tf.int64),
            maxval=tf.constant(_KEY_RANGE, tf.int64),
            seed=0,
            seed2=0,
        )

    def seeded_keys(seed):
        return tf.random.stateless_uniform(
            [len(generators)],
            seed=tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]),
            minval=0,
            maxval=_KEY_RANGE,
            dtype=tf.int64,
        )

    def serve(*flat_inputs):
        return summarize(flat_inputs, fresh_keys())

    def serve_seeded(*args):
        *flat_inputs, seed = args
        return summarize(flat_inputs, seeded_keys(seed))

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
    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.add_endpoint(
        "serve_seeded",
        serve_seeded,
        input_signature=[*specs, tf.TensorSpec([], tf.int64, name="seed")],
    )
    if "verbose" in inspect.signature(archive.write_out).parameters:
        archive.write_out(filepath, verbose=verbose)
    else:  # Keras < 3.6 always prints the summary
        quiet = (
            contextlib.nullcontext()
            if verbose
            else contextlib.redirect_stdout(io.StringIO())
        )
        with quiet:
            archive.write_out(filepath)
    return filepath
