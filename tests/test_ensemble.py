import os
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.ensemble.training import bootstrap_counts

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels


def _member(dropout_rate=0.0, hidden=16):
    return ku.models.mlp(8, 2, hidden_units=(hidden,), dropout_rate=dropout_rate)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = (x[:, :1] - 0.5 * x[:, 1:2] + 0.1 * rng.normal(size=(256, 1))).astype("float32")
    return x, y


@pytest.fixture(scope="module")
def trained(data):
    keras.utils.set_random_seed(0)
    ens = ku.Ensemble(_member, num_members=3)
    start = [m.get_weights() for m in ens.members]
    ens.compile("adam", loss=ku.losses.gaussian_nll, metrics=["mae"])
    history = ens.fit(*data, epochs=3, batch_size=64, validation_data=data, verbose=0)
    return ens, start, history


def test_members_start_different_and_end_different(trained, data):
    ens, start, _ = trained
    assert not np.allclose(start[0][0], start[1][0])
    end = [m.get_weights() for m in ens.members]
    assert not np.allclose(end[0][0], end[1][0])
    assert not np.allclose(start[0][0], end[0][0])
    outputs = ens(data[0][:10]).numpy()
    assert outputs.shape == (10, 3, 2)
    assert not np.allclose(outputs[:, 0], outputs[:, 1])
    # Members are plain Keras models, usable on their own.
    np.testing.assert_allclose(
        ens.members[2](data[0][:10]).numpy(), outputs[:, 2], rtol=1e-6
    )


def test_history_has_total_and_member_losses(trained):
    _, _, history = trained
    logs = history.history
    for key in ["loss", "mae", "val_loss", "val_mae"] + [
        f"{prefix}member_{i}_loss" for prefix in ("", "val_") for i in range(3)
    ]:
        assert key in logs, key
    total = np.sum([logs[f"member_{i}_loss"] for i in range(3)], axis=0)
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-5)


def test_ensemble_of_one_trains_exactly_like_plain_keras(data):
    keras.utils.set_random_seed(1)
    plain = _member()
    twin = keras.models.clone_model(plain)
    twin.set_weights(plain.get_weights())
    plain.compile(keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
    ens = ku.Ensemble.from_models([twin])
    ens.compile(keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
    plain_history = plain.fit(*data, epochs=3, batch_size=32, shuffle=False, verbose=0)
    ens_history = ens.fit(*data, epochs=3, batch_size=32, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        plain_history.history["loss"], ens_history.history["loss"], rtol=1e-5
    )


def _identical_pair():
    keras.utils.set_random_seed(2)
    first = _member()
    second = keras.models.clone_model(first)
    second.set_weights(first.get_weights())
    return [first, second]


def test_identical_members_stay_identical_without_bootstrap(data):
    ens = ku.Ensemble.from_models(_identical_pair())
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    ens.fit(*data, epochs=2, batch_size=64, verbose=0)
    for a, b in zip(ens.members[0].get_weights(), ens.members[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bootstrap_gives_each_member_its_own_resample(data):
    ens = ku.Ensemble.from_models(_identical_pair(), bootstrap=True, seed=0)
    counts = bootstrap_counts(np.random.default_rng(0), 256, 2)
    assert counts.shape == (256, 2)
    np.testing.assert_array_equal(counts.sum(axis=0), [256, 256])
    assert (counts == 0).mean() > 0.3  # about 1/e of the rows left out
    assert not np.array_equal(counts[:, 0], counts[:, 1])
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    ens.fit(*data, epochs=2, batch_size=64, verbose=0)
    first, second = (m.get_weights()[0] for m in ens.members)
    assert not np.allclose(first, second)


def test_adversarial_loss_adds_the_fast_gradient_sign_perturbation(data):
    x, y = data[0][:32], data[1][:32]
    keras.utils.set_random_seed(3)
    member = _member()
    ens = ku.Ensemble.from_models([member], adversarial_epsilon=0.05)
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    feature_range = np.ptp(data[0], axis=0)
    ens.adversarial_step = tf.constant(0.05 * feature_range)
    total = float(ens.compute_loss(x, y, ens(x), training=True))

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        clean = tf.reduce_mean(ku.losses.gaussian_nll(y, member(xt)))
    direction = np.sign(tape.gradient(clean, xt).numpy())
    perturbed = x + 0.05 * feature_range * direction
    adversarial = tf.reduce_mean(ku.losses.gaussian_nll(y, member(perturbed)))
    np.testing.assert_allclose(total, float(clean + adversarial), rtol=1e-5)
    assert float(adversarial) > float(clean)
    # Without training (evaluation) the loss is the clean one.
    evaluation = float(ens.compute_loss(x, y, ens(x), training=False))
    np.testing.assert_allclose(evaluation, float(clean), rtol=1e-5)


def test_adversarial_fit_uses_the_training_range(data):
    ens = ku.Ensemble(_member, num_members=2, adversarial_epsilon=0.01)
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    history = ens.fit(*data, epochs=1, batch_size=64, verbose=0)
    np.testing.assert_allclose(
        ens.adversarial_step.numpy(), 0.01 * np.ptp(data[0], axis=0), rtol=1e-6
    )
    assert np.isfinite(history.history["loss"]).all()


def test_sampling_a_deterministic_ensemble_gives_one_sample_per_member(trained, data):
    ens, _, _ = trained
    x = data[0][:20]
    samples = ku.sample(ens, x, num_samples=7)
    assert samples.shape == (3, 20, 2)
    np.testing.assert_allclose(samples, ens(x).numpy().transpose(1, 0, 2), rtol=1e-5)
    prediction = ku.predict_regression(ens, x)
    mu, var = samples[..., :1].astype(np.float64), np.exp(samples[..., 1:])
    np.testing.assert_allclose(prediction.mean, mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.aleatoric_std**2, var.mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        prediction.epistemic_std**2, mu.var(0), rtol=1e-4, atol=1e-8
    )


@pytest.mark.parametrize("batch_size", [None, 8])
def test_ensemble_of_mc_dropout_members_gives_t_samples_each(data, batch_size):
    keras.utils.set_random_seed(4)
    ens = ku.Ensemble(lambda: _member(dropout_rate=0.3), num_members=2)
    x = data[0][:6]
    args = dict(num_samples=5, seed=0, batch_size=batch_size)
    samples = ku.sample(ens, x, **args)
    assert samples.shape == (10, 6, 2)
    # The first five samples come from member 0: all near member 0's own
    # MC samples, and they differ from one another.
    member_0 = ku.sample(ens.members[0], x, num_samples=200, seed=1)
    assert (
        np.abs(samples[:5].mean(0) - member_0.mean(0)).max()
        < np.abs(samples[5:].mean(0) - member_0.mean(0)).max() + 1.0
    )
    assert samples[:5].std(0).min() > 0
    prediction = ku.predict_regression(ens, x, **args)
    np.testing.assert_allclose(
        prediction.mean, samples[..., :1].mean(0), rtol=1e-5, atol=1e-6
    )


def test_classification_ensemble(data):
    x = data[0]
    labels = (x[:, 0] > 0).astype("int32")
    ens = ku.Ensemble(
        lambda: ku.models.mlp(
            8, 2, hidden_units=(8,), dropout_rate=0, output_activation="softmax"
        ),
        num_members=3,
    )
    ens.compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = ens.fit(x, labels, epochs=2, batch_size=64, verbose=0)
    assert "accuracy" in history.history
    prediction = ku.predict_classification(ens, x[:10], votes=True)
    assert prediction.votes.sum(-1).tolist() == [3] * 10
    np.testing.assert_allclose(prediction.probs, ens(x[:10]).numpy().mean(1), rtol=1e-5)


def test_save_and_load_round_trip(trained, data, tmp_path):
    ens, _, _ = trained
    path = tmp_path / "e.keras"
    ens.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ku.Ensemble)
    assert loaded.num_members == 3
    x = data[0][:16]
    np.testing.assert_allclose(loaded(x).numpy(), ens(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        ku.predict_regression(loaded, x).std,
        ku.predict_regression(ens, x).std,
        rtol=1e-6,
    )
    assert loaded.loss is ku.losses.gaussian_nll
    history = loaded.fit(*data, epochs=1, batch_size=64, verbose=0)
    assert "member_2_loss" in history.history


def test_keras_callbacks_see_member_losses(data):
    ens = ku.Ensemble(_member, num_members=2)
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_member_1_loss", mode="min", patience=0, min_delta=1e9
    )
    history = ens.fit(
        *data, epochs=5, validation_data=data, callbacks=[stopper], verbose=0
    )
    assert len(history.history["loss"]) == 2


def test_member_with_nan_loss_is_named(data):
    keras.utils.set_random_seed(5)
    good = _member()
    bad = _member()
    weights = bad.get_weights()
    weights[-1][:] = np.nan
    bad.set_weights(weights)
    ens = ku.Ensemble.from_models([good, bad])
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    with pytest.warns(RuntimeWarning, match=rf"member 1 \('{bad.name}'\)"):
        history = ens.fit(*data, epochs=3, batch_size=64, verbose=0)
    assert len(history.history["loss"]) == 1
    assert np.isfinite(history.history["member_0_loss"]).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(build_fn=_member, num_members=0),
            "`num_members`.*Received: num_members=0",
        ),
        (dict(build_fn=_member, num_members=2.5), "`num_members`"),
        (dict(build_fn=lambda: "model", num_members=2), "keras.Model.*Received: a str"),
        (dict(build_fn=None, num_members=2), "`build_fn`.*callable"),
        (dict(build_fn=_member, adversarial_epsilon=-1.0), "`adversarial_epsilon`"),
        (dict(build_fn=_member, num_members=2, pack="yes"), "`pack`.*pack='yes'"),
    ],
)
def test_bad_ensemble_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ku.Ensemble(**kwargs)


def test_bad_member_lists_are_rejected():
    with pytest.raises(ValueError, match=r"non-empty list.*Received: \[\]"):
        ku.Ensemble.from_models([])
    with pytest.raises(ValueError, match="member 1.*Received: Dense"):
        ku.Ensemble.from_models([_member(), keras.layers.Dense(2)])
    wider = ku.models.mlp(9, 2, hidden_units=(4,), dropout_rate=0)
    with pytest.raises(ValueError, match=r"same input and output shapes.*\(9,\)"):
        ku.Ensemble.from_models([_member(), wider])
    model = _member()
    with pytest.raises(ValueError, match="same model object twice"):
        ku.Ensemble(lambda: model, num_members=2)


def test_compile_requires_a_loss():
    with pytest.raises(ValueError, match="`loss`.*Received: loss=None"):
        ku.Ensemble(_member, num_members=2).compile("adam")


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras_uncertainty as ku
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = x[:, :1].copy()
    with strategy.scope():
        ens = ku.Ensemble(
            lambda: ku.models.mlp(8, 2, hidden_units=(8,), dropout_rate=0.1),
            num_members=2,
        )
        ens.compile("adam", loss=ku.losses.gaussian_nll)
    history = ens.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert ens.predict(x, verbose=0).shape == (128, 2)
    assert ens.predict(x, verbose=0, per_member=True).shape == (128, 2, 2)
    pred = ku.predict_regression(ens, x, num_samples=4)
    assert pred.mean.shape == (128, 1) and np.isfinite(pred.std).all()
    print("mirrored ok")
    """
)


@pytest.fixture(scope="module", autouse=True)
def mirrored_run(start_in_background):
    """The mirrored-strategy script, started with the module: it runs in its
    own process beside the module's other tests; its test waits for it."""
    return start_in_background(
        "test_fit_and_predict_under_mirrored_strategy_on_two_cpus",
        _MIRRORED_SCRIPT,
        dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"),
    )


@pytest.mark.slow
def test_fit_and_predict_under_mirrored_strategy_on_two_cpus(mirrored_run):
    result = mirrored_run.result(timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mirrored ok" in result.stdout


def _clones(*hidden_sizes):
    keras.utils.set_random_seed(6)
    originals = [_member(hidden=h) for h in hidden_sizes]
    copies = []
    for model in originals:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        copies.append(copy)
    return originals, copies


@pytest.mark.parametrize(
    "hidden_sizes, stacked", [((16, 16, 16), True), ((16, 8), False)]
)
def test_each_member_trains_as_it_would_alone(data, hidden_sizes, stacked):
    # Same-shaped members are packed (one variable per kind, member axis
    # first); members of different shapes keep their own variables. Either
    # way each member ends where plain Keras training on the same batches
    # takes it.
    alone, together = _clones(*hidden_sizes)
    for model in alone:
        model.compile(keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
        model.fit(*data, epochs=2, batch_size=32, shuffle=False, verbose=0)
    ens = ku.Ensemble.from_models(together)
    ens.compile(keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
    ens.fit(*data, epochs=2, batch_size=32, shuffle=False, verbose=0)
    assert ens.packed == stacked
    for reference, member in zip(alone, ens.members):
        for a, b in zip(reference.get_weights(), member.get_weights()):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_optimizer_state_survives_save_and_load(data, tmp_path):
    ens = ku.Ensemble(_member, num_members=2)
    ens.compile(keras.optimizers.Adam(1e-2), loss=ku.losses.gaussian_nll)
    ens.fit(*data, epochs=1, batch_size=64, verbose=0)
    ens.save(tmp_path / "e.keras")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = keras.models.load_model(tmp_path / "e.keras")
    assert int(loaded.optimizer.iterations.numpy()) == int(
        ens.optimizer.iterations.numpy()
    )
    for a, b in zip(ens.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # Continuing training from the loaded file matches continuing the original.
    ens.fit(*data, epochs=1, batch_size=64, shuffle=False, verbose=0)
    loaded.fit(*data, epochs=1, batch_size=64, shuffle=False, verbose=0)
    for a, b in zip(ens.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_members_that_do_not_pack_keep_their_own_variables(data):
    def conv_member():
        inputs = keras.Input((8,))
        x = keras.layers.Reshape((8, 1))(inputs)
        x = keras.layers.Conv1D(2, 3)(x)
        return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))

    ens = ku.Ensemble(conv_member, num_members=2)
    assert not ens.packed
    with pytest.raises(ValueError, match="pack"):
        ku.Ensemble(conv_member, num_members=2, pack=True)
    assert ku.Ensemble(_member, num_members=2).packed
    assert not ku.Ensemble(_member, num_members=2, pack=False).packed


def test_packed_ensemble_refuses_an_optimizer_it_would_not_follow_exactly():
    ens = ku.Ensemble(_member, num_members=2)
    with pytest.raises(ValueError, match="pack=False"):
        ens.compile(keras.optimizers.Adam(clipnorm=1.0), loss=ku.losses.gaussian_nll)
    per_member = ku.Ensemble(_member, num_members=2, pack=False)
    per_member.compile(keras.optimizers.Adam(clipnorm=1.0), loss=ku.losses.gaussian_nll)


def test_nan_stop_is_a_visible_callback_that_can_be_left_out(data):
    x, y = data
    bad = y.copy()
    bad[:] = np.nan
    ens = ku.Ensemble(_member, num_members=2)
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = ens.fit(
            x, bad, epochs=3, batch_size=64, verbose=0, terminate_on_nan=False
        )
    assert len(history.history["loss"]) == 3  # not stopped
    with pytest.warns(RuntimeWarning, match="member 0"):
        ens.fit(
            x,
            bad,
            epochs=3,
            batch_size=64,
            verbose=0,
            callbacks=[ku.ensemble.TerminateOnNonFiniteMember()],
            terminate_on_nan=False,
        )


@pytest.mark.parametrize("pack", [True, False])
def test_both_layouts_round_trip_and_give_members_their_weights(data, pack, tmp_path):
    keras.utils.set_random_seed(7)
    ens = ku.Ensemble(_member, num_members=2, pack=pack)
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    ens.fit(*data, epochs=1, batch_size=64, verbose=0)
    ens.save(tmp_path / "e.keras")
    loaded = keras.models.load_model(tmp_path / "e.keras")
    assert loaded.packed == pack
    x = data[0][:8]
    np.testing.assert_allclose(loaded(x).numpy(), ens(x).numpy(), rtol=1e-6)
    # Each member, used on its own, computes its slice of the ensemble.
    for m, member in enumerate(loaded.members):
        np.testing.assert_allclose(
            member(x).numpy(), loaded(x).numpy()[:, m], rtol=1e-5, atol=1e-6
        )


def test_the_same_model_twice_or_shared_weights_warn():
    model = _member()
    with pytest.warns(UserWarning, match="Members 0 and 1 .* are the same model"):
        ku.Ensemble.from_models([model, model])
    shared_dense = keras.layers.Dense(2)
    twins = []
    for _ in range(2):
        inputs = keras.Input((8,))
        twins.append(keras.Model(inputs, shared_dense(inputs)))
    with pytest.warns(UserWarning, match="share weights"):
        ku.Ensemble.from_models(twins)
    with pytest.raises(ValueError, match="`build_fn`.*the same model object"):
        ku.Ensemble(lambda: model, num_members=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ku.Ensemble.from_models([_member(), _member()])


def test_saving_to_h5_fails_before_writing_and_names_keras(trained, tmp_path):
    ens, _, _ = trained
    for name in ("ens.h5", "ens.hdf5"):
        with pytest.raises(ValueError, match=r"`\.keras`.*HDF5"):
            ens.save(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# predict and evaluate, as a Keras user reads them ---------------------------


def _members_predict(ens, x):
    """Each member's own `predict`, `(M, N, ...)`, in float64."""
    return np.stack([m.predict(x, verbose=0) for m in ens.members]).astype(np.float64)


def test_predict_of_a_probability_ensemble_is_the_mean_of_its_members(data):
    x = data[0][:50]
    keras.utils.set_random_seed(3)
    ens = ku.Ensemble(
        lambda: ku.models.mlp(
            8, 3, hidden_units=(8,), dropout_rate=0, output_activation="softmax"
        ),
        num_members=4,
    )
    ens.compile("adam", loss="sparse_categorical_crossentropy")
    prediction = ens.predict(x, batch_size=16, verbose=0)
    assert prediction.shape == (50, 3)  # one member's output shape, as Keras
    expected = _members_predict(ens, x).mean(0)
    np.testing.assert_allclose(prediction, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ens.predict_on_batch(x), expected, rtol=1e-5)
    probs = ku.predict_classification(ens, x, verbose=0).probs
    np.testing.assert_allclose(prediction, probs, rtol=1e-5, atol=1e-7)


def test_predict_of_a_gaussian_ensemble_is_the_moment_matched_mixture(trained, data):
    ens, _, _ = trained
    x = data[0][:40]
    prediction = ens.predict(x, verbose=0)
    assert prediction.shape == (40, 2)
    outputs = _members_predict(ens, x)
    mu, var = outputs[..., :1], np.exp(outputs[..., 1:])
    mean = mu.mean(0)
    total = var.mean(0) + ((mu - mean) ** 2).mean(0)  # the paper's 2.4
    np.testing.assert_allclose(prediction[:, :1], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(prediction[:, 1:]), total, rtol=1e-4)
    pred = ku.predict_regression(ens, x, verbose=0)
    np.testing.assert_allclose(np.exp(prediction[:, 1:]), pred.std**2, rtol=1e-4)


def test_predict_of_a_logits_ensemble_gives_logits_of_the_mean_probabilities(data):
    x = data[0][:30]
    keras.utils.set_random_seed(4)
    ens = ku.Ensemble(
        lambda: ku.models.mlp(8, 3, hidden_units=(8,), dropout_rate=0), num_members=3
    )
    ens.compile(
        "adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    logits = ens.predict(x, verbose=0)
    assert logits.shape == (30, 3)
    members = _members_predict(ens, x)
    probs = np.exp(members - members.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax, probs.mean(0), rtol=1e-5, atol=1e-7)


def test_predict_per_member_gives_every_members_output_with_one_trace_each(data):
    x = data[0][:20]
    keras.utils.set_random_seed(5)
    ens = ku.Ensemble(_member, num_members=3)
    ens.compile("adam", loss=ku.losses.gaussian_nll)
    each = ens.predict(x, verbose=0, per_member=True)
    assert each.shape == (20, 3, 2)
    np.testing.assert_allclose(
        each, _members_predict(ens, x).transpose(1, 0, 2), rtol=1e-5, atol=1e-6
    )
    per_member_function = ens.predict_function
    ens.predict(x, verbose=0)
    mixture_function = ens.predict_function
    assert mixture_function is not per_member_function
    ens.predict(x, verbose=0, per_member=True)
    assert ens.predict_function is per_member_function
    ens.predict(x, verbose=0)
    assert ens.predict_function is mixture_function
    samples = ku.sample(ens, x, verbose=0)  # member-major: (M, N, 2)
    np.testing.assert_allclose(samples.transpose(1, 0, 2), each, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`per_member`"):
        ens.predict(x, per_member="yes")


def test_evaluate_returns_a_scalar_loss_or_loss_and_metrics_as_keras_does(data):
    x, y = data[0][:64], (data[0][:64, 0] > 0).astype("int32")
    keras.utils.set_random_seed(6)

    def member():
        return ku.models.mlp(
            8, 2, hidden_units=(8,), dropout_rate=0, output_activation="softmax"
        )

    ens = ku.Ensemble(member, num_members=3)
    ens.compile("adam", loss="sparse_categorical_crossentropy")
    member_losses = []
    for model in ens.members:
        model.compile(loss="sparse_categorical_crossentropy")
        member_losses.append(model.evaluate(x, y, verbose=0))
    loss = ens.evaluate(x, y, batch_size=64, verbose=0)
    assert isinstance(loss, float)  # as Keras: a scalar without metrics
    np.testing.assert_allclose(loss, sum(member_losses), rtol=1e-5)

    ens.compile("adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    results = ens.evaluate(x, y, batch_size=64, verbose=0)
    assert isinstance(results, list) and len(results) == 2  # [loss, accuracy]
    mixture = _members_predict(ens, x).mean(0)
    np.testing.assert_allclose(results[0], sum(member_losses), rtol=1e-5)
    np.testing.assert_allclose(results[1], np.mean(mixture.argmax(-1) == y))
    logs = ens.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    for m, member_loss in enumerate(member_losses):
        np.testing.assert_allclose(logs[f"member_{m}_loss"], member_loss, rtol=1e-5)


def test_predict_with_per_member_inputs_keeps_each_members_own_rows(data):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(24, 3, 8)).astype("float32")  # member m reads x[:, m]
    keras.utils.set_random_seed(7)
    ens = ku.Ensemble(_member, num_members=3, per_member_inputs=True)
    ens.compile("adam", loss="mse")
    each = ens.predict(x, verbose=0)
    assert each.shape == (24, 3, 2)  # no common mixture: every member's output
    expected = np.stack(
        [m.predict(x[:, i], verbose=0) for i, m in enumerate(ens.members)], axis=1
    )
    np.testing.assert_allclose(each, expected, rtol=1e-5, atol=1e-6)
