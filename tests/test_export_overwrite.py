"""`ku.export` never damages an earlier export: an existing path is refused
unless `overwrite=True`, which replaces it only with a complete new export
(written beside it, then renamed into place), and a failed export leaves no
temporary folder behind."""

import errno
import importlib
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

REGRESSION_KEYS = {"mean", "std", "aleatoric_std", "epistemic_std"}


def _files(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def _hidden(folder):
    """What an export may leave beside its target (temporary folders)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _served_keys(path):
    served = tf.saved_model.load(str(path))
    x = tf.zeros((2, 8))
    return set(served.serve(x))


@pytest.fixture(scope="module")
def classifier_export(classifier, tmp_path_factory):
    """A classifier's export, copied by each test to its own folder."""
    path = tmp_path_factory.mktemp("classifier") / "served"
    ku.export(classifier, path, task="classification", num_samples=4)
    return path


@pytest.fixture(scope="module")
def regressor():
    keras.utils.set_random_seed(3)
    model = ku.models.mlp(8, 2, hidden_units=(8,), dropout_rate=0.2)
    model.compile("adam", loss=ku.losses.gaussian_nll)
    return model


def _old_export(classifier_export, tmp_path):
    target = tmp_path / "served"
    shutil.copytree(classifier_export, target)
    (target / "old-only.txt").write_text("from the classifier's export")
    return target


def test_an_existing_path_is_refused_unless_overwrite(
    regressor, classifier_export, tmp_path
):
    target = _old_export(classifier_export, tmp_path)
    before = _files(target)
    with pytest.raises(
        ValueError, match=r"argument `filepath`.*`overwrite=True`.*exists"
    ):
        ku.export(regressor, target, task="regression")
    assert _files(target) == before and _hidden(tmp_path) == []
    # A file or a symbolic link there is never replaced, even with overwrite.
    (tmp_path / "file").write_text("not an export")
    (tmp_path / "link").symlink_to(target)
    for name, kind in (("file", "not a folder"), ("link", "a symbolic link")):
        with pytest.raises(ValueError, match=rf"`filepath`.*which is {kind}"):
            ku.export(regressor, tmp_path / name, task="regression", overwrite=True)
    assert (tmp_path / "file").read_text() == "not an export"
    assert (tmp_path / "link").is_symlink() and _files(target) == before
    with pytest.raises(ValueError, match=r"`overwrite`. Expected True or False"):
        ku.export(regressor, tmp_path / "new", task="regression", overwrite=1)


@pytest.mark.parametrize("swap", ["system", "rename_aside"])
def test_overwrite_replaces_an_export_with_a_complete_new_one(
    regressor, classifier_export, tmp_path, monkeypatch, capsys, swap
):
    if swap == "rename_aside":  # as where the system cannot swap two folders
        export_module = importlib.import_module("keras_uncertainty.serving.export")
        monkeypatch.setattr(export_module, "_exchange", lambda a, b: False)
    target = _old_export(classifier_export, tmp_path)
    assert "probs" in _served_keys(target)
    path = ku.export(
        regressor,
        target,
        task="regression",
        num_samples=4,
        overwrite=True,
        verbose=True,
    )
    assert path == target
    # The regressor's export alone: nothing of the classifier's is left.
    assert not (target / "old-only.txt").exists()
    assert _served_keys(target) == REGRESSION_KEYS
    assert _hidden(tmp_path) == []
    printed = capsys.readouterr().out
    assert ".ku-export-" not in printed  # the summary names the target


def test_a_failed_export_leaves_the_old_one_intact_and_no_temporary_folder(
    regressor, classifier_export, tmp_path, monkeypatch
):
    target = _old_export(classifier_export, tmp_path)
    before = _files(target)
    # The class Keras writes with (`ExportArchive()` may build a subclass).
    archive_class = type(keras.export.ExportArchive())
    write_out = archive_class.write_out

    def fails_when_half_written(self, filepath, *args, **kwargs):
        write_out(self, filepath, *args, **kwargs)
        (tmp_path / "partial").write_text(str(filepath))
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    monkeypatch.setattr(archive_class, "write_out", fails_when_half_written)
    with pytest.raises(OSError, match="simulated"):
        ku.export(regressor, target, task="regression", overwrite=True)
    # The failure came after the new SavedModel was written (elsewhere).
    staged = (tmp_path / "partial").read_text()
    assert Path(staged).parent == tmp_path and not Path(staged).exists()
    assert _files(target) == before and _hidden(tmp_path) == []
    with pytest.raises(OSError, match="simulated"):
        ku.export(regressor, tmp_path / "new", task="regression")
    assert not (tmp_path / "new").exists() and _hidden(tmp_path) == []
    monkeypatch.undo()
    served = tf.saved_model.load(str(target))  # held: its variables must live
    probs = served.serve(tf.zeros((2, 8)))["probs"]
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0, rtol=1e-5)
