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
