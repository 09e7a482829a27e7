"""Every method of `keras-uncertainty mnist` and `uci`, run by the command to
the end on tiny data: exit 0, a complete results file and (`mnist`) the
figures that exist for the method.

`mnist` trains LeNet-5s on 64 images for one epoch and evaluates 48 (about
two seconds a method, in this process); `uci` runs every method on one yacht
split at a tenth of the epochs, in one quiet process as the console script
runs them (TensorFlow loads once, its log lines hidden)."""

import json
import os
import subprocess
import sys

import pytest

from keras_uncertainty.cli.main import main
from keras_uncertainty.experiments.protocols import (
    METHODS,
    MNIST_BASELINE,
    MNIST_METHODS,
)

# The methods whose predictions count the votes of their samples (sampled
# networks and members): `votes.png` shows them. Laplace, SNGP and the
# evidential network give a closed-form or one-pass predictive: no votes.
_VOTING = {"mc-dropout", "ensemble", "vi", "swag", "batch-ensemble", "mimo"}
_PNG = b"\x89PNG\r\n\x1a\n"


def _shared_data():
    folder = os.environ.get("KERAS_UNCERTAINTY_DATA", "")
    if not os.path.isdir(os.path.join(folder, "mnist")):
        pytest.skip("the MNIST test set is not in KERAS_UNCERTAINTY_DATA")
    return folder


@pytest.fixture
def tiny_mnist(monkeypatch):
    """The test-only protocol on 64 training and 48 evaluation images (the
    article's two eights become images 1 and 2), every method available;
    returns the arguments of a run."""
    from keras_uncertainty.experiments import mnist, mnist_methods

    _shared_data()
    monkeypatch.setattr(mnist, "TRAIN_IMAGES", slice(2000, 2064))
    monkeypatch.setattr(mnist, "TEST_IMAGES", slice(0, 48))
    monkeypatch.setattr(mnist, "EXAMPLES", (1, 2))
    monkeypatch.setattr(mnist_methods.METHODS["ensemble"], "members", 2)
    return ["mnist", "--epochs", "1", "--num-samples", "3"]


def _run_mnist_method(method, args, folder, capsys):
    """Runs `mnist --method method`; checks the exit status, results.json
    and the figures; returns the names of the figures written."""
    from keras_uncertainty.cli.mnist import _label

    code = main([*args, "--method", method, "--output-dir", str(folder)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "Traceback" not in captured.err
    written = json.loads((folder / "results.json").read_text())
    assert written["status"] == "complete"
    records = {r["method"]: r for r in written["results"]}
    assert set(records) == {method, MNIST_BASELINE}
    for record in records.values():
        assert (folder / record["file"]).is_file()
        assert 0.0 <= record["accuracy"] <= 1.0
    assert _label(method) in captured.out
    figures = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
    for name in figures:
        assert (folder / name).read_bytes()[:8] == _PNG
        assert f"wrote {folder / name}" in captured.out
    # Retention curves and reliability diagrams exist for every method; a
    # vote histogram only for methods whose samples vote.
    expected = ["reliability.png", "retention.png"]
    if method in _VOTING:
        expected.append("votes.png")
        assert "Votes of the samples" in captured.out
    else:
        assert "Votes of the samples" not in captured.out
    assert figures == sorted(expected), (method, figures)
    return figures


@pytest.mark.kernels
def test_a_method_without_votes_runs_to_the_end_and_writes_its_figures(
    tiny_mnist, tmp_path, capsys
):
    # Laplace's predictive is closed form: no samples, so no vote histogram,
    # and the run ends with its results and the other figures.
    _run_mnist_method("laplace", tiny_mnist, tmp_path, capsys)


@pytest.mark.slow  # nine methods, each with its baseline (about 30 s)
@pytest.mark.kernels
def test_every_mnist_method_runs_to_the_end_and_writes_its_figures(
    tiny_mnist, tmp_path, capsys
):
    assert _VOTING < set(MNIST_METHODS)
    for method in MNIST_METHODS:
        _run_mnist_method(method, tiny_mnist, tmp_path / method, capsys)


# Runs `uci --method M` for every method in one process, quiet (as the
# console script runs, TensorFlow loading while its log lines are hidden),
# and prints each run's exit status on stdout.
_EVERY_UCI_METHOD = """
import sys
from keras_uncertainty.cli.main import main
folder, methods = sys.argv[1], sys.argv[2:]
for method in methods:
    code = main(["uci", "--method", method, "--splits", "0",
                 "--epochs-multiplier", "0.1", "--num-samples", "20",
                 "--output", f"{folder}/{method}.json"])
    print(f"exit: {method} {code}", flush=True)
"""


@pytest.mark.slow  # nine units on a yacht split, one TensorFlow start (about 30 s)
def test_every_uci_method_runs_to_the_end_in_a_quiet_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _EVERY_UCI_METHOD, str(tmp_path), *METHODS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    codes = dict(
        line.split()[1:]
        for line in result.stdout.splitlines()
        if line.startswith("exit: ")
    )
    assert codes == {m: "0" for m in METHODS}, result.stderr[-3000:]
    for method in METHODS:
        written = json.loads((tmp_path / f"{method}.json").read_text())
        assert written["status"] == "complete" and written["failures"] == []
        assert [(r["dataset"], r["method"]) for r in written["results"]] == [
            ("yacht", method)
        ]
    # TensorFlow's logger writes to the real stderr, not to the stand-in
    # stream the quiet start-up closed ("--- Logging error --- OSError:
    # [Errno 9] Bad file descriptor" at the ensemble's retracing notes).
    assert "Logging error" not in result.stderr
    assert "Traceback" not in result.stderr
