"""The sampling contract: what the engine needs of a model to sample it.

The engine (`engine.py`) never looks at a model's class. It asks
`sampled_model(model)` for a `SampledModel`, which says how many members the
model has, which layers draw randomness and what one compiled forward of `t`
samples of a chunk of `n` inputs returns: `(M * t * n, ...)` rows,
member-major, then sample-major (row `(m * t + s) * n + i` is sample `s` of
input `i` from member `m`).

- A model that knows how it is sampled says so with a method
  `as_sampled_model()` returning its `SampledModel` (`ku.Ensemble` does;
  so can a new method: a Laplace approximation, SWAG, BatchEnsemble).
- A Functional or Sequential model gets `TiledTwinModel`: a weight-sharing
  twin that tiles each tensor where it first meets a stochastic layer.
- A subclassed model gets `TiledInputsModel`: its inputs tiled T times.

Randomness comes from the call key (`keys.py`): `forward` runs inside
`keys.sampling_call`, and the draws made while it is traced (through
`ku.layers.MCLayer`, or `keys.random_*` for a custom method) become
functions of the key, the sample and the input.
"""

import itertools
import threading
import weakref

import keras
from keras import tree

from keras_uncertainty.sampling import graph

_COMPILE_TOKENS = itertools.count()


class SampledModel:
    """How the engine samples one model (see the module docstring).

    Subclass it for a new method and return an instance from the model's
    `as_sampled_model()`; override `forward` (and the attributes that
    differ from the defaults). The instance is cached per model, and
    `forward` is traced into the compiled steps of every sampling call.

    Args:
        model: The `keras.Model` sampled (held weakly).

    Attributes:
        num_members: M, the networks of a mixture (1 by default); each
            gives its own samples.
        stochastic: Whether a member's samples differ from one another.
            False for an ensemble of deterministic members, which then gives
            one sample per member whatever `num_samples` asks.
        input_view: A Functional model with the inputs of `model` (and its
            output shape for one member), used to read and check inputs and
            to write an export's signature; None when unknown (subclassed
            models: inputs are taken as they come).
        uncertainty_in_output: Whether one deterministic pass carries the
            uncertainty (SNGP's Gaussian-process head): no warning that the
            samples are identical.
        floats_per_row: Activations of one input row of one sample, to size
            chunks; None when unknown.
        floats_per_sample: Floats one sample holds whatever the rows (a
            drawn weight vector), to bound the samples of one call; None
            (the default) sums the stochastic layers' `floats_per_sample`.

    Example:

    >>> class Perturbed(ku.sampling.SampledModel):  # one weight draw a sample
    ...     def forward(self, inputs, num_samples):
    ...         x = ku.sampling.tile_rows(inputs, num_samples)
    ...         noise = ku.sampling.random_normal(
    ...             (keras.ops.shape(x)[0], 1), None, per_sample=True)
    ...         return self.model(x) * (1.0 + 0.1 * noise)
    """

    num_members = 1
    stochastic = True
    uncertainty_in_output = False
    floats_per_row = None
    floats_per_sample = None

    def __init__(self, model):
        self._model_ref = weakref.ref(model)
        self.input_view = graph.functional_view(model)
        # Tells the engine's compiled steps of two adapters of one model
        # apart (a Laplace posterior's predictive over its base network).
        self.compile_token = next(_COMPILE_TOKENS)

    @property
    def model(self):
        """The sampled model."""
        return self._model_ref()

    @property
    def output_names(self):
        """The names of the outputs `forward` returns, in `model.outputs`
        order (a dict output's keys; a list output's `output_names`), read
        from `input_view`; None when unknown."""
        return graph.output_names(getattr(self, "input_view", None))

    def stochastic_layers(self):
        """The layers that draw randomness at inference (for checks and
        warnings); every `stochastic_at_inference` layer by default."""
        return graph.stochastic_layers(self.model)

    def samples_per_member(self, num_samples):
        """How many samples each member gives for `num_samples` asked."""
        return num_samples if self.stochastic else 1

    def forward(self, inputs, num_samples):
        """Outputs of `num_samples` samples of `inputs` (n rows each).

        Runs while the compiled step is traced, inside a sampling call: draw
        randomness with `ku.sampling.random_*` or `ku.layers.MCLayer`.

        Args:
            inputs: The model's input structure, n rows each.
            num_samples: t, samples per member (Python int or scalar tensor).

        Returns:
            A tensor of `M * t * n` rows (member-major, sample-major) or a
            structure holding one such tensor.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `forward(inputs, num_samples)`."
        )


class TiledTwinModel(SampledModel):
    """A Functional or Sequential model, sampled through its tiled twin.

    Args:
        model: A Functional or built Sequential `keras.Model`.
    """

    def __init__(self, model):
        super().__init__(model)
        self.twin = graph.TiledTwin(self.input_view)
        self.floats_per_row = self.twin.floats_per_row
        self.stochastic = bool(self.stochastic_layers())

    def forward(self, inputs, num_samples):
        return self.twin(inputs)


class TiledInputsModel(SampledModel):
    """A subclassed model, sampled by tiling its inputs T times.

    Args:
        model: A subclassed `keras.Model`.
    """

    def __init__(self, model):
        super().__init__(model)
        self.stochastic = bool(self.stochastic_layers())

    def forward(self, inputs, num_samples):
        tiled = tree.map_structure(lambda t: graph.tile_rows(t, num_samples), inputs)
        return self.model(tiled, training=False)


def named_outputs(outputs, names=None):
    """`(name, tensor)` pairs of a structure of outputs, in flat order.

    A dict gives its keys; a list or tuple the `names` given (a model's
    `output_names`) when there are as many, else its positions; a single
    tensor is named by `names[0]` (or 0).

    Args:
        outputs: A tensor or a flat dict, list or tuple of tensors.
        names: Optional names of the flat outputs.

    Returns:
        A list of `(name, tensor)`.
    """
    if isinstance(outputs, dict):
        keys = tree.flatten({key: key for key in outputs})
        return [(key, outputs[key]) for key in keys]
    flat = tree.flatten(outputs)
    if names is None or len(names) != len(flat):
        names = range(len(flat))
    return list(zip(names, flat))


_CACHE = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.RLock()  # reentrant: an adapter may adapt its members


def _layer_ids(model):
    return tuple(id(layer) for layer in getattr(model, "layers", ()))


def sampled_model(model):
    """The `SampledModel` of `model`, cached while its layers stay the same.

    Args:
        model: A `keras.Model`; a `SampledModel` (returned as it is, so a
            call that resolved it once passes it on); or a method object
            that is not a Keras model but defines `as_sampled_model()` (a
            fitted `ku.laplace.Laplace`). Such an object keeps the
            `SampledModel` it returns while its state is the same: each new
            one compiles its own steps (it is not cached here).

    Returns:
        `model.as_sampled_model()` when the model defines it, else a
        `TiledTwinModel` (Functional, Sequential) or a `TiledInputsModel`.
    """
    if isinstance(model, SampledModel):
        return model
    if not isinstance(model, keras.Model):
        hook = getattr(model, "as_sampled_model", None)
        if callable(hook):
            return _checked(hook())
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            "keras.Model (or a fitted method with `as_sampled_model()`, such "
            f"as ku.laplace.Laplace). Received: {type(model).__name__}"
        )
    layers = _layer_ids(model)
    with _CACHE_LOCK:
        cached = _CACHE.get(model)
        if cached is not None and cached[0] == layers:
            return cached[1]
        hook = getattr(model, "as_sampled_model", None)
        if callable(hook):
            adapter = _checked(hook())
        elif graph.functional_view(model) is not None:
            adapter = TiledTwinModel(model)
        else:
            adapter = TiledInputsModel(model)
        _CACHE[model] = (layers, adapter)
        return adapter


def _checked(adapter):
    if not isinstance(adapter, SampledModel):
        raise ValueError(
            "Invalid value received for argument `model`. Expected "
            "`as_sampled_model()` to return a ku.sampling.SampledModel. "
            f"Received: {type(adapter).__name__}"
        )
    return adapter
