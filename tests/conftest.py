import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tests never touch the network (those that test downloads fake them).
os.environ.setdefault("KERAS_UNCERTAINTY_OFFLINE", "1")
# Tests never download: the data sets come from ../shared/data beside the
# repository (tests that check the look-up order unset this themselves).
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("KERAS_UNCERTAINTY_DATA", str(_SHARED))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_uncertainty as ku  # noqa: E402


@pytest.fixture(scope="session")
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=(256, 1)).astype("float32")
    noise = 0.1 + 0.2 * np.abs(x)
    y = (np.sin(x) + noise * rng.normal(size=x.shape)).astype("float32")
    return x, y


@pytest.fixture(scope="session")
def regression_model(regression_data):
    """The article's network, briefly trained with the Gaussian NLL."""
    keras.utils.set_random_seed(0)
    x, y = regression_data
    model = ku.models.article_regression_mlp(num_inputs=1, dropout_rate=0.1)
    model.compile(optimizer="adam", loss=ku.losses.gaussian_nll)
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def classifier():
    """An untrained 8-16-3 softmax MLP with MC dropout."""
    keras.utils.set_random_seed(1)
    return ku.models.mlp(
        8, 3, hidden_units=(16,), dropout_rate=0.3, output_activation="softmax"
    )


@pytest.fixture(scope="session")
def class_inputs():
    return np.random.default_rng(2).normal(size=(40, 8)).astype("float32")


class BackgroundRun:
    """A Python script started in its own process, for a test that only needs
    its result at the end: started by a module fixture, it runs beside the
    module's other tests (on another core) instead of after them."""

    def __init__(self, folder, script, env=None):
        import subprocess
        import sys

        self._out, self._err = folder / "stdout", folder / "stderr"
        with open(self._out, "w") as out, open(self._err, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script], stdout=out, stderr=err, env=env
            )

    def result(self, timeout):
        """Waits for the process: a CompletedProcess, as subprocess.run's."""
        import subprocess

        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        return subprocess.CompletedProcess(
            self.process.args,
            self.process.returncode,
            self._out.read_text(),
            self._err.read_text(),
        )

    def stop(self):
        self.process.kill()  # a no-op once it has exited
        self.process.wait()


@pytest.fixture(scope="module")
def start_in_background(request, tmp_path_factory):
    """`start(test_name, script, env=None)`: a BackgroundRun of `script`, or
    None when this session does not run the test `test_name`. Stopped at the
    end of the module."""
    runs = []

    def start(test_name, script, env=None):
        if not any(
            getattr(item, "originalname", item.name) == test_name
            and item.module is request.module
            for item in request.session.items
        ):
            return None
        runs.append(BackgroundRun(tmp_path_factory.mktemp("background"), script, env))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


# The two tiers. `python -m pytest` runs the default tier (unit, statistical
# and small end-to-end tests; under 8 minutes on two cores); `--slow` adds the
# slow tier (notebooks, training end to end: MNIST and UCI runs with their
# resumed and faulted variants), which `.ci/run` always runs. An explicit `-m`
# expression selects by itself.
def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the slow tier (tests marked `slow`), as .ci/run does",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
