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

import numpy as np

from keras_uncertainty._validation import check_positive_int

_FORMAT = "keras_uncertainty.swag/1"


def _received(value):
    return f"{type(value).__name__} {getattr(value, 'shape', '')}".strip()


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
            uses 20).

    Example:

    >>> state = ku.swag.SWAGState(max_rank=2)
    >>> for w in ([0.0, 1.0], [1.0, 1.0], [2.0, 4.0]):
    ...     state.collect(np.array(w))
    >>> state.mean
    array([1., 2.])
    """

    def __init__(self, max_rank=20):
        self.max_rank = check_positive_int(max_rank, "max_rank")
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
        """
        needed = ("max_rank", "num_snapshots", "mean", "sq_mean", "deviations")
        if not isinstance(state, dict) or any(k not in state for k in needed):
            got = sorted(state) if isinstance(state, dict) else _received(state)
            raise ValueError(
                "Invalid value received for argument `state`. Expected the "
                f"dict of `SWAGState.get_state()` (keys {list(needed)}). "
                f"Received: {got}"
            )
        result = cls(int(state["max_rank"]))
        count = state["num_snapshots"]
        if isinstance(count, np.ndarray):
            count = count.item()
        if not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(
                "Invalid value received for argument `state`. Expected "
                f"num_snapshots >= 1. Received: {count!r}"
            )
        mean = np.asarray(state["mean"], np.float64)
        sq_mean = np.asarray(state["sq_mean"], np.float64)
        deviations = np.asarray(state["deviations"], np.float64)
        rank = min(int(count), result.max_rank)
        if (
            mean.ndim != 1
            or sq_mean.shape != mean.shape
            or deviations.shape != (rank, mean.shape[0])
        ):
            raise ValueError(
                "Invalid value received for argument `state`. Expected mean "
                "and sq_mean of shape (P,) and deviations of shape "
                f"({rank}, P). Received: mean {mean.shape}, sq_mean "
                f"{sq_mean.shape}, deviations {deviations.shape}"
            )
        result.num_snapshots = int(count)
        result.mean, result.sq_mean = mean.copy(), sq_mean.copy()
        result.ring = np.zeros((result.max_rank, mean.shape[0]), np.float64)
        start = result.num_snapshots - rank
        for j in range(rank):
            result.ring[(start + j) % result.max_rank] = deviations[j]
        shapes = state.get("shapes")
        result.shapes = (
            [tuple(int(d) for d in s) for s in shapes]
            if shapes is not None
            else [tuple(mean.shape)]
        )
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

        Args:
            path: The `.npz` file.

        Returns:
            A `SWAGState`.
        """
        with np.load(os.fspath(path), allow_pickle=False) as data:
            state = {key: data[key] for key in data.files}
        if str(state.get("format", "")) != _FORMAT:
            raise ValueError(
                "Invalid value received for argument `path`. Expected a file "
                f"written by `SWAGState.save` (format {_FORMAT!r}). Received: "
                f"{os.fspath(path)!r} without it"
            )
        shapes, offset = [], 0
        for rank in state.pop("shape_ranks", np.zeros(0, np.int64)):
            shapes.append(tuple(state["shape_dims"][offset : offset + int(rank)]))
            offset += int(rank)
        state.pop("shape_dims", None)
        state["shapes"] = shapes
        state["max_rank"] = int(state["max_rank"])
        state["num_snapshots"] = int(state["num_snapshots"])
        return cls.from_state(state)
