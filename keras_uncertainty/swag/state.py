"""The SWAG moments: running mean, second moment and last K deviations.

Maddox et al. (2019), Algorithm 1. After snapshot `i` of the flattened
weights `w_i` (n snapshots before it):

    mean    <- (n * mean + w_i) / (n + 1)
    sq_mean <- (n * sq_mean + w_i**2) / (n + 1)
    D       <- the last K of the deviations `w_i - mean` (the mean just
               updated), oldest first

Everything is kept in float64 numpy arrays on the host, so `sq_mean -
mean**2` (the diagonal variance) does not lose its digits to cancellation;
memory is `(K + 2) * P * 8` bytes for P weights.
"""

import numbers
import os
import zipfile

import numpy as np

from keras_uncertainty import _budget
from keras_uncertainty._validation import check_positive_int

_FORMAT = "keras_uncertainty.swag/1"


def _received(value):
    return f"{type(value).__name__} {getattr(value, 'shape', '')}".strip()


def _invalid_state(expected, received):
    return ValueError(
        "Invalid value received for argument `state`. Expected "
        f"{expected}. Received: {received}"
    )


def check_max_rank(max_rank, name="max_rank"):
    """A positive integer of at most `_budget.MAX_SWAG_RANK`."""
    max_rank = check_positive_int(max_rank, name)
    if max_rank > _budget.MAX_SWAG_RANK:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected at most "
            f"{_budget.MAX_SWAG_RANK} deviations "
            "(keras_uncertainty._budget.MAX_SWAG_RANK; the SWAG paper keeps "
            f"20). Received: {name}={max_rank}"
        )
    return max_rank


def state_bytes(max_rank, num_params):
    """The bytes a `SWAGState` of `num_params` weights holds: the running
    mean, second moment and `max_rank` deviations in float64, and a copy of
    one snapshot while it is collected."""
    return _budget.FLOAT64 * (int(max_rank) + 3) * int(num_params)


def check_state_memory(max_rank, num_params, name="max_rank"):
    """Refuses, before allocation, SWAG moments above the memory budget."""
    most = _budget.most_within(_budget.FLOAT64 * int(num_params)) - 3
    _budget.check_bytes(
        name,
        max_rank,
        state_bytes(max_rank, num_params),
        f"the SWAG moments of {num_params} weights ((max_rank + 3) x P float64 values)",
        f"Keep fewer deviations (max_rank <= {max(most, 0)} fits), or collect "
        "the moments of fewer weights.",
    )


def _count(value, name):
    """An integer count from a state: an int, a numpy integer or a 0-d
    integer array."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise _invalid_state(f"{name}, an integer >= 1", f"{name}={value!r}")
    return int(value)


def _floats(value, name):
    """A float64 array of finite values from a state."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise _invalid_state(f"{name}, an array of floats", str(error)) from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
    ):
        raise _invalid_state(
            f"{name}, an array of floats", f"{name} of dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise _invalid_state(
            f"finite values in {name}", f"NaN or infinite values in {name}"
        )
    return array


def _dim(value):
    """A dimension: a non-negative integer (Python or numpy), else TypeError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(value)
    if value < 0:
        raise TypeError(value)
    return int(value)


def _shapes(shapes, num_params):
    """The collected variable shapes from a state, summing to `num_params`."""
    if shapes is None:
        return [(num_params,)]
    try:
        result = [tuple(_dim(d) for d in shape) for shape in shapes]
    except TypeError:
        raise _invalid_state(
            "shapes, a list of shapes of non-negative integers",
            f"shapes={shapes!r}",
        ) from None
    if sum(int(np.prod(shape, dtype=object)) for shape in result) != num_params:
        raise _invalid_state(
            f"shapes of {num_params} weights in all", f"shapes={shapes!r}"
        )
    return result


class SWAGState:
    """The SWAG moments of a weight trajectory (Maddox et al. 2019).

    Collects flattened weight vectors: their running mean, running
    uncentered second moment (diagonal) and the last `max_rank` deviations
    from the running mean, in float64 (see the module docstring). Memory is
    bounded: `(max_rank + 2) * P` float64 values for P weights, however
    many snapshots are collected. `ku.swag.SWAGCallback` fills one during
    `fit`; `ku.swag.SWAG` samples from it.

    Save it with `save(path)` (an `.npz` file) and read it back with
    `SWAGState.load(path)`, or use `get_state()` / `from_state(state)`.

    Args:
        max_rank: Positive integer K, the most deviations kept (the paper
            uses 20), at most `keras_uncertainty._budget.MAX_SWAG_RANK`
            (10000). The first snapshot refuses (before allocating) moments
            above `keras_uncertainty._budget.MAX_WORKING_BYTES` (16 GiB:
            `(K + 3) * P * 8` bytes).

    Example:

    >>> state = ku.swag.SWAGState(max_rank=2)
    >>> for w in ([0.0, 1.0], [1.0, 1.0], [2.0, 4.0]):
    ...     state.collect(np.array(w))
    >>> state.mean
    array([1., 2.])
    """

    def __init__(self, max_rank=20):
        self.max_rank = check_max_rank(max_rank)
        self.num_snapshots = 0
        self.shapes = None
        self.mean = None
        self.sq_mean = None
        self.ring = None  # (max_rank, P): deviation i sits in row i % max_rank

    @property
    def num_params(self):
        """P, the weights per snapshot (None before the first)."""
        return None if self.mean is None else int(self.mean.shape[0])

    @property
    def rank(self):
        """The deviations stored: `min(num_snapshots, max_rank)`."""
        return min(self.num_snapshots, self.max_rank)

    @property
    def variance(self):
        """The diagonal variance `sq_mean - mean**2` (float64, may hold tiny
        negative values from rounding: `SWAG` clamps it)."""
        self._require_snapshots()
        return self.sq_mean - self.mean**2

    @property
    def deviations(self):
        """The stored deviations `w_i - mean_i`, `(rank, P)` float64, oldest
        first."""
        self._require_snapshots()
        rank = self.rank
        start = self.num_snapshots - rank
        order = [(start + j) % self.max_rank for j in range(rank)]
        return self.ring[order]

    def _require_snapshots(self):
        if self.num_snapshots == 0:
            raise ValueError(
                "Invalid value received for argument `state`. Expected a SWAG "
                "state with at least one snapshot. Received: 0 snapshots (was "
                "the callback's `start_epoch` reached during `fit`?)"
            )

    def collect(self, weights):
        """Adds one snapshot of the weights.

        Args:
            weights: A 1-D array of the P flattened weights, or a list of
                arrays (one per variable, in `model.trainable_variables`
                order), flattened and concatenated.
        """
        if isinstance(weights, (list, tuple)):
            arrays = [np.asarray(w, np.float64) for w in weights]
            shapes = [tuple(a.shape) for a in arrays]
            flat = (
                np.concatenate([a.reshape(-1) for a in arrays])
                if arrays
                else np.zeros((0,))
            )
        else:
            flat = np.asarray(weights, np.float64)
            if flat.ndim != 1:
                raise ValueError(
                    "Invalid value received for argument `weights`. Expected a "
                    "1-D array of flattened weights or a list of arrays. "
                    f"Received: {_received(flat)}"
                )
            shapes = [tuple(flat.shape)]
        if flat.size == 0:
            raise ValueError(
                "Invalid value received for argument `weights`. Expected at "
                "least one weight. Received: an empty array"
            )
        if not np.all(np.isfinite(flat)):
            raise ValueError(
                "Invalid value received for argument `weights`. Expected "
                "finite weights. Received: NaN or infinite values (did "
                "training diverge?)"
            )
        if self.mean is None:
            check_state_memory(self.max_rank, flat.size)
            self.shapes = shapes
            self.mean = np.zeros(flat.shape, np.float64)
            self.sq_mean = np.zeros(flat.shape, np.float64)
            self.ring = np.zeros((self.max_rank, flat.size), np.float64)
        elif flat.shape != self.mean.shape:
            raise ValueError(
                "Invalid value received for argument `weights`. Expected "
                f"{self.mean.shape[0]} weights, as in the earlier snapshots. "
                f"Received: {flat.size}"
            )
        n = self.num_snapshots
        self.mean = self.mean * (n / (n + 1.0)) + flat / (n + 1.0)
        self.sq_mean = self.sq_mean * (n / (n + 1.0)) + flat**2 / (n + 1.0)
        self.ring[n % self.max_rank] = flat - self.mean
        self.num_snapshots = n + 1

    def get_state(self):
        """The state as a dict of numpy arrays and ints (what `save`
        writes; `from_state` reads it back).

        Returns:
            A dict: `max_rank`, `num_snapshots`, `mean`, `sq_mean`,
            `deviations` (oldest first) and `shapes`.
        """
        self._require_snapshots()
        return {
            "format": _FORMAT,
            "max_rank": self.max_rank,
            "num_snapshots": self.num_snapshots,
            "mean": self.mean.copy(),
            "sq_mean": self.sq_mean.copy(),
            "deviations": self.deviations,
            "shapes": [list(s) for s in self.shapes],
        }

    @classmethod
    def from_state(cls, state):
        """A `SWAGState` from what `get_state` returned.

        Args:
            state: The dict.

        Returns:
            A `SWAGState` that collects on from where the saved one stopped.

        Raises:
            ValueError: naming `state`, for a missing key or a value of the
                wrong kind (counts that are not positive integers, arrays
                that are not finite floats, a negative second moment,
                shapes that do not add up to the weights) or moments above
                the memory budget.
        """
        needed = ("max_rank", "num_snapshots", "mean", "sq_mean", "deviations")
        if not isinstance(state, dict) or any(k not in state for k in needed):
            got = sorted(state) if isinstance(state, dict) else _received(state)
            raise ValueError(
                "Invalid value received for argument `state`. Expected the "
                f"dict of `SWAGState.get_state()` (keys {list(needed)}). "
                f"Received: {got}"
            )
        max_rank = _count(state["max_rank"], "max_rank")
        try:
            check_max_rank(max_rank)
        except ValueError:
            raise _invalid_state(
                f"max_rank <= {_budget.MAX_SWAG_RANK}", f"max_rank={max_rank}"
            ) from None
        count = _count(state["num_snapshots"], "num_snapshots")
        mean = _floats(state["mean"], "mean")
        sq_mean = _floats(state["sq_mean"], "sq_mean")
        deviations = _floats(state["deviations"], "deviations")
        rank = min(count, max_rank)
        if (
            mean.ndim != 1
            or mean.size == 0
            or sq_mean.shape != mean.shape
            or deviations.shape != (rank, mean.shape[0])
        ):
            raise ValueError(
                "Invalid value received for argument `state`. Expected mean "
                "and sq_mean of shape (P,) and deviations of shape "
                f"({rank}, P). Received: mean {mean.shape}, sq_mean "
                f"{sq_mean.shape}, deviations {deviations.shape}"
            )
        if np.any(sq_mean < 0):
            raise _invalid_state(
                "sq_mean >= 0 (a mean of squares)", "negative values in sq_mean"
            )
        shapes = _shapes(state.get("shapes"), mean.shape[0])
        try:
            check_state_memory(max_rank, mean.shape[0])
        except ValueError as error:
            raise _invalid_state(
                "moments within the memory budget", str(error)
            ) from None
        result = cls(max_rank)
        result.num_snapshots = count
        result.mean, result.sq_mean = mean.copy(), sq_mean.copy()
        result.ring = np.zeros((result.max_rank, mean.shape[0]), np.float64)
        start = result.num_snapshots - rank
        for j in range(rank):
            result.ring[(start + j) % result.max_rank] = deviations[j]
        result.shapes = shapes
        return result

    def save(self, path):
        """Writes the state to `path`, an `.npz` file (numpy's format).

        Args:
            path: A file path (`.npz` is added by numpy when missing).
        """
        state = self.get_state()
        shapes = state.pop("shapes")
        sizes = np.array([len(s) for s in shapes], np.int64)
        dims = np.array([d for s in shapes for d in s], np.int64)
        np.savez(
            os.fspath(path),
            shape_ranks=sizes,
            shape_dims=dims,
            **{k: np.asarray(v) for k, v in state.items()},
        )

    @classmethod
    def load(cls, path):
        """Reads a state written by `save`.

        The file's arrays are checked (their declared shapes against the
        bytes the file holds and the memory budget) before any is read.

        Args:
            path: The `.npz` file.

        Returns:
            A `SWAGState`.

        Raises:
            ValueError: The file cannot be read, is not a complete file
                written by `save` (a truncated or damaged one), or its state
                is invalid.
        """
        name = os.fspath(path)

        def unreadable(reason):
            return ValueError(
                "Invalid value received for argument `path`. Expected a file "
                f"written by `SWAGState.save`. Received: {name!r}, {reason}"
            )

        try:
            with open(name, "rb") as handle:
                if not zipfile.is_zipfile(handle):
                    raise unreadable("which is not an .npz (zip) file")
                handle.seek(0)
                with np.load(handle, allow_pickle=False) as data:
                    _check_npz_sizes(data, unreadable, name)
                    state = {key: data[key] for key in data.files}
        except ValueError as error:
            if str(error).startswith("Invalid value received for argument"):
                raise
            raise unreadable(f"which cannot be read ({error})") from None
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
            reason = getattr(error, "strerror", None) or error
            raise unreadable(
                f"which cannot be read ({type(error).__name__}: {reason})"
            ) from None
        if str(state.get("format", "")) != _FORMAT:
            raise ValueError(
                "Invalid value received for argument `path`. Expected a file "
                f"written by `SWAGState.save` (format {_FORMAT!r}). Received: "
                f"{name!r} without it"
            )
        try:
            ranks = [int(r) for r in state.pop("shape_ranks", np.zeros(0, np.int64))]
            dims = state.pop("shape_dims", np.zeros(0, np.int64))
            if any(r < 0 for r in ranks) or sum(ranks) != len(dims):
                raise ValueError(f"shape_ranks {ranks} for {len(dims)} dims")
            shapes, offset = [], 0
            for rank in ranks:
                shapes.append(tuple(int(d) for d in dims[offset : offset + rank]))
                offset += rank
        except (TypeError, ValueError) as error:
            raise unreadable(f"with invalid variable shapes ({error})") from None
        state["shapes"] = shapes
        return cls.from_state(state)


def _check_npz_sizes(data, unreadable, name):
    """Reads the array headers of an open `.npz` (nothing else): each
    array's declared size must fit in the member that holds it, and all
    together in the memory budget."""
    total = 0
    for key in data.files:
        info = data.zip.getinfo(f"{key}.npy")
        with data.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise unreadable(f"whose array {key!r} has .npy version {version}")
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject or size > info.file_size:
            raise unreadable(
                f"whose array {key!r} declares shape {shape} of {dtype} "
                f"({size} bytes) in {info.file_size} bytes"
            )
        total += size
    _budget.check_bytes(
        "path",
        name,
        total,
        "the arrays of the file",
        "Load a state saved with fewer deviations or weights.",
    )
