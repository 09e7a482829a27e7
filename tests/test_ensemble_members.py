"""`ku.Ensemble` with per-member inputs, targets and row masks, against plain
Keras: every member makes exactly the updates it makes trained alone on its
own rows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.ensemble import adversarial, training

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels

NUM_INPUTS = 3
BATCH = 8
# Member m trains on ROWS[m] rows; the shorter ones are padded with masked rows.
ROWS = (24, 24, 20)


def _member(decay, normalization=None, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((NUM_INPUTS,))
    h = inputs
    if normalization is not None:
        mean, variance = normalization
        h = keras.layers.Normalization(mean=mean, variance=variance)(h)
    regularizer = keras.regularizers.L2(decay) if decay else None
    h = keras.layers.Dense(5, activation="relu", kernel_regularizer=regularizer)(h)
    outputs = keras.layers.Dense(1, kernel_regularizer=regularizer)(h)
    return keras.Model(inputs, outputs)


def _copy(model):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


@pytest.fixture(scope="module")
def rows():
    """Each member's own rows, and the padded `(N, M, ...)` arrays."""
    rng = np.random.default_rng(0)
    own = []
    for m, count in enumerate(ROWS):
        x = rng.normal(loc=0.5 * m, scale=1 + 0.5 * m, size=(count, NUM_INPUTS))
        y = x @ rng.normal(size=(NUM_INPUTS, 1)) + 0.1 * rng.normal(size=(count, 1))
        own.append((x.astype("float32"), y.astype("float32")))
    n = max(ROWS)
    x = np.stack([np.resize(xm, (n, NUM_INPUTS)) for xm, _ in own], axis=1)
    y = np.stack([np.resize(ym, (n, 1)) for _, ym in own], axis=1)
    mask = np.stack([np.arange(n) < count for count in ROWS], axis=1)
    return own, x, y, mask.astype("float32")


def _statistics(own):
    return [(xm.mean(0), xm.var(0)) for xm, _ in own]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pack", [None, False])
def test_each_member_trains_on_its_own_rows_as_it_would_alone(rows, normalize, pack):
    own, x, y, mask = rows
    statistics = _statistics(own) if normalize else [None] * len(ROWS)
    decays = (1e-2, 0.0, 3e-2)
    alone = [
        _member(decay, stats, seed=m)
        for m, (decay, stats) in enumerate(zip(decays, statistics))
    ]
    together = [_copy(model) for model in alone]
    for model, (xm, ym) in zip(alone, own):
        model.compile(keras.optimizers.SGD(0.02), loss="mse")
        model.fit(xm, ym, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    ens = ku.Ensemble.from_models(
        together, per_member_inputs=True, weighted_mean=True, pack=pack
    )
    assert ens.per_member_inputs and ens.weighted_mean
    assert ens.packed == (pack is None)  # Normalization packs too
    ens.compile(keras.optimizers.SGD(0.02), loss="mse")
    ens.fit(
        x, y, sample_weight=mask, batch_size=BATCH, epochs=3, shuffle=False, verbose=0
    )
    for reference, member in zip(alone, ens.members):
        for a, b in zip(reference.get_weights(), member.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # The call gives member m column m of the inputs.
    outputs = ens(x[:5]).numpy()
    assert outputs.shape == (5, len(ROWS), 1)
    for m, reference in enumerate(alone):
        np.testing.assert_allclose(
            outputs[:, m], reference(x[:5, m]).numpy(), rtol=1e-5, atol=1e-6
        )


def test_members_with_their_own_normalization_pack(rows):
    """Members that differ in their Normalization statistics pack, each
    member standardizing with its own."""
    own = rows[0]
    members = [_member(0.0, stats) for stats in _statistics(own)]
    ens = ku.Ensemble.from_models(members, per_member_inputs=True)
    assert ens.packed
    x = rows[1][:4]
    expected = np.stack([m(x[:, i]).numpy() for i, m in enumerate(members)], 1)
    np.testing.assert_allclose(ens(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_weighted_mean_is_each_members_mean_over_its_own_rows():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(6, 2, 1)).astype("float32")
    pred = rng.normal(size=(6, 2, 1)).astype("float32")
    weight = np.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 0], [1, 0]], "float32")
    loss = training.as_loss_object("mse")
    losses = training.member_losses(
        loss, target, pred, weight, per_member_targets=True, weighted_mean=True
    ).numpy()
    squared = (target - pred)[..., 0] ** 2
    expected = [squared[weight[:, m] == 1, m].mean() for m in range(2)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    # Keras's own name for the reduction gives the same (where Keras has it:
    # the oldest supported Keras, 3.3, does not).
    try:
        by_reduction = keras.losses.MeanSquaredError(
            reduction="mean_with_sample_weight"
        )
    except ValueError:
        by_reduction = None
    if by_reduction is not None:
        np.testing.assert_allclose(
            training.member_losses(
                by_reduction, target, pred, weight, per_member_targets=True
            ).numpy(),
            expected,
            rtol=1e-5,
        )
    # Without it, Keras's default: the weighted sum over the batch size.
    default = training.member_losses(
        loss, target, pred, weight, per_member_targets=True
    ).numpy()
    np.testing.assert_allclose(
        default, (squared * weight).sum(0) / len(weight), rtol=1e-5
    )
    # A member with no row in the batch has loss 0, not NaN.
    empty = training.member_losses(
        loss, target, pred, weight * [1, 0], per_member_targets=True, weighted_mean=True
    ).numpy()
    assert empty[1] == 0.0 and np.isclose(empty[0], expected[0], rtol=1e-5)


def test_bootstrap_counts_multiply_per_member_row_masks():
    rng = np.random.default_rng(0)
    mask = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], "float32")
    counts = training.bootstrap_counts(rng, 4, 2, mask)
    plain = training.bootstrap_counts(np.random.default_rng(0), 4, 2)
    np.testing.assert_array_equal(counts, plain * mask)
    shared = training.bootstrap_counts(np.random.default_rng(0), 4, 2, np.arange(4))
    np.testing.assert_array_equal(shared, plain * np.arange(4)[:, None])


def test_per_member_feature_range_is_over_each_members_own_rows(rows):
    _, x, _, mask = rows
    step = adversarial.feature_range_step(x, 0.01, mask, per_member_inputs=True)
    assert step.shape == (len(ROWS), 1, NUM_INPUTS)
    for m, count in enumerate(ROWS):
        np.testing.assert_allclose(
            step[m, 0], 0.01 * np.ptp(x[:count, m], axis=0), rtol=1e-6
        )


def _hand_written_fgsm_step(model, x, y, epsilon, feature_range, learning_rate):
    """One SGD step of a network alone on `x`: MSE on the batch plus MSE on
    its fast-gradient-sign perturbation, plus its L2."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        clean = tf.reduce_mean(tf.square(model(xt) - y))
    direction = tf.sign(tape.gradient(clean, xt))
    perturbed = x + epsilon * feature_range * direction
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(xt) - y))
        loss += tf.reduce_mean(tf.square(model(perturbed) - y))
        loss += tf.add_n(model.losses) if model.losses else 0.0
    gradients = tape.gradient(loss, model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, gradients):
        variable.assign_sub(learning_rate * gradient)


@pytest.mark.parametrize("from_dataset", [False, True])
def test_adversarial_step_is_each_members_own_fast_gradient_sign_step(
    rows, from_dataset
):
    own, x, y, mask = rows
    epsilon, learning_rate = 0.05, 0.1
    alone = [_member(1e-2, seed=m) for m in range(len(ROWS))]
    together = [_copy(model) for model in alone]
    ens = ku.Ensemble.from_models(
        together,
        per_member_inputs=True,
        weighted_mean=True,
        adversarial_epsilon=epsilon,
    )
    ens.compile(keras.optimizers.SGD(learning_rate), loss="mse")
    ranges = np.stack([np.ptp(xm, axis=0) for xm, _ in own])
    n = len(x)
    if from_dataset:  # a stream: the range comes with the fit
        data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(n)
        ens.fit(data, epochs=1, verbose=0, feature_range=ranges)
    else:  # arrays: the range of each member's own rows
        ens.fit(x, y, sample_weight=mask, batch_size=n, shuffle=False, verbose=0)
    np.testing.assert_allclose(
        ens.adversarial_step.numpy()[:, 0], epsilon * ranges, rtol=1e-6
    )
    for m, (model, (xm, ym)) in enumerate(zip(alone, own)):
        _hand_written_fgsm_step(model, xm, ym, epsilon, ranges[m], learning_rate)
        for a, b in zip(model.get_weights(), ens.members[m].get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_feature_range_needs_adversarial_training_and_one_range_per_member(rows):
    _, x, y, mask = rows
    ens = ku.Ensemble.from_models(
        [_member(0.0, seed=m) for m in range(3)], per_member_inputs=True
    )
    ens.compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="`feature_range`"):
        ens.fit(x, y, sample_weight=mask, feature_range=np.ones((3, NUM_INPUTS)))
    adv = ku.Ensemble.from_models(
        [_member(0.0, seed=m) for m in range(3)],
        per_member_inputs=True,
        adversarial_epsilon=0.01,
    )
    adv.compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="one range per member"):
        adv.fit(x, y, feature_range=np.ones(NUM_INPUTS), verbose=0)


def test_metrics_are_over_each_members_own_rows(rows):
    _, x, y, mask = rows
    ens = ku.Ensemble.from_models(
        [_member(0.0, seed=m) for m in range(3)],
        per_member_inputs=True,
        weighted_mean=True,
    )
    # Keras's `weighted_metrics` see the row masks; `metrics` do not.
    ens.compile(
        keras.optimizers.SGD(0.0),
        loss="mse",
        metrics=["mse"],
        weighted_metrics=["mae"],
    )
    logs = ens.evaluate(
        x, y, sample_weight=mask, batch_size=len(x), verbose=0, return_dict=True
    )
    errors = (ens(x).numpy() - y)[..., 0]
    np.testing.assert_allclose(
        logs["mae"], (np.abs(errors) * mask).sum() / mask.sum(), rtol=1e-5
    )
    np.testing.assert_allclose(logs["mse"], (errors**2).mean(), rtol=1e-5)
    squared = ((ens(x).numpy() - y)[..., 0]) ** 2
    for m in range(3):
        np.testing.assert_allclose(
            logs[f"member_{m}_loss"], squared[mask[:, m] > 0, m].mean(), rtol=1e-5
        )


def test_per_member_options_round_trip(rows, tmp_path):
    own, x, _, _ = rows
    members = [_member(0.0, stats) for stats in _statistics(own)]
    ens = ku.Ensemble.from_models(members, per_member_inputs=True, weighted_mean=True)
    ens.compile("adam", loss="mse")
    path = tmp_path / "members.keras"
    ens.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.per_member_inputs and loaded.weighted_mean
    np.testing.assert_allclose(loaded(x[:4]).numpy(), ens(x[:4]).numpy(), rtol=1e-6)


def test_member_logs_can_be_left_out(rows):
    _, x, y, mask = rows
    ens = ku.Ensemble.from_models(
        [_member(0.0, seed=m) for m in range(3)],
        per_member_inputs=True,
        member_logs=False,
    )
    ens.compile("sgd", loss="mse")
    history = ens.fit(x, y, sample_weight=mask, batch_size=8, verbose=0)
    assert sorted(history.history) == ["loss"]
    assert ens.get_config()["member_logs"] is False
