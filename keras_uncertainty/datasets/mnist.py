"""MNIST from its original IDX files (gzip), or from Keras's `mnist.npz`."""

import dataclasses
import gzip
import os
import zlib

import numpy as np

from keras_uncertainty.datasets import _files

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
SPLIT_FILES = {"train": TRAIN_FILES, "test": TEST_FILES}
SPLIT_SIZES = {"train": 60000, "test": 10000}
# What `keras.datasets.mnist.load_data()` downloads into Keras's cache.
KERAS_NPZ = "mnist.npz"
_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{file}"
_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension; images: 3


@dataclasses.dataclass(frozen=True)
class MNIST:
    """One split of MNIST: the 60,000 training or the 10,000 test digits.

    Attributes:
        images: `(N, 28, 28)` uint8.
        labels: `(N,)` int64, digits 0-9.
        folder: Where the files were read (the folder of the IDX files, or
            the path of Keras's `mnist.npz`).
        split: `"train"` or `"test"`.
    """

    images: np.ndarray
    labels: np.ndarray
    folder: str
    split: str = "test"


def read_idx(path):
    """Reads a gzip IDX file; a corrupt or truncated file raises ValueError."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"MNIST file '{path}' is corrupt: {error}") from None
    if len(raw) < 8:
        raise ValueError(f"MNIST file '{path}' is truncated: no IDX header.")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _MAGIC:
        raise ValueError(
            f"MNIST file '{path}' is not an IDX file of uint8 data (magic "
            f"number {magic}, expected 2049 or 2051)."
        )
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(
            f"MNIST file '{path}' is truncated or padded: its header promises "
            f"{expected} values of shape {tuple(dims)}, it holds "
            f"{len(raw) - header}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _keras_npz():
    """Keras's own MNIST cache, `~/.keras/datasets/mnist.npz` (KERAS_HOME)."""
    return os.path.join(
        os.path.dirname(os.path.dirname(_files.cache_dir("mnist"))), KERAS_NPZ
    )


def _download_keras_npz():
    """Downloads `mnist.npz` with Keras's own loader (which checks its
    SHA-256) and returns its path. Tests replace this function."""
    import keras

    keras.datasets.mnist.load_data()
    return _keras_npz()


def _has(folder, files):
    return all(os.path.exists(os.path.join(folder, f)) for f in files)


def find_mnist_folder(data_dir=None, split="test"):
    """Where split `split` is read: a folder of IDX files, or a `mnist.npz`.

    Look-up order: `data_dir`; `$KERAS_UNCERTAINTY_DATA/mnist`; Keras's
    cache `~/.keras/datasets/mnist.npz` (what
    `keras.datasets.mnist.load_data()` writes); this package's cache; then a
    download (the test set's IDX files, checked against their SHA-256; the
    training set through `keras.datasets.mnist.load_data()`).
    """
    files = SPLIT_FILES[split]
    if data_dir is not None:
        if split == "test" or _has(data_dir, files):
            return data_dir
        if os.path.exists(os.path.join(data_dir, KERAS_NPZ)):
            return os.path.join(data_dir, KERAS_NPZ)
    candidates = []
    if os.environ.get(_files.ENV_VAR):
        candidates.append(os.path.join(os.environ[_files.ENV_VAR], "mnist"))
    candidates.append(_files.cache_dir("mnist"))
    for folder in candidates:
        if _has(folder, files):
            return folder
    if os.path.exists(_keras_npz()):
        return _keras_npz()
    if split == "test":
        return _files.download(
            "mnist",
            None,
            TEST_FILES,
            lambda f: _URL.format(file=f),
            _files.cache_dir("mnist"),
        )
    _files.check_online(
        "the MNIST training set",
        "a folder holding train-images-idx3-ubyte.gz and "
        "train-labels-idx1-ubyte.gz (`--data-dir`, or KERAS_UNCERTAINTY_DATA/"
        f"mnist), or Keras's '{_keras_npz()}'",
    )
    try:
        return _download_keras_npz()
    except Exception as error:  # Keras raises a bare Exception when offline
        raise _files.DownloadError(
            f"Could not download the MNIST training set with "
            f"keras.datasets.mnist.load_data() ({error}). Provide it locally: "
            "a folder holding train-images-idx3-ubyte.gz and "
            "train-labels-idx1-ubyte.gz (`--data-dir`, or "
            f"KERAS_UNCERTAINTY_DATA/mnist), or Keras's '{_keras_npz()}'."
        ) from None


def _read_npz(path, split):
    try:
        with np.load(path) as archive:
            return archive[f"x_{split}"], archive[f"y_{split}"]
    except (OSError, ValueError, KeyError, zlib.error) as error:
        raise ValueError(
            f"MNIST file '{path}' is not a readable mnist.npz with x_{split} and "
            f"y_{split}: {error}"
        ) from None


def load_mnist(data_dir=None, split="test"):
    """Loads one split of MNIST.

    Args:
        data_dir: Optional folder holding the IDX files (or a `mnist.npz`);
            otherwise the look-up order of `find_mnist_folder`.
        split: `"test"` (10,000 digits) or `"train"` (60,000).

    Returns:
        An `MNIST` with images and labels.

    Raises:
        ValueError: missing, corrupt or inconsistent files (named).
        DownloadError: the split is nowhere locally and cannot be
            downloaded (the message says how to provide it).
    """
    if split not in SPLIT_FILES:
        raise ValueError(
            "Invalid value received for argument `split`. Expected 'train' or "
            f"'test'. Received: split={split!r}"
        )
    folder = find_mnist_folder(data_dir, split)
    if folder.endswith(".npz"):
        images, labels = _read_npz(folder, split)
        paths = [folder, folder]
    else:
        paths = [os.path.join(folder, f) for f in SPLIT_FILES[split]]
        for path in paths:
            if not os.path.exists(path):
                raise ValueError(
                    f"MNIST folder '{folder}' is missing the file "
                    f"'{os.path.basename(path)}'."
                )
        images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files in '{folder}' do not match: images of shape "
            f"{images.shape} and labels of shape {labels.shape}."
        )
    if labels.size and labels.max() > 9:
        bad = int(np.count_nonzero(labels > 9))
        raise ValueError(
            f"MNIST file '{paths[1]}' holds {bad} labels outside 0-9 (first: "
            f"{int(labels[labels > 9][0])} at index "
            f"{int(np.argmax(labels > 9))}); expected digits 0-9."
        )
    return MNIST(
        images=images, labels=labels.astype(np.int64), folder=folder, split=split
    )
