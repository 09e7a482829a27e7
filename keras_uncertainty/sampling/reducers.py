"""What a sampling call computes: a reduction per chunk, a merge, a result.

Sampling runs in chunks (of inputs, and of samples for the same inputs) so
that memory stays bounded. A `Reducer` says what to do with the samples of
one chunk and how chunks combine; each reducer owns its four steps, and the
formulas they use live in `formulas.py` and `predictions.py`:

- `reduce(samples)`, inside the compiled call: `(t, n, ...)` samples (t
  samples of n inputs, member-major for an ensemble) -> a tuple of tensors;
  a reducer with `needs_targets = True` gets `reduce(samples, targets)`,
  the n targets of the chunk;
- `merge(a, count_a, b, count_b)`, in numpy: combines the reductions of two
  chunks of samples of the same inputs, exactly;
- `finalize(state, num_samples)`: the merged reduction of every input
  (chunks of inputs concatenated on axis `row_axis` of each entry, 0 unless
  the reducer says otherwise) -> the result;
- `summary(state, num_samples)` (optional): the result as a dict of
  tensors, computed in-graph, for `ku.export`.

The compiled graph is cached by the reducer's class (qualified name) and
`get_config()`, so two reducers with different parameters never share one.
`get_config` returns the public attributes by default: a reducer that keeps
its parameters in attributes needs nothing more. Run one with
`ku.sampling.reduce_samples(model, x, reducer, num_samples)`.
"""

import importlib
import math

import numpy as np
import tensorflow as tf

from keras_uncertainty._precision import widen
from keras_uncertainty.sampling import formulas
from keras_uncertainty.sampling.predictions import (
    ClassificationPrediction,
    MixtureScore,
    RegressionPrediction,
    classification_summary,
    regression_summary,
)


class Reducer:
    """Base class of reductions of samples; see the module docstring.

    Attributes:
        row_axis: The axis of each state entry that lists the inputs.
        needs_targets: Whether `reduce` takes the chunk's targets.
        takes_structure: Whether `reduce` takes the samples of every output
            of the model, a dict `{output name: (t, n, ...)}` (see
            `PerOutput`), rather than the one output's `(t, n, ...)`.
        uncertainty_in_output: Whether one deterministic pass already
            carries the uncertainty (the output holds a distribution's
            parameters, as an evidential head's): the engine then does not
            warn that a model without stochastic layers has identical
            samples.

    Example:

    >>> class Quantile(ku.sampling.Reducer):
    ...     def __init__(self, q):
    ...         self.q = q  # in get_config(), so Quantile(0.1) has its own graph
    """

    row_axis = 0
    needs_targets = False
    takes_structure = False
    uncertainty_in_output = False

    def get_config(self):
        """The reducer's parameters (its public attributes by default)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @classmethod
    def from_config(cls, config):
        """A reducer from `get_config()` output."""
        return cls(**config)

    def reduce(self, samples):
        raise NotImplementedError

    def merge(self, a, count_a, b, count_b):
        raise NotImplementedError

    def finalize(self, state, num_samples):
        raise NotImplementedError

    def concat(self, states):
        """Joins the states of consecutive chunks of inputs, in order (each
        entry on `row_axis`)."""
        return tuple(
            np.concatenate(column, axis=self.row_axis) for column in zip(*states)
        )

    def summary(self, state, num_samples):
        raise NotImplementedError(
            f"{type(self).__name__} has no in-graph summary to export."
        )

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class RawSamples(Reducer):
    """The samples themselves, `(members * T, N, ...)`, member-major
    (float16 and bfloat16 outputs as float32).

    Args:
        num_members: M; chunks of samples are merged per member, so that a
            member's samples stay together.
    """

    row_axis = 1  # samples first, then inputs

    def __init__(self, num_members=1):
        self.num_members = num_members

    def reduce(self, samples):
        # Half-precision outputs come back as float32 (float64 stays).
        return (widen(samples),)

    def merge(self, a, count_a, b, count_b):
        def by_member(values):
            return values.reshape((self.num_members, -1) + values.shape[1:])

        merged = np.concatenate([by_member(a[0]), by_member(b[0])], axis=1)
        return (merged.reshape((-1,) + merged.shape[2:]),)

    def finalize(self, state, num_samples):
        return state[0]


class RegressionMoments(Reducer):
    """Mean, spread and mean variance of regression samples.

    Per chunk, `formulas.regression_moments` (two-pass); chunks merge by
    Chan et al.'s pairwise update of the mean and the sum of squared
    deviations. Finalizes to a `RegressionPrediction`.

    Args:
        variance_head: Whether the outputs are `(means, log-variances)`.
    """

    def __init__(self, variance_head):
        self.variance_head = bool(variance_head)

    def reduce(self, samples):
        return formulas.regression_moments(samples, self.variance_head)

    def merge(self, a, count_a, b, count_b):
        (mean_a, m2_a, var_a), (mean_b, m2_b, var_b) = a[:3], b[:3]
        total = count_a + count_b
        delta = mean_b.astype(np.float64) - mean_a
        return (
            mean_a + delta * count_b / total,
            m2_a + m2_b + delta**2 * count_a * count_b / total,
            (var_a * count_a + var_b.astype(np.float64) * count_b) / total,
        )

    def finalize(self, state, num_samples):
        mean_mu, m2_mu, mean_var = state
        return RegressionPrediction.from_moments(
            mean_mu.astype(np.float64), m2_mu, mean_var, num_samples
        )

    def summary(self, state, num_samples):
        # Computed in float64 (the state's), served in float32: a field of
        # a finite row is finite whenever its value fits float32 (beyond
        # it, inf), never a float32 overflow inside the formulas.
        fields = regression_summary(*state, num_samples)
        return {name: tf.cast(value, tf.float32) for name, value in fields.items()}


class ClassificationSummary(Reducer):
    """Summed probabilities and entropies (and votes, when asked for).

    Finalizes to a `ClassificationPrediction`.

    Args:
        from_logits: Whether the outputs are logits.
        votes: Whether to count the argmax votes of the samples (costs an
            argmax and a count per sample).
    """

    def __init__(self, from_logits=False, votes=False):
        self.from_logits = bool(from_logits)
        self.votes = bool(votes)

    def reduce(self, samples):
        if samples.shape.rank == 2:
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                "classifier output with a class axis, `(N, C)` (a single "
                "sigmoid unit `(N, 1)` is read as two classes). Received: an "
                f"output of shape {tuple(samples.shape[1:])} without one. Add "
                "the class axis: end the model with `Dense(1, "
                "activation='sigmoid')` (which keeps `(N, 1)`) or a "
                "`keras.layers.Reshape((1,))`."
            )
        return formulas.classification_moments(samples, self.from_logits, self.votes)

    def merge(self, a, count_a, b, count_b):
        return tuple(x.astype(np.float64) + y for x, y in zip(a, b))

    def finalize(self, state, num_samples):
        sum_probs, sum_entropy, *votes = state
        return ClassificationPrediction.from_moments(
            sum_probs,
            sum_entropy,
            votes[0] if votes else None,
            num_samples=num_samples,
        )

    def summary(self, state, num_samples):
        sum_probs, sum_entropy, *votes = state
        fields = classification_summary(sum_probs, sum_entropy, num_samples)
        if votes:
            fields["votes"] = votes[0]
        return fields


class MixtureNLL(RegressionMoments):
    """The test log-likelihood of the samples' uniform Gaussian mixture.

    For each input and target, `log((1/T) sum_t N(y | mu_t, sigma_t^2))`,
    the test log-likelihood of the MC dropout and Deep Ensembles papers,
    streamed: each chunk keeps `logsumexp_t log N(y | mu_t, sigma_t^2)`
    (chunks merge by `logaddexp`), so memory stays bounded whatever T is.
    It also keeps the moments of `RegressionMoments`, so one pass gives the
    prediction and its score. Needs the targets (`y=` of
    `reduce_samples`, or a dataset of `(x, y)` batches).

    Args:
        variance_head: Whether the outputs are `(means, log-variances)`.
        noise_std: Without a variance head, the standard deviation of every
            sample's Gaussian (a homoscedastic model's `1 / sqrt(tau)`): a
            float, or one per output. Ignored with a variance head.
        min_log_var: Optional floor of each sample's log-variance (None: no
            floor). Documented clipping: the papers use none.

    Returns (from `finalize`):
        A `MixtureScore`: the `RegressionPrediction` and the per-input
        `log_likelihood` `(N, k)`.

    Example:

    >>> score = ku.sampling.reduce_samples(
    ...     model, x_test, ku.sampling.MixtureNLL(True), 100, y=y_test)
    >>> score.nll  # mean negative log-likelihood per point
    """

    needs_targets = True

    def __init__(self, variance_head=True, noise_std=None, min_log_var=None):
        super().__init__(variance_head)
        if not self.variance_head:
            values = np.asarray(
                1.0 if noise_std is None else noise_std, np.float64
            ).reshape(-1)
            if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
                raise ValueError(
                    "Invalid value received for argument `noise_std`. "
                    "Expected a finite number > 0 or a list of them (one per "
                    f"output). Received: noise_std={noise_std!r}"
                )
            noise_std = values.tolist()
        else:
            noise_std = None
        self.noise_std = noise_std
        self.min_log_var = None if min_log_var is None else float(min_log_var)

    def reduce(self, samples, targets):
        moments = formulas.regression_moments(samples, self.variance_head)
        samples = tf.cast(samples, tf.float32)
        if self.variance_head:
            mu, log_var = formulas.split_mean_log_var(samples)
        else:
            mu = samples
            std = tf.constant(self.noise_std, tf.float32)
            log_var = tf.broadcast_to(2.0 * tf.math.log(std), tf.shape(mu))
        if self.min_log_var is not None:
            log_var = tf.maximum(log_var, self.min_log_var)
        y = tf.reshape(tf.cast(targets, tf.float32), tf.shape(mu)[1:])
        log_density = formulas.gaussian_log_density(y[None], mu, log_var)
        return (*moments, tf.reduce_logsumexp(log_density, axis=0))

    def merge(self, a, count_a, b, count_b):
        merged = super().merge(a, count_a, b, count_b)
        return (*merged, np.logaddexp(a[3].astype(np.float64), b[3]))

    def finalize(self, state, num_samples):
        prediction = super().finalize(state[:3], num_samples)
        log_likelihood = state[3].astype(np.float64) - math.log(num_samples)
        return MixtureScore(prediction=prediction, log_likelihood=log_likelihood)

    def summary(self, state, num_samples):
        raise NotImplementedError("MixtureNLL scores targets: it is not exported.")


def _qualified_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


# The reducers `PerOutput.from_config` rebuilds by the name `get_config`
# records: this package's, and no other (a config never makes it import a
# module it names). Others are given with `custom_objects`.
_KNOWN_REDUCERS = {
    f"keras_uncertainty.{name}": name.rpartition(".")
    for name in (
        "sampling.reducers.RawSamples",
        "sampling.reducers.RegressionMoments",
        "sampling.reducers.ClassificationSummary",
        "sampling.reducers.MixtureNLL",
        "sampling.class_scores.ClassificationScores",
        "evidential.classification.EvidentialClassificationSummary",
        "evidential.regression.EvidentialRegressionSummary",
    )
}


def _class_from_name(name, custom_objects):
    """The Reducer class `get_config` recorded as `name`: one given in
    `custom_objects` (by that name or the class's own), or one of this
    package's (`_KNOWN_REDUCERS`); anything else is refused before any
    import."""
    if custom_objects and isinstance(name, str):
        short = name.rpartition(".")[2]
        for key in (name, short):
            if key in custom_objects:
                return custom_objects[key]
    if not isinstance(name, str) or name not in _KNOWN_REDUCERS:
        raise ValueError(
            "Invalid value received for argument `config`. Expected reducers "
            f"among this package's ({', '.join(sorted(_KNOWN_REDUCERS))}) or "
            "given in `custom_objects` {name: Reducer subclass}; a config "
            f"never makes it import a module. Received: a reducer named {name!r}"
        )
    module, _, attribute = _KNOWN_REDUCERS[name]
    return getattr(importlib.import_module(f"keras_uncertainty.{module}"), attribute)


class PerOutput(Reducer):
    """One reducer per output of a multi-output model, from one pass.

    The model is sampled once per call: every output's samples come from the
    same forward pass (the same dropout masks in the shared trunk), and each
    named output goes to its own reducer. Its states, merges and joins are
    those of its reducers, output by output.

    Args:
        reducers: A dict `{output name: Reducer}`; a name is a key of a dict
            output, or an entry of `model.output_names` for a list output
            (its position for a model whose names are unknown).

    Returns (from `finalize`):
        A dict `{output name: what that reducer's finalize returns}`; from
        `summary`, one dict with keys `"<output name>_<field>"`.

    Example:

    >>> reducer = ku.sampling.PerOutput({
    ...     "price": ku.sampling.RegressionMoments(False),
    ...     "kind": ku.sampling.ClassificationSummary()})
    >>> pred = ku.sampling.reduce_samples(model, x, reducer, 100)
    >>> pred["price"].epistemic_std, pred["kind"].mutual_information
    """

    takes_structure = True

    def __init__(self, reducers):
        if not isinstance(reducers, dict) or not reducers:
            raise ValueError(
                "Invalid value received for argument `reducers`. Expected a "
                "non-empty dict {output name: ku.sampling.Reducer}. Received: "
                f"{reducers!r}"
            )
        for name, reducer in reducers.items():
            if not isinstance(reducer, Reducer) or reducer.takes_structure:
                raise ValueError(
                    "Invalid value received for argument `reducers`. Expected "
                    "a ku.sampling.Reducer of one output for each name. "
                    f"Received: {name!r}: {reducer!r}"
                )
            if reducer.needs_targets:
                raise ValueError(
                    "Invalid value received for argument `reducers`. Expected "
                    "reducers that do not score targets. Received: "
                    f"{name!r}: {type(reducer).__name__}"
                )
        self.reducers = dict(reducers)

    @property
    def uncertainty_in_output(self):
        return all(r.uncertainty_in_output for r in self.reducers.values())

    def get_config(self):
        return {
            "reducers": [
                [name, _qualified_name(type(r)), r.get_config()]
                for name, r in self.reducers.items()
            ]
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A `PerOutput` from `get_config()` output.

        Each output's reducer is rebuilt from the class name the config
        records, which must be one of this package's reducers or a key of
        `custom_objects`: a config never makes this import a module.

        Args:
            config: A dict as `get_config` returns.
            custom_objects: Optional dict `{name: Reducer subclass}` for
                reducers defined outside this package, keyed by the name
                `get_config` records (`"module.ClassName"`) or the class name.

        Returns:
            A new `PerOutput`.

        Raises:
            ValueError: A malformed config, or a reducer neither of this
                package nor in `custom_objects`.
        """
        if custom_objects is not None and not (
            isinstance(custom_objects, dict)
            and all(
                isinstance(v, type) and issubclass(v, Reducer)
                for v in custom_objects.values()
            )
        ):
            raise ValueError(
                "Invalid value received for argument `custom_objects`. "
                "Expected None or a dict {name: ku.sampling.Reducer subclass}. "
                f"Received: custom_objects={custom_objects!r}"
            )
        entries = config.get("reducers") if isinstance(config, dict) else None
        if not isinstance(entries, (list, tuple)) or not all(
            isinstance(e, (list, tuple)) and len(e) == 3 and isinstance(e[2], dict)
            for e in entries
        ):
            raise ValueError(
                "Invalid value received for argument `config`. Expected a dict "
                "{'reducers': [[output name, reducer class name, reducer "
                f"config], ...]}} as get_config returns. Received: {config!r}"
            )
        return cls(
            {
                name: _class_from_name(class_name, custom_objects).from_config(sub)
                for name, class_name, sub in entries
            }
        )

    def reduce(self, samples):
        missing = [name for name in self.reducers if name not in samples]
        if missing:
            raise ValueError(
                "Invalid value received for argument `output`. Expected "
                f"names of the model's outputs {list(samples)}. Received: "
                f"{missing}"
            )
        return tuple(r.reduce(samples[name]) for name, r in self.reducers.items())

    def merge(self, a, count_a, b, count_b):
        return tuple(
            r.merge(x, count_a, y, count_b)
            for r, x, y in zip(self.reducers.values(), a, b)
        )

    def concat(self, states):
        return tuple(
            r.concat([state[i] for state in states])
            for i, r in enumerate(self.reducers.values())
        )

    def finalize(self, state, num_samples):
        return {
            name: r.finalize(part, num_samples)
            for (name, r), part in zip(self.reducers.items(), state)
        }

    def summary(self, state, num_samples):
        fields = {}
        for (name, r), part in zip(self.reducers.items(), state):
            for field, value in r.summary(part, num_samples).items():
                fields[f"{name}_{field}"] = value
        return fields
