import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_uncertainty.cli.main import main
from keras_uncertainty.cli.results import ResultsFile, write_json_atomic
from keras_uncertainty.experiments.protocols import METHODS

# The console script pip installed beside this Python.
COMMAND = Path(sys.executable).parent / "keras-uncertainty"
# Runs the command line like the console script, then says on stderr whether
# Keras or TensorFlow was imported by the time the process exits.
_REPORTING_LAUNCHER = (
    "import atexit, sys\n"
    "def report():\n"
    "    loaded = sorted({m.split('.')[0] for m in sys.modules} & "
    "{'keras', 'tensorflow'})\n"
    "    if loaded:\n"
    "        sys.stderr.write(f'imported: {loaded}\\n')\n"
    "atexit.register(report)\n"
    "from keras_uncertainty.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
# A usage error must return well within this (it takes about 0.1 s); one
# retry absorbs a moment of load on a shared machine.
_FAST = 1.0


def _run_timed(command):
    """Runs `command`; returns (result, seconds), retrying once when slow."""
    for _attempt in range(2):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - start
        if elapsed < _FAST:
            break
    return result, elapsed


def test_demo_prints_the_uncertainty_table(capsys):
    assert main(["demo", "--epochs", "3", "--num-samples", "5"]) == 0
    out = capsys.readouterr().out
    assert "aleatoric" in out and "epistemic" in out
    rows = [
        line
        for line in out.splitlines()
        if line.strip().endswith(("gap",)) or " gap " in line
    ]
    assert rows, out


@pytest.mark.parametrize(
    "args, message",
    [
        (["demo", "--epochs", "0"], "expected a positive integer, received '0'"),
        (["demo", "--num-samples", "x"], "received 'x'"),
        (["nonsense"], "invalid choice"),
        ([], "required"),
        (["uci", "--seed", "-1"], "expected an integer in [0, 4294967295]"),
        (["uci", "--seed", "99999999999"], "received '99999999999'"),
        (["mnist", "--seed", "x"], "received 'x'"),
        (["uci", "--resume"], "--resume needs --output"),
        (
            ["uci", "--protocol", "published", "--method", "ensemble"],
            "runs mc-dropout only; received --method ensemble",
        ),
        (
            ["uci", "--protocol", "published", "--epochs-multiplier", "10"],
            "trains 100x epochs; received --epochs-multiplier 10",
        ),
        (
            ["uci", "--protocol", "published", "--variance-objective", "faithful"],
            "trains by the nll objective; received --variance-objective faithful",
        ),
        (["uci", "--variance-objective", "mse"], "invalid choice: 'mse'"),
        (["uci", "--output", "/proc/none/r.json"], "cannot create the folder"),
        (["mnist", "--output-dir", "/proc/none"], "folder of --output-dir"),
        (["uci", "--splits", "x"], "expected splits like '0-19', '3' or '0,2,5'"),
        (["uci", "--splits", "3-1"], "received '3-1'"),
    ],
)
def test_usage_errors_exit_2_with_one_line_before_tensorflow_loads(args, message):
    result, elapsed = _run_timed([sys.executable, "-c", _REPORTING_LAUNCHER, *args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    # One line: nothing from TensorFlow, and no "imported: [...]" report.
    assert len(lines) == 1, result.stderr
    assert re.match(r"keras-uncertainty( demo| uci| mnist)?: error:", lines[0])
    assert message in lines[0]
    assert elapsed < _FAST


@pytest.mark.parametrize(
    "launcher",
    [
        [str(COMMAND)],
        [sys.executable, "-m", "keras_uncertainty"],
        [sys.executable, "-m", "keras_uncertainty.cli"],
    ],
    ids=["console-script", "python-m-package", "python-m-cli"],
)
def test_every_launcher_gives_a_usage_error_fast(launcher):
    result, elapsed = _run_timed([*launcher, "uci", "--splits", "x"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "keras-uncertainty uci: error: argument --splits: expected splits like "
        "'0-19', '3' or '0,2,5', received 'x'"
    ]
    assert elapsed < _FAST
    help_ = subprocess.run(
        [*launcher, "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_.returncode == 0 and "{demo,uci,mnist}" in help_.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["uci", "yaht"], "Expected one of bostonHousing"),
        (["uci", "--splits", "0-25"], "split 25 is out of range for yacht"),
        (["uci", "--splits", "a-b"], "expected splits like"),
        (["uci", "--epochs-multiplier", "0"], "expected a positive number"),
        (["uci", "--adversarial-epsilon", "-1"], "expected a number >= 0"),
        (["uci", "--method", "bayes"], "invalid choice"),
    ],
)
def test_uci_bad_inputs_exit_2_with_one_line(
    args, message, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_uci_folder_missing_a_file_is_named(tmp_path, capsys):
    import shutil

    from keras_uncertainty.datasets import _files

    folder = tmp_path / "boat"
    shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", folder)
    (folder / "tau_values.txt").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["uci", str(folder)])
    assert exit_info.value.code == 2
    assert "missing the required file 'tau_values.txt'" in capsys.readouterr().err


def test_uci_interrupt_keeps_what_was_finished(tmp_path, capsys, monkeypatch):
    from keras_uncertainty.experiments import uci, uci_methods

    calls = []

    def fake_run(dataset, method, *args, **kwargs):
        calls.append(method)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return uci.Result(dataset, method, 2, 1.0, 0.1, 2.0, 0.2, 3.0)

    monkeypatch.setattr(uci_methods, "run", fake_run)
    output = tmp_path / "partial.json"
    assert main(["uci", "--splits", "0-1", "--output", str(output)]) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.err
    assert "mc-dropout" in captured.out
    written = json.loads(output.read_text())
    assert written["status"] == "interrupted"
    assert [r["method"] for r in written["results"]] == ["mc-dropout"]


def test_uci_corrupt_split_file_exits_2_before_training(tmp_path, capsys):
    import shutil

    from keras_uncertainty.datasets import _files

    folder = tmp_path / "boat"
    shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", folder)
    (folder / "index_test_3.txt").write_text("1 2 three\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["uci", str(folder), "--splits", "0-3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index_test_3.txt" in err[0] and "non-numeric" in err[0]


def _fake_runs(monkeypatch, outcome):
    """Replaces the training of a unit: `outcome(method, call_index)` returns
    a number (the unit's RMSE) or raises."""
    from keras_uncertainty.experiments import uci, uci_methods

    calls = []

    def fake_run(dataset, method, *args, **kwargs):
        calls.append(method)
        rmse = outcome(method, len(calls))
        return uci.Result(dataset, method, 2, rmse, 0.1, 2.0, 0.2, 3.0)

    monkeypatch.setattr(uci_methods, "run", fake_run)
    return calls


def test_run_uci_writes_to_the_results_file_it_is_given(tmp_path, capsys):
    import argparse

    from keras_uncertainty.cli.uci import run_uci
    from keras_uncertainty.experiments import uci

    path = tmp_path / "given.json"
    results_file = ResultsFile(str(path), {"seed": 0})
    finished = uci.Result("yacht", "mc-dropout", 1, 1.0, 0.1, 2.0, 0.2, 3.0)
    results_file.add(dataclasses.asdict(finished))
    args = argparse.Namespace(
        datasets=[],
        data_dir=None,
        method="mc-dropout",
        splits="0",
        epochs_multiplier=1.0,
        num_samples=2,
        adversarial_epsilon=0.0,
        variance_objective="faithful",
        seed=0,
        learning_rate=1e-2,
        schedule="cosine",
        output="not-this-one.json",  # run_uci writes `results_file`, not this
    )

    def error(message):
        raise AssertionError(message)

    assert run_uci(args, results_file, error) == 0  # finished: nothing trains
    assert f"in {path}, skipped" in capsys.readouterr().err
    assert json.loads(path.read_text())["status"] == "complete"
    assert not (tmp_path / "not-this-one.json").exists()
    assert not os.path.exists("not-this-one.json")


def test_missing_output_folders_are_created_and_written_after_each_unit(
    tmp_path, monkeypatch, capsys
):
    output = tmp_path / "new" / "deeper" / "results.json"
    seen = []

    def outcome(method, call):
        # The file on disk already holds every earlier unit.
        if output.exists():
            seen.append(len(json.loads(output.read_text())["results"]))
        return 1.0

    _fake_runs(monkeypatch, outcome)
    assert main(["uci", "--splits", "0-1", "--output", str(output)]) == 0
    assert seen == list(range(1, len(METHODS)))  # before each unit but the first
    assert json.loads(output.read_text())["status"] == "complete"


def test_output_path_problems_exit_2_before_any_data_or_training(
    tmp_path, monkeypatch, capsys
):
    calls = _fake_runs(monkeypatch, lambda method, call: 1.0)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (
        ["uci", "--output", str(blocker / "results.json")],
        ["uci", "--output", str(tmp_path)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--output" in err[0], err
    assert calls == []


def test_a_failed_run_records_its_status_but_never_wipes_earlier_results(
    tmp_path, monkeypatch, capsys
):
    def diverge(method, call):
        raise FloatingPointError(f"{method} diverged on every split of yacht")

    _fake_runs(monkeypatch, diverge)
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"kept": true}')
    assert main(["uci", "--splits", "0", "--output", str(earlier)]) == 1
    assert json.loads(earlier.read_text()) == {"kept": True}
    assert "left as it was" in capsys.readouterr().err
    fresh = tmp_path / "fresh.json"
    assert main(["uci", "--splits", "0", "--output", str(fresh)]) == 1
    written = json.loads(fresh.read_text())
    assert written["status"].startswith("failed: ") and written["results"] == []
    assert len(written["failures"]) == len(METHODS)
    assert "diverged on every split" in written["failures"][0]["reason"]


def test_resume_skips_finished_units_and_refuses_other_settings(
    tmp_path, monkeypatch, capsys
):
    output = tmp_path / "results.json"
    calls = _fake_runs(monkeypatch, lambda method, call: float(call))
    args = ["uci", "--splits", "0-1", "--method", "mc-dropout", "--output", str(output)]
    assert main(args) == 0
    assert main(["uci", "--splits", "0-1", "--output", str(output), "--resume"]) == 0
    # mc-dropout was in the file: only the other methods ran again.
    assert calls == list(METHODS)
    written = json.loads(output.read_text())
    assert [r["method"] for r in written["results"]] == calls
    assert written["results"][0]["rmse_mean"] == 1.0
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--resume", "--seed", "3"])
    assert exit_info.value.code == 2
    assert "other settings (seed=0; this run has seed=3)" in capsys.readouterr().err


def test_offline_download_exits_3_with_one_line_saying_how_to_provide_data(
    tmp_path, monkeypatch, capsys
):
    import urllib.error

    from keras_uncertainty.datasets import _files

    def no_network(url, path):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_files, "fetch", no_network)
    monkeypatch.delenv(_files.ENV_VAR, raising=False)
    monkeypatch.delenv(_files.OFFLINE_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert main(["uci", "concrete"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KERAS_UNCERTAINTY_DATA" in err[0], err
    assert (
        os.listdir(tmp_path / "datasets" / "keras_uncertainty" / "uci" / "concrete")
        == []
    )


def test_nan_in_the_data_exits_2_before_training(tmp_path, monkeypatch, capsys):
    import shutil

    from keras_uncertainty.datasets import _files

    calls = _fake_runs(monkeypatch, lambda method, call: 1.0)
    folder = tmp_path / "boat"
    shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", folder)
    data = (folder / "data.txt").read_text()
    (folder / "data.txt").write_text(data.replace("-2.3 0.568", "-2.3 nan", 1))
    with pytest.raises(SystemExit) as exit_info:
        main(["uci", str(folder)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or infinite" in err[0] and "data.txt" in err[0]
    assert calls == []


def test_concurrent_writers_never_show_a_reader_an_empty_or_partial_file(tmp_path):
    path = tmp_path / "shared.json"
    write_json_atomic(path, {"writer": "none", "rows": []})
    writer = (
        "import sys\n"
        "from keras_uncertainty.cli.results import write_json_atomic\n"
        "rows = list(range(2000))\n"
        "for i in range(300):\n"
        "    write_json_atomic(sys.argv[1], {'writer': sys.argv[2], 'rows': rows})\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", writer, str(path), name])
        for name in ("a", "b")
    ]
    reads = 0
    while any(w.poll() is None for w in writers):
        content = json.loads(path.read_text())  # never empty, never cut
        assert content["writer"] in ("none", "a", "b")
        reads += 1
    assert all(w.returncode == 0 for w in writers)
    assert reads > 10
    assert not [p for p in tmp_path.iterdir() if p.name != "shared.json"]


def test_ctrl_c_during_start_up_exits_130_without_a_traceback():
    process = subprocess.Popen(
        [str(COMMAND), "demo", "--epochs", "2"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    time.sleep(1.0)  # TensorFlow's import takes longer than this
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err and "interrupted" in err


# The command, with TensorFlow's Python logger used during the run (as its
# "tf.function retracing" notes are): TensorFlow made its log handler while
# the quiet start-up hid stderr.
_LOGGING_LAUNCHER = """
import sys
from keras_uncertainty.cli import main as cli
demo = cli.run_demo
def run_demo(*args):
    import tensorflow as tf
    tf.get_logger().warning("a retracing note")
    tf.get_logger().error("an error record")
    demo(*args)
cli.run_demo = run_demo
sys.exit(cli.main(sys.argv[1:]))
"""


# A subprocess end to end: the slow tier (CI runs it).
@pytest.mark.slow
def test_a_quiet_run_logs_tensorflows_errors_to_stderr_without_logging_errors():
    result = subprocess.run(
        [sys.executable, "-c", _LOGGING_LAUNCHER, "demo", "--epochs", "1"]
        + ["--num-samples", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Not "--- Logging error --- OSError: [Errno 9] Bad file descriptor": the
    # handler writes to the real stderr, not to the closed stand-in.
    assert "Logging error" not in result.stderr
    assert "an error record" in result.stderr  # errors are shown
    assert "a retracing note" not in result.stderr  # quiet: warnings hidden


# Two yacht splits, briefly trained: the run of the end-to-end test, and the
# one that is killed and resumed.
_SMALL_RUN = [
    "uci",
    "--splits",
    "0-1",
    "--epochs-multiplier",
    "0.1",
    "--num-samples",
    "20",
]


def _records(path):
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in json.loads(Path(path).read_text())["results"]
    ]


def _two_units(folder):
    """A run of two short units: MIMO on yacht and on a copy of it (a data
    set given as a folder), so that a kill can fall between them."""
    import shutil

    from keras_uncertainty.datasets import _files

    boat = folder / "boat"
    if not boat.exists():
        shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", boat)
    return [*_SMALL_RUN, "yacht", str(boat), "--method", "mimo"]


class _Run:
    """The console script on `args` (default `_SMALL_RUN`), started in the
    background."""

    def __init__(self, folder, args=_SMALL_RUN):
        self.output = folder / "whole.json"
        self._out, self._err = folder / "whole.out", folder / "whole.err"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.process = subprocess.Popen(
                [str(COMMAND), *args, "--output", str(self.output)],
                stdout=out,
                stderr=err,
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
            )

    def finish(self):
        """Waits for the run; returns its exit status and its stdout."""
        self.process.wait(timeout=600)
        return self.process.returncode, self._out.read_text()

    def error(self):
        return self._err.read_text()[-3000:]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The end-to-end run of every method, started in its own process when
    the first test that needs it asks."""
    run = _Run(tmp_path_factory.mktemp("uninterrupted"))
    try:
        yield run
    finally:
        run.process.kill()  # a no-op once it has exited
        run.process.wait()


@pytest.mark.slow
def test_a_killed_run_keeps_its_finished_units_and_resumes_to_the_same_table(
    tmp_path,
):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    args = _two_units(tmp_path)
    (tmp_path / "whole").mkdir()
    uninterrupted_run = _Run(tmp_path / "whole", args)
    killed = tmp_path / "killed.json"
    process = subprocess.Popen(
        [str(COMMAND), *args, "--output", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 300
    while not killed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    on_disk = json.loads(killed.read_text())  # valid JSON after SIGKILL
    assert on_disk["status"] == "running"
    assert len(on_disk["results"]) == 1
    subprocess.run(
        [str(COMMAND), *args, "--output", str(killed), "--resume"],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert json.loads(killed.read_text())["status"] == "complete"
    code, _ = uninterrupted_run.finish()
    assert code == 0, uninterrupted_run.error()
    assert _records(killed) == _records(uninterrupted_run.output)


@pytest.mark.slow
def test_uci_end_to_end_on_two_yacht_splits(uninterrupted_run):
    code, out = uninterrupted_run.finish()
    assert code == 0, uninterrupted_run.error()
    assert "0.67 ± 0.05" in out  # the published MC dropout RMSE beside ours
    written = json.loads(uninterrupted_run.output.read_text())
    assert written["status"] == "complete" and written["failures"] == []
    records = written["results"]
    assert [r["method"] for r in records] == list(METHODS)
    for record in records:
        assert set(record) == {
            "dataset",
            "method",
            "num_splits",
            "rmse_mean",
            "rmse_se",
            "nll_mean",
            "nll_se",
            "seconds",
        }
        assert record["dataset"] == "yacht" and record["num_splits"] == 2


def test_the_published_protocol_is_one_flag_away(tmp_path, monkeypatch, capsys):
    from keras_uncertainty.experiments import uci, uci_methods
    from keras_uncertainty.experiments.protocols import PROTOCOLS

    seen = []

    def fake_run(dataset, method, splits, protocol):
        seen.append(
            (
                method,
                protocol.epochs_multiplier,
                protocol.learning_rate,
                protocol.schedule,
            )
        )
        return uci.Result(dataset, method, 1, 1.0, 0.0, 1.0, 0.0, 1.0)

    monkeypatch.setattr(uci_methods, "run", fake_run)
    output = tmp_path / "published.json"
    assert main(["uci", "--protocol", "published", "--output", str(output)]) == 0
    assert seen == [("mc-dropout", 100.0, 1e-3, "constant")]
    settings = json.loads(output.read_text())["settings"]
    assert settings["protocol"] == "published" and settings["learning_rate"] == 1e-3
    assert main(["uci", "--splits", "0", "--method", "ensemble"]) == 0
    assert seen[-1] == ("ensemble", 10.0, uci.LEARNING_RATE, "cosine")
    assert PROTOCOLS["default"]["learning_rate"] == uci.LEARNING_RATE


def test_the_time_left_counts_only_the_units_a_resumed_run_will_train(
    tmp_path, monkeypatch, capsys
):
    import types

    from keras_uncertainty.cli import uci as cli_uci

    clock = [0.0]
    monkeypatch.setattr(
        cli_uci, "time", types.SimpleNamespace(perf_counter=lambda: clock[0])
    )

    def ten_seconds(method, call):
        clock[0] += 10.0
        return 1.0

    _fake_runs(monkeypatch, ten_seconds)
    output = str(tmp_path / "r.json")
    assert (
        main(["uci", "--splits", "0-1", "--method", "evidential", "--output", output])
        == 0
    )
    capsys.readouterr()
    assert main(["uci", "--splits", "0-1", "--output", output, "--resume"]) == 0
    err = capsys.readouterr().err
    # After one unit of 10 s, every unit but the first and evidential (the
    # last, in the file) is left, each of the same work.
    from keras_uncertainty.cli.progress import format_duration

    count = len(METHODS)
    left = format_duration(10.0 * (count - 2))
    assert (
        f"[2/{count}] yacht hetero-mc-dropout: 2 splits; elapsed 10s, about {left} left"
        in err
    )
    assert "yacht evidential: in" in err


def test_durations_read_as_seconds_minutes_or_hours():
    from keras_uncertainty.cli.progress import format_duration

    assert format_duration(42.4) == "42s"
    assert format_duration(187) == "3m07s"
    assert format_duration(7500) == "2h05m"


def test_uci_prints_a_line_per_unit_with_elapsed_and_remaining_time(
    tmp_path, monkeypatch, capsys
):
    _fake_runs(monkeypatch, lambda method, call: 1.0)
    assert main(["uci", "--splits", "0-1", "--output", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    count = len(METHODS)
    assert f"[1/{count}] yacht mc-dropout: 2 splits; elapsed 0s\n" in err
    # From the second unit on, an estimate of the time left.
    assert re.search(rf"\[2/{count}\] yacht hetero-mc-dropout: .*, about .* left", err)
    assert "yacht evidential: RMSE 1, NLL 2, done in" in err
