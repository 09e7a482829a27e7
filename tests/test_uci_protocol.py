import math

import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.experiments import uci


@pytest.fixture(scope="module")
def yacht():
    return ku.datasets.load_uci("yacht", split=0)  # the packaged copy


@pytest.mark.slow
@pytest.mark.parametrize("method", uci.METHODS)
def test_each_method_runs_a_split_and_scores_in_original_units(yacht, method):
    rmse, nll = uci.run_split(method, yacht, epochs=3, num_samples=20, seed=0)
    assert math.isfinite(rmse) and math.isfinite(nll)
    # Scored in the target's units (std about 15), not standardized ones.
    spread = np.std(yacht.y_test)
    assert 0.1 * spread < rmse < 10 * spread


def test_result_is_mean_and_standard_error_over_splits():
    result = uci.Result.from_splits("d", "m", [1.0, 2.0, 3.0], [0.5, 0.5, 0.5], 9.0)
    assert result.rmse_mean == 2.0
    assert result.rmse_se == pytest.approx(1.0 / math.sqrt(3))
    assert result.nll_se == 0.0 and result.num_splits == 3
