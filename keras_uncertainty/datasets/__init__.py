"""Data sets: the UCI regression benchmark, MNIST, and a 1-D toy problem.

No test downloads anything: point `KERAS_UNCERTAINTY_DATA` at a local copy
(the parent of `uci/` and `mnist/`), or pass `data_dir`.
"""

from keras_uncertainty.datasets._files import DownloadError
from keras_uncertainty.datasets.mnist import MNIST, load_mnist
from keras_uncertainty.datasets.toy import toy_regression
from keras_uncertainty.datasets.uci import UCI_DATASETS, UCISplit, load_uci

__all__ = [
    "DownloadError",
    "MNIST",
    "UCISplit",
    "UCI_DATASETS",
    "load_mnist",
    "load_uci",
    "toy_regression",
]
