"""Turning a built Keras layer into its MC twin, in place.

`to_mc_dropout` copies a model through the `.keras` format (which keeps
every piece of state: weights, adapted preprocessing, vocabularies) and then
changes the class of each dropout-bearing layer of the copy to its MC twin,
a subclass that only overrides how the layer draws its randomness. Changing
the class of the live object, rather than rebuilding the layer from its
config, keeps whatever the layer holds outside its config and weights, and
reaches layers that a parent creates itself (the `Dropout` inside
`MultiHeadAttention` or a keras_hub `TransformerEncoder`), which no config
describes.
"""

import keras

from keras_uncertainty import _keras_compat


def become(layer, mc_class):
    """Makes `layer` an instance of `mc_class`, a subclass of its class.

    The twin's `__init__` does not run, so this gives the layer what the
    `MCLayer` contract needs and Keras's own constructor may have skipped: a
    `seed` attribute and, for an `MCLayer`, a `keras.random.SeedGenerator` (a
    `Dropout` of rate 0 has none). A twin with `adopt_children()` then
    converts what it holds (an RNN layer's cell).

    Args:
        layer: A Keras layer whose class `mc_class` subclasses.
        mc_class: The MC twin class.

    Returns:
        `layer`, now an `mc_class`.
    """
    if not issubclass(mc_class, type(layer)):
        raise ValueError(
            f"Invalid value received for argument `layer`. Expected an "
            f"instance of a parent of {mc_class.__name__}. Received: "
            f"{type(layer).__name__}"
        )
    layer.__class__ = mc_class
    if not hasattr(layer, "seed"):
        layer.seed = None
    if getattr(mc_class, "owns_seed_generator", False) and not isinstance(
        getattr(layer, "seed_generator", None), keras.random.SeedGenerator
    ):
        _keras_compat.set_state_after_build(
            layer, "seed_generator", keras.random.SeedGenerator(layer.seed)
        )
    after = getattr(layer, "adopt_children", None)
    if after is not None:
        after()
    return layer
