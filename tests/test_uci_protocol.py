import math

import keras
import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.experiments import uci
from keras_uncertainty.experiments.stacked import MaskedMemberLoss, StackedNetwork


@pytest.fixture(scope="module")
def yacht_splits():
    return [ku.datasets.load_uci("yacht", split=k) for k in range(2)]  # packaged


@pytest.mark.slow
@pytest.mark.parametrize("method", uci.METHODS)
def test_each_method_scores_every_split_in_original_units(yacht_splits, method):
    rmses, nlls = uci.run_splits(method, yacht_splits, epochs=3, num_samples=20, seed=0)
    assert rmses.shape == nlls.shape == (2,)
    assert np.all(np.isfinite(rmses)) and np.all(np.isfinite(nlls))
    # Scored in the target's units (std about 15), not standardized ones.
    spread = np.std(yacht_splits[0].y_test)
    assert np.all((0.1 * spread < rmses) & (rmses < 10 * spread))


def test_result_is_mean_and_standard_error_over_splits():
    result = uci.Result.from_splits("d", "m", [1.0, 2.0, 3.0], [0.5, 0.5, 0.5], 9.0)
    assert result.rmse_mean == 2.0
    assert result.rmse_se == pytest.approx(1.0 / math.sqrt(3))
    assert result.nll_se == 0.0 and result.num_splits == 3


def _single_network(stacked, member, num_inputs):
    """Member `member` of a dropout-free StackedNetwork as a plain Keras MLP."""
    inputs = keras.Input((num_inputs,))
    hidden = keras.layers.Dense(stacked.hidden.units, activation="relu")
    head = keras.layers.Dense(stacked.head.units)
    model = keras.Model(inputs, head(hidden(inputs)))
    hidden.set_weights(
        [stacked.hidden.kernel.numpy()[member], stacked.hidden.bias.numpy()[member]]
    )
    head.set_weights(
        [stacked.head.kernel.numpy()[member], stacked.head.bias.numpy()[member]]
    )
    return model


def test_each_stacked_member_computes_its_own_network():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype("float32")
    mean, std = rng.normal(size=(4, 3)), rng.uniform(0.5, 2, size=(4, 3))
    stacked = StackedNetwork(mean, std, hidden=5, outputs=2)
    out = stacked(x).numpy()  # shared rows
    per_member_rows = stacked(np.repeat(x[:, None], 4, axis=1)).numpy()
    assert out.shape == (7, 4, 2)
    np.testing.assert_allclose(per_member_rows, out, rtol=1e-6)
    for m in range(4):
        single = _single_network(stacked, m, 3)
        expected = single((x - mean[m]) / std[m]).numpy()
        np.testing.assert_allclose(out[:, m], expected, rtol=1e-5, atol=1e-6)


def test_member_weight_decay_is_the_sum_of_each_members_l2():
    stacked = StackedNetwork(
        np.zeros((2, 3)), np.ones((2, 3)), 4, 1, decays=np.array([0.1, 0.0])
    )
    stacked(np.zeros((1, 3), "float32"))
    hidden = stacked.hidden.kernel.numpy()
    head = stacked.head.kernel.numpy()
    expected = 0.1 * (np.sum(hidden[0] ** 2) + np.sum(head[0] ** 2))
    assert float(sum(stacked.losses)) == pytest.approx(expected, rel=1e-5)


def test_masked_loss_is_each_members_mean_over_its_own_rows():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(6, 2, 1)).astype("float32")
    pred = rng.normal(size=(6, 2, 1)).astype("float32")
    weight = np.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 0], [1, 0]], "float32")
    y_true = np.concatenate([target, weight[..., None]], axis=-1)
    loss = MaskedMemberLoss(keras.losses.mean_squared_error)(y_true, pred)
    squared = (target - pred)[..., 0] ** 2
    expected = sum(squared[weight[:, m] == 1, m].mean() for m in range(2))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_training_stream_gives_each_member_every_own_row_once_per_epoch():
    rows = [np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7, 8, 9])]
    x = np.arange(10, dtype="float32")[:, None]
    targets = np.zeros((10, 2))
    stream = uci.member_batches(x, targets, rows, epochs=2, batch_size=2, seed=0)
    batches = list(stream.as_numpy_iterator())
    assert len(batches) == 2 * 3  # ceil(5 / 2) batches per epoch
    first_epoch = np.concatenate([b[0] for b in batches[:3]])[..., 0]
    for m in range(2):
        assert sorted(first_epoch[:, m].astype(int)) == list(rows[m])
    assert np.all(np.concatenate([b[1] for b in batches])[..., 1] == 1)


def test_unequal_member_rows_are_padded_with_zero_weight():
    index, weight = uci.padded_rows([np.array([4, 5, 6]), np.array([7])])
    assert index.shape == weight.shape == (2, 3)
    assert list(weight[1]) == [1, 0, 0] and list(index[1]) == [7, 7, 7]


def test_chunked_mixture_density_equals_the_whole_mixture():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(5, 2))
    means = rng.normal(size=(9, 5, 2))
    stds = rng.uniform(0.5, 1.5, size=(9, 5, 2))
    whole = ku.metrics.mixture_log_density(y, means, stds)
    parts = [
        ku.metrics.mixture_log_density(y, means[a:b], stds[a:b])
        for a, b in ((0, 4), (4, 9))
    ]
    np.testing.assert_allclose(uci.combine_log_means(parts, [4, 5]), whole, rtol=1e-12)


def test_a_diverged_member_scores_nan_and_is_never_chosen():
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [s.test_rows for s in splits]
    trained = uci.train_members(x, y, [s.train_rows for s in splits], 2, 4, 1, 128, 0)
    kernel = trained.model.head.kernel
    values = kernel.numpy()
    values[1] = np.nan  # the second split's network has diverged
    kernel.assign(values)
    rmses, nlls = uci.evaluate_members(trained, x, y, rows, 1, 0)
    assert np.isfinite(rmses[0]) and np.isfinite(nlls[0])
    assert np.isnan(rmses[1]) and np.isnan(nlls[1])


def test_run_warns_and_averages_the_splits_that_did_not_diverge(monkeypatch):
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(3)]

    def half_diverged(*args, **kwargs):
        return np.array([1.0, np.nan, 3.0]), np.array([2.0, np.nan, 4.0])

    monkeypatch.setattr(uci, "run_splits", half_diverged)
    with pytest.warns(RuntimeWarning, match=r"diverged .* on splits \[1\]"):
        result = uci.run("yacht", "ensemble", splits, 1, 1, 0)
    assert result.num_splits == 2 and result.rmse_mean == 2.0
    monkeypatch.setattr(
        uci, "run_splits", lambda *a, **k: (np.full(3, np.nan), np.full(3, np.nan))
    )
    with pytest.raises(FloatingPointError, match="every split"):
        uci.run("yacht", "ensemble", splits, 1, 1, 0)


def _small_training(every_epochs=None):
    splits = [ku.datasets.load_uci("yacht", k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [s.train_rows for s in splits]
    return uci.train_members(
        x,
        y,
        rows,
        1,
        8,
        6,
        uci.BATCH_SIZE,
        0,
        rates=np.array([0.05, 0.05]),
        decays=np.array([1e-4, 1e-4]),
        every_epochs=every_epochs,
    )


def test_several_steps_per_call_make_the_same_updates_as_one(monkeypatch):
    keras.utils.set_random_seed(0)
    batched = [v.numpy() for v in _small_training().model.trainable_variables]
    monkeypatch.setattr(uci, "MAX_STEPS_PER_CALL", 1)
    keras.utils.set_random_seed(0)
    single = [v.numpy() for v in _small_training().model.trainable_variables]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_every_epochs_sees_the_networks_at_each_chosen_epoch():
    seen = []
    _small_training(every_epochs=(2, lambda trained, epoch: seen.append(epoch)))
    assert seen == [2, 4, 6]
    assert uci.steps_per_call(4000 * 2) == 32
    assert uci.steps_per_call(6 * 2, align=2) == 2
