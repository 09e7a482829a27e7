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


def fetch(url, path):
    """Downloads `url` to `path` (atomically). Tests replace this function."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, tmp)
    os.replace(tmp.name, path)


def download(kind, name, files, url_of, target):
    """Fetches `files` into `target`, checking each against its SHA-256."""
    expected = CHECKSUMS[kind] if name is None else CHECKSUMS[kind][name]
    for file in files:
        path = os.path.join(target, file)
        if os.path.exists(path) and sha256(path) == expected[file]:
            continue
        fetch(url_of(file), path)
        actual = sha256(path)
        if actual != expected[file]:
            os.remove(path)
            raise ValueError(
                f"Downloaded file '{file}' from {url_of(file)} does not match "
                f"its recorded SHA-256 (expected {expected[file]}, received "
                f"{actual}); it was deleted."
            )
    return target
