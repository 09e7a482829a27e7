"""What a model's output means: one `OutputSpec` per output, resolved once.

Every consumer of a model's output (`ku.predict_*`, `ku.predict`,
`ku.export`, the `UncertaintyMetrics` callback, the mixtures of
`ku.Ensemble`, `ku.BatchEnsemble` and `ku.MIMO`) reads its meaning here and
nowhere else: the task (regression or classification), the layout (means;
means then log-variances; probabilities; logits; or a layout of its own,
such as an evidential head's distribution parameters, which brings its own
reducer) and the reducer that summarises its samples.

The meaning comes, in this order, from:

1. the caller's arguments (`task`, `from_logits`, `variance_head`);
2. the model's declaration: its `SampledModel` (a method whose output is
   not a plain sample, such as the Laplace GLM predictive);
3. the compiled loss of the output (its declaration, or the name of a Keras
   loss: a crossentropy is a classifier, `from_logits` as it says);
4. for an uncompiled model, the output's shape (an even width read as means
   and log-variances) with a warning, once per model, that says how to state
   it; and, for the callback only, the activation of the layer that computes
   the output.

The output declaration (the one hook a custom loss or a `SampledModel`
uses to say what its output means): any of these attributes.

- `task`: `"regression"` or `"classification"`.
- `variance_head`: True when the output is `(means, log-variances)`, as
  `ku.losses.gaussian_nll` declares.
- `from_logits`: True when the output is logits (Keras's crossentropy
  losses carry it).
- `quantiles`: the quantiles of a quantile head (`ku.losses.PinballLoss`),
  read as means.
- `task_reducer(task, from_logits=..., votes=..., variance_head=...)`: a
  method returning the `ku.sampling.Reducer` of an output that is neither
  means nor probabilities (the evidential losses, the Laplace GLM model);
  it raises a ValueError for a task or option it does not support.

This module imports no method.
"""

import dataclasses
import warnings
import weakref

import keras
from keras import tree

from keras_uncertainty._validation import check_bool
from keras_uncertainty.sampling.contract import sampled_model
from keras_uncertainty.sampling.reducers import (
    ClassificationSummary,
    PerOutput,
    RegressionMoments,
)

TASKS = ("regression", "classification")
LAYOUTS = (
    "means",
    "means_log_vars",
    "quantiles",
    "probabilities",
    "logits",
    "declared",
)
_TASK_OPTIONS = ("task", "from_logits", "votes", "variance_head")
_WARNED_VARIANCE_HEAD = weakref.WeakSet()

# Keras losses that make a model a classifier or a regressor (names as
# strings, functions or `keras.losses.Loss` classes, compared in lower case
# without underscores).
_CLASSIFICATION_LOSSES = (
    "sparsecategoricalcrossentropy",
    "categoricalcrossentropy",
    "binarycrossentropy",
    "categoricalfocalcrossentropy",
    "binaryfocalcrossentropy",
)
_REGRESSION_LOSSES = (
    "mse",
    "mae",
    "meansquarederror",
    "meanabsoluteerror",
    "huber",
    "logcosh",
    "meansquaredlogarithmicerror",
    "meanabsolutepercentageerror",
)


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What one output of a model means.

    Attributes:
        name: The output's name (see `ku.sampling.output_names`); None for
            the only output of a single-output model.
        task: "regression" or "classification".
        layout: "means", "means_log_vars", "quantiles" (a quantile head,
            compiled with `ku.losses.PinballLoss`: one column per quantile,
            read as means), "probabilities", "logits", or "declared" (the
            declaration's `task_reducer` reads it).
        width: The output's last dimension; None when unknown.
        source: Where the meaning came from: "arguments", "model", "loss",
            "shape" (an uncompiled model's width) or "default" (nothing
            said it: probabilities).
        reducer: The `ku.sampling.Reducer` that summarises its samples
            (wrapped in a `PerOutput` for a named output of a model with
            several outputs).
    """

    name: object
    task: str
    layout: str
    width: object
    source: str
    reducer: object

    @property
    def from_logits(self):
        """Whether the output is logits."""
        return self.layout == "logits"

    @property
    def variance_head(self):
        """Whether the output is `(means, log-variances)`."""
        return self.layout == "means_log_vars"


# Names and shapes ---------------------------------------------------------------


def output_names(model):
    """The names of `model`'s outputs, in `model.outputs` order.

    A dict output's keys, else `model.output_names` (a list output's
    layer names); positions for a model whose names are unknown.

    Args:
        model: A `keras.Model` (or its `ku.sampling.SampledModel`).

    Returns:
        A tuple of names (one for a single-output model), or None when the
        model has no symbolic outputs (a subclassed model).

    Example:

    >>> ku.sampling.output_names(two_headed)
    ('kind', 'price')
    """
    return sampled_model(model).output_names


def resolve_output(adapter, output, where="output"):
    """The name of `output` (a name or an index), or None for the only
    output of a single-output model; a multi-output model needs one."""
    names = adapter.output_names
    model = adapter.model
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


def output_tensor(adapter, name):
    """The symbolic tensor of output `name` (None: the only one) of one
    member; None when the model has no symbolic outputs."""
    view = adapter.input_view
    if view is None:
        return None
    if name is None:
        return tree.flatten(view.output)[0]
    if isinstance(view.output, dict):
        return view.output[name]
    return tree.flatten(view.output)[list(adapter.output_names).index(name)]


def _output_width(adapter, name):
    tensor = output_tensor(adapter, name)
    return None if tensor is None else tensor.shape[-1]


# The compiled loss's declaration --------------------------------------------------


def output_loss(model, output=None):
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


def loss_from_logits(loss):
    """`from_logits` of a compiled loss: the attribute of Keras's
    crossentropy objects, else the `from_logits` of the loss's config; False
    for names and functions (Keras's default, probabilities)."""
    from_logits = getattr(loss, "from_logits", None)
    if from_logits is None and hasattr(loss, "get_config"):
        try:
            from_logits = loss.get_config().get("from_logits")
        except (NotImplementedError, TypeError, AttributeError):
            from_logits = None
    return bool(from_logits)


def _loss_name(loss):
    if isinstance(loss, str):
        name = loss
    elif isinstance(loss, keras.losses.Loss):
        fn = getattr(loss, "fn", None)
        name = getattr(fn, "__name__", None) or type(loss).__name__
    else:
        name = getattr(loss, "__name__", "")
    return name.lower().replace("_", "")


def declared_task(loss):
    """The task a compiled loss declares or implies (a Keras crossentropy:
    classification; a Keras error loss or a variance head: regression);
    None when it says nothing."""
    if loss is None:
        return None
    task = getattr(loss, "task", None)
    if task in TASKS:
        return task
    if getattr(loss, "variance_head", False):
        return "regression"
    name = _loss_name(loss)
    if name in _CLASSIFICATION_LOSSES:
        return "classification"
    if name in _REGRESSION_LOSSES:
        return "regression"
    return None


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
    if getattr(model, "loss", None) is None:
        return None
    return bool(getattr(output_loss(model, output), "variance_head", False))


def declared_layout(model):
    """`(variance_head, from_logits)` of a model's single output as its
    compiled loss declares them (False, False when uncompiled): what a
    mixture of members (`ku.Ensemble`, `ku.BatchEnsemble`, `ku.MIMO`) reads
    inside its compiled `call`, where nothing may be built or guessed."""
    loss = output_loss(model)
    if loss is None:
        return False, False
    return bool(getattr(loss, "variance_head", False)), loss_from_logits(loss)


def check_declared_task(task, declared, owner):
    """A declaration's check of the task it is asked for: `task` must be
    the one it `declared` (ValueError naming `task` and the `owner`, the
    declaring loss, layer or method)."""
    if task != declared:
        raise ValueError(
            "Invalid value received for argument `task`. Expected "
            f"'{declared}' for an output declared by {owner}. "
            f"Received: task={task!r}"
        )


# Guesses --------------------------------------------------------------------------


def _guess_variance_head(adapter, width):
    """An uncompiled model's output of even width is read as (means,
    log-variances), with a warning (once per model) that says how to state
    it."""
    model = adapter.model
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
            stacklevel=6,
        )
    return variance_head


def _output_of(layer):
    try:
        return layer.output
    except (AttributeError, ValueError):  # a layer called more than once
        return None


def activation_says_logits(model, output=None):
    """Guesses logits from the activation of the layer that computes the
    output: linear -> True, softmax / sigmoid -> False, anything else (or
    no symbolic output) -> None. Used where nothing declares it and a
    guess is better than a refusal (the `UncertaintyMetrics` callback)."""
    try:
        adapter = sampled_model(model)
        layer = _output_layer(adapter, resolve_output(adapter, output))
    except (ValueError, AttributeError, TypeError):
        return None
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Softmax):
        return False
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    if name == "linear":
        return True
    if name in ("softmax", "sigmoid"):
        return False
    return None


# The spec -------------------------------------------------------------------------


def _declares(value):
    return getattr(value, "task_reducer", None) is not None or (
        getattr(value, "task", None) in TASKS
    )


def _output_layer(adapter, name):
    """The layer that computes output `name` of one member; None when
    unknown (no symbolic outputs)."""
    tensor = output_tensor(adapter, name)
    if tensor is None:
        return None
    return next(
        (lay for lay in adapter.input_view.layers if _output_of(lay) is tensor), None
    )


def _declarations(adapter, name):
    """The declarations of output `name`, first the model's (its
    `SampledModel`, then the layer that computes the output, such as an
    evidential head), then its compiled loss's; `(source, object)` pairs."""
    found = []
    if _declares(adapter):
        found.append(("model", adapter))
    layer = _output_layer(adapter, name)
    if _declares(layer):
        found.append(("model", layer))
    model = adapter.model
    if getattr(model, "loss", None) is not None:
        # A compiled model declares through its loss; a loss that cannot be
        # resolved (or none for this output) declares nothing special.
        found.append(("loss", output_loss(model, name)))
    return found


def output_spec(
    model,
    task,
    output=None,
    from_logits=None,
    votes=False,
    variance_head=None,
):
    """The `OutputSpec` of one output of `model` for `task`.

    Args:
        model: A `keras.Model`, its `SampledModel`, or a fitted method with
            `as_sampled_model()`.
        task: "regression" or "classification".
        output: The output (a name or an index); None for a single-output
            model.
        from_logits: Classification: whether the output is logits. None:
            what the model or its loss declares, else probabilities.
        votes: Classification: whether the reducer counts argmax votes.
        variance_head: Regression: whether the output is `(means,
            log-variances)`. None: what the model or its loss declares; an
            uncompiled model's even-width output is read as one (a warning
            says so).

    Returns:
        An `OutputSpec`.

    Example:

    >>> spec = ku.sampling.output_spec(model, "classification")
    >>> spec.layout, spec.reducer
    """
    adapter = sampled_model(model)
    if task not in TASKS:
        raise ValueError(
            "Invalid value received for argument `task`. Expected one of "
            f"{TASKS}. Received: task={task!r}"
        )
    if from_logits is not None:
        check_bool(from_logits, "from_logits")
    check_bool(votes, "votes")
    if variance_head is not None and not isinstance(variance_head, bool):
        raise ValueError(
            "Invalid value received for argument `variance_head`. Expected "
            f"True, False or None. Received: variance_head={variance_head!r}"
        )
    name = resolve_output(adapter, output)
    width = _output_width(adapter, name)
    declarations = _declarations(adapter, name)
    for source, declaration in declarations:
        declared = getattr(declaration, "task", None)
        if source == "model" and declared in TASKS:
            check_declared_task(task, declared, type(declaration).__name__)
        supply = getattr(declaration, "task_reducer", None)
        if supply is not None:
            reducer = supply(
                task,
                from_logits=bool(from_logits),
                votes=votes,
                variance_head=variance_head,
            )
            return _spec(name, task, "declared", width, source, reducer)
    if task == "regression":
        if from_logits or votes:
            raise ValueError(
                "Invalid value received for argument `task`. `from_logits` and "
                "`votes` apply to task='classification'. Received: "
                f"task='regression' with from_logits={bool(from_logits)}, "
                f"votes={votes}"
            )
        source = "arguments"
        if variance_head is None:
            source, variance_head = _declared(declarations, "variance_head")
            if variance_head is None:
                source = "shape"
                variance_head = _guess_variance_head(adapter, width)
        if variance_head and width is not None and width % 2:
            raise ValueError(
                "Invalid value received for argument `model`. Expected an "
                "output whose last dimension is 2*k (k means, then k "
                f"log-variances). Received: last dimension {width}"
            )
        layout = "means_log_vars" if variance_head else "means"
        if not variance_head and _declared(declarations, "quantiles")[1]:
            layout = "quantiles"
        reducer = RegressionMoments(variance_head)
        return _spec(name, task, layout, width, source, reducer)
    if variance_head is not None:
        raise ValueError(
            "Invalid value received for argument `variance_head`. It applies "
            "to task='classification'. Received: task='classification' with "
            f"variance_head={variance_head}"
        )
    source = "arguments"
    if from_logits is None:
        source, from_logits = _declared(declarations, "from_logits")
        source = source or "default"  # nothing says: probabilities
        from_logits = bool(from_logits)
    layout = "logits" if from_logits else "probabilities"
    reducer = ClassificationSummary(from_logits, votes)
    return _spec(name, task, layout, width, source, reducer)


def _declared(declarations, attribute):
    """`(source, value)` of the first declaration of `attribute`; a loss
    that does not declare `variance_head` declares False (it is not a
    variance head), and `from_logits` is read off Keras's losses."""
    for source, declaration in declarations:
        if source == "loss":
            if attribute == "from_logits":
                return source, loss_from_logits(declaration)
            return source, bool(getattr(declaration, attribute, False))
        value = getattr(declaration, attribute, None)
        if value is not None:
            return source, value
    return None, None


def _spec(name, task, layout, width, source, reducer):
    if name is not None:
        reducer = PerOutput({name: reducer})
    return OutputSpec(name, task, layout, width, source, reducer)


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


def output_specs(model, tasks, from_logits=None, votes=False, variance_head=None):
    """`{output name: (key given, OutputSpec)}` of a dict of tasks
    `{output name or index: task}`, tasks as names or dicts of options
    (see `ku.predict`); each spec's reducer is the output's own (not
    wrapped)."""
    adapter = sampled_model(model)
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            f"dict {{output name or index: task}}. Received: {tasks!r}"
        )
    names = adapter.output_names
    resolved = {}
    for key, given in tasks.items():
        name = resolve_output(adapter, key, where="tasks")
        if name is None:  # the only output of a single-output model
            name = names[0] if names else 0
        if name in resolved:
            raise ValueError(
                "Invalid value received for argument `tasks`. Expected each "
                f"output once. Received: output {name!r} twice"
            )
        task, options = _task_options(given)
        options = {
            "from_logits": from_logits,
            "votes": votes,
            "variance_head": variance_head if task == "regression" else None,
            **options,
        }
        if task == "regression":
            options["from_logits"], options["votes"] = None, False
        spec = output_spec(adapter, task, output=key, **options)
        if isinstance(spec.reducer, PerOutput):
            (inner,) = spec.reducer.reducers.values()
            spec = dataclasses.replace(spec, name=name, reducer=inner)
        else:
            spec = dataclasses.replace(spec, name=name)
        resolved[name] = (key, spec)
    return resolved


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
        from_logits: Classification: whether the model outputs logits (None:
            what its loss declares).
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
        specs = output_specs(model, task, from_logits, votes, variance_head)
        return PerOutput({name: spec.reducer for name, (_, spec) in specs.items()})
    return output_spec(model, task, output, from_logits, votes, variance_head).reducer
