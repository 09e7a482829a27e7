"""Turn a trained model's inference-off dropout into MC dropout."""

import dataclasses
import numbers
import os
import tempfile
import warnings

import keras
import numpy as np

from keras_uncertainty import _keras_compat
from keras_uncertainty._validation import check_seed
from keras_uncertainty.layers._twins import become
from keras_uncertainty.layers.mc_attention import MCMultiHeadAttention
from keras_uncertainty.layers.mc_dropout import (
    MCDropout,
    MCGaussianDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
)
from keras_uncertainty.layers.mc_recurrent import LAYER_TWINS, cell_twin
from keras_uncertainty.sampling.graph import quiet_input_names

# Exact classes only: a subclass of `Dropout` may draw its own way, so it is
# reported (and warned about) rather than silently given another `call`.
_TWINS = {
    keras.layers.Dropout: MCDropout,
    keras.layers.SpatialDropout1D: MCSpatialDropout1D,
    keras.layers.SpatialDropout2D: MCSpatialDropout2D,
    keras.layers.SpatialDropout3D: MCSpatialDropout3D,
    keras.layers.GaussianDropout: MCGaussianDropout,
    keras.layers.MultiHeadAttention: MCMultiHeadAttention,
    **LAYER_TWINS,
}
# Attributes that hold a dropout rate, in Keras and in keras_hub layers.
_RATE_ATTRIBUTES = (
    "dropout",
    "recurrent_dropout",
    "attention_dropout",
    "dropout_rate",
)


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What `to_mc_dropout` converted, and what it could not.

    Each entry is `"path (Class -> MCClass)"` or `"path (Class, reason)"`,
    where `path` names the layer from the model down (`model/layer/...`).

    Attributes:
        converted: Layers now random at inference, their MC class kept by a
            `.keras` file of the converted model.
        in_memory_only: Layers converted inside a parent that creates them
            itself (the `Dropout` layers of a keras_hub `TransformerEncoder`,
            of a custom layer): MC in this model and in `ku.export`, but a
            `.keras` file reloads them as Keras layers (convert again after
            `keras.saving.load_model`).
        not_converted: Layers with a dropout rate above 0 that stay
            deterministic (a custom dropout, `AlphaDropout`, ...).
    """

    converted: tuple = ()
    in_memory_only: tuple = ()
    not_converted: tuple = ()

    def __str__(self):
        lines = []
        for title, entries in (
            ("converted", self.converted),
            (
                "converted in memory only (re-convert after loading)",
                self.in_memory_only,
            ),
            ("NOT converted (deterministic)", self.not_converted),
        ):
            lines.append(f"{title}: {len(entries)}")
            lines.extend(f"  {entry}" for entry in entries)
        return "\n".join(lines)


def _twin_class(layer):
    if getattr(layer, "stochastic_at_inference", False):
        return None
    return _TWINS.get(type(layer)) or cell_twin(type(layer))


def _config_keeps_children(layer):
    """Whether a `.keras` file records the classes of `layer`'s sublayers:
    graph models, wrappers (`Bidirectional`, `TimeDistributed`) and RNN
    layers write their sublayers' configs; MC twins recreate theirs."""
    if hasattr(layer, "adopt_children"):
        return True
    if isinstance(layer, keras.Model):
        return hasattr(layer, "outputs") and hasattr(layer, "inputs")
    return isinstance(
        layer,
        (
            keras.layers.Wrapper,
            keras.layers.Bidirectional,
            keras.layers.RNN,
            keras.layers.StackedRNNCells,
        ),
    )


def _walk(layer, path, kept):
    """(layer, path, kept) for `layer` and every layer nested in it, each
    once; `kept`: whether a `.keras` file records the layer's class."""
    seen = set()

    def visit(current, current_path, current_kept):
        if id(current) in seen:
            return
        seen.add(id(current))
        yield current, current_path, current_kept
        keeps = current_kept and _config_keeps_children(current)
        for child in _keras_compat.child_layers(current):
            yield from visit(child, f"{current_path}/{child.name}", keeps)

    yield from visit(layer, path, kept)


def _rate_above_zero(layer):
    names = _RATE_ATTRIBUTES + (("rate",) if "Dropout" in type(layer).__name__ else ())
    for name in names:
        value = getattr(layer, name, None)
        if (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and value > 0
        ):
            return name, float(value)
    return None


def _custom_objects(model):
    """The classes of the model's layers and its loss functions, by name, so
    that unregistered ones defined in the user's code load too."""
    objects = {
        type(layer).__name__: type(layer)
        for layer in _keras_compat.flatten_layers(model)
    }
    for loss in keras.tree.flatten(getattr(model, "loss", None)):
        if isinstance(loss, keras.losses.Loss):
            objects[type(loss).__name__] = type(loss)
        elif callable(loss) and hasattr(loss, "__name__"):
            objects[loss.__name__] = loss
    return objects


def _compile_like(copy, model):
    """Compiles `copy` with `model`'s loss and a fresh optimizer of the same
    configuration (metrics that cannot be reloaded are left out)."""
    optimizer = getattr(model, "optimizer", None)
    if getattr(model, "loss", None) is None or optimizer is None:
        return
    copy.compile(
        optimizer=type(optimizer).from_config(optimizer.get_config()), loss=model.loss
    )


def _copy_with_state(model):
    """A copy of `model` through the `.keras` format, which keeps every piece
    of state (weights, adapted `Normalization` statistics, lookup
    vocabularies, assets), where `clone_model` + `set_weights` keeps weights
    only. The compiled loss is kept (it says whether the output carries
    log-variances)."""
    custom_objects = _custom_objects(model)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        try:
            # Reloading a model built on a dict of inputs not named after
            # its keys repeats the warning the user's model gave.
            with warnings.catch_warnings(), quiet_input_names():
                # NumPy 2 asks Keras's variables for `copy=`: Keras's concern.
                warnings.filterwarnings("ignore", message="__array__ implementation")
                # An optimizer compiled but never stepped has no slots yet.
                warnings.filterwarnings(
                    "ignore", message="Skipping variable loading for optimizer"
                )
                model.save(path)
                # The file is our own, just written: Lambda layers may load.
                try:
                    return keras.saving.load_model(
                        path, custom_objects=custom_objects, safe_mode=False
                    )
                except Exception:  # noqa: BLE001 - a compile setting that
                    # does not reload (an unregistered metric): load the
                    # network alone and compile it with the loss.
                    copy = keras.saving.load_model(
                        path,
                        custom_objects=custom_objects,
                        compile=False,
                        safe_mode=False,
                    )
                    _compile_like(copy, model)
                    return copy
        except Exception as error:  # noqa: BLE001 - reported with its cause
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                "model that saves to and loads from a `.keras` file (the "
                "route that keeps every layer's state: give custom layers "
                "`get_config` and register them with "
                "`keras.saving.register_keras_serializable`), or build it "
                f"with `ku.layers.MCDropout`. Received: model '{model.name}' "
                f"({type(model).__name__}), which failed with "
                f"{type(error).__name__}: {error}"
            ) from error


def _reseed(layers, seed):
    states = np.random.SeedSequence(seed).generate_state(max(len(layers), 1), np.uint32)
    for layer, state in zip(layers, states):
        generator = layer.seed_generator
        value = np.array([int(state) % (2**31 - 1), 0], dtype=np.int64)
        generator.state.assign(value.astype(generator.state.dtype))


def to_mc_dropout(model, seed=None, verbose=0, return_report=False):
    """Returns a copy of `model` whose dropout stays on at inference.

    The copy is made through the `.keras` format, so it keeps every piece
    of state (weights, BatchNormalization statistics, adapted
    `Normalization`, `StringLookup` / `TextVectorization` vocabularies) and
    its class (a keras_hub backbone stays a backbone). Then every dropout
    becomes Monte Carlo dropout, with the same configuration:

    - `Dropout`, `SpatialDropout1D/2D/3D` and `GaussianDropout` become
      `MCDropout`, `MCSpatialDropout*` and `MCGaussianDropout`;
    - `SimpleRNN`, `LSTM`, `GRU`, `ConvLSTM1D/2D/3D` and `RNN(cell)` keep
      their `dropout` and `recurrent_dropout` on as variational MC dropout
      (one mask per sequence and sample, Gal & Ghahramani 2016), also inside
      `Bidirectional` and `TimeDistributed`;
    - `MultiHeadAttention` becomes `MCMultiHeadAttention`;
    - a `Dropout` nested inside any other layer (keras_hub's
      `TransformerEncoder`, a custom layer) is converted where it is.

    A warning names every layer with a dropout rate above 0 that stays
    deterministic (a custom dropout, `AlphaDropout`), and says so when
    nothing was converted. The original model is not modified.

    Args:
        model: A `keras.Model` (Functional, Sequential, or subclassed with a
            `get_config`) that saves to a `.keras` file.
        seed: Optional non-negative integer: reseeds the converted layers'
            own generators (used when the copy is called directly or
            trained; sampling calls take `seed=` themselves).
        verbose: 0 (silent) or 1 (print the conversion report).
        return_report: Whether to return `(copy, ConversionReport)`.

    Returns:
        The converted copy, or `(copy, report)` with `return_report=True`.

    Example:

    >>> mc_model = ku.layers.to_mc_dropout(trained_model)
    >>> prediction = ku.predict_classification(mc_model, x_test)
    >>> mc_model, report = ku.layers.to_mc_dropout(lstm_model, return_report=True)
    >>> print(report)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: {type(model).__name__}"
        )
    seed = check_seed(seed)
    if verbose not in (0, 1) or isinstance(verbose, bool):
        raise ValueError(
            "Invalid value received for argument `verbose`. Expected 0 or 1. "
            f"Received: verbose={verbose!r}"
        )
    copy = _copy_with_state(model)
    converted, in_memory, reseeded = [], [], []
    for layer, path, kept in list(_walk(copy, copy.name, True)):
        twin = _twin_class(layer)
        if twin is None:
            continue
        entry = f"{path} ({type(layer).__name__} -> {twin.__name__})"
        (converted if kept else in_memory).append(entry)
        become(layer, twin)
        if isinstance(
            getattr(layer, "seed_generator", None), keras.random.SeedGenerator
        ):
            reseeded.append(layer)
    not_converted = []
    for layer, path, _ in _walk(copy, copy.name, True):
        rate = _rate_above_zero(layer)
        if rate is not None and not _stochastic(layer):
            not_converted.append(
                f"{path} ({type(layer).__name__}, {rate[0]}={rate[1]:g}: no MC twin)"
            )
    if seed is not None:
        _reseed(reseeded, seed)
    report = ConversionReport(tuple(converted), tuple(in_memory), tuple(not_converted))
    _warn(model, report, already_stochastic=_stochastic(copy))
    if verbose:
        print(report)
    return (copy, report) if return_report else copy


def _stochastic(layer):
    return any(
        getattr(sub, "stochastic_at_inference", False)
        for sub in _keras_compat.flatten_layers(layer)
    )


def _warn(model, report, already_stochastic):
    if report.not_converted:
        warnings.warn(
            f"`to_mc_dropout`: {len(report.not_converted)} layer(s) of model "
            f"'{model.name}' have a dropout rate above 0 but stay "
            "deterministic: " + "; ".join(report.not_converted) + ". Replace "
            "them with `ku.layers` MC layers (or subclass "
            "`ku.layers.MCLayer`) for their dropout to count.",
            UserWarning,
            stacklevel=3,
        )
    if not already_stochastic:
        looked_for = ", ".join(cls.__name__ for cls in _TWINS)
        warnings.warn(
            f"`to_mc_dropout` found no layer to convert in model "
            f"'{model.name}' (it looks for {looked_for}), so the copy is "
            "deterministic and its epistemic uncertainty will be zero. Add "
            "`ku.layers.MCDropout` layers where dropout belongs.",
            UserWarning,
            stacklevel=3,
        )
