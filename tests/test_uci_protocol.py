import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.experiments import protocols, registry, uci, uci_methods


@pytest.fixture(scope="module")
def yacht_splits():
    return [ku.datasets.load_uci("yacht", split=k) for k in range(2)]  # packaged


def _short(epochs=3, num_samples=20, **kwargs):
    """A protocol of `epochs` epochs on yacht (its n_epochs is 40)."""
    return uci_methods.Protocol(epochs / 40, 1e-2, "cosine", num_samples, 0, **kwargs)


def test_every_method_of_the_command_line_is_one_registry_entry_on_the_contract():
    assert tuple(uci_methods.METHODS) == protocols.METHODS
    for name, method in uci_methods.METHODS.items():
        assert isinstance(method, registry.Method) and method.name == name
        assert method is registry.METHODS[name]
        assert method.family and method.settings["uci"]


@pytest.mark.slow
@pytest.mark.parametrize("method", protocols.METHODS)
def test_each_method_scores_every_split_in_original_units(yacht_splits, method):
    rmses, nlls = uci_methods.METHODS[method].uci_run(yacht_splits, _short())
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


def _protocol_members(monkeypatch):
    """Records each member network `train_members` builds, with a copy of
    its initial weights."""
    built = []
    build = uci.member_network

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        built.append((model, [w.copy() for w in model.get_weights()]))
        return model

    monkeypatch.setattr(uci, "member_network", recording)
    return built


def test_the_protocol_trains_a_packed_ensemble_of_plain_keras_networks(monkeypatch):
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [s.train_rows for s in splits]
    built = _protocol_members(monkeypatch)
    trained = uci.train_members(
        x, y, rows, 1, 5, 1, 128, 0, rates=np.array([0.1, 0.2]), decays=[0.1, 0.0]
    )
    ens = trained.model
    assert isinstance(ens, ku.Ensemble)
    assert ens.packed and ens.per_member_inputs and ens.weighted_mean
    layers = [type(layer).__name__ for layer in built[0][0].layers[1:]]
    assert layers == ["Normalization", "MCDropout", "Dense", "MCDropout", "Dense"]
    for m, (member, _) in enumerate(built):
        # Each member standardizes with its own split's training rows.
        normalization = member.layers[1]
        np.testing.assert_allclose(
            np.ravel(normalization.mean), x[rows[m]].mean(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            np.sqrt(np.ravel(normalization.variance)),
            x[rows[m]].std(0),
            rtol=1e-5,
            atol=1e-6,
        )
        assert [layer.rate for layer in member.layers if hasattr(layer, "rate")] == [
            pytest.approx(0.1 * (m + 1))
        ] * 2
    # The weight decay is the sum of each member's L2 of its kernels.
    kernels = [v.numpy() for v in ens.trainable_variables if len(v.shape) == 3]
    expected = 0.1 * sum(np.sum(k[0] ** 2) for k in kernels)
    assert float(sum(ens.losses)) == pytest.approx(expected, rel=1e-5)


def test_each_member_makes_exactly_the_updates_it_makes_trained_alone(monkeypatch):
    """Adam on each member's own rows of every batch of the stream, member by
    member in plain Keras, against the protocol's packed training."""
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [splits[0].train_rows[:40], splits[1].train_rows[:37]]  # 3 padded
    decays = [1e-3, 1e-2]
    built = _protocol_members(monkeypatch)
    keras.utils.set_random_seed(0)
    trained = uci.train_members(x, y, rows, 1, 8, 3, 16, 0, decays=decays)
    targets = (y[:, None] - trained.y_mean) / trained.y_std
    stream = uci.member_batches(x, targets, rows, 3, 16, 0)
    for m, ((member, initial), packed) in enumerate(zip(built, trained.model.members)):
        alone = keras.models.clone_model(member)
        alone.set_weights(initial)
        # The default schedule: a half cosine over the 3 epochs of 3 steps.
        schedule = keras.optimizers.schedules.CosineDecay(uci.LEARNING_RATE, 9)
        alone.compile(keras.optimizers.Adam(schedule), loss="mse")
        for inputs, target, weight in stream.as_numpy_iterator():
            own = weight[:, m] > 0
            alone.train_on_batch(inputs[own, m], target[own, m])
        for a, b in zip(alone.get_weights(), packed.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_step_schedule_is_cosine_to_zero_or_constant():
    cosine = uci.step_schedule(0.01, "cosine", 100)
    steps = np.array([0, 25, 50, 100])
    expected = 0.01 * 0.5 * (1 + np.cos(np.pi * steps / 100))
    actual = [float(cosine(int(step))) for step in steps]
    np.testing.assert_allclose(actual, expected, atol=1e-9)
    assert uci.step_schedule(0.01, "constant", 100) == 0.01
    with pytest.raises(ValueError, match="`schedule`.*received 'linear'"):
        uci.step_schedule(0.01, "linear", 100)


def test_each_members_adversarial_step_is_over_its_own_feature_range():
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [s.train_rows for s in splits]
    trained = uci.train_members(x, y, rows, 2, 4, 1, 128, 0, adversarial_epsilon=0.01)
    step = trained.model.adversarial_step.numpy()
    assert step.shape == (2, 1, x.shape[1])
    for m, member_rows in enumerate(rows):
        np.testing.assert_allclose(
            step[m, 0], 0.01 * np.ptp(x[member_rows], axis=0), rtol=1e-6
        )


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
    assert batches[0][1].shape == (2, 2, 1)  # (batch, member, target)
    assert np.all(np.concatenate([b[2] for b in batches]) == 1)


def test_unequal_member_rows_are_padded_with_zero_weight():
    index, weight = uci.padded_rows([np.array([4, 5, 6]), np.array([7])])
    assert index.shape == weight.shape == (2, 3)
    assert list(weight[1]) == [1, 0, 0] and list(index[1]) == [7, 7, 7]


@pytest.mark.parametrize("taus", [None, (2.0, 4.0, 0.5, 1.0)])
def test_split_mixtures_are_each_groups_mixture_in_target_units(taus):
    """The streamed `SplitMixtureNLL` (chunked: a small `batch_size`) against
    the whole mixture of each group's samples, computed in numpy."""
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    group = 2
    train_rows = [s.train_rows for s in splits for _ in range(group)]
    test_rows = [s.test_rows for s in splits for _ in range(group)]
    outputs = 1 if taus else 2
    trained = uci.train_members(
        x, y, train_rows, outputs, 8, 1, 128, 0, rates=np.full(4, 0.1)
    )
    taus = None if taus is None else np.array(taus)
    rmses, nlls = uci.evaluate_members(
        trained, x, y, test_rows, 30, 0, taus=taus, group=group, batch_size=256
    )
    index, _ = uci.padded_rows(test_rows)
    inputs = x[index.T].astype("float32")
    samples = ku.sampling.reduce_samples(
        trained.model, inputs, ku.sampling.RawSamples(4), 30, seed=0, verbose=0
    ).reshape(4, 30, len(inputs), outputs)
    means = (
        samples[..., 0] * trained.y_std[:, None, None] + trained.y_mean[:, None, None]
    )
    if taus is None:
        stds = np.exp(0.5 * samples[..., 1]) * trained.y_std[:, None, None]
    else:
        stds = np.broadcast_to(1 / np.sqrt(taus)[:, None, None], means.shape)
    for s, split in enumerate(splits):
        members = slice(s * group, (s + 1) * group)
        k = len(split.test_rows)
        mu = means[members, :, :k].reshape(-1, k)
        sigma = stds[members, :, :k].reshape(-1, k)
        log_density = ku.metrics.mixture_log_density(split.y_test, mu, sigma)
        np.testing.assert_allclose(nlls[s], -log_density.mean(), rtol=1e-4)
        rmse = np.sqrt(np.mean((split.y_test - mu.mean(0)) ** 2))
        np.testing.assert_allclose(rmses[s], rmse, rtol=1e-4)


def test_a_diverged_member_scores_nan_and_is_never_chosen():
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [s.test_rows for s in splits]
    trained = uci.train_members(x, y, [s.train_rows for s in splits], 2, 4, 1, 128, 0)
    kernel = trained.model.packed_network.packed_layers[-1].kernel
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

    ensemble = uci_methods.METHODS["ensemble"]
    monkeypatch.setattr(ensemble, "uci_run", half_diverged)
    with pytest.warns(RuntimeWarning, match=r"diverged .* on splits \[1\]"):
        result = uci_methods.run("yacht", "ensemble", splits, _short())
    assert result.num_splits == 2 and result.rmse_mean == 2.0
    monkeypatch.setattr(
        ensemble, "uci_run", lambda *a: (np.full(3, np.nan), np.full(3, np.nan))
    )
    with pytest.raises(FloatingPointError, match="every split"):
        uci_methods.run("yacht", "ensemble", splits, _short())


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


def test_the_scored_log_variance_is_floored_as_in_the_training_loss():
    """Below the loss's floor the head gets no gradient and can drift to a
    variance that is 0 in float32; the predictive scores the floored value
    the loss saw, not a divergence."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(6, 1)).astype("float32")
    mean = y + 1e-3 * rng.normal(size=y.shape).astype("float32")

    def score(log_var):
        samples = np.concatenate([mean, np.full_like(mean, log_var)], -1)[None]
        reducer = uci.SplitMixtureNLL(1, 1, [0.0], [2.0])
        state = tuple(np.asarray(v) for v in reducer.reduce(samples, y))
        return reducer.finalize(state, 1)

    drifted, diverged = score(-200.0)
    floored, _ = score(uci.MIN_LOG_VAR)
    assert not diverged[0]
    np.testing.assert_allclose(
        drifted.log_likelihood, floored.log_likelihood, rtol=1e-6
    )
    assert np.all(np.isfinite(drifted.log_likelihood))


def _trained_together(method, splits, monkeypatch):
    """Runs `method` on `splits` (1 epoch) and returns the ensemble its
    splits trained in."""
    seen = []
    fit = uci.fit_members

    def recording(*args, **kwargs):
        seen.append(fit(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(uci, "fit_members", recording)
    rmses, nlls = uci_methods.METHODS[method].uci_run(splits, _short(1, 2))
    assert np.all(np.isfinite(rmses)) and np.all(np.isfinite(nlls))
    (trained,) = seen
    return trained


def test_splits_of_a_plain_network_train_together_in_one_packed_ensemble(
    yacht_splits, monkeypatch
):
    trained = _trained_together("laplace", yacht_splits, monkeypatch)
    ens = trained.model
    assert ens.packed and ens.per_member_inputs and ens.num_members == 2
    for k, (split, member) in enumerate(zip(yacht_splits, ens.members)):
        # Each split's network standardizes its inputs with its own training
        # rows, and its targets are standardized with them too.
        (normalization,) = [
            layer
            for layer in member.layers
            if type(layer) is keras.layers.Normalization
        ]
        np.testing.assert_allclose(
            np.ravel(normalization.mean), split.x_train.mean(0), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            np.sqrt(np.ravel(normalization.variance)),
            split.x_train.std(0),
            rtol=1e-5,
            atol=1e-5,
        )
        assert trained.y_mean[k] == pytest.approx(split.y_train.mean())
        assert trained.y_std[k] == pytest.approx(split.y_train.std())


def test_a_split_that_diverged_scores_nan_without_stopping_the_others(
    yacht_splits, monkeypatch
):
    fit = uci.fit_members

    def second_split_diverges(*args, **kwargs):
        trained = fit(*args, **kwargs)
        for variable in trained.model.trainable_variables:  # packed: (2, ...)
            value = variable.numpy()
            value[1] = np.nan
            variable.assign(value)
        return trained

    monkeypatch.setattr(uci, "fit_members", second_split_diverges)
    # SWAG's collection refuses non-finite weights: the split is skipped.
    rmses, nlls = uci_methods.METHODS["swag"].uci_run(yacht_splits, _short(1, 2))
    assert np.isfinite(rmses[0]) and np.isfinite(nlls[0])
    assert np.isnan(rmses[1]) and np.isnan(nlls[1])


def test_each_variational_split_keeps_its_own_kl_term(yacht_splits):
    x, y = uci.data_table(yacht_splits)
    rows = [yacht_splits[0].train_rows[:40], yacht_splits[1].train_rows[:30]]
    method = uci_methods.METHODS["vi"]
    members = [
        method.uci_network(x.shape[1], 4, len(r), uci.normalization_layer(x[r]))
        for r in rows
    ]
    loss = method.uci_loss(uci.Protocol(1, 1e-3, "constant", 1, 0))
    ens = uci.fit_members(members, x, y, rows, loss, 1, 16, 0).model
    assert not ens.packed  # Flipout layers have no packed twin
    inputs = np.stack([x[r[:30]] for r in rows], 1).astype("float32")
    ens(inputs, training=True)
    # The ensemble's loss adds each member's own KL, weighted by 1 / its
    # split's training rows: each split's ELBO, as trained alone.
    per_member = []
    for r, member in zip(rows, ens.members):
        kls = [layer for layer in member.layers if hasattr(layer, "kl_divergence")]
        assert [layer.kl_weight for layer in kls] == [pytest.approx(1.0 / len(r))] * 2
        per_member += [layer.kl_weight * float(layer.kl_divergence()) for layer in kls]
    assert float(sum(ens.losses)) == pytest.approx(sum(per_member), rel=1e-5)
    # The training loss is each split's own NLL on its own rows plus its KL.
    targets = np.stack([(y[r[:30]] - y[r].mean()) / y[r].std() for r in rows], 1)
    outputs = ens(inputs, training=True)
    nll = sum(float(loss(targets[:, m, None], outputs[:, m])) for m in range(2))
    total = ens.compute_loss(x=inputs, y=targets[..., None], y_pred=outputs)
    assert float(total) == pytest.approx(nll + float(sum(ens.losses)), rel=1e-5)


def test_variational_network_predicts_one_noise_level_for_every_input(yacht_splits):
    x, _ = uci.data_table(yacht_splits)
    rows = yacht_splits[0].train_rows
    method = uci_methods.METHODS["vi"]
    network = method.uci_network(x.shape[1], 4, len(rows), uci.normalization_layer(x))
    kls = [layer for layer in network.layers if hasattr(layer, "kl_divergence")]
    assert [layer.units for layer in kls] == [4, 1]  # Bayesian hidden and mean
    network.get_layer("log_noise").bias.assign([-1.5])
    outputs = keras.ops.convert_to_numpy(network(x[:50], training=True))
    assert outputs.shape == (50, 2)
    assert np.ptp(outputs[:, 0]) > 0  # the mean depends on the input
    np.testing.assert_allclose(outputs[:, 1], -1.5)  # the noise does not
    # The noise level trains by the loss: its gradient is that of the NLL.
    loss = method.uci_loss(uci.Protocol(1, 1e-3, "constant", 1, 0))
    y = np.zeros((50, 1), "float32")
    with tf.GradientTape() as tape:
        value = loss(y, network(x[:50], training=True))
    bias = network.get_layer("log_noise").bias
    assert float(tape.gradient(value, bias)[0]) != 0.0


def _multi_head_splits_trained_together_and_alone(name, heads=None):
    """Two yacht splits of registry entry `name` (BatchEnsemble, MIMO)
    trained as the runner trains them, and each split's network trained
    alone, in plain Keras with the method's loss, on its own rows of every
    batch of the same stream."""
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    x, y = uci.data_table(splits)
    rows = [splits[0].train_rows[:40], splits[1].train_rows[:37]]  # 3 padded
    method = uci_methods.METHODS[name]
    keras.utils.set_random_seed(0)
    members = [
        method.uci_network(x.shape[1], 8, len(r), uci.normalization_layer(x[r]))
        for r in rows
    ]
    initial = [m.get_weights() for m in members]
    loss = uci.heads_loss(
        method.uci_loss(uci.Protocol(1, 1e-2, "cosine", 1, 0)), members[0]
    )
    trained = uci.fit_members(
        members,
        x,
        y,
        rows,
        loss,
        3,
        16,
        0,
        heads=heads,
        split_axis=method.uci_split_axis,
    )
    # One network of every split: the packed ensemble (MIMO's layers pack) or
    # one with a split axis (BatchEnsemble's), each layer one batched op.
    assert trained.model.packed
    targets = (y[:, None] - trained.y_mean) / trained.y_std
    stream = uci.member_batches(x, targets, rows, 3, 16, 0, heads)
    pairs = []
    for m, member in enumerate(trained.model.members):
        alone = method.uci_network(
            x.shape[1], 8, len(rows[m]), uci.normalization_layer(x[rows[m]])
        )
        alone.set_weights(initial[m])
        schedule = keras.optimizers.schedules.CosineDecay(uci.LEARNING_RATE, 9)
        # The ku.BatchEnsemble, with its own loss; MIMO's network, its heads
        # (N, 3, 2), by the member loss.
        trains = method.uci_after_fit(alone, None, None, None, 3)
        if heads is not None:
            trains = trains.network
        trains.compile(
            keras.optimizers.Adam(schedule),
            loss=method.uci_loss(uci.Protocol(1, 1e-2, "cosine", 1, 0)),
        )
        for inputs, target, weight in stream.as_numpy_iterator():
            own = weight[:, m] > 0
            trains.train_on_batch(inputs[own, m], target[own, m])
        pairs.append((alone, member))
    return pairs


@pytest.mark.slow
def test_a_batch_ensemble_split_trained_with_others_updates_as_trained_alone():
    for alone, together in _multi_head_splits_trained_together_and_alone(
        "batch-ensemble"
    ):
        for a, b in zip(alone.get_weights(), together.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_mimo_split_trained_with_others_updates_as_trained_alone():
    pairs = _multi_head_splits_trained_together_and_alone("mimo", heads=3)
    for alone, together in pairs:
        for a, b in zip(alone.get_weights(), together.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        # Scored as a ku.MIMO: its three heads, one sample each.
        model = uci_methods.METHODS["mimo"].uci_after_fit(together, None, None, None, 0)
        assert isinstance(model, ku.MIMO) and model.num_members == 3


def test_each_mimo_head_reads_its_own_shuffle_of_the_members_batch():
    rows = [np.arange(10), np.arange(10, 17)]  # the second member: 3 padded
    x = np.arange(17, dtype="float32")[:, None]
    targets = np.stack([np.arange(17.0), -np.arange(17.0)], 1)
    plain = list(uci.member_batches(x, targets, rows, 2, 5, 0).as_numpy_iterator())
    heads = uci.member_batches(x, targets, rows, 2, 5, 0, heads=3)
    orders = set()
    for (px, _, pw), (hx, hy, hw) in zip(plain, heads.as_numpy_iterator()):
        assert hx.shape == (len(px), 2, 3, 1) and hy.shape == (len(px), 2, 3, 1)
        for m in range(2):
            real = np.sort(px[pw[:, m] > 0, m, 0])
            count = len(real)
            # The member's real rows first, of weight 1, in every head.
            assert list(hw[:, m]) == [1.0] * count + [0.0] * (len(px) - count)
            for k in range(3):
                np.testing.assert_array_equal(np.sort(hx[:count, m, k, 0]), real)
                # Each head's targets are its own rows'.
                np.testing.assert_array_equal(
                    hy[:count, m, k, 0], (1 - 2 * m) * hx[:count, m, k, 0]
                )
                orders.add(tuple(hx[:count, m, k, 0]))
    assert len(orders) > 10  # the heads' shuffles differ


def test_heads_loss_is_the_mean_of_each_heads_loss():
    loss = uci.HeadsLoss(ku.losses.GaussianNLL())
    y_pred = np.random.default_rng(0).normal(size=(4, 3, 2)).astype("float32")
    y_true = np.arange(4.0, dtype="float32")[:, None]
    expected = np.mean(
        [float(ku.losses.GaussianNLL()(y_true, y_pred[:, k])) for k in range(3)]
    )
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-6)
    own = np.stack([y_true] * 3, 1) + np.arange(3.0)[:, None]  # (4, 3, 1)
    expected = np.mean(
        [float(ku.losses.GaussianNLL()(own[:, k], y_pred[:, k])) for k in range(3)]
    )
    assert float(loss(own, y_pred)) == pytest.approx(expected, rel=1e-6)


def test_heads_loss_reads_heads_laid_output_after_output():
    """(N, K * 2) outputs of one GaussianHead(K) (K means, then K
    log-variances) give the loss of the same heads laid head after head."""
    y_pred = np.random.default_rng(1).normal(size=(5, 3, 2)).astype("float32")
    y_true = np.random.default_rng(2).normal(size=(5, 3, 1)).astype("float32")
    head_major = np.reshape(y_pred, (5, 6))
    output_major = np.concatenate([y_pred[..., 0], y_pred[..., 1]], axis=1)
    expected = float(uci.HeadsLoss(ku.losses.GaussianNLL())(y_true, head_major))
    loss = uci.HeadsLoss(ku.losses.GaussianNLL(), outputs_major=True)
    assert float(loss(y_true, output_major)) == pytest.approx(expected, rel=1e-6)
    # The MIMO entry's network ends in one GaussianHead(3): its loss knows.
    network = uci_methods.METHODS["mimo"].uci_network(4, 8, 10)
    assert uci.heads_loss(ku.losses.GaussianNLL(), network).outputs_major


@pytest.mark.slow
def test_the_ensembles_best_epoch_choice_keeps_each_split_at_its_best_check(
    monkeypatch,
):
    """With `epoch_choice="best"` one training both chooses and keeps: each
    split's members are kept as they were at the check of its lowest
    validation NLL. Scored on its validation rows as test rows, each split
    gives back the NLL of its best check."""
    import dataclasses

    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    cut = len(uci._split_validation(splits[0].train_rows)[0])
    held_out = [
        dataclasses.replace(
            s,
            test_rows=s.train_rows[cut:],
            x_test=s.x_train[cut:],
            y_test=s.y_train[cut:],
        )
        for s in splits
    ]
    scores = []
    evaluate = uci.evaluate_members

    def recording(*args, **kwargs):
        rmses, nlls = evaluate(*args, **kwargs)
        scores.append(nlls)
        # The validation NLL seen by the choice: the checks after the
        # second made worse, so each split's best is its second check.
        return rmses, nlls + (10.0 if len(scores) in (3, 4) else 0.0)

    monkeypatch.setattr(uci, "evaluate_members", recording)
    trainings = []
    fit = uci.fit_members
    monkeypatch.setattr(
        uci, "fit_members", lambda *a, **k: trainings.append(1) or fit(*a, **k)
    )
    monkeypatch.setattr(uci, "ENSEMBLE_CHECKS", 4)
    _, nlls = uci.deep_ensemble(
        held_out, _short(8), members=2, epoch_choice="best", choose_adversarial=False
    )
    assert len(trainings) == 1  # no second training
    checks = np.stack(scores[:-1])  # (4 checks, 2 splits); the last: the test
    assert len(checks) == 4
    # Tested on the validation rows, the kept members score as at check 2.
    np.testing.assert_allclose(nlls, checks[1], rtol=1e-5)
    assert not np.allclose(checks[-1], checks[1])


@pytest.mark.slow
def test_the_ensembles_joint_epoch_choice_chooses_and_keeps_in_one_training(
    monkeypatch,
):
    """The default choice: each split's members on 80% of its training rows
    (choosing) and on all of them (kept) train in one packed ensemble."""
    splits = [ku.datasets.load_uci("yacht", split=k) for k in range(2)]
    trainings = []
    fit = uci.fit_members

    def recording(members, x, y, member_rows, *args, **kwargs):
        trainings.append([len(rows) for rows in member_rows])
        return fit(members, x, y, member_rows, *args, **kwargs)

    monkeypatch.setattr(uci, "fit_members", recording)
    assert uci.ENSEMBLE_EPOCH_CHOICE == "joint"
    rmses, nlls = uci.deep_ensemble(
        splits, _short(4), members=2, choose_adversarial=False
    )
    assert len(trainings) == 1
    fit_rows = len(uci._split_validation(splits[0].train_rows)[0])
    all_rows = len(splits[0].train_rows)
    assert trainings[0] == [fit_rows] * 4 + [all_rows] * 4
    assert rmses.shape == nlls.shape == (2,) and np.all(np.isfinite(nlls))


def test_the_deep_ensemble_keeps_each_splits_step_of_lower_validation_nll(
    monkeypatch,
):
    """Each split keeps the training, at the protocol's adversarial step or
    at none, whose members scored the lower validation NLL (a split whose
    members diverged at one step keeps the other)."""
    steps = []

    def training(splits, protocol, members, epoch_choice):  # canned results
        steps.append(protocol.adversarial)
        if protocol.adversarial:
            return np.array([1.0, 2.0]), np.array([10.0, 20.0]), np.array([0.5, np.nan])
        return np.array([3.0, 4.0]), np.array([30.0, 40.0]), np.array([0.7, 0.1])

    monkeypatch.setattr(uci, "_deep_ensemble", training)
    protocol = uci.Protocol(1, 1e-3, "constant", 1, 0)
    rmses, nlls = uci.deep_ensemble([None, None], protocol)
    assert steps == [protocol.adversarial, 0.0] and protocol.adversarial > 0
    np.testing.assert_array_equal(rmses, [1.0, 4.0])
    np.testing.assert_array_equal(nlls, [10.0, 40.0])
    # One training at the protocol's step: no choice asked, no step to
    # choose against, or no validation rows.
    import dataclasses

    for options, adversarial in [
        ({"choose_adversarial": False}, 0.01),
        ({}, 0.0),
        ({"epoch_choice": "none"}, 0.01),
    ]:
        steps.clear()
        short = dataclasses.replace(protocol, adversarial=adversarial)
        uci.deep_ensemble([None, None], short, **options)
        assert steps == [adversarial]
