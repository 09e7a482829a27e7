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
