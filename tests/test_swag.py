"""SWAG (ku.swag): moments against numpy, samples against the SWAG Gaussian."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.swag import SWAG, SWAGCallback, SWAGState


def _numpy_swag(snapshots, max_rank):
    """The paper's moments, computed from scratch for every prefix."""
    snapshots = np.asarray(snapshots, np.float64)
    deviations = [
        snapshots[i] - snapshots[: i + 1].mean(0) for i in range(len(snapshots))
    ]
    return (
        snapshots.mean(0),
        (snapshots**2).mean(0),
        np.stack(deviations[-max_rank:]),
    )


def _linear(inputs=1, units=2, name=None):
    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(units)], name=name
    )


def _state_for(model, count=6, max_rank=4, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    base = np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]
    )
    state = SWAGState(max_rank=max_rank)
    snapshots = base + spread * rng.normal(size=(count, base.size))
    for w in snapshots:
        state.collect(w)
    return state, snapshots


def test_state_moments_and_deviations_match_numpy():
    rng = np.random.default_rng(1)
    snapshots = rng.normal(size=(7, 5))
    state = SWAGState(max_rank=4)
    for i, w in enumerate(snapshots):
        state.collect(w)
        mean, sq_mean, dev = _numpy_swag(snapshots[: i + 1], 4)
        np.testing.assert_allclose(state.mean, mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state.sq_mean, sq_mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state.deviations, dev, rtol=1e-12, atol=1e-13)
    assert state.num_snapshots == 7 and state.rank == 4
    np.testing.assert_allclose(state.variance, snapshots.var(0), rtol=1e-10)


class _SetWeights(keras.callbacks.Callback):
    """Replaces the weights by recorded ones at each epoch's (or batch's) end,
    so the iterates the SWAG callback sees are known."""

    def __init__(self, recorded, per_batch=False):
        super().__init__()
        self.recorded, self.per_batch, self.step = recorded, per_batch, 0

    def _set(self):
        flat = self.recorded[self.step]
        self.step += 1
        values, offset = [], 0
        for v in self.model.trainable_variables:
            size = int(np.prod(v.shape))
            values.append(flat[offset : offset + size].reshape(v.shape))
            offset += size
        for v, value in zip(self.model.trainable_variables, values):
            v.assign(value.astype("float32"))

    def on_train_batch_end(self, batch, logs=None):
        if self.per_batch:
            self._set()

    def on_epoch_end(self, epoch, logs=None):
        if not self.per_batch:
            self._set()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 2)).astype("float32")
    return x, (x @ np.array([[1.0], [-2.0]])).astype("float32")


def test_callback_collects_the_known_iterates(data):
    x, y = data
    model = _linear(2, 1)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    recorded = np.random.default_rng(2).normal(size=(9, 3)).astype("float32")
    callback = SWAGCallback(start_epoch=2, collect_every=2, max_rank=2)
    history = model.fit(
        x, y, epochs=9, batch_size=32, verbose=0,
        callbacks=[_SetWeights(recorded), callback],
    )  # fmt: skip
    mean, sq_mean, dev = _numpy_swag(recorded[[2, 4, 6, 8]], 2)
    np.testing.assert_allclose(callback.state.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(callback.state.sq_mean, sq_mean, rtol=1e-12)
    np.testing.assert_allclose(callback.state.deviations, dev, rtol=1e-12, atol=1e-12)
    assert history.history["swag_snapshots"] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert callback.state.shapes == [(2, 1), (1,)]


def test_callback_per_batch(data):
    x, y = data
    model = _linear(2, 1)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    recorded = np.random.default_rng(3).normal(size=(12, 3)).astype("float32")
    callback = SWAGCallback(start_epoch=1, collect_every=3, unit="batch", max_rank=3)
    model.fit(
        x, y, epochs=3, batch_size=8, verbose=0,
        callbacks=[_SetWeights(recorded, per_batch=True), callback],
    )  # fmt: skip
    # 4 batches an epoch; epochs 1 and 2 collect after their 3rd and 6th batch.
    mean, sq_mean, dev = _numpy_swag(recorded[[6, 9]], 3)
    np.testing.assert_allclose(callback.state.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(callback.state.deviations, dev, rtol=1e-12, atol=1e-12)


def test_callback_per_batch_counts_batches_under_steps_per_execution(data):
    # Keras calls on_train_batch_end once per 4 batches here: the count is
    # of batches (optimizer steps), not of calls.
    x, y = data
    model = _linear(2, 1)
    model.compile(keras.optimizers.SGD(0.01), "mse", steps_per_execution=4)
    callback = SWAGCallback(collect_every=4, unit="batch", max_rank=3)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(np.concatenate([w.ravel() for w in model.get_weights()]))

    model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[Record(), callback])
    assert len(seen) == 3 * (len(x) // 4) // 4  # one call per 4 batches
    assert callback.num_snapshots == len(seen)  # and a snapshot at each
    np.testing.assert_allclose(callback.state.mean, np.mean(seen, axis=0), rtol=1e-6)


def test_samples_follow_the_swag_gaussian():
    model = _linear(1, 2)
    state, _ = _state_for(model, count=6, max_rank=4)
    scale = 0.5
    swag = SWAG(model, state, scale=scale)
    samples = swag.sample_weights(20000, seed=0).astype(np.float64)
    var = np.maximum(state.variance, 1e-30)
    dev = state.deviations
    covariance = scale * (np.diag(var) + dev.T @ dev / (dev.shape[0] - 1))
    sd = np.sqrt(np.diag(covariance))
    n = len(samples)
    assert np.all(np.abs(samples.mean(0) - state.mean) < 5 * sd / np.sqrt(n))
    empirical = np.cov(samples, rowvar=False)
    # Standard error of a covariance entry: sqrt((s_ii s_jj + s_ij^2) / n).
    se = np.sqrt((np.outer(sd**2, sd**2) + covariance**2) / n)
    assert np.all(np.abs(empirical - covariance) < 5 * se)
    # SWAG-diagonal.
    diag = SWAG(model, state, scale=2.0, rank=0).sample_weights(20000, seed=1)
    np.testing.assert_allclose(diag.var(0), 2.0 * var, rtol=0.05)


def test_ku_sample_evaluates_the_drawn_weights_and_seeds_reproduce():
    model = _linear(3, 2)
    state, _ = _state_for(model, count=5, max_rank=5)
    swag = SWAG(model, state)
    x = np.random.default_rng(4).normal(size=(7, 3)).astype("float32")
    samples = np.asarray(ku.sample(swag, x, num_samples=9, seed=11))
    weights = swag.sample_weights(9, seed=11)
    kernels, biases = weights[:, :6].reshape(9, 3, 2), weights[:, 6:]
    expected = np.einsum("ni,sij->snj", x, kernels) + biases[:, None, :]
    np.testing.assert_allclose(samples, expected, rtol=1e-5, atol=1e-5)
    again = np.asarray(
        ku.sample(swag, x, num_samples=9, seed=11, batch_size=2, max_rows_per_call=6)
    )
    np.testing.assert_allclose(again, samples, rtol=1e-6, atol=1e-6)
    looped = SWAG(model, state, vectorize=False)  # tf.map_fn over samples
    np.testing.assert_allclose(
        np.asarray(ku.sample(looped, x, num_samples=9, seed=11)), samples, rtol=1e-5
    )
    other = np.asarray(ku.sample(swag, x, num_samples=9, seed=12))
    assert not np.allclose(other, samples)
    # The SWA prediction: the network at the mean weights.
    mean = state.mean
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(swag(x)),
        x @ mean[:6].reshape(3, 2) + mean[6:],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.fixture(scope="module")
def trained_regression(data):
    x, y = data
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(8, activation="relu"),
         keras.layers.Dense(2)]
    )  # fmt: skip
    model.compile(keras.optimizers.SGD(0.02), ku.losses.gaussian_nll)
    callback = SWAGCallback(start_epoch=2, max_rank=4)
    model.fit(x, y, epochs=8, batch_size=8, verbose=0, callbacks=[callback])
    return model, callback


def test_predict_regression_and_classification_are_finite(trained_regression, data):
    x, _ = data
    model, callback = trained_regression
    swag = SWAG(model, callback)
    prediction = ku.predict_regression(swag, x, num_samples=20, seed=0)
    assert prediction.mean.shape == (32, 1)
    assert np.all(np.isfinite(prediction.std)) and np.all(prediction.epistemic_std > 0)
    assert np.all(prediction.aleatoric_std > 0)  # the compiled NLL's head
    classifier = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3, activation="softmax")]
    )
    state, _ = _state_for(classifier, count=4, max_rank=3)
    result = ku.predict_classification(SWAG(classifier, state), x, num_samples=20)
    assert np.all(np.isfinite(result.probs))
    np.testing.assert_allclose(result.probs.sum(-1), 1.0, rtol=1e-5)
    assert np.all(result.mutual_information >= -1e-6)


def test_a_convolutional_model_is_looped_by_default(data):
    model = keras.Sequential(
        [keras.Input((6, 1)), keras.layers.Conv1D(2, 3), keras.layers.Flatten(),
         keras.layers.Dense(1)]
    )  # fmt: skip
    state, _ = _state_for(model, count=3, max_rank=3)
    swag = SWAG(model, state)
    assert swag.vectorize is False and SWAG(model, state, vectorize=True).vectorize
    x = np.random.default_rng(5).normal(size=(4, 6, 1)).astype("float32")
    samples = np.asarray(ku.sample(swag, x, num_samples=3, seed=0))
    vectorized = ku.sample(SWAG(model, state, vectorize=True), x, 3, seed=0)
    np.testing.assert_allclose(samples, np.asarray(vectorized), rtol=1e-5, atol=1e-6)


def test_keras_file_and_state_round_trip(trained_regression, data, tmp_path):
    x, _ = data
    model, callback = trained_regression
    swag = SWAG(model, callback)
    expected = np.asarray(ku.sample(swag, x, num_samples=5, seed=3))
    model.save(tmp_path / "net.keras")
    callback.state.save(tmp_path / "swag.npz")
    loaded = SWAG(
        keras.models.load_model(tmp_path / "net.keras", compile=False),
        SWAGState.load(tmp_path / "swag.npz"),
    )
    np.testing.assert_allclose(
        np.asarray(ku.sample(loaded, x, num_samples=5, seed=3)), expected, rtol=1e-6
    )
    # One file: the network, the moments and the settings.
    swag_rank2 = SWAG(model, callback, rank=2, scale=0.3)
    expected = np.asarray(ku.sample(swag_rank2, x, num_samples=5, seed=3))
    swag_rank2.save(tmp_path / "swag.keras")
    single = keras.models.load_model(tmp_path / "swag.keras")
    assert isinstance(single, SWAG) and (single.rank, single.scale) == (2, 0.3)
    np.testing.assert_array_equal(
        np.asarray(ku.sample(single, x, num_samples=5, seed=3)), expected
    )
    for field in ("mean", "sq_mean", "deviations"):  # float64, as collected
        np.testing.assert_array_equal(
            getattr(single.state, field), getattr(callback.state, field)
        )
    assert single.state.num_snapshots == callback.state.num_snapshots
    restored = SWAGState.from_state(callback.state.get_state())
    np.testing.assert_array_equal(restored.deviations, callback.state.deviations)
    restored.collect(restored.mean)  # keeps collecting where it stopped
    assert restored.num_snapshots == callback.state.num_snapshots + 1


def test_batch_norm_statistics_are_recomputed_per_weight_vector(data, tmp_path):
    x, _ = data
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3),
         keras.layers.BatchNormalization(momentum=0.9), keras.layers.Dense(1)]
    )  # fmt: skip
    state, _ = _state_for(model, count=4, max_rank=3)
    with pytest.warns(UserWarning, match="bn_update_data"):
        SWAG(model, state)
    swag = SWAG(model, state, bn_update_data=x, bn_batches=3, bn_batch_size=10)
    # numpy: the mean weights, batch statistics of rows 0-9, 10-19, 20-29.
    flat = state.mean
    kernel, bias = flat[:6].reshape(2, 3), flat[6:9]
    gamma, beta = flat[9:12], flat[12:15]
    out_kernel, out_bias = flat[15:18].reshape(3, 1), flat[18:]
    hidden = x.astype(np.float64) @ kernel + bias
    batches = [hidden[lo : lo + 10] for lo in (0, 10, 20)]
    mu = np.mean([b.mean(0) for b in batches], axis=0)
    var = np.mean([b.var(0) for b in batches], axis=0)
    eps = model.layers[1].epsilon
    expected = (gamma * (hidden - mu) / np.sqrt(var + eps) + beta) @ out_kernel
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(swag(x)), expected + out_bias, rtol=1e-4, atol=1e-4
    )
    samples = np.asarray(ku.sample(swag, x, num_samples=4, seed=0))
    assert samples.shape == (4, 32, 1) and np.all(np.isfinite(samples))
    # The recomputation's rows are saved with the model.
    swag.save(tmp_path / "bn.keras")
    loaded = keras.models.load_model(tmp_path / "bn.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), expected + out_bias, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_array_equal(
        np.asarray(ku.sample(loaded, x, num_samples=4, seed=0)), samples
    )
    # A structure of arrays is not saved: the message says how to save the parts.
    branched_in = {"a": keras.Input((2,), name="a")}
    branched = keras.Model(branched_in, model(branched_in["a"]))
    structured = SWAG(branched, state, bn_update_data={"a": x})
    with pytest.raises(ValueError, match=r"bn_update_data.*state\.save"):
        structured.save(tmp_path / "structured.keras")


def test_export_serves_what_predict_regression_gives(
    trained_regression, data, tmp_path
):
    x, _ = data
    model, callback = trained_regression
    swag = SWAG(model, callback)
    path = ku.export(swag, tmp_path / "swag", task="regression", num_samples=10)
    loaded = tf.saved_model.load(str(path))  # held: its variables must live
    served = loaded.serve_seeded(tf.constant(x), tf.constant(5, tf.int64))
    expected = ku.predict_regression(swag, x, num_samples=10, seed=5)
    np.testing.assert_allclose(served["mean"].numpy(), expected.mean, rtol=1e-5)
    np.testing.assert_allclose(served["std"].numpy(), expected.std, rtol=1e-4)


def test_bad_inputs_name_the_argument():
    model = _linear(1, 2)
    with pytest.raises(ValueError, match="`state`.*0 snapshots"):
        SWAG(model, SWAGState())
    state, _ = _state_for(model, count=3, max_rank=5)
    with pytest.raises(ValueError, match=r"`rank`.*\[2, 3\].*rank=4"):
        SWAG(model, state, rank=4)
    with pytest.raises(ValueError, match="`rank`.*rank=1"):
        SWAG(model, state, rank=1)
    one, _ = _state_for(model, count=1)
    with pytest.raises(ValueError, match="`rank`.*rank=None with 1"):
        SWAG(model, one)
    with pytest.raises(ValueError, match="`scale`.*scale=-1"):
        SWAG(model, state, scale=-1)
    with pytest.raises(ValueError, match="`state`.*4 weights.*Received: a state of 6"):
        SWAG(model, _state_for(_linear(2, 2))[0])
    with pytest.raises(ValueError, match="`state`.*SWAGCallback"):
        SWAG(model, "swag.npz")
    with pytest.raises(ValueError, match="`model`.*keras.Model"):
        SWAG(object(), state)
    dropout = keras.Sequential(
        [keras.Input((1,)), ku.layers.MCDropout(0.5), keras.layers.Dense(2)]
    )
    with pytest.raises(ValueError, match="`model`.*stochastic.*MCDropout"):
        SWAG(dropout, state)
    with pytest.raises(ValueError, match="`vectorize`.*'yes'"):
        SWAG(model, state, vectorize="yes")
    with pytest.raises(ValueError, match="`bn_batches`"):
        SWAG(model, state, bn_batches=0)
    with pytest.raises(ValueError, match="`start_epoch`.*-1"):
        SWAGCallback(start_epoch=-1)
    with pytest.raises(ValueError, match="`unit`.*'step'"):
        SWAGCallback(unit="step")
    with pytest.raises(ValueError, match="`max_rank`"):
        SWAGCallback(max_rank=0)
    with pytest.raises(ValueError, match="`weights`.*finite"):
        SWAGState().collect(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="`weights`.*Expected 4.*Received: 3"):
        state.collect(np.zeros(3))
    with pytest.raises(ValueError, match="`num_samples`"):
        SWAG(model, state).sample_weights(0)


def test_a_fit_that_collects_nothing_warns(data):
    x, y = data
    model = _linear(2, 1)
    model.compile("sgd", "mse")
    callback = SWAGCallback(start_epoch=5)
    with pytest.warns(UserWarning, match="collected no snapshot"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    with pytest.raises(ValueError, match="0 snapshots"):
        SWAG(model, callback)


def test_several_inputs_and_outputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(4, activation="relu")(
        keras.layers.Concatenate()([a, b])
    )
    model = keras.Model(
        {"a": a, "b": b},
        {"y": keras.layers.Dense(1)(hidden), "z": keras.layers.Dense(2)(hidden)},
    )
    state, _ = _state_for(model, count=4, max_rank=3)
    rng = np.random.default_rng(6)
    x = {"a": rng.normal(size=(5, 3)), "b": rng.normal(size=(5, 2))}
    x = {k: v.astype("float32") for k, v in x.items()}
    samples = ku.sample(SWAG(model, state), x, num_samples=4, seed=0)
    assert {k: np.asarray(v).shape for k, v in samples.items()} == {
        "y": (4, 5, 1),
        "z": (4, 5, 2),
    }


def _noisy_regression(seed, n=384):
    """y = sin(2x) + noise whose scale grows with |x|, standardized-ish."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(n, 1)).astype("float32")
    noise = (0.1 + 0.2 * np.abs(x)) * rng.normal(size=(n, 1))
    return x, (np.sin(2 * x) + noise).astype("float32")


def _gaussian_mixture_nll(samples, y):
    """Mean NLL of the equal-weight mixture of the T (mean, log-variance)
    samples `(T, n, 2)`: the independent numpy reference."""
    mean, log_var = samples[..., 0], samples[..., 1]
    log_pdf = -0.5 * (
        np.log(2 * np.pi) + log_var + (y[None, :, 0] - mean) ** 2 / np.exp(log_var)
    )
    top = log_pdf.max(0)
    return float(-np.mean(top + np.log(np.mean(np.exp(log_pdf - top), 0))))


@pytest.mark.slow
def test_uci_swag_predictive_nll_stays_close_to_the_map_and_respects_the_floor():
    from keras_uncertainty.experiments import registry
    from keras_uncertainty.experiments.uci_methods import Protocol

    x, y = _noisy_regression(0)
    x_test, y_test = _noisy_regression(1)
    method = registry.METHODS["swag"]
    keras.utils.set_random_seed(0)
    model = method.uci_network(1, 32, len(x))
    loss = method.uci_loss(Protocol(1.0, 1e-2, "cosine", 1, 0))
    model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    model.fit(x, y, epochs=60, batch_size=128, verbose=0)
    map_nll = _gaussian_mixture_nll(
        np.asarray(model.predict(x_test, verbose=0))[None], y_test
    )
    protocol = Protocol(
        epochs_multiplier=1.0, learning_rate=1e-2, schedule="cosine",
        num_samples=100, seed=0,
    )  # fmt: skip
    swag = method.uci_after_fit(model, x, y, protocol, epochs=40)
    # The collection runs at the protocol's step, constant.
    assert float(
        keras.ops.convert_to_numpy(model.optimizer.learning_rate)
    ) == pytest.approx(1e-2)
    samples = np.asarray(ku.sample(swag, x_test, num_samples=100, seed=0))
    assert samples.shape == (100, len(x_test), 2) and np.all(np.isfinite(samples))
    # The log-variance floor: log(training MSE of the SWA mean) - 1.
    swa = np.asarray(swag.predict(x, verbose=0))
    floor = np.log(np.mean((swa[:, 0] - y[:, 0]) ** 2)) + method.uci_floor_offset
    assert samples[..., 1].min() >= floor - 1e-5
    assert np.any(samples[..., 1] <= floor + 1e-5)  # it binds on this fit
    # The floor binds only on the variance: the unfloored network's means.
    raw = ku.swag.SWAG(model, swag.state, rank=swag.rank)
    raw_samples = np.asarray(ku.sample(raw, x_test, num_samples=100, seed=0))
    np.testing.assert_allclose(
        samples[..., 0], raw_samples[..., 0], rtol=1e-5, atol=1e-5
    )
    swag_nll = _gaussian_mixture_nll(samples, y_test)
    assert np.isfinite(swag_nll) and swag_nll <= map_nll + 0.1
