"""Every input of `keras-uncertainty uci` and `load_uci` is bounded and checked
before work starts: `--splits` before expansion, data set names before
TensorFlow loads, data files by size and kind before reading, settings files
by range (issue 21, items 6 and 9)."""

import argparse
import os
import shutil
import subprocess
import sys
import time

import pytest

import keras_uncertainty as ku
from keras_uncertainty.cli import usage
from keras_uncertainty.cli.main import build_parser
from keras_uncertainty.datasets import _files
from keras_uncertainty.datasets import uci as uci_files


@pytest.fixture
def yacht_copy(tmp_path, monkeypatch):
    """A writable copy of the packaged yacht folder; no network."""
    monkeypatch.setenv(_files.OFFLINE_VAR, "1")
    folder = tmp_path / "mine"
    shutil.copytree(os.path.join(_files.PACKAGED_DIR, "yacht"), folder)
    return folder


def _write(name, text):
    return lambda folder: (folder / name).write_text(text)


@pytest.mark.parametrize(
    "change, message",
    [
        (_write("n_hidden.txt", "0\n"), r"n_hidden.txt' holds 0; expected one "),
        (
            _write("n_hidden.txt", "1e9\n"),
            r"n_hidden.txt' holds 1e\+09; expected one integer in \[1, 65536\]",
        ),
        (_write("n_hidden.txt", "50.5\n"), r"n_hidden.txt' holds 50.5"),
        (_write("n_epochs.txt", "0\n"), r"n_epochs.txt' holds 0; expected one "),
        (_write("n_epochs.txt", "-3\n"), r"n_epochs.txt' holds -3"),
        (_write("n_splits.txt", "1e12\n"), r"n_splits.txt' holds 1e\+12"),
        (
            _write("dropout_rates.txt", "0.005 1.5\n"),
            r"dropout_rates.txt' holds 1.5; expected dropout rates in \[0, 1\)",
        ),
        (_write("dropout_rates.txt", "1\n"), r"dropout_rates.txt' holds 1;"),
        (
            _write("tau_values.txt", "0.25 0\n"),
            r"tau_values.txt' holds 0; expected tau values > 0",
        ),
        (_write("tau_values.txt", "-1\n"), r"tau_values.txt' holds -1;"),
        (_write("tau_values.txt", "inf\n"), r"tau_values.txt' holds inf;"),
        (
            _write("index_train_0.txt", "3\n"),
            r"index_train_0.txt' lists 1 rows; expected at least 5 training rows",
        ),
        (
            _write("index_features.txt", "0 1 2 3 4 5 6\n"),
            r"index_features.txt' lists column 6, the target of "
            r"index_target.txt; expected the target not among the features",
        ),
        (
            _write("index_target.txt", "1e300\n"),
            r"index_target.txt' holds 1e\+300; expected integers below 2\*\*53",
        ),
    ],
    ids=[
        "hidden-0",
        "hidden-1e9",
        "hidden-fraction",
        "epochs-0",
        "epochs-negative",
        "splits-huge",
        "rate-1.5",
        "rate-1",
        "tau-0",
        "tau-negative",
        "tau-inf",
        "one-training-row",
        "target-in-features",
        "index-huge",
    ],
)
def test_settings_files_out_of_range_are_refused_naming_file_and_value(
    yacht_copy, change, message
):
    change(yacht_copy)
    with pytest.raises(ValueError, match=message) as caught:
        ku.datasets.load_uci(str(yacht_copy))
    assert "\n" not in str(caught.value)
    assert str(yacht_copy) in str(caught.value)


def test_data_file_larger_than_the_limit_is_refused_before_reading(
    yacht_copy, monkeypatch
):
    size = (yacht_copy / "data.txt").stat().st_size
    monkeypatch.setattr(uci_files, "MAX_FILE_BYTES", size - 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("data.txt was read")

    monkeypatch.setattr(uci_files.np, "loadtxt", no_reading)
    with pytest.raises(
        ValueError, match=rf"data.txt' holds {size} bytes; expected at most {size - 1}"
    ):
        ku.datasets.load_uci(str(yacht_copy))
    # A sparse 2 GB file: refused by its size at once.
    monkeypatch.setattr(uci_files, "MAX_FILE_BYTES", 256 * 2**20)
    with open(yacht_copy / "data.txt", "wb") as f:
        f.truncate(2 * 2**30)
    with pytest.raises(ValueError, match=r"holds 2147483648 bytes; expected at most"):
        ku.datasets.load_uci(str(yacht_copy))


def test_data_file_that_is_not_a_regular_file_is_refused(yacht_copy):
    os.remove(yacht_copy / "data.txt")
    (yacht_copy / "data.txt").mkdir()
    with pytest.raises(ValueError, match=r"data.txt' is a folder; expected a regular"):
        ku.datasets.load_uci(str(yacht_copy))
    os.rmdir(yacht_copy / "data.txt")
    os.mkfifo(yacht_copy / "data.txt")  # reading would block forever
    with pytest.raises(ValueError, match=r"data.txt' is not a regular file"):
        ku.datasets.load_uci(str(yacht_copy))
    os.remove(yacht_copy / "data.txt")
    os.symlink("/dev/zero", yacht_copy / "data.txt")  # reading never ends
    with pytest.raises(ValueError, match=r"data.txt' is not a regular file"):
        ku.datasets.load_uci(str(yacht_copy))
    os.remove(yacht_copy / "n_hidden.txt")
    os.mkfifo(yacht_copy / "n_hidden.txt")
    with pytest.raises(ValueError, match=r"n_hidden.txt' is not a regular file"):
        ku.datasets.load_uci(str(yacht_copy))


def test_the_packaged_and_shared_data_pass_the_checks(monkeypatch):
    monkeypatch.setenv(_files.OFFLINE_VAR, "1")
    data = ku.datasets.load_uci("yacht", split=0)
    assert data.n_hidden == 50 and data.n_epochs == 40
    assert all(0 <= r < 1 for r in data.dropout_rates)
    assert all(t > 0 for t in data.tau_values)
    assert usage.UCI_DATASETS == ku.datasets.UCI_DATASETS
    assert usage.MAX_SPLIT_INDEX == uci_files.MAX_SPLITS - 1


def test_splits_are_bounded_before_expansion():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"\[0, 9999\].*up to 999999999999"):
        usage.parse_splits("0-999999999999")
    with pytest.raises(ValueError, match=r"\[0, 9999\].*up to 10000"):
        usage.parse_splits("0,3,10000")
    with pytest.raises(ValueError, match="expected splits like"):
        usage.parse_splits("0," * 1000 + "1")
    assert time.perf_counter() - start < 0.5
    assert usage.parse_splits("0-2,5,9999") == [0, 1, 2, 5, 9999]
    with pytest.raises(argparse.ArgumentTypeError, match="9999"):
        usage.splits("5-99999999999999999999")


def _uci_error(capsys, args):
    """Parses `uci` arguments and runs the early checks; returns stderr."""
    from keras_uncertainty.cli.main import main

    with pytest.raises(SystemExit) as caught:
        main(["uci", *args])
    assert caught.value.code == 2
    return capsys.readouterr().err.strip()


_ARGUMENT_ERRORS = [
    (["yaht"], "unknown data set. Expected one of bostonHousing"),
    (["--splits", "5-2"], "received '5-2'"),
    (["--splits", "0-999999999999"], "expected split indices in [0, 9999]"),
    (["/no/such/folder"], "data set folder '/no/such/folder' does not exist"),
    (["--data-dir", "/no/such"], "--data-dir '/no/such' is not a folder"),
    (["--resume"], "--resume needs --output"),
]
# Runs each argument list through `main` in one fresh process and prints, per
# list, its exit status, whether TensorFlow was loaded when it exited, and
# its stderr.
_CHECKER = """
import contextlib, io, json, sys
from keras_uncertainty.cli.main import main
report = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(["uci", *args])
        except SystemExit as exc:
            code = exc.code
    report.append([code, "tensorflow" in sys.modules, err.getvalue()])
print(json.dumps(report))
"""


def test_argument_errors_exit_2_before_tensorflow_loads():
    import json

    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _CHECKER, json.dumps([a for a, _ in _ARGUMENT_ERRORS])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.perf_counter() - start < 3, "TensorFlow was loaded?"
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for (args, message), (code, loaded, err) in zip(_ARGUMENT_ERRORS, report):
        assert code == 2 and not loaded, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("keras-uncertainty uci")
        assert message in lines[0], (args, err)


def test_a_known_name_missing_from_data_dir_is_refused_early(capsys, tmp_path):
    (tmp_path / "energy").mkdir()
    err = _uci_error(capsys, ["yacht", "--data-dir", str(tmp_path)])
    assert f"data set 'yacht' is not in --data-dir '{tmp_path}'" in err
    # A folder of one's own, and a known name in --data-dir, pass the check.
    usage.check_datasets([str(tmp_path / "energy")])
    usage.check_datasets(["energy"], str(tmp_path))


def test_verbose_is_accepted_by_every_command():
    parser = build_parser()
    for command in (["demo"], ["uci"], ["mnist"]):
        assert parser.parse_args([*command, "--verbose"]).verbose
        assert not parser.parse_args(command).verbose


def test_unknown_data_set_in_a_subprocess_is_fast_and_one_line():
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "keras_uncertainty", "uci", "yaht"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.perf_counter() - start < 3
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "keras-uncertainty uci: error: argument DATASET: unknown data set. "
        "Expected one of bostonHousing, concrete, energy, naval-propulsion-plant, "
        "protein-tertiary-structure, wine-quality-red, yacht, or a folder path; "
        "received 'yaht'"
    ]


# End to end (a subprocess or a UCI training): the slow tier (CI runs it).
@pytest.mark.slow
def test_a_bad_settings_file_exits_2_with_one_line_and_no_startup_logs(yacht_copy):
    (yacht_copy / "n_epochs.txt").write_text("0\n")
    result = subprocess.run(
        [sys.executable, "-m", "keras_uncertainty", "uci", str(yacht_copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    # TensorFlow loaded (the data is read after it), but none of its
    # start-up lines (absl, oneDNN, CUDA) reach the user.
    assert result.stderr.strip().splitlines() == [
        f"keras-uncertainty uci: error: File '{yacht_copy / 'n_epochs.txt'}' holds "
        "0; expected one integer in [1, 100000]."
    ]
