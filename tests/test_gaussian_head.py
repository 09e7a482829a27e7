"""`ku.layers.GaussianHead` and its BatchEnsemble twin: the faithful (mean,
log-variance) output layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku


def _network(head, seed=0):
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, head(hidden))


def test_forward_values_are_those_of_a_dense_layer_with_the_same_weights():
    model = _network(ku.layers.GaussianHead(2))
    plain = _network(keras.layers.Dense(4))
    plain.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(model(x), plain(x), rtol=1e-6)


def test_the_variance_loss_trains_no_layer_below_the_head():
    model = _network(ku.layers.GaussianHead(1))
    x = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    with tf.GradientTape() as tape:
        log_var = model(x)[:, 1]
        loss = tf.reduce_sum(tf.square(log_var))
    hidden_kernel, hidden_bias, head_kernel, head_bias = tape.gradient(
        loss, model.trainable_variables
    )
    assert np.all(hidden_kernel.numpy() == 0) and np.all(hidden_bias.numpy() == 0)
    assert np.any(head_kernel.numpy()[:, 1] != 0) and head_bias.numpy()[1] != 0
    assert np.all(head_kernel.numpy()[:, 0] == 0)
    # The mean's loss trains every layer, as through a Dense layer.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x)[:, 0]))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(np.any(g.numpy() != 0) for g in grads[:2])
    # Without the stop the variance's loss reaches the hidden layer.
    plain = _network(ku.layers.GaussianHead(1, stop_variance_gradient=False))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(plain(x)[:, 1]))
    assert np.any(tape.gradient(loss, plain.trainable_variables)[0].numpy() != 0)


def test_the_head_declares_its_output_for_predict_regression():
    model = _network(ku.layers.GaussianHead(1))  # not compiled
    x = np.random.default_rng(2).normal(size=(6, 3)).astype("float32")
    prediction = ku.predict_regression(model, x, num_samples=2, verbose=0)
    outputs = model(x).numpy()
    np.testing.assert_allclose(prediction.mean[:, 0], outputs[:, 0], rtol=1e-5)
    np.testing.assert_allclose(
        prediction.aleatoric_std[:, 0], np.exp(0.5 * outputs[:, 1]), rtol=1e-5
    )


def test_an_ensemble_of_heads_packs_and_trains_as_its_members_alone():
    x = np.random.default_rng(3).normal(size=(32, 3)).astype("float32")
    y = x[:, :1] * 2.0

    def member():
        return _network(ku.layers.GaussianHead(1), seed=None)

    keras.utils.set_random_seed(4)
    ensemble = ku.Ensemble(member, num_members=3)
    assert ensemble.packed
    alone = [keras.models.clone_model(m) for m in ensemble.members]
    for m, original in zip(alone, ensemble.members):
        m.set_weights(original.get_weights())
    loss = ku.losses.GaussianNLL("faithful")
    ensemble.compile(keras.optimizers.SGD(0.1), loss=loss)
    ensemble.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for m in alone:
        m.compile(keras.optimizers.SGD(0.1), loss=loss)
        m.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for m, trained in zip(alone, ensemble.members):
        for a, b in zip(m.get_weights(), trained.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_round_trips_through_a_keras_file(tmp_path):
    model = _network(ku.layers.GaussianHead(2, stop_variance_gradient=False, name="h"))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    head = loaded.get_layer("h")
    assert isinstance(head, ku.layers.GaussianHead)
    assert (head.targets, head.stop_variance_gradient, head.units) == (2, False, 4)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"targets": 0}, "targets"),
        ({"targets": 1, "units": 2}, "units"),
        ({"targets": 1, "activation": "relu"}, "activation"),
    ],
)
def test_bad_arguments_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        ku.layers.GaussianHead(**kwargs)


def _batch_ensemble(head, seed=0):
    keras.utils.set_random_seed(seed)

    def network(m):
        inputs = keras.Input((3,))
        hidden = ku.layers.BatchEnsembleDense(8, m, activation="relu")(inputs)
        return keras.Model(inputs, head(m)(hidden))

    return ku.BatchEnsemble(network, num_members=4)


def test_batch_ensemble_head_forward_values_are_a_batch_ensemble_dense_layers():
    model = _batch_ensemble(lambda m: ku.layers.BatchEnsembleGaussianHead(2, m))
    plain = _batch_ensemble(lambda m: ku.layers.BatchEnsembleDense(4, m))
    x = np.random.default_rng(5).normal(size=(6, 3)).astype("float32")
    model(x), plain(x)
    plain.set_weights(model.get_weights())
    assert model(x).shape == (6, 4, 4)
    np.testing.assert_allclose(model(x), plain(x), rtol=1e-5, atol=1e-6)


def test_batch_ensemble_heads_variance_loss_trains_only_its_own_columns():
    model = _batch_ensemble(lambda m: ku.layers.BatchEnsembleGaussianHead(1, m))
    x = np.random.default_rng(6).normal(size=(8, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x)[..., 1]))
    all_grads = tape.gradient(loss, model.trainable_variables)
    names = [v.path.split("/")[-1] for v in model.trainable_variables]
    grads = dict(zip(names[4:], all_grads[4:]))
    below = all_grads[:4]
    # Nothing below the head, and not the input fast weights r it shares
    # with the means; the log-variance columns of W, s and b only.
    assert all(np.all(g.numpy() == 0) for g in below)
    assert np.all(grads["r"].numpy() == 0)
    for name in ("kernel", "s", "bias"):
        g = grads[name].numpy()
        assert np.all(g[..., 0] == 0) and np.any(g[..., 1] != 0), name
    # The means' loss trains the layers below, as a BatchEnsembleDense's.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x)[..., 0]))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(np.any(g.numpy() != 0) for g in grads[:4])


def test_predict_regression_reads_a_batch_ensemble_head_uncompiled():
    model = _batch_ensemble(lambda m: ku.layers.BatchEnsembleGaussianHead(1, m))
    x = np.random.default_rng(7).normal(size=(5, 3)).astype("float32")
    outputs = model(x).numpy()  # (N, M, 2)
    prediction = ku.predict_regression(model, x, verbose=0)
    np.testing.assert_allclose(
        prediction.mean[:, 0], outputs[..., 0].mean(axis=1), rtol=1e-5, atol=1e-6
    )
    # The aleatoric variance: the mean of the members' exp(log-variance).
    np.testing.assert_allclose(
        prediction.aleatoric_std[:, 0] ** 2,
        np.exp(outputs[..., 1]).mean(axis=1),
        rtol=1e-4,
    )


def test_batch_ensemble_head_round_trips_through_a_keras_file(tmp_path):
    model = _batch_ensemble(
        lambda m: ku.layers.BatchEnsembleGaussianHead(1, m, name="head")
    )
    x = np.ones((2, 3), "float32")
    expected = model(x)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(x), expected, rtol=1e-6)
    head = [
        layer
        for layer in loaded.network.layers
        if isinstance(layer, ku.layers.BatchEnsembleGaussianHead)
    ][0]
    assert (head.targets, head.num_members, head.stop_variance_gradient) == (1, 4, True)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"targets": 0, "num_members": 2}, "targets"),
        ({"targets": 1, "num_members": 2, "units": 2}, "units"),
        ({"targets": 1, "num_members": 2, "activation": "relu"}, "activation"),
    ],
)
def test_batch_ensemble_head_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        ku.layers.BatchEnsembleGaussianHead(**kwargs)
