"""Durable files: atomic writes, locks and write probes, and the signals
that must not cut a write or that stop a run.

A file written here is the old file or the new one, never a part, and never
leaves a temporary file behind (`write_bytes_atomic`); a results file is
held by one run at a time (`FileLock`) and proved writable before any
training (`check_writable`). SIGINT, SIGTERM and SIGHUP only set a flag
during a run (`handle_signals`), turned into `KeyboardInterrupt` or
`Terminated` where the run can stop (`check_stop`). What the files hold is
`keras_uncertainty.cli.results`'s.

Imports neither Keras nor TensorFlow: the launcher opens the results file
(and checks `--resume`) before TensorFlow loads.
"""

import errno
import fcntl
import hashlib
import json
import os
import signal
import stat
import tempfile

from keras_uncertainty.cli.usage import UsageError

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


def check_writable(path, size, label="--output"):
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


class FileLock:
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
