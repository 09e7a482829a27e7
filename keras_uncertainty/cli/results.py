"""The `uci --output` results file, written atomically after every unit.

Imports neither Keras nor TensorFlow: the launcher opens the file (and checks
`--resume`) before TensorFlow loads.
"""

import errno
import fcntl
import hashlib
import json
import os
import signal
import stat
import sys
import tempfile

from keras_uncertainty.cli.usage import UsageError
from keras_uncertainty.experiments.protocols import (
    METHODS,
    MNIST_BASELINE,
    MNIST_METHODS,
)

RESULTS_FORMAT = "keras-uncertainty uci results, version 1"
# The exit status of a run whose results file could not be written at the
# end (the table is printed; the previous file, if any, is intact).
WRITE_FAILED = 4
# The bytes the start-up check writes beside the results file: more than a
# results file of every data set and method holds (about 250 bytes a unit).
PROBE_BYTES = 64 * 1024
_NAME_MAX = 255
# Signals that must not interrupt a write half-way (they are delivered once
# the file is in place or the temporary file removed).
_DEFERRED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _sibling(path, suffix):
    """A hidden name beside `path` for a temporary or lock file, kept within
    the file system's 255-byte name limit however long `path`'s name is."""
    base = os.path.basename(path)
    name = f".{base}{suffix}"
    if len(name.encode()) > _NAME_MAX - 16:
        digest = hashlib.sha256(base.encode()).hexdigest()[:16]
        name = f".{digest}{suffix}"
    return name


def _new_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class _SignalsDeferred:
    """Holds SIGINT, SIGTERM and SIGHUP back for the `with` block, so a
    signal can never leave a temporary file behind or a rename half-done:
    each handler is replaced by one that notes the signal, and on leaving
    the block the usual handler runs for it (raising KeyboardInterrupt or
    `Terminated`, or, with the default action, ending the process). Outside
    the main thread it does nothing."""

    def __enter__(self):
        self.previous, self.pending = {}, []
        try:
            for signum in _DEFERRED:
                self.previous[signum] = signal.signal(signum, self._note)
        except ValueError:  # not the main thread
            pass
        return self

    def _note(self, signum, frame):
        self.pending.append(signum)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        for signum in self.pending[:1]:
            handler = self.previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
        return False


def write_json_atomic(path, payload):
    """Writes `payload` as JSON to `path` so that a reader (or a crash) only
    ever sees the old file or the new one: a temporary file in the same
    folder, flushed and synced, then renamed over `path`. An existing file
    keeps its permission bits; a new one gets the umask's (not 0600).
    SIGINT, SIGTERM and SIGHUP are held back until the write is done or
    undone, so no temporary file is left behind."""
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def write_bytes_atomic(path, data):
    """Writes `data` (bytes) to `path` as `write_json_atomic` does: the old
    file or the new one, never a part, and no temporary file left behind.

    Raises:
        OSError: The write failed (the file at `path` is as it was).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = _new_file_mode()
    with _SignalsDeferred():
        handle, partial = tempfile.mkstemp(
            dir=folder, prefix=_sibling(path, "."), suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        except BaseException:
            try:
                os.remove(partial)
            except OSError:
                pass
            raise
        _sync_folder(folder)


def _sync_folder(folder):
    try:  # the rename itself survives a power loss once the folder is synced
        folder_handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder_handle)
    except OSError:
        pass
    finally:
        os.close(folder_handle)


def check_regular_output(path, label="--output"):
    """Refuses an `--output` that exists and is not a regular file.

    A device (`/dev/null`), FIFO, socket or folder would be replaced by the
    atomic rename; a symbolic link would be replaced by a file while its
    target stays stale. Such paths are refused: give the file itself.

    Raises:
        UsageError: `path` is such a path.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        raise UsageError(f"{label} {path!r}: {error.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(
            f"{label} {path!r} is a symbolic link (to {os.readlink(path)!r}); "
            "give the file itself: results are only written to regular files"
        )
    if not stat.S_ISREG(info.st_mode):
        kinds = (
            (stat.S_ISDIR, "a folder"),
            (stat.S_ISFIFO, "a FIFO"),
            (stat.S_ISCHR, "a device"),
            (stat.S_ISBLK, "a device"),
            (stat.S_ISSOCK, "a socket"),
        )
        kind = next(
            (name for test, name in kinds if test(info.st_mode)),
            "not a regular file",
        )
        raise UsageError(
            f"{label} {path!r} is {kind}; results are only written to regular files"
        )


def check_writable(path, size=PROBE_BYTES, label="--output"):
    """Proves that the results file can be written: a file with a name as
    long as `path`'s and `size` bytes (at least the existing file's) is
    written, synced and removed in `path`'s folder, as the atomic write
    will. A full disk, a quota or a name too long fails now, not after the
    training.

    Raises:
        UsageError: The probe could not be written (why, in one line).
    """
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        size = max(size, 2 * os.path.getsize(path))
    except OSError:
        pass
    stem = f".ku-probe-{os.getpid()}-"
    probe = os.path.join(folder, stem + "x" * max(0, len(base) - len(stem)))
    handle = None
    try:
        with _SignalsDeferred():
            try:
                handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                block = b" " * 65536
                left = size
                while left > 0:
                    left -= os.write(handle, block[: min(left, len(block))])
                os.fsync(handle)
            finally:
                if handle is not None:
                    os.close(handle)
                    os.remove(probe)
    except OSError as error:
        why = error.strerror or str(error)
        raise UsageError(
            f"{label} {path!r} cannot be written: {why} (a {size}-byte test "
            f"file in {folder!r})"
        ) from None


class _Lock:
    """An advisory lock (`fcntl.flock`) on a hidden file beside the results
    file, held while a run may write it; the file names the holder's pid
    and is removed on release."""

    def __init__(self, path, label="--output"):
        self.label = label
        folder = os.path.dirname(os.path.abspath(path))
        self.path = os.path.join(folder, _sibling(path, ".lock"))
        for _attempt in range(10):
            self._acquire(path)
            try:  # a lock file removed by its last holder meanwhile: again
                same = os.path.samestat(os.fstat(self.handle), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(self.handle)
        else:
            raise UsageError(f"{self.label} {path!r}: cannot lock {self.path!r}")
        os.ftruncate(self.handle, 0)
        os.write(self.handle, f"{os.getpid()}\n".encode())

    def _acquire(self, path):
        try:
            self.handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UsageError(
                f"{self.label} {path!r}: cannot create its lock file {self.path!r}: "
                f"{error.strerror}"
            ) from None
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = ""
            try:
                os.lseek(self.handle, 0, os.SEEK_SET)
                holder = os.read(self.handle, 32).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(self.handle)
            self.handle = None
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UsageError(
                    f"{self.label} {path!r}: cannot lock {self.path!r}: "
                    f"{error.strerror}"
                ) from None
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise UsageError(
                f"{self.label} {path!r} is being written by {who} (another run on "
                "the same file); wait for it or choose another "
                f"{self.label.split()[0]}"
            ) from None

    def release(self):
        if self.handle is not None:
            try:  # removed while held; a run that opened it meanwhile retries
                os.remove(self.path)
            except OSError:
                pass
            os.close(self.handle)  # closing the descriptor releases the lock
            self.handle = None

    def __del__(self):
        self.release()


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
        self._held_lock = _Lock(path, self.LABEL)
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
    METHODS = (*MNIST_METHODS, MNIST_BASELINE)
    PROBE_BYTES = MNIST_PROBE_BYTES
    LABEL = "--output-dir results file"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program runs, so that a run ends
    as on Ctrl-C (the results file gets status "interrupted") but exits
    with 128 + the signal's number (143 for SIGTERM, 129 for SIGHUP)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.status = 128 + signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def handle_termination():
    """Makes SIGTERM and SIGHUP raise `Terminated`; returns the previous
    handlers for `restore_handlers` (none outside the main thread, where
    the signals are left alone)."""
    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _raise_terminated)
    except ValueError:  # not the main thread
        pass
    return previous


def restore_handlers(previous):
    for signum, handler in previous.items():
        signal.signal(signum, handler)


# Signals that end a command's run (Ctrl-C, `kill`, `docker stop`, a closed
# terminal): the exit status is 130 for SIGINT, else 128 + the number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop:
    """The stop a signal requested: the first signal's number (None: no
    signal yet) and how many arrived."""

    signum = None
    count = 0


def _request_stop(signum, frame):
    # Only notes the signal: an exception raised here would land in whatever
    # frame runs, a finalizer or weakref callback included, where Python
    # prints "Exception ignored in ..." and carries on. The run stops where
    # it checks (`check_stop`). A second signal raises at once (a forced
    # stop; the flag stays set, so a check still stops the run should that
    # exception be swallowed).
    _Stop.count += 1
    if _Stop.signum is None:
        _Stop.signum = signum
    if _Stop.count > 1:
        raise _stop_exception(_Stop.signum)


def _stop_exception(signum):
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(signum)


def handle_signals():
    """Makes SIGINT, SIGTERM and SIGHUP request a stop instead of raising
    where the program happens to be: the handler sets a flag that
    `check_stop` (called between batches, epochs and units) turns into
    `KeyboardInterrupt` (SIGINT) or `Terminated` (SIGTERM, SIGHUP). A second
    signal raises at once. Clears an earlier request; returns the previous
    handlers for `end_signals` (none outside the main thread, where the
    signals are left alone)."""
    _Stop.signum, _Stop.count = None, 0
    previous = {}
    try:
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, _request_stop)
    except ValueError:  # not the main thread
        pass
    return previous


def end_signals(previous):
    """Restores the handlers `handle_signals` replaced and clears the
    request."""
    restore_handlers(previous)
    _Stop.signum, _Stop.count = None, 0


def stop_requested():
    """The exception a received stop signal asks for (`KeyboardInterrupt`
    or `Terminated`), or None."""
    if _Stop.signum is None:
        return None
    return _stop_exception(_Stop.signum)


def check_stop():
    """Raises `KeyboardInterrupt` (SIGINT) or `Terminated` (SIGTERM,
    SIGHUP) when a stop signal was received (see `handle_signals`); called
    where a run can stop."""
    exc = stop_requested()
    if exc is not None:
        raise exc


def interrupt_status(exc):
    """The exit status and the word for a `KeyboardInterrupt` (or a
    `Terminated`): (130, "interrupted") or (143, "terminated by SIGTERM")."""
    if isinstance(exc, Terminated):
        return exc.status, f"terminated by {exc.name}"
    return 130, "interrupted"
