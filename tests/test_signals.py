"""SIGINT and SIGTERM at random moments of every method's training end the
run with 130 or 143 and the results file's status `interrupted`, every time.

The command runs in this process (TensorFlow is loaded once) while a second
thread sends the signal to the process a random delay into a `fit`: the
signal lands wherever the main thread is then (a training step, tracing, a
finalizer, a callback). A signal handler that raised there could be
swallowed ("Exception ignored in: <function WeakKeyDictionary...>") and the
run would end with 0 and `complete`; the command's handler only sets a flag,
which the run checks between batches, epochs and units."""

import json
import os
import random
import signal
import threading
import time

import pytest

from keras_uncertainty.cli.main import main
from keras_uncertainty.experiments.protocols import METHODS, MNIST_METHODS

_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
# The longest delay into a fit (seconds): a tiny fit lasts about as long.
_MAX_DELAY = 1.0


class _Training:
    """Whether a `fit` of the command is running (as its progress callback
    sees it), and whether the command has returned."""

    def __init__(self):
        self.running = threading.Event()
        self.done = threading.Event()

    def watch(self, monkeypatch, module):
        """Makes `module`'s progress callback (given to every `fit` of the
        command) report the fits to `self`."""
        training = self

        class Watched(module._Progress):
            def on_train_begin(self, logs=None):
                super().on_train_begin(logs)
                training.running.set()

            def on_train_end(self, logs=None):
                training.running.clear()
                super().on_train_end(logs)

        monkeypatch.setattr(module, "_Progress", Watched)


def _interrupted_run(args, training, signum, delay):
    """Runs `main(args)` here while a thread sends `signum` to this process
    `delay` seconds into a running fit (into the next one, at half the delay,
    if that fit has ended). Returns (exit status, whether it was sent).

    The command replaces the handlers and restores these after it: Python's
    own for SIGINT (KeyboardInterrupt, as in the console script) and, for
    SIGTERM, one that notes a signal arriving after the command returned
    (instead of ending the test session)."""
    sent, late = [], []
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(
            signal.SIGTERM, lambda number, frame: late.append(number)
        ),
    }

    def send():
        wait = delay
        while not training.done.is_set():
            if not training.running.wait(0.01):
                continue
            time.sleep(wait)
            if training.running.is_set() and not training.done.is_set():
                os.kill(os.getpid(), signum)
                sent.append(signum)
                return
            wait /= 2  # the fit ended first: earlier into the next one

    training.running.clear()
    training.done.clear()
    sender = threading.Thread(target=send)
    sender.start()
    try:
        code = main(args)
    finally:
        training.done.set()
        sender.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert late == [], "a signal arrived after the command returned"
    return code, bool(sent)


def _interrupt_many_times(command, method, args, folder, monkeypatch, capsys, times):
    """Interrupts `command --method method` `times` times at random moments
    of its training; each run must end with 130 (SIGINT) or 143 (SIGTERM)
    and its results file's status `interrupted`."""
    from keras_uncertainty.cli import mnist as cli_mnist
    from keras_uncertainty.cli import uci as cli_uci

    training = _Training()
    training.watch(monkeypatch, cli_mnist if command == "mnist" else cli_uci)
    rng = random.Random(f"{command} {method}")
    outcomes = []
    for attempt in range(times):
        signum = rng.choice(sorted(_STATUS))
        delay = rng.uniform(0.0, _MAX_DELAY)
        for retry, wait in enumerate((delay, delay / 8, 0.0)):  # short fits
            output = folder / f"{method}-{attempt}-{retry}"
            if command == "mnist":
                where = ["--output-dir", str(output)]
                results = output / "results.json"
            else:
                where = ["--output", f"{output}.json"]
                results = folder / f"{method}-{attempt}-{retry}.json"
            code, sent = _interrupted_run(
                [*args, "--method", method, *where], training, signum, wait
            )
            err = capsys.readouterr().err
            if sent:
                break
        assert sent, f"{method}: no fit ran long enough to be interrupted"
        outcome = (method, signal.Signals(signum).name, round(delay, 2))
        status = json.loads(results.read_text())["status"]
        assert (code, status) == (_STATUS[signum], "interrupted"), (outcome, err)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        outcomes.append(outcome)
    return outcomes


@pytest.fixture
def tiny_mnist(monkeypatch):
    """The test-only protocol on 64 training and 48 evaluation images, every
    method available; returns the arguments of a run (3 epochs, so that a
    fit has several batch ends to stop at)."""
    from keras_uncertainty.experiments import mnist, mnist_methods

    folder = os.environ.get("KERAS_UNCERTAINTY_DATA", "")
    if not os.path.isdir(os.path.join(folder, "mnist")):
        pytest.skip("the MNIST test set is not in KERAS_UNCERTAINTY_DATA")
    monkeypatch.setattr(mnist, "TRAIN_IMAGES", slice(2000, 2064))
    monkeypatch.setattr(mnist, "TEST_IMAGES", slice(0, 48))
    monkeypatch.setattr(mnist, "EXAMPLES", (1, 2))
    monkeypatch.setattr(mnist_methods.METHODS["ensemble"], "members", 2)
    return ["mnist", "--epochs", "3", "--num-samples", "3"]


_TINY_UCI = ["uci", "--splits", "0", "--epochs-multiplier", "0.1"]
_TINY_UCI += ["--num-samples", "20"]


@pytest.mark.kernels
def test_signals_during_swag_training_always_end_the_run_interrupted(
    tiny_mnist, tmp_path, monkeypatch, capsys
):
    # SWAG: where 1 of 6 Ctrl-Cs landed in a finalizer and the run went on
    # to exit 0 with status "complete".
    _interrupt_many_times(
        "mnist", "swag", tiny_mnist, tmp_path, monkeypatch, capsys, times=3
    )


@pytest.mark.slow  # 3 interrupted runs of each of the 9 methods (about a minute)
@pytest.mark.kernels
@pytest.mark.parametrize("method", MNIST_METHODS)
def test_signals_at_random_moments_of_mnist_training_always_end_it_interrupted(
    method, tiny_mnist, tmp_path, monkeypatch, capsys
):
    _interrupt_many_times(
        "mnist", method, tiny_mnist, tmp_path, monkeypatch, capsys, times=3
    )


@pytest.mark.slow  # 3 interrupted runs of each of the 9 methods (about a minute)
@pytest.mark.parametrize("method", METHODS)
def test_signals_at_random_moments_of_uci_training_always_end_it_interrupted(
    method, tmp_path, monkeypatch, capsys
):
    _interrupt_many_times(
        "uci", method, _TINY_UCI, tmp_path, monkeypatch, capsys, times=3
    )
