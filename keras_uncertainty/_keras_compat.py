"""The one place where keras_uncertainty reaches past Keras's public API.

Keras has no public way to list the layers nested inside an arbitrary layer
(`keras.Model.layers` lists a model's direct layers only, and a plain
`keras.layers.Layer` that holds sublayers exposes none). Sampling must find
every layer that stays random at inference, however deeply it is nested, so
this module reads `Layer._flatten_layers`, which every Keras 3 release has.
It checks on first use that what it reads exists and raises an error naming
the installed Keras version if not, instead of silently finding no layers.

Keras also has no public way for a callback to see the list it runs in.
`UncertaintyMetrics` must write its values before the other callbacks'
`on_epoch_end` (TensorBoard and CSVLogger read `logs` there), so
`running_callback_list` finds the `keras.callbacks.CallbackList` that is
calling a hook, from the calling frame; when it cannot (a Keras that calls
hooks differently), it returns None and the callback says so.

No other module of the package imports `keras.src` or reads a private
attribute of a Keras or TensorFlow object; `tests/test_public_api.py`
enforces it.
"""

import inspect

import keras

_CHECKED = False


def _require():
    global _CHECKED
    if _CHECKED:
        return
    if not callable(getattr(keras.layers.Layer, "_flatten_layers", None)):
        raise RuntimeError(
            "keras_uncertainty needs `keras.layers.Layer._flatten_layers` to "
            "find the layers nested in a model, and Keras "
            f"{keras.__version__} does not have it. Please report this, with "
            "your Keras version, to keras_uncertainty's issue tracker; the "
            "Keras versions it is tested on are listed in its README."
        )
    _CHECKED = True


def flatten_layers(layer):
    """`layer` and every layer nested in it, at any depth, each once."""
    _require()
    return list(layer._flatten_layers(include_self=True, recursive=True))


def child_layers(layer):
    """The layers directly nested in `layer` (its sublayers, one level)."""
    _require()
    return list(layer._flatten_layers(include_self=False, recursive=False))


def running_callback_list(max_depth=4):
    """The `keras.callbacks.CallbackList` calling the running callback hook.

    Keras calls every callback's hooks from the `CallbackList`'s own methods
    (`for callback in self.callbacks: ...`), so the list is the `self` of a
    frame a few levels up. None when no such frame is found.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(max_depth + 1):
            frame = frame.f_back
            if frame is None:
                return None
            owner = frame.f_locals.get("self")
            if isinstance(owner, keras.callbacks.CallbackList) and isinstance(
                getattr(owner, "callbacks", None), list
            ):
                return owner
        return None
    finally:
        del frame


def set_state_after_build(layer, name, value):
    """`setattr(layer, name, value)` for state (a seed generator) that a
    layer must own although Keras already locked it: `keras.layers.Dropout`
    with rate 0 builds itself in `__init__`, and a built layer refuses new
    state. Keras has no public way to add it, so this lifts the layer's
    tracker lock (`Layer._tracker.locked`) for the one assignment."""
    tracker = getattr(layer, "_tracker", None)
    if tracker is None or not isinstance(getattr(tracker, "locked", None), bool):
        raise RuntimeError(
            "keras_uncertainty needs `keras.layers.Layer._tracker.locked` to "
            f"give a built layer its seed generator, and Keras {keras.__version__} "
            "does not have it. Please report this, with your Keras version, "
            "to keras_uncertainty's issue tracker."
        )
    locked = tracker.locked
    tracker.locked = False
    try:
        setattr(layer, name, value)
    finally:
        tracker.locked = locked
