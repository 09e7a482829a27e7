"""The public front of sampling: `ku.sample` and `ku.predict_*`.

Each function checks its arguments, picks the reducer of its task from one
table (`task_reducer`, also used by `ku.export` and the callbacks) and runs
the engine (`engine.reduce_samples`); the engine knows nothing of tasks.
"""

import dataclasses
import warnings

import keras
import numpy as np

from keras_uncertainty._validation import check_bool
from keras_uncertainty.sampling.contract import sampled_model
from keras_uncertainty.sampling.engine import reduce_samples
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    RawSamples,
    RegressionMoments,
)

TASKS = ("regression", "classification")


def task_reducer(model, task, from_logits=False, votes=False, variance_head=None):
    """The reducer of `task`: the one table of tasks and their reducers.

    Args:
        model: The `keras.Model` sampled (its loss and output width decide
            `variance_head` when it is None).
        task: `"regression"` (`RegressionMoments`) or `"classification"`
            (`ClassificationSummary`).
        from_logits: Classification: whether the model outputs logits.
        votes: Classification: whether to count argmax votes.
        variance_head: Regression: whether the output is `(means,
            log-variances)`; None reads the model (see `predict_regression`).

    Returns:
        A `ku.sampling.Reducer`.
    """
    if task not in TASKS:
        raise ValueError(
            "Invalid value received for argument `task`. Expected one of "
            f"{TASKS}. Received: task={task!r}"
        )
    check_bool(from_logits, "from_logits")
    check_bool(votes, "votes")
    if task == "regression":
        if from_logits or votes:
            raise ValueError(
                "Invalid value received for argument `task`. `from_logits` and "
                "`votes` apply to task='classification'. Received: "
                f"task='regression' with from_logits={from_logits}, "
                f"votes={votes}"
            )
        return RegressionMoments(resolve_variance_head(model, variance_head))
    if variance_head is not None:
        raise ValueError(
            "Invalid value received for argument `variance_head`. It applies "
            "to task='regression'. Received: task='classification' with "
            f"variance_head={variance_head}"
        )
    return ClassificationSummary(from_logits, votes)


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
        seed: Optional non-negative integer. The same seed gives the same
            samples in any thread or process, whatever `batch_size`, the
            chunking, or whether `x` is in memory or streamed (sample s of
            input i depends only on the seed, s and i). None: a fresh key
            per call, drawn from numpy's global generator (so
            `keras.utils.set_random_seed` makes a script repeatable).
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
    reducer = RawSamples(sampled_model(model).num_members)
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
        _output_width(sampled_model(model).input_view)
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
    reducer = task_reducer(model, "regression", variance_head=variance_head)
    prediction = reduce_samples(
        model, x, reducer, num_samples, batch_size, seed, verbose
    )
    _check_finite_output(model, **_fields(prediction))
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
    reducer = task_reducer(
        model, "classification", from_logits=from_logits, votes=votes
    )
    prediction = reduce_samples(
        model, x, reducer, num_samples, batch_size, seed, verbose
    )
    _check_probabilities(prediction, from_logits)
    _check_finite_output(model, **_fields(prediction))
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
            "exp(log_var) overflows float32 above about 88). The returned "
            "values contain them.",
            RuntimeWarning,
            stacklevel=3,
        )
