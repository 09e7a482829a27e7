"""MNIST from its original IDX files (gzip)."""

import dataclasses
import gzip
import os
import zlib

import numpy as np

from keras_uncertainty.datasets import _files

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/{file}"
_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension; images: 3


@dataclasses.dataclass(frozen=True)
class MNIST:
    """The official MNIST test set (10,000 digits).

    Attributes:
        images: `(10000, 28, 28)` uint8.
        labels: `(10000,)` int64.
        folder: Where the files were read.
    """

    images: np.ndarray
    labels: np.ndarray
    folder: str


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


def find_mnist_folder(data_dir=None):
    if data_dir is not None:
        return data_dir
    candidates = []
    if os.environ.get(_files.ENV_VAR):
        candidates.append(os.path.join(os.environ[_files.ENV_VAR], "mnist"))
    candidates.append(_files.cache_dir("mnist"))
    for folder in candidates:
        if all(os.path.exists(os.path.join(folder, f)) for f in TEST_FILES):
            return folder
    return _files.download(
        "mnist",
        None,
        TEST_FILES,
        lambda f: _URL.format(file=f),
        _files.cache_dir("mnist"),
    )


def load_mnist(data_dir=None):
    """Loads the MNIST test set.

    Args:
        data_dir: Optional folder holding the IDX files; otherwise
            `$KERAS_UNCERTAINTY_DATA/mnist`, the cache, or a checked download.

    Returns:
        An `MNIST` with images and labels.
    """
    folder = find_mnist_folder(data_dir)
    paths = [os.path.join(folder, f) for f in TEST_FILES]
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
    return MNIST(images=images, labels=labels.astype(np.int64), folder=folder)
