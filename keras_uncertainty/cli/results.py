"""The results files' schemas: the `uci --output` file and the `mnist`
`results.json`, their records, and their checks on `--resume`.

How they reach the disk (atomic writes, the lock, the write probe, the
signals) is `keras_uncertainty.cli.durable`'s; its names that the commands
and scripts use are importable from here too.

Imports neither Keras nor TensorFlow: the launcher opens the file (and checks
`--resume`) before TensorFlow loads.
"""

import hashlib
import json
import os
import sys

from keras_uncertainty.cli.durable import (  # noqa: F401 (re-exported)
    FileLock,
    Terminated,
    check_regular_output,
    check_stop,
    check_writable,
    end_signals,
    handle_signals,
    handle_termination,
    interrupt_status,
    restore_handlers,
    stop_requested,
    write_bytes_atomic,
    write_json_atomic,
)
from keras_uncertainty.cli.usage import UsageError
from keras_uncertainty.experiments import registry

# The methods a results file may hold (the registry's).
METHODS = registry.names(registry.UCI)
RESULTS_FORMAT = "keras-uncertainty uci results, version 1"
# The exit status of a run whose results file could not be written at the
# end (the table is printed; the previous file, if any, is intact).
WRITE_FAILED = 4
# The bytes the start-up check writes beside the results file: more than a
# results file of every data set and method holds (about 250 bytes a unit).
PROBE_BYTES = 64 * 1024


_RECORD_FIELDS = {
    "dataset": str,
    "method": str,
    "num_splits": int,
    "rmse_mean": float,
    "rmse_se": float,
    "nll_mean": float,
    "nll_se": float,
    "seconds": float,
}


def _field_problem(field, kind, value):
    """Whether `value` is a valid `field` of a record of `kind`: a non-empty
    string, an integer >= 1, or a number >= 0 (NaN, or None for an NLL
    where it was not computed and for a standard error of one split; only
    `nll_mean` may be negative)."""
    if kind is str:
        return not (isinstance(value, str) and value != "")
    if kind is int:
        return not (type(value) is int and value >= 1)
    return not (
        (value is None and (field.startswith("nll") or field.endswith("_se")))
        or (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (field == "nll_mean" or not value < 0)
        )
    )


def _schema_problem(earlier, record_fields=_RECORD_FIELDS, methods=METHODS):
    """Why `earlier` (a parsed results file) is not a valid one, or None.

    Every record has exactly `record_fields`, of their types, a method
    among `methods`, and a data set whose identity `data` records (a file
    this program wrote records it before any unit)."""
    if not isinstance(earlier.get("settings"), dict):
        return "'settings' is missing or not an object"
    if not isinstance(earlier.get("status"), str):
        return "'status' is missing or not a string"
    results = earlier.get("results")
    if not isinstance(results, list):
        return "'results' is missing or not a list"
    data = earlier.get("data", {})
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return "'data' is not an object of data set -> SHA-256"
    seen = set()
    for i, record in enumerate(results):
        where = f"results[{i}]"
        if not isinstance(record, dict):
            return f"{where} is not an object"
        if set(record) != set(record_fields):
            missing = sorted(set(record_fields) - set(record))
            extra = sorted(set(record) - set(record_fields))
            return f"{where} has missing fields {missing} or unknown fields {extra}"
        for field, kind in record_fields.items():
            if _field_problem(field, kind, record[field]):
                return f"{where}.{field} is {record[field]!r}"
        if record["method"] not in methods:
            return (
                f"{where}.method {record['method']!r} is not one of "
                f"{', '.join(methods)}"
            )
        if record["dataset"] not in data:
            return (
                f"{where}.dataset {record['dataset']!r} has no data identity "
                "in 'data' (written by hand or by an older version: start a new file)"
            )
        key = (record["dataset"], record["method"])
        if key in seen:
            return f"{where} repeats {record['dataset']} {record['method']}"
        seen.add(key)
    failures = earlier.get("failures", [])
    if not isinstance(failures, list) or not all(
        isinstance(f, dict)
        and all(isinstance(f.get(k), str) for k in ("dataset", "method", "reason"))
        for f in failures
    ):
        return "'failures' is not a list of {dataset, method, reason}"
    return None


def data_identity(folder):
    """The identity of a UCI data set's folder: a SHA-256 over the names and
    contents of its `.txt` files (`data.txt`, the split index files and the
    settings files), recorded in the results file beside the units."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".txt") or not os.path.isfile(path):
            continue
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


class ResultsFile:
    """The `uci --output` file: settings, status and every finished unit.

    Layout: `{"format", "settings", "status", "results", "failures", "data"}`.
    `results` holds one record per finished (data set, method) unit;
    `failures` one `{"dataset", "method", "reason"}` per unit that failed;
    `data` the `data_identity` of each data set's folder (`--resume`
    refuses units computed from another folder of the same name).
    `status` is "running" while units are still to come (a killed run
    leaves that), then "complete", "interrupted" or "failed: <reason>".
    Every change is written at once with `write_json_atomic`.

    Opening it (with a path) refuses, as a `UsageError`: a path that is not
    a regular file (`check_regular_output`), a file another run holds (an
    advisory lock beside it, held until `release` or `close`), a folder
    where the file cannot be written (`check_writable`), and on `--resume`
    a file that is not a valid results file or has other settings. A write
    that fails later is not raised: the units stay in memory, `write_error`
    holds the error and the next write tries again.

    Args:
        path: The file, or None (nothing is written).
        settings: The run's settings; `--resume` requires the file's to be
            the same.
        resume: Whether to keep the file's finished units (they are skipped).
    """

    FORMAT = RESULTS_FORMAT
    RECORD_FIELDS = _RECORD_FIELDS
    METHODS = METHODS
    PROBE_BYTES = PROBE_BYTES
    LABEL = "--output"  # how messages name the file

    def __init__(self, path, settings, resume=False):
        self.path, self.settings = path, settings
        self.results, self.failures = [], []
        self.carried = 0
        self.data = {}  # data set -> data_identity of the folder its units used
        self.write_error = None
        self._held_lock = None
        if not path:
            self._may_write = False
            return
        check_regular_output(path, self.LABEL)
        self._held_lock = FileLock(path, self.LABEL)
        try:
            check_writable(path, size=self.PROBE_BYTES, label=self.LABEL)
            self._open(path, settings, resume)
        except BaseException:
            self.release()
            raise

    def _open(self, path, settings, resume):
        existing = os.path.exists(path)
        # An earlier file is replaced only once this run has a finished unit
        # to put in its place (or, resuming, keeps its units): a run that
        # fails or is stopped early never wipes earlier results.
        self._may_write = not existing or resume
        if resume and existing:
            earlier = self._read(path)
            if earlier["settings"] != settings:
                changed = sorted(
                    key
                    for key in set(settings) | set(earlier["settings"])
                    if settings.get(key) != earlier["settings"].get(key)
                )
                before = ", ".join(
                    f"{key}={earlier['settings'].get(key)!r}" for key in changed
                )
                now = ", ".join(f"{key}={settings.get(key)!r}" for key in changed)
                raise UsageError(
                    f"--resume: {path!r} was written with other settings "
                    f"({before}; this run has {now})"
                )
            self.results = list(earlier["results"])
            self.carried = len(self.results)
            self.data = dict(earlier.get("data", {}))

    @classmethod
    def _read(cls, path):
        try:
            with open(path) as f:
                earlier = json.load(f)
        except (OSError, ValueError) as error:
            raise UsageError(f"--resume: cannot read {path!r}: {error}") from None
        if not isinstance(earlier, dict) or earlier.get("format") != cls.FORMAT:
            raise UsageError(
                f"--resume: {path!r} is not a results file of this version "
                f"(expected format {cls.FORMAT!r})"
            )
        problem = _schema_problem(earlier, cls.RECORD_FIELDS, cls.METHODS)
        if problem:
            raise UsageError(
                f"--resume: {path!r} is not a valid results file: {problem}"
            )
        return earlier

    @property
    def on_disk(self):
        """Whether the file holds this run's units as they are now."""
        return bool(self.path) and self._may_write and self.write_error is None

    def finished(self, dataset, method):
        return any(
            r["dataset"] == dataset and r["method"] == method for r in self.results
        )

    def _write(self, status):
        if not (self.path and self._may_write):
            return
        try:
            write_json_atomic(
                self.path,
                {
                    "format": self.FORMAT,
                    "settings": self.settings,
                    "status": status,
                    "results": self.results,
                    "failures": self.failures,
                    "data": self.data,
                },
            )
        except OSError as error:
            first = self.write_error is None
            self.write_error = error
            if first and status == "running":
                why = error.strerror or str(error)
                sys.stderr.write(
                    f"\ncannot write {self.path}: {why}; the finished units are "
                    "kept in memory and the file is tried again after each unit\n"
                )
        else:
            self.write_error = None

    def check_data(self, dataset, identity):
        """Records the `data_identity` of `dataset`'s folder; refuses (a
        `UsageError`) one that differs from the identity recorded for the
        units of `dataset` already in the file."""
        recorded = self.data.get(dataset)
        if recorded not in (None, identity) and any(
            r["dataset"] == dataset for r in self.results
        ):
            raise UsageError(
                f"--resume: the {dataset} units in {self.path!r} were computed "
                f"from other data (SHA-256 of its files {recorded[:12]}..., this "
                f"folder's {identity[:12]}...); use the same folder or another "
                "--output"
            )
        self.data[dataset] = identity

    def add(self, record):
        self.results.append(record)
        self._may_write = True
        self._write("running")

    def fail(self, dataset, method, reason):
        self.failures.append({"dataset": dataset, "method": method, "reason": reason})
        self._write("running")

    def close(self, status):
        """Writes the final status and releases the lock; returns whether
        the file now holds this run (not when a run that finished nothing
        would replace an earlier file, nor when the write failed: see
        `write_error`)."""
        try:
            self._write(status)
        finally:
            self.release()
        return bool(self.path) and self._may_write and self.write_error is None

    def release(self):
        """Releases the lock on the file (another run may then write it)."""
        if self._held_lock is not None:
            self._held_lock.release()
            self._held_lock = None


MNIST_RESULTS_NAME = "results.json"  # in --output-dir
# Version 2: every method, and the benchmark fields of each record.
MNIST_RESULTS_FORMAT = "keras-uncertainty mnist results, version 2"
# The largest file an MNIST unit writes: its predictions on the 10,000 test
# images at three rotations (float64 probabilities, about 2.6 MB) and more.
MNIST_PROBE_BYTES = 8 << 20


class MnistResultsFile(ResultsFile):
    """The `mnist` results file, `results.json` in `--output-dir`.

    The layout, lock, atomic writes and `--resume` checks of `ResultsFile`;
    one record per finished method (`dataset` "mnist"): its accuracy, NLL,
    ECE, Brier score, error AUROC, OOD AUROCs (rotation, noise), conformal
    set size and coverage, training seconds, prediction milliseconds per
    image and seconds, and the name and SHA-256 of the `.npz` file beside it
    that holds its predictions (written before the record, so a record
    never names a missing file). `data` holds the SHA-256 of the MNIST
    arrays the run used (`--resume` refuses other data, or another
    protocol).
    """

    FORMAT = MNIST_RESULTS_FORMAT
    RECORD_FIELDS = {
        "dataset": str,
        "method": str,
        "file": str,
        "sha256": str,
        "accuracy": float,
        "nll": float,
        "ece": float,
        "brier": float,
        "error_auroc": float,
        "ood_auroc_rotation": float,
        "ood_auroc_noise": float,
        "set_size": float,
        "coverage": float,
        "train_seconds": float,
        "predict_ms": float,
        "seconds": float,
    }
    METHODS = tuple(registry.methods(registry.MNIST, baseline=True))
    PROBE_BYTES = MNIST_PROBE_BYTES
    LABEL = "--output-dir results file"
