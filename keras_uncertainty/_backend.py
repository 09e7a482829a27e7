"""The one place that checks Keras's backend before the package uses Keras.

`import keras_uncertainty` loads nothing heavy (see the package's lazy
`__getattr__`), so the check cannot run there. Instead `install()` puts a
finder first on `sys.meta_path`: the first import of any part of the package
that may load Keras (`ku.layers`, `from keras_uncertainty import sample`,
`import keras_uncertainty.sampling`, ...) runs `check()` before the part
loads, and the finder steps aside once the check has passed. The modules in
`KERAS_FREE` (the command line's parser and the protocol defaults) never
trigger it, so the command line checks its arguments before TensorFlow loads.

When the check is what imports Keras, the part being found is not loaded
yet, so the package's Keras classes are registered (`_registration`) once
that part has loaded: importing them while it is only being found would run
it twice.

This module imports neither Keras nor TensorFlow at import time.
"""

import sys

from keras_uncertainty import _registration

PACKAGE = "keras_uncertainty"
# Parts of the package that import neither Keras nor TensorFlow.
KERAS_FREE = frozenset(
    {
        f"{PACKAGE}.__main__",
        f"{PACKAGE}._backend",
        f"{PACKAGE}._registration",
        f"{PACKAGE}.cli",
        f"{PACKAGE}.cli.__main__",
        f"{PACKAGE}.cli.main",
        f"{PACKAGE}.cli.durable",
        f"{PACKAGE}.cli.results",
        f"{PACKAGE}.cli.usage",
        f"{PACKAGE}.datasets",
        f"{PACKAGE}.datasets.names",
        f"{PACKAGE}.experiments",
        f"{PACKAGE}.experiments.protocols",
        f"{PACKAGE}.experiments.registry",
    }
)

_checked = False


def check():
    """Imports Keras and raises ImportError unless its backend is TensorFlow.

    Sampling, packed ensembles and export are built on TensorFlow ops;
    failing here beats an unrelated error from deep inside a later call.

    Raises:
        ImportError: Keras runs on another backend (the message names it and
            the fix).
    """
    global _checked
    if _checked:
        return
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(
            "keras_uncertainty needs Keras's TensorFlow backend. Received: the "
            f"'{backend}' backend. Set the environment variable "
            'KERAS_BACKEND=tensorflow before Python starts (or "backend": '
            '"tensorflow" in ~/.keras/keras.json).'
        )
    _checked = True
    _remove_finder()


class _CheckFirst:
    """A `sys.meta_path` finder that runs `check()` before the first part of
    the package that may load Keras. It finds nothing itself (the ordinary
    finders load the module), except when the check imported Keras: then it
    returns the ordinary finders' spec with a loader that registers the
    package's Keras classes once the part has loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(f"{PACKAGE}.") or fullname in KERAS_FREE:
            return None
        with _registration.held():
            check()
        if not _registration.pending():
            return None
        spec = _registration.spec_then(
            fullname, path, target, _registration.register, self
        )
        if spec is None:  # nothing to load twice
            _registration.register()
        return spec


def _remove_finder():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _CheckFirst)]


def install():
    """Puts the checking finder first on `sys.meta_path` (once), unless the
    backend was already checked."""
    if not _checked and not any(isinstance(f, _CheckFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckFirst())
