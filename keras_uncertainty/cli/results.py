"""The `uci --output` results file, written atomically after every unit.

Imports neither Keras nor TensorFlow: the launcher opens the file (and checks
`--resume`) before TensorFlow loads.
"""

import json
import os
import tempfile

from keras_uncertainty.cli.usage import UsageError

RESULTS_FORMAT = "keras-uncertainty uci results, version 1"


def write_json_atomic(path, payload):
    """Writes `payload` as JSON to `path` so that a reader (or a crash) only
    ever sees the old file or the new one: a temporary file in the same
    folder, flushed and synced, then renamed over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.remove(partial)
        except OSError:
            pass
        raise
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


class ResultsFile:
    """The `uci --output` file: settings, status and every finished unit.

    Layout: `{"format", "settings", "status", "results", "failures"}`.
    `results` holds one record per finished (data set, method) unit;
    `failures` one `{"dataset", "method", "reason"}` per unit that failed.
    `status` is "running" while units are still to come (a killed run
    leaves that), then "complete", "interrupted" or "failed: <reason>".
    Every change is written at once with `write_json_atomic`.

    Args:
        path: The file, or None (nothing is written).
        settings: The run's settings; `--resume` requires the file's to be
            the same.
        resume: Whether to keep the file's finished units (they are skipped).
    """

    def __init__(self, path, settings, resume=False):
        self.path, self.settings = path, settings
        self.results, self.failures = [], []
        self.carried = 0
        existing = bool(path) and os.path.exists(path)
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

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                earlier = json.load(f)
        except (OSError, ValueError) as error:
            raise UsageError(f"--resume: cannot read {path!r}: {error}") from None
        if not isinstance(earlier, dict) or earlier.get("format") != RESULTS_FORMAT:
            raise UsageError(
                f"--resume: {path!r} is not a results file of this version "
                f"(expected format {RESULTS_FORMAT!r})"
            )
        return earlier

    def finished(self, dataset, method):
        return any(
            r["dataset"] == dataset and r["method"] == method for r in self.results
        )

    def _write(self, status):
        if self.path and self._may_write:
            write_json_atomic(
                self.path,
                {
                    "format": RESULTS_FORMAT,
                    "settings": self.settings,
                    "status": status,
                    "results": self.results,
                    "failures": self.failures,
                },
            )

    def add(self, record):
        self.results.append(record)
        self._may_write = True
        self._write("running")

    def fail(self, dataset, method, reason):
        self.failures.append({"dataset": dataset, "method": method, "reason": reason})
        self._write("running")

    def close(self, status):
        """Writes the final status; returns whether it was written (not when
        a run that finished nothing would replace an earlier file)."""
        self._write(status)
        return bool(self.path) and self._may_write
