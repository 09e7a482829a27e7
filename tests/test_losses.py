import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku


def _numpy_nll(y, mu, log_var):
    return 0.5 * (log_var + (y - mu) ** 2 / np.exp(log_var))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(6, 3)).astype("float32")
    y_pred = rng.normal(size=(6, 6)).astype("float32")
    return y, y_pred


def test_gaussian_nll_matches_formula_per_example(batch):
    y, y_pred = batch
    loss = keras.ops.convert_to_numpy(ku.losses.gaussian_nll(y, y_pred))
    expected = _numpy_nll(y, y_pred[:, :3], y_pred[:, 3:]).mean(axis=-1)
    assert loss.shape == (6,)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_single_target_accepts_flat_labels():
    y = np.array([0.5, -1.0], dtype="float32")
    y_pred = np.array([[0.0, 0.2], [1.0, -0.3]], dtype="float32")
    loss = keras.ops.convert_to_numpy(ku.losses.gaussian_nll(y, y_pred))
    np.testing.assert_allclose(
        loss, _numpy_nll(y, y_pred[:, 0], y_pred[:, 1]), rtol=1e-6
    )


def test_include_constant_gives_the_exact_negative_log_density(batch):
    scipy_stats = pytest.importorskip("scipy.stats")
    y, y_pred = batch
    loss = ku.losses.GaussianNLL("nll", include_constant=True, reduction=None)(
        y, y_pred
    )
    std = np.exp(0.5 * y_pred[:, 3:])
    reference = -scipy_stats.norm.logpdf(y, loc=y_pred[:, :3], scale=std).mean(-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), reference, rtol=1e-5)


def test_beta_nll_scales_gradients_by_detached_variance(batch):
    y, y_pred = batch
    beta = 0.5
    pred = tf.Variable(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        plain = tf.reduce_sum(ku.losses.GaussianNLL("nll", reduction=None)(y, pred))
        weighted = tf.reduce_sum(
            ku.losses.GaussianNLL(beta=beta, reduction=None)(y, pred)
        )
    weight = np.exp(beta * y_pred[:, 3:])
    g_plain = tape.gradient(plain, pred).numpy()
    g_weighted = tape.gradient(weighted, pred).numpy()
    np.testing.assert_allclose(g_weighted[:, :3], g_plain[:, :3] * weight, rtol=1e-4)
    np.testing.assert_allclose(g_weighted[:, 3:], g_plain[:, 3:] * weight, rtol=1e-4)
    values = ku.losses.GaussianNLL(beta=beta, reduction=None)(y, y_pred)
    expected = (_numpy_nll(y, y_pred[:, :3], y_pred[:, 3:]) * weight).mean(-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(values), expected, rtol=1e-5)


def test_faithful_objective_reads_as_the_nll_and_trains_the_mean_by_squared_error(
    batch,
):
    # Stirn et al. (2023): d/dmu = -(y - mu), as under a unit variance; d/ds
    # the NLL's 0.5 * (1 - (y - mu)^2 exp(-s)); each over the k = 3 targets.
    y, y_pred = batch
    loss = ku.losses.GaussianNLL("faithful", reduction=None)
    assert loss.beta == 0.0
    pred = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        values = loss(y, pred)
        total = tf.reduce_sum(values)
    grad = tape.gradient(total, pred).numpy()
    mean, log_var = y_pred[:, :3], y_pred[:, 3:]
    np.testing.assert_allclose(
        values.numpy(), _numpy_nll(y, mean, log_var).mean(-1), rtol=1e-5
    )
    np.testing.assert_allclose(grad[:, :3], -(y - mean) / 3, rtol=1e-5, atol=1e-7)
    expected = 0.5 * (1 - (y - mean) ** 2 * np.exp(-log_var)) / 3
    np.testing.assert_allclose(grad[:, 3:], expected, rtol=1e-4, atol=1e-7)


def test_faithful_mean_fits_what_a_homoscedastic_network_fits():
    # A plain NLL can buy a bad mean with a big variance; the faithful mean is
    # the least-squares one whatever the variance head does.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (512, 1)).astype("float32")
    y = (3 * x[:, 0] + rng.normal(0, 0.1 + 2 * (x[:, 0] > 0.5), 512)).astype(
        "float32"
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.05), loss=ku.losses.GaussianNLL("faithful"))
    full_batches = tf.data.Dataset.from_tensors((x, y)).repeat(400)
    model.fit(full_batches, epochs=1, shuffle=False, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    slope, intercept = kernel[0, 0], bias[0]
    reference = np.polyfit(x[:, 0], y, 1)
    np.testing.assert_allclose([slope, intercept], reference, atol=0.05)


def test_default_is_faithful_beta_chooses_nll_and_is_refused_with_faithful():
    default = ku.losses.GaussianNLL()
    assert (default.objective, default.beta) == ("faithful", 0.0)
    assert ku.losses.GaussianNLL(beta=0.5).objective == "nll"
    assert (ku.losses.GaussianNLL("nll").beta) == 0.0
    with pytest.raises(ValueError, match="`beta`.*objective='faithful'"):
        ku.losses.GaussianNLL("faithful", beta=0.5)


def test_min_log_var_floors_the_variance():
    y = np.zeros((1, 1), "float32")
    y_pred = np.array([[1.0, -20.0]], "float32")
    loss = ku.losses.GaussianNLL("nll", min_log_var=-2.0, reduction=None)(y, y_pred)
    expected = 0.5 * (-2.0 + 1.0 / math.exp(-2.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), [expected], rtol=1e-6)


def test_odd_prediction_width_is_rejected():
    with pytest.raises(ValueError, match=r"2\*k.*last dimension 3 is odd"):
        ku.losses.gaussian_nll(np.zeros((2, 1)), np.zeros((2, 3), "float32"))


def test_prediction_width_must_match_targets():
    with pytest.raises(ValueError, match=r"y_true with shape \(2, 3\)"):
        ku.losses.gaussian_nll(np.zeros((2, 3)), np.zeros((2, 4), "float32"))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"beta": -0.1}, "beta"),
        ({"beta": 2}, "beta"),
        ({"min_log_var": float("nan")}, "min_log_var"),
        ({"objective": "mse"}, "objective"),
        ({"objective": 0.5}, "objective"),
    ],
)
def test_bad_loss_arguments_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        ku.losses.GaussianNLL(**kwargs)


def test_loss_trains_in_compile_and_survives_save(tmp_path, regression_data):
    x, y = regression_data
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    model.compile("adam", loss=ku.losses.gaussian_nll)
    history = model.fit(x, y, epochs=2, batch_size=128, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.loss is ku.losses.gaussian_nll
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )


def test_loss_config_round_trip():
    loss = ku.losses.GaussianNLL(beta=0.5, min_log_var=-7.0, include_constant=True)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, ku.losses.GaussianNLL)
    assert (
        restored.objective,
        restored.beta,
        restored.min_log_var,
        restored.include_constant,
    ) == ("nll", 0.5, -7.0, True)
    faithful = keras.losses.deserialize(
        keras.losses.serialize(ku.losses.GaussianNLL("faithful", min_log_var=-3.0))
    )
    assert (faithful.objective, faithful.min_log_var) == ("faithful", -3.0)


def test_loss_and_gradients_are_finite_for_every_finite_log_variance():
    log_vars = np.array(
        [-1e30, -1e4, -150.0, -100.0, -88.0, -80.0, -10.0, 0.0, 50.0, 1e4]
    )
    residuals = np.array([0.0, 1e-3, 1.0, 1e3])
    s, r = (a.ravel() for a in np.meshgrid(log_vars, residuals))
    y_true = tf.constant(r[:, None], tf.float32)
    y_pred = tf.Variable(np.stack([np.zeros_like(s), s], -1), dtype=tf.float32)
    for loss_fn, beta in (
        (ku.losses.gaussian_nll, 0.0),
        (ku.losses.GaussianNLL("nll", reduction=None), 0.0),
        (ku.losses.GaussianNLL(beta=0.5, reduction=None), 0.5),
        (ku.losses.GaussianNLL(reduction=None), 0.0),  # faithful, the default
    ):
        with tf.GradientTape() as tape:
            loss = loss_fn(y_true, y_pred)
        grad = tape.gradient(loss, y_pred).numpy()
        assert np.all(np.isfinite(loss.numpy())), loss.numpy()
        assert np.all(np.isfinite(grad)), grad
        # Where the seed's formula is comfortably finite, it is the value.
        with np.errstate(over="ignore"):
            scaled = r**2 * np.exp(np.minimum(-s, 700))
        exact = (s >= -80) & (scaled <= np.exp(80))
        expected = 0.5 * (s + scaled) * np.exp(np.minimum(beta * s, 20.0))
        np.testing.assert_allclose(loss.numpy()[exact], expected[exact], rtol=1e-5)
        # Below the threshold the loss keeps growing as the variance shrinks,
        # and the gradient asks for a larger variance.
        mask = (r == 1.0) & (s <= -100) & (s >= -150)
        assert np.all(grad[mask, 1] < 0)
