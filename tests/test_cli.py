import re
import subprocess
import sys

import pytest

from keras_uncertainty.cli.main import main


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
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    result = subprocess.run(
        [sys.executable, "-m", "keras_uncertainty", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    errors = [
        line
        for line in result.stderr.splitlines()
        if re.match(r"keras-uncertainty( demo)?: error:", line)
    ]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_uci_end_to_end_on_two_yacht_splits(tmp_path, capsys):
    output = tmp_path / "results.json"
    code = main(
        [
            "uci",
            "--splits",
            "0-1",
            "--epochs-multiplier",
            "0.1",
            "--num-samples",
            "20",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "0.67 ± 0.05" in out  # the published MC dropout RMSE beside ours
    import json

    records = json.loads(output.read_text())
    assert [r["method"] for r in records] == [
        "mc-dropout",
        "hetero-mc-dropout",
        "ensemble",
    ]
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
    import json

    from keras_uncertainty.experiments import uci

    calls = []

    def fake_run(dataset, method, *args, **kwargs):
        calls.append(method)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return uci.Result(dataset, method, 2, 1.0, 0.1, 2.0, 0.2, 3.0)

    monkeypatch.setattr(uci, "run", fake_run)
    output = tmp_path / "partial.json"
    assert main(["uci", "--splits", "0-1", "--output", str(output)]) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.err
    assert "mc-dropout" in captured.out
    assert [r["method"] for r in json.loads(output.read_text())] == ["mc-dropout"]


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
