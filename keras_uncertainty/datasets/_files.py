"""Where data files come from: local folders, the cache, or a checked download.

Look-up order for a data set's folder: an explicit `data_dir`, then the
environment variable `KERAS_UNCERTAINTY_DATA` (the parent of `uci/` and
`mnist/`), then the cache under `~/.keras/datasets/keras_uncertainty`
(Keras's own convention), then data shipped in the package, then a download
into that cache, each file checked against the SHA-256 recorded in
`sha256.json`.
"""

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request

ENV_VAR = "KERAS_UNCERTAINTY_DATA"
# Set to 1 to never touch the network (the tests do): a missing data set
# then fails at once with the message on how to provide it.
OFFLINE_VAR = "KERAS_UNCERTAINTY_OFFLINE"
_HERE = os.path.dirname(__file__)
PACKAGED_DIR = os.path.join(_HERE, "data")

with open(os.path.join(_HERE, "sha256.json")) as _f:
    CHECKSUMS = json.load(_f)


def cache_dir(kind):
    """`~/.keras/datasets/keras_uncertainty/<kind>` (honours KERAS_HOME)."""
    keras_home = os.environ.get(
        "KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")
    )
    return os.path.join(keras_home, "datasets", "keras_uncertainty", kind)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DownloadError(OSError):
    """A data file could not be downloaded (no network, server error)."""


def fetch(url, path):
    """Downloads `url` into the file `path`. Tests replace this function."""
    with open(path, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out)


def check_online(what, how):
    """Raises `DownloadError` at once when downloads are off."""
    if os.environ.get(OFFLINE_VAR, "") not in ("", "0"):
        raise DownloadError(
            f"{what} is not available locally and downloads are off "
            f"({OFFLINE_VAR} is set). Provide it locally: {how}."
        )


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def download(kind, name, files, url_of, target):
    """Fetches `files` into `target`, checking each against its SHA-256.

    Each file goes to a temporary file in `target`, which is checked and only
    then renamed into place; a failed or interrupted download leaves nothing
    behind.

    Raises:
        DownloadError: a file could not be downloaded; the message says how
            to provide the data locally instead.
        ValueError: a downloaded file does not match its SHA-256.
    """
    expected = CHECKSUMS[kind] if name is None else CHECKSUMS[kind][name]
    check_online(
        f"{kind} data{'' if name is None else f' {name!r}'}",
        f"a folder holding it as `--data-dir` (`data_dir=`), "
        f"KERAS_UNCERTAINTY_DATA set to a folder holding {kind}/, or the files "
        f"in '{target}'",
    )
    os.makedirs(target, exist_ok=True)
    for file in files:
        path = os.path.join(target, file)
        if os.path.exists(path) and sha256(path) == expected[file]:
            continue
        url = url_of(file)
        handle, partial = tempfile.mkstemp(
            dir=target, prefix=f".{file}.", suffix=".part"
        )
        os.close(handle)
        try:
            try:
                fetch(url, partial)
            except OSError as error:
                reason = getattr(error, "reason", None) or error
                raise DownloadError(
                    f"Could not download '{file}' from {url} ({reason}). Provide "
                    "the data locally instead: pass a folder holding it as "
                    "`--data-dir` (`data_dir=`), set KERAS_UNCERTAINTY_DATA to a "
                    f"folder holding {kind}/, or put the files in '{target}'."
                ) from None
            actual = sha256(partial)
            if actual != expected[file]:
                raise ValueError(
                    f"Downloaded file '{file}' from {url} does not match its "
                    f"recorded SHA-256 (expected {expected[file]}, received "
                    f"{actual}); it was deleted."
                )
            os.replace(partial, path)
        finally:
            _remove_quietly(partial)
    return target
