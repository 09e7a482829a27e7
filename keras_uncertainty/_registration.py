"""Registers the package's Keras classes as soon as Keras is imported.

`keras.models.load_model` finds a class of this package (`MCDropout`,
`ku.Ensemble`, `ku.losses.gaussian_nll`, ...) by the name it is registered
under (`keras_uncertainty>Ensemble`), and a class is registered when the
module that defines it runs. `import keras_uncertainty` runs none of them
(public names load on first use), so without this module a model the
toolkit saved could not be loaded in a new process until each of its
classes had been used there.

`install()`, run by `import keras_uncertainty`, makes the registrations
happen as soon as Keras is imported, whichever of the two comes first:

- Keras already imported: `register()` imports the defining modules now;
- otherwise a finder on `sys.meta_path` wraps the loader of `keras`, so that
  once the `keras` module has finished loading, `register()` runs (and the
  finder steps aside).

`register()` does nothing on a backend other than TensorFlow (the package
refuses it at first use, see `_backend`). While `_backend` checks the
backend before the first part of the package loads, it holds the
registrations back (that part is being found, not yet loaded: importing it
meanwhile would run it twice) and runs them once that part has loaded.

Importing the defining modules takes about 0.1 s once Keras is loaded.

This module imports neither Keras nor TensorFlow at import time.
"""

import contextlib
import importlib
import sys
import threading

# The modules that register a class with
# `keras.saving.register_keras_serializable` (a test checks the list is
# complete).
MODULES = (
    "keras_uncertainty.batch_ensemble.model",
    "keras_uncertainty.ensemble.model",
    "keras_uncertainty.evidential.classification",
    "keras_uncertainty.evidential.regression",
    "keras_uncertainty.laplace.model",
    "keras_uncertainty.layers.batch_ensemble",
    "keras_uncertainty.layers.gaussian_head",
    "keras_uncertainty.layers.mc_attention",
    "keras_uncertainty.layers.mc_dropout",
    "keras_uncertainty.layers.mc_layer",
    "keras_uncertainty.layers.mc_recurrent",
    "keras_uncertainty.layers.packed",
    "keras_uncertainty.layers.sngp",
    "keras_uncertainty.layers.variational",
    "keras_uncertainty.losses.gaussian_nll",
    "keras_uncertainty.losses.pinball",
    "keras_uncertainty.mimo.model",
    "keras_uncertainty.sngp.model",
    "keras_uncertainty.swag.model",
)

_lock = threading.Lock()
_done = False
_held = 0


def register():
    """Imports the modules in `MODULES` (once), so that every class of the
    package is registered with Keras. Does nothing before Keras is imported,
    on a backend other than TensorFlow, while held back (`held()`), or while
    it runs already (in this thread or another)."""
    global _done
    keras = sys.modules.get("keras")
    if _done or _held or keras is None:
        return
    if keras.backend.backend() != "tensorflow":
        return
    if not _lock.acquire(blocking=False):
        return
    try:
        if not _done:
            for name in MODULES:
                importlib.import_module(name)
            _done = True
    finally:
        _lock.release()


def pending():
    """Whether Keras is loaded but `register()` has not run to its end (nor
    runs now)."""
    return not _done and not _lock.locked() and "keras" in sys.modules


@contextlib.contextmanager
def held():
    """Holds `register()` back inside the block."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1


class _ThenCall:
    """A loader that runs the loader the import system found, then `after()`.

    It puts that loader back on the module's spec and `__loader__` before
    the module runs, so the loaded module keeps no trace of the wrapper."""

    def __init__(self, loader, after):
        self.loader = loader
        self.after = after

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module):
        module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.after()


def spec_then(fullname, path, target, after, skip):
    """The spec the other finders of `sys.meta_path` give `fullname`, its
    loader wrapped to call `after()` once the module has loaded; None when
    none finds it. The finder `skip` (the caller) is passed over."""
    for finder in list(sys.meta_path):
        if finder is skip or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path, target)
        if spec is None:
            continue
        if hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenCall(spec.loader, after)
        return spec
    return None


class _AfterKeras:
    """A `sys.meta_path` finder that finds `keras` with the other finders and
    runs `register()` once it has loaded; it finds nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        return spec_then(fullname, path, target, _keras_loaded, self)


def _keras_loaded():
    _remove_finder()
    register()


def _remove_finder():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterKeras)]


def install():
    """Registers the package's classes now if Keras is imported, else puts
    the finder that registers them once it is on `sys.meta_path` (once)."""
    if "keras" in sys.modules:
        register()
    elif not any(isinstance(f, _AfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())
