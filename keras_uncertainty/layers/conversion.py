"""Turn a trained model's inference-off dropout into MC dropout."""

import warnings

import keras

from keras_uncertainty import _keras_compat
from keras_uncertainty.layers.mc_dropout import (
    MCDropout,
    MCGaussianDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
)

# Subclasses come before their parents: SpatialDropout* derive from Dropout.
_MC_TWIN = (
    (keras.layers.SpatialDropout1D, MCSpatialDropout1D),
    (keras.layers.SpatialDropout2D, MCSpatialDropout2D),
    (keras.layers.SpatialDropout3D, MCSpatialDropout3D),
    (keras.layers.GaussianDropout, MCGaussianDropout),
    (keras.layers.Dropout, MCDropout),
)


def _mc_twin(layer):
    if getattr(layer, "stochastic_at_inference", False):
        return None
    for keras_class, mc_class in _MC_TWIN:
        if isinstance(layer, keras_class):
            return mc_class
    return None


def _clone_layer(layer):
    if isinstance(layer, keras.Model):
        return _converted(layer)
    layer_class = _mc_twin(layer) or layer.__class__
    return layer_class.from_config(layer.get_config())


def _converted(model):
    clone = keras.models.clone_model(model, clone_function=_clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def to_mc_dropout(model):
    """Returns a copy of `model` whose dropout layers stay on at inference.

    Every `keras.layers.Dropout`, `SpatialDropout1D/2D/3D` and
    `GaussianDropout` is replaced by its MC twin (`MCDropout`, ...), with the
    same configuration; all other layers are cloned as they are, and every
    weight is copied, so a trained network becomes an MC dropout network
    without retraining. Nested Functional and Sequential models are converted
    too. The original model is not modified.

    Args:
        model: A Functional or Sequential `keras.Model`.

    Returns:
        A new `keras.Model` of the same kind, with the same weights. When
        the model has no dropout layer to convert (and no MC layer already),
        the copy is deterministic and a warning names the layer types
        looked for.

    Example:

    >>> mc_model = ku.layers.to_mc_dropout(trained_model)
    >>> prediction = ku.predict_classification(mc_model, x_test)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"Functional or Sequential keras.Model. Received: {type(model).__name__}"
        )
    # Functional and Sequential models have symbolic inputs and outputs;
    # subclassed ones do not.
    is_graph_model = isinstance(model, keras.Sequential) or (
        hasattr(model, "inputs") and hasattr(model, "outputs")
    )
    if not is_graph_model:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            "Functional or Sequential keras.Model (a subclassed model's layers "
            "cannot be swapped from outside; build it with "
            f"`ku.layers.MCDropout` instead). Received: {type(model).__name__}"
        )
    clone = _converted(model)
    if not any(
        getattr(layer, "stochastic_at_inference", False)
        for layer in _keras_compat.flatten_layers(clone)
    ):
        looked_for = ", ".join(keras_class.__name__ for keras_class, _ in _MC_TWIN)
        warnings.warn(
            f"`to_mc_dropout` found no layer to convert in model "
            f"'{model.name}' (it looks for {looked_for}), so the copy is "
            "deterministic and its epistemic uncertainty will be zero. Add "
            "`ku.layers.MCDropout` layers where dropout belongs.",
            UserWarning,
            stacklevel=2,
        )
    return clone
