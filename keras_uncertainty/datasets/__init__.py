"""Data sets: the UCI regression benchmark, MNIST, and a 1-D toy problem.

No test downloads anything: point `KERAS_UNCERTAINTY_DATA` at a local copy
(the parent of `uci/` and `mnist/`), or pass `data_dir`.

Importing this package loads neither numpy, Keras nor TensorFlow: the data
set names (`UCI_DATASETS`, from `keras_uncertainty.datasets.names`) are read
by the command line before TensorFlow loads, and every other name is
imported on first use (PEP 562).
"""

import importlib
import typing

from keras_uncertainty.datasets.names import UCI_DATASETS

# Public name -> the module of this package that defines it.
_LAZY = {
    "DownloadError": "keras_uncertainty.datasets._files",
    "MNIST": "keras_uncertainty.datasets.mnist",
    "load_mnist": "keras_uncertainty.datasets.mnist",
    "toy_regression": "keras_uncertainty.datasets.toy",
    "UCISplit": "keras_uncertainty.datasets.uci",
    "load_uci": "keras_uncertainty.datasets.uci",
}

__all__ = [
    "DownloadError",
    "MNIST",
    "UCISplit",
    "UCI_DATASETS",
    "load_mnist",
    "load_uci",
    "toy_regression",
]

if typing.TYPE_CHECKING:  # what IDEs, type checkers and the API docs see
    from keras_uncertainty.datasets._files import DownloadError
    from keras_uncertainty.datasets.mnist import MNIST, load_mnist
    from keras_uncertainty.datasets.toy import toy_regression
    from keras_uncertainty.datasets.uci import UCISplit, load_uci


def __getattr__(name):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
