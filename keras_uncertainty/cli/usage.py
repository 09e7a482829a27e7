"""Checks of the command line's arguments and output paths.

Everything here runs before TensorFlow is imported; a problem is a
`UsageError` (or an `argparse` type error): one line, exit status 2.
"""

import argparse
import os
import tempfile

from keras_uncertainty.experiments import protocols

MAX_SEED = 2**32 - 1  # numpy's seed range
# The largest split index `--splits` accepts (a data set's n_splits.txt is at
# most keras_uncertainty.datasets.uci.MAX_SPLITS = 10000); checked before a
# range is expanded, so '0-999999999999' costs nothing.
MAX_SPLIT_INDEX = 9999
# The data sets `uci` knows by name: one list, in the Keras-free protocols
# module, so that the parser needs neither numpy nor TensorFlow.
UCI_DATASETS = protocols.UCI_DATASETS


class UsageError(Exception):
    """A problem with the arguments or files: one line, exit status 2."""


def positive_int(text):
    """An argparse type: an integer >= 1.

    Args:
        text: The argument as typed.

    Returns:
        The integer.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}"
        )
    return value


def _finite_float(zero_allowed):
    """An argparse type: a finite float > 0 (or >= 0 when `zero_allowed`)."""
    expected = "a number >= 0" if zero_allowed else "a positive number"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        low_ok = value >= 0 if zero_allowed else value > 0
        if not low_ok or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
        return value

    return parse


positive_float = _finite_float(zero_allowed=False)
non_negative_float = _finite_float(zero_allowed=True)


def seed(text):
    """An argparse type: an integer seed in [0, 2**32 - 1] (numpy's range).

    Args:
        text: The argument as typed.

    Returns:
        The integer.
    """
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, {MAX_SEED}], received {text!r}"
        )
    return value


def parse_splits(text):
    """Split indices from '0-19', '3' or '0,2,5'.

    Args:
        text: The `--splits` argument.

    Returns:
        The sorted list of split indices.

    Raises:
        ValueError: `text` is not such a list, or names a negative index.
    """
    ranges = []
    try:
        if len(text) > 1000:  # a list longer than every split index written out
            raise ValueError
        for part in text.split(","):
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if low > high:
                    raise ValueError
            else:
                low = high = int(part)
            ranges.append((low, high))
    except ValueError:
        raise ValueError(
            f"expected splits like '0-19', '3' or '0,2,5', received {text!r}"
        ) from None
    if min(low for low, _ in ranges) < 0:
        raise ValueError(f"expected non-negative split indices, received {text!r}")
    # Bounded before any range is expanded.
    highest = max(high for _, high in ranges)
    if highest > MAX_SPLIT_INDEX:
        raise ValueError(
            f"expected split indices in [0, {MAX_SPLIT_INDEX}], received "
            f"{text!r} (up to {highest})"
        )
    indices = set()
    for low, high in ranges:
        indices.update(range(low, high + 1))
    return sorted(indices)


def splits(text):
    """An argparse type: a `--splits` list that `parse_splits` accepts.

    Args:
        text: The argument as typed.

    Returns:
        `text` itself (the results file records it as typed).
    """
    try:
        parse_splits(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def check_datasets(names, data_dir=None):
    """Checks `uci`'s DATASET arguments before TensorFlow loads.

    A name is a data set the package knows, a folder that exists, or a
    subfolder of `data_dir`; the files themselves are checked when read.

    Args:
        names: The DATASET arguments.
        data_dir: The `--data-dir` argument, or None.

    Raises:
        UsageError: A name is none of these, or `data_dir` is not a folder.
    """
    if data_dir is not None and not os.path.isdir(data_dir):
        raise UsageError(
            f"--data-dir {data_dir!r} is not a folder; expected a folder holding "
            "one subfolder per data set"
        )
    # The look-up of keras_uncertainty.datasets.uci.find_uci_folder.
    for name in names:
        if os.sep in name or (os.path.isdir(name) and name not in UCI_DATASETS):
            if not os.path.isdir(name):
                raise UsageError(
                    f"data set folder {name!r} does not exist; expected a folder "
                    "in the UCI layout"
                )
        elif data_dir is not None:
            if not os.path.isdir(os.path.join(data_dir, name)):
                raise UsageError(
                    f"data set {name!r} is not in --data-dir {data_dir!r}; "
                    f"expected a subfolder {os.path.join(data_dir, name)!r}"
                )
        elif name not in UCI_DATASETS:
            raise UsageError(
                "argument DATASET: unknown data set. Expected one of "
                f"{', '.join(UCI_DATASETS)}, or a folder path; received {name!r}"
            )


def _cannot_write_in(folder):
    """Why a file cannot be created in `folder`, or None. It tries, because
    permission bits do not tell (root, read-only mounts, quotas)."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-check.")
    except OSError as error:
        return error.strerror or str(error)
    os.close(handle)
    os.remove(probe)
    return None


def _prepare_folder(folder, name):
    """Creates `folder` if missing and checks that files can be made in it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the folder of {name}: {error.strerror}"
        ) from None
    problem = _cannot_write_in(folder)
    if problem:
        raise UsageError(f"cannot write {name}: {problem}")


def check_output_file(path):
    """Creates `path`'s folder if missing and checks that it can be written.

    Args:
        path: The `--output` file.

    Raises:
        UsageError: `path` is a folder, or its folder cannot be made or
            written.
    """
    if os.path.isdir(path):
        raise UsageError(f"--output {path!r} is a folder; expected a file path")
    _prepare_folder(os.path.dirname(os.path.abspath(path)), f"--output {path!r}")


def check_output_dir(path):
    """Creates the folder `path` if missing and checks that it can be written.

    Args:
        path: The `--output-dir` folder.

    Raises:
        UsageError: The folder cannot be made or written.
    """
    _prepare_folder(path, f"--output-dir {path!r}")
