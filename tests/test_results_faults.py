"""Faults around the results files (`uci --output`, `mnist --output-dir`):
write failures, a second writer, paths that are not regular files, signals,
hand-edited files, and resuming.

`uci` training is replaced by a fake unit (each test takes well under a
second, the one subprocess run of a signal a few seconds); `mnist` trains
real LeNet-5s on 64 images for one epoch (about a second a unit)."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from keras_uncertainty.cli import results
from keras_uncertainty.cli.main import main
from keras_uncertainty.cli.results import ResultsFile, write_json_atomic
from keras_uncertainty.experiments.protocols import METHODS

_RUN = ["uci", "--splits", "0-1"]


def _fake_runs(monkeypatch, outcome=lambda method, call: 1.0):
    from keras_uncertainty.experiments import uci, uci_methods

    calls = []

    def fake_run(dataset, method, *args, **kwargs):
        calls.append(method)
        rmse = outcome(method, len(calls))
        return uci.Result(dataset, method, 2, rmse, 0.1, 2.0, 0.2, 3.0)

    monkeypatch.setattr(uci_methods, "run", fake_run)
    return calls


def _one_line_exit_2(capsys, args, *words):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for word in words:
        assert word in err[0], err
    return err[0]


def _leftovers(folder, keep):
    """Files in `folder` other than `keep` and the lock files."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in keep and not p.name.endswith(".lock")
    )


# 1. Write failures -------------------------------------------------------


def test_a_full_disk_at_the_start_exits_2_before_any_work(
    tmp_path, monkeypatch, capsys
):
    calls = _fake_runs(monkeypatch)
    real_write = os.write

    def full(handle, data):
        if len(data) > 1000:  # the probe's blocks, not the lock file's pid
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(handle, data)

    monkeypatch.setattr(os, "write", full)
    output = tmp_path / "results.json"
    _one_line_exit_2(
        capsys, [*_RUN, "--output", str(output)], "No space left on device"
    )
    assert calls == [] and _leftovers(tmp_path, ()) == []


def test_long_names_work_and_too_long_names_are_refused_at_the_start(
    tmp_path, monkeypatch, capsys
):
    calls = _fake_runs(monkeypatch)
    long_name = tmp_path / ("r" * 245 + ".json")  # 250 characters
    assert main([*_RUN, "--method", "ensemble", "--output", str(long_name)]) == 0
    assert json.loads(long_name.read_text())["status"] == "complete"
    assert _leftovers(tmp_path, (long_name.name,)) == []
    too_long = tmp_path / ("r" * 251 + ".json")  # 256 characters
    capsys.readouterr()
    _one_line_exit_2(capsys, [*_RUN, "--output", str(too_long)], "too long")
    assert calls == ["ensemble"]


def test_a_write_failing_at_the_end_prints_the_table_and_keeps_the_old_file(
    tmp_path, monkeypatch, capsys
):
    _fake_runs(monkeypatch)
    output = tmp_path / "results.json"
    assert main([*_RUN, "--method", "mc-dropout", "--output", str(output)]) == 0
    before = output.read_bytes()
    capsys.readouterr()

    def full(source, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    code = main([*_RUN, "--output", str(output), "--resume"])
    assert code == results.WRITE_FAILED == 4
    captured = capsys.readouterr()
    for method in ("mc-dropout", "hetero-mc-dropout", "ensemble"):
        assert method in captured.out  # every finished unit is in the table
    last = captured.err.strip().splitlines()[-1]
    assert f"cannot write {output}: No space left on device" in last
    assert "Traceback" not in captured.err
    assert output.read_bytes() == before  # the previous file is intact
    assert _leftovers(tmp_path, (output.name,)) == []


def test_a_write_failing_mid_run_is_retried_and_nothing_is_lost(
    tmp_path, monkeypatch, capsys
):
    _fake_runs(monkeypatch)
    real_replace = os.replace
    failures = []

    def flaky(source, target):
        if not failures:  # the first unit's write fails, the next ones work
            failures.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", flaky)
    output = tmp_path / "results.json"
    assert main([*_RUN, "--output", str(output)]) == 0
    written = json.loads(output.read_text())
    assert written["status"] == "complete"
    assert len(written["results"]) == len(METHODS)
    assert "cannot write" in capsys.readouterr().err
    assert _leftovers(tmp_path, (output.name,)) == []


# 2. One writer per results file -------------------------------------------


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(
    tmp_path, monkeypatch, capsys
):
    calls = _fake_runs(monkeypatch)
    output = tmp_path / "results.json"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from keras_uncertainty.cli.results import ResultsFile\n"
            "held = ResultsFile(sys.argv[1], {})\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(output),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line_exit_2(
            capsys, [*_RUN, "--output", str(output)], f"process {holder.pid}"
        )
        assert "another run" in line
        assert calls == []
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The lock goes with its holder; a run then writes the file.
    assert main([*_RUN, "--output", str(output)]) == 0
    assert json.loads(output.read_text())["status"] == "complete"


def test_the_lock_is_held_for_the_run_and_released_after_it(tmp_path):
    output = tmp_path / "results.json"
    first = ResultsFile(str(output), {"seed": 0})
    with pytest.raises(results.UsageError, match=f"process {os.getpid()}"):
        ResultsFile(str(output), {"seed": 0})
    first.close("complete")
    ResultsFile(str(output), {"seed": 0}).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# 3. Only regular files are written ---------------------------------------


def test_outputs_that_are_not_regular_files_are_refused_before_any_work(
    tmp_path, monkeypatch, capsys
):
    calls = _fake_runs(monkeypatch)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for path, word in (
        ("/dev/null", "a device"),
        (fifo, "a FIFO"),
        (link, "symbolic link"),
    ):
        _one_line_exit_2(capsys, [*_RUN, "--output", str(path)], word)
    _one_line_exit_2(capsys, [*_RUN, "--output", str(tmp_path)], "folder")
    assert calls == []
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert link.is_symlink() and target.read_text() == "{}"


def test_a_rewrite_keeps_the_files_mode_and_a_new_file_follows_the_umask(
    tmp_path,
):
    path = tmp_path / "shared.json"
    path.write_text("{}")
    for mode in (0o644, 0o640, 0o600):
        os.chmod(path, mode)
        write_json_atomic(path, {"mode": mode})
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    umask = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "new.json", {})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o640


# 4. Signals ----------------------------------------------------------------


@pytest.mark.parametrize(
    "signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_during_a_write_is_delivered_after_it(
    tmp_path, monkeypatch, signum, status
):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"old": True})
    real_fsync = os.fsync

    def fsync_then_signal(handle):
        os.kill(os.getpid(), signum)  # lands in the middle of the write
        return real_fsync(handle)

    monkeypatch.setattr(os, "fsync", fsync_then_signal)
    previous = results.handle_termination()
    try:
        with pytest.raises(results.Terminated) as info:
            write_json_atomic(path, {"new": True})
    finally:
        results.restore_handlers(previous)
    assert info.value.status == status
    assert json.loads(path.read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# The command line, with training replaced by a unit that, after the first
# one, trains a tiny network for minutes (with the command's callbacks, as
# every fit of a method has them): the test sends its signal while the second
# unit runs.
_WAITING_LAUNCHER = """
import sys
import keras, numpy as np
from keras_uncertainty.cli.main import main
from keras_uncertainty.experiments import uci, uci_methods
def run(dataset, method, splits, protocol):
    if method != "mc-dropout":
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        open(sys.argv[1], "w").close()
        model.fit(np.zeros((8, 1)), np.zeros((8, 1)), epochs=10**6, verbose=0,
                  callbacks=list(protocol.callbacks))
    return uci.Result(dataset, method, 2, 1.0, 0.1, 2.0, 0.2, 3.0)
uci_methods.run = run
sys.exit(main(sys.argv[2:]))
"""


# End to end (a subprocess or a UCI training): the slow tier (CI runs it).
@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143)])
def test_sigterm_ends_a_run_like_ctrl_c(tmp_path, signum, status):
    output, started = tmp_path / "results.json", tmp_path / "started"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WAITING_LAUNCHER,
            str(started),
            *_RUN,
            "--output",
            str(output),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert "Traceback" not in err
    assert "terminated by SIGTERM: the finished data sets" in err
    assert "mc-dropout" in out
    written = json.loads(output.read_text())
    assert written["status"] == "interrupted"
    assert [r["method"] for r in written["results"]] == ["mc-dropout"]
    assert _leftovers(tmp_path, (output.name, started.name)) == []


# 5. Results files validated on resume ---------------------------------------


def _valid_file(tmp_path, monkeypatch):
    _fake_runs(monkeypatch)
    output = tmp_path / "results.json"
    assert main([*_RUN, "--method", "mc-dropout", "--output", str(output)]) == 0
    return output


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f["results"][0].pop("dataset"), "missing fields ['dataset']"),
        (lambda f: f["results"][0].update(rmse_mean="abc"), "rmse_mean is 'abc'"),
        (lambda f: f["results"][0].update(num_splits="2"), "num_splits is '2'"),
        (lambda f: f["results"][0].update(method="bayes"), "'bayes' is not one of"),
        (lambda f: f.update(results=None), "'results' is missing or not a list"),
        (lambda f: f.pop("settings"), "'settings' is missing"),
        (lambda f: f["results"].append(f["results"][0]), "repeats yacht mc-dropout"),
        (lambda f: f.update(failures=[1]), "'failures' is not a list"),
        (lambda f: f["results"][0].update(dataset="boat"), "has no data identity"),
    ],
)
def test_hand_edited_results_files_are_refused_on_resume(
    tmp_path, monkeypatch, capsys, edit, message
):
    output = _valid_file(tmp_path, monkeypatch)
    content = json.loads(output.read_text())
    edit(content)
    output.write_text(json.dumps(content))
    capsys.readouterr()
    calls = _fake_runs(monkeypatch)
    _one_line_exit_2(
        capsys,
        [*_RUN, "--output", str(output), "--resume"],
        "is not a valid results file",
        message,
    )
    assert calls == []


def test_a_hand_edited_file_is_refused_before_tensorflow_loads(tmp_path):
    output = tmp_path / "results.json"
    settings = {
        "protocol": "default",
        "learning_rate": 0.01,
        "splits": "0-1",
        "epochs_multiplier": 10.0,
        "num_samples": 10000,
        "adversarial_epsilon": 0.01,
        "seed": 0,
    }
    record = {"dataset": "yacht", "method": "mc-dropout", "num_splits": 2}
    output.write_text(
        json.dumps(
            {
                "format": results.RESULTS_FORMAT,
                "settings": settings,
                "status": "running",
                "results": [record],
                "failures": [],
            }
        )
    )
    launcher = (
        "import sys\n"
        "from keras_uncertainty.cli.main import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "finally:\n"
        "    loaded = {'keras', 'tensorflow'} & set(sys.modules)\n"
        "    sys.stderr.write(str(sorted(loaded)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher, *_RUN, "--output", str(output), "--resume"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "missing fields" in lines[0], result.stderr
    assert lines[1] == "[]"  # neither Keras nor TensorFlow was imported


def test_resume_refuses_units_computed_from_another_folder_of_the_same_name(
    tmp_path, monkeypatch, capsys
):
    import shutil

    from keras_uncertainty.datasets import _files

    calls = _fake_runs(monkeypatch)
    folder = tmp_path / "boat"
    shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", folder)
    output = tmp_path / "results.json"
    args = ["uci", str(folder), "--splits", "0", "--output", str(output)]
    assert main([*args, "--method", "mc-dropout"]) == 0
    assert set(json.loads(output.read_text())["data"]) == {"boat"}
    assert main([*args, "--method", "ensemble", "--resume"]) == 0  # same data
    data = (folder / "data.txt").read_text()
    (folder / "data.txt").write_text(data.replace("-2.3", "-2.4", 1))
    capsys.readouterr()
    _one_line_exit_2(capsys, [*args, "--resume"], "computed from other data")
    assert calls == ["mc-dropout", "ensemble"]


# mnist --output-dir ----------------------------------------------------------


def _tiny_protocol(monkeypatch):
    from keras_uncertainty.experiments import mnist, mnist_methods

    monkeypatch.setenv("KERAS_UNCERTAINTY_DATA", _shared_data())
    monkeypatch.setattr(mnist, "TRAIN_IMAGES", slice(2000, 2064))
    monkeypatch.setattr(mnist, "TEST_IMAGES", slice(0, 48))
    monkeypatch.setattr(mnist, "EXAMPLES", (1, 2))
    monkeypatch.setattr(mnist_methods.METHODS["ensemble"], "members", 2)
    # The article's two methods (and the baseline): every method's own run is
    # tested in test_mnist_experiment.py; the file handling is the same.
    monkeypatch.setattr(mnist, "METHODS", ("mc-dropout", "ensemble"))
    return ["mnist", "--epochs", "1", "--num-samples", "3"]


@pytest.fixture
def tiny_mnist(monkeypatch):
    """The MNIST protocol on 64 training and 48 evaluation images (the
    article's two eights become images 1 and 2), so that a unit trains in
    about a second; returns the arguments of a run."""
    return _tiny_protocol(monkeypatch)


@pytest.fixture(scope="module")
def _finished_mc_dropout_run(tmp_path_factory):
    """The folder of one finished `tiny_mnist` run of `--method mc-dropout`,
    made once for the tests that start from one (each unit is seeded alone,
    so every such run writes the same files)."""
    folder = tmp_path_factory.mktemp("mc_dropout_run")
    with pytest.MonkeyPatch.context() as monkeypatch:
        args = _tiny_protocol(monkeypatch)
        assert main([*args, "--method", "mc-dropout", "--output-dir", str(folder)]) == 0
    return folder


@pytest.fixture
def finished_mc_dropout_run(_finished_mc_dropout_run):
    """Copies the finished run into a fresh folder; returns a function of
    the folder to copy it into."""

    def copy_into(folder):
        shutil.copytree(_finished_mc_dropout_run, folder, dirs_exist_ok=True)
        return folder

    return copy_into


def _shared_data():
    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.environ.get("KERAS_UNCERTAINTY_DATA") or os.path.join(
        here, "..", "..", "shared", "data"
    )
    if not os.path.isdir(os.path.join(folder, "mnist")):
        pytest.skip("the MNIST test set is not in KERAS_UNCERTAINTY_DATA")
    return folder


def _units(folder):
    written = json.loads((folder / "results.json").read_text())
    return written["status"], {r["method"]: r["file"] for r in written["results"]}


@pytest.mark.slow  # trains LeNet-5s (64 images, one epoch)
@pytest.mark.kernels
def test_mnist_writes_each_method_as_it_finishes_and_resume_matches_a_full_run(
    tmp_path, tiny_mnist, capsys
):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main([*tiny_mnist, "--output-dir", str(full)]) == 0
    status, units = _units(full)
    assert status == "complete"
    assert set(units) == {"mc-dropout", "ensemble", "deterministic"}
    assert all((full / name).is_file() for name in units.values())
    assert "wrote " + str(full / "results.json") in capsys.readouterr().out

    assert (
        main([*tiny_mnist, "--method", "mc-dropout", "--output-dir", str(resumed)]) == 0
    )
    assert main([*tiny_mnist, "--output-dir", str(resumed), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "mnist mc-dropout: in" in err and "skipped" in err
    # Each unit is seeded alone: the file names hold their contents' SHA-256.
    assert _units(resumed) == ("complete", units)


@pytest.mark.slow  # trains LeNet-5s (64 images, one epoch)
@pytest.mark.kernels
def test_mnist_interrupted_keeps_the_finished_methods_for_resume(
    tmp_path, tiny_mnist, monkeypatch, capsys
):
    import keras

    from keras_uncertainty.cli import mnist as cli_mnist

    class StopSecond(keras.callbacks.Callback):
        fits = 0

        def on_train_begin(self, logs=None):
            StopSecond.fits += 1
            if StopSecond.fits == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli_mnist, "_Progress", StopSecond)
    assert main([*tiny_mnist, "--output-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted before the evaluation: mc-dropout kept in" in err
    status, units = _units(tmp_path)
    assert status == "interrupted" and list(units) == ["mc-dropout"]
    assert _leftovers(tmp_path, ("results.json", units["mc-dropout"])) == []


@pytest.mark.slow  # trains LeNet-5s (64 images, one epoch)
@pytest.mark.kernels
def test_mnist_resume_refuses_a_changed_unit_file_and_other_settings(
    tmp_path, tiny_mnist, finished_mc_dropout_run, capsys
):
    args = [*tiny_mnist, "--method", "mc-dropout", "--output-dir", str(tmp_path)]
    finished_mc_dropout_run(tmp_path)  # what main(args) writes
    _, units = _units(tmp_path)
    capsys.readouterr()
    _one_line_exit_2(
        capsys,
        ["mnist", "--epochs", "2", "--output-dir", str(tmp_path), "--resume"],
        "other settings",
        "epochs=1",
    )
    with open(tmp_path / units["mc-dropout"], "ab") as f:
        f.write(b"x")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # After the notice that the test-only protocol runs: the error, one line.
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "has changed since it was written (its SHA-256 differs from "
            "results.json's); run without --resume to start over"
        )
    )
    assert "Traceback" not in err


@pytest.mark.slow  # trains LeNet-5s (64 images, one epoch)
@pytest.mark.kernels
def test_mnist_rerun_without_resume_replaces_its_own_unit_files_only(
    tmp_path, tiny_mnist, finished_mc_dropout_run
):
    args = [*tiny_mnist, "--method", "mc-dropout", "--output-dir", str(tmp_path)]
    finished_mc_dropout_run(tmp_path)  # what main(args) writes
    _, first = _units(tmp_path)
    (tmp_path / "notes.npz").write_bytes(b"mine")
    assert main([*args, "--seed", "1"]) == 0
    _, second = _units(tmp_path)
    assert set(first.values()).isdisjoint(second.values())
    names = {p.name for p in tmp_path.iterdir() if p.suffix == ".npz"}
    assert names == {*second.values(), "notes.npz"}


@pytest.mark.slow  # trains LeNet-5s (64 images, one epoch)
@pytest.mark.kernels
def test_mnist_unit_files_failing_to_write_keep_the_report_and_exit_4(
    tmp_path, tiny_mnist, finished_mc_dropout_run, monkeypatch, capsys
):
    output = tmp_path / "out"
    args = [*tiny_mnist, "--method", "mc-dropout", "--output-dir", str(output)]
    finished_mc_dropout_run(output)  # what main(args) writes
    before = (output / "results.json").read_bytes()
    capsys.readouterr()
    real_replace = os.replace

    def full(source, target):
        if str(target).endswith((".npz", ".json")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    assert main([*args, "--num-samples", "4"]) == 4
    captured = capsys.readouterr()
    assert "MNIST, test-only protocol" in captured.out  # the report is printed
    assert "No space left on device; the report above is complete" in captured.err
    assert "Traceback" not in captured.err
    assert (output / "results.json").read_bytes() == before


@pytest.mark.slow  # trains LeNet-5s (64 images, one epoch)
@pytest.mark.kernels
def test_mnist_figures_failing_to_write_keep_the_report_and_exit_4(
    tmp_path, tiny_mnist, monkeypatch, capsys
):
    (tmp_path / "votes.png").write_bytes(b"old")
    real_replace = os.replace

    def full(source, target):
        if str(target).endswith(".png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    args = [*tiny_mnist, "--method", "mc-dropout", "--output-dir", str(tmp_path)]
    assert main(args) == 4
    captured = capsys.readouterr()
    assert "MNIST, test-only protocol" in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        f"cannot write the figures in {tmp_path}: No space left on device; the "
        "report above is complete"
    )
    assert (tmp_path / "votes.png").read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "replace", real_replace)
    assert main([*args, "--resume"]) == 0  # nothing trains again
    assert (tmp_path / "votes.png").read_bytes()[:4] == b"\x89PNG"


def test_mnist_output_dir_on_a_full_disk_is_refused_before_training(
    tmp_path, monkeypatch, capsys
):
    from keras_uncertainty.experiments import mnist

    real_write = os.write

    def full(handle, data):
        if len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(handle, data)

    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.setattr(mnist, "run", no_training)
    monkeypatch.setattr(os, "write", full)
    line = _one_line_exit_2(capsys, ["mnist", "--output-dir", str(tmp_path)])
    assert "--output-dir results file" in line and "No space left" in line
    assert _leftovers(tmp_path, ()) == []


def test_a_second_mnist_run_on_the_same_output_dir_is_refused(tmp_path, capsys):
    from keras_uncertainty.cli.results import MnistResultsFile

    held = MnistResultsFile(str(tmp_path / "results.json"), {})
    try:
        line = _one_line_exit_2(capsys, ["mnist", "--output-dir", str(tmp_path)])
    finally:
        held.release()
    assert f"is being written by process {os.getpid()}" in line
