"""Requests that cannot work are refused, and numbers at the edges stay right:
dropout rates the 16-bit mask cannot represent, samples and exports too large
for memory, non-finite inputs to a served model, metrics at extreme std and y,
underflowing aleatoric std, and temperature scaling on all-right predictions."""

import json
import math
import warnings
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku
from keras_uncertainty.calibration import TemperatureScaling
from keras_uncertainty.layers import PackedDropout

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 60


def _mlp(width=8, outputs=2, activation=None, rate=0.5):
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(width, activation="relu"),
            ku.layers.MCDropout(rate),
            keras.layers.Dense(outputs, activation=activation),
        ]
    )


# Dropout rates -------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.999995, 0.99999999])
def test_dropout_rate_that_keeps_no_16_bit_level_is_refused(rate):
    for make in (
        lambda: ku.layers.MCDropout(rate),
        lambda: ku.layers.MCSpatialDropout1D(rate),
        lambda: PackedDropout([0.1, rate]),
        lambda: PackedDropout(rate, num_members=2),
    ):
        with pytest.raises(ValueError, match=r"at most 0\.99998 .*65536"):
            make()


def test_largest_representable_rate_keeps_outputs_finite():
    layer = ku.layers.MCDropout(0.99998)
    out = layer(np.ones((64, 256), "float32")).numpy()
    assert np.all(np.isfinite(out))
    packed = PackedDropout([0.99998, 0.5])
    out = packed(np.ones((2, 16, 256), "float32")).numpy()
    assert np.all(np.isfinite(out))


def test_crafted_config_with_unrepresentable_rate_is_refused_on_load(tmp_path):
    # Keras wraps an error of `__init__` during deserialization in a TypeError.
    config = PackedDropout([0.5, 0.5]).get_config()
    config["rates"] = [0.5, 0.999995]
    with pytest.raises((TypeError, ValueError), match="at most 0.99998"):
        PackedDropout.from_config(config)
    model = keras.Sequential([keras.Input((4,)), ku.layers.MCDropout(0.5)])
    path = str(tmp_path / "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    text = files["config.json"].decode()
    files["config.json"] = text.replace('"rate": 0.5', '"rate": 0.999995').encode()
    assert json.loads(files["config.json"])
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises((TypeError, ValueError), match="at most 0.99998"):
        keras.models.load_model(path)


def test_mc_recurrent_dropout_rates_are_bounded_too():
    with pytest.raises(ValueError, match="`recurrent_dropout`.*at most 0.99998"):
        ku.layers.MCLSTM(4, recurrent_dropout=0.999995)


# Sizes of samples and exports ----------------------------------------------


def test_sample_whose_result_exceeds_the_bound_is_refused_before_work():
    model = _mlp()
    x = np.zeros((10, 3), "float32")
    with pytest.raises(ValueError, match=r"80 GB.*at most 2 inputs") as info:
        ku.sample(model, x, num_samples=10**9)
    assert "16 GiB" in str(info.value)
    # A request within the bound still runs.
    assert ku.sample(model, x, num_samples=3, seed=0).shape == (3, 10, 2)


def test_export_whose_serve_call_cannot_fit_one_row_is_refused(tmp_path):
    model = _mlp(width=64)
    with pytest.raises(ValueError, match=r"GB per input row.*num_samples <= \d+"):
        ku.export(
            model,
            str(tmp_path / "big"),
            "regression",
            num_samples=10**8,
            variance_head=False,
        )
    assert not (tmp_path / "big").exists()


def test_a_serve_call_too_large_for_the_bound_fails_clearly(tmp_path, monkeypatch):
    import importlib

    export_module = importlib.import_module("keras_uncertainty.serving.export")
    model = _mlp()
    # A bound of 1 MiB stands for 16 GiB: 1000 samples of a row (21 floats
    # each) fit, 100 rows do not.
    monkeypatch.setattr(export_module, "MAX_RESULT_BYTES", 1 << 20)
    path = ku.export(
        model,
        str(tmp_path / "bounded"),
        "regression",
        num_samples=1000,
        variance_head=False,
    )
    served = tf.saved_model.load(path)
    seed = tf.constant(0, tf.int64)
    assert served.serve_seeded(np.zeros((1, 3), "float32"), seed)["mean"].shape == (
        1,
        2,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most \d+ rows"):
        served.serve_seeded(np.zeros((100, 3), "float32"), seed)
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller calls"):
        served.serve(np.zeros((100, 3), "float32"))


def test_served_model_returns_nan_for_rows_with_non_finite_inputs(tmp_path):
    keras.utils.set_random_seed(0)
    model = _mlp(activation="softmax", outputs=3)
    path = ku.export(
        model, str(tmp_path / "served"), "classification", num_samples=16, votes=True
    )
    served = tf.saved_model.load(path)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    seed = tf.constant(7, tf.int64)
    clean = served.serve_seeded(x[:4], seed)
    for bad in (np.nan, np.inf):
        dirty = x.copy()
        dirty[4, 1] = bad
        out = served.serve_seeded(dirty, seed)
        for key, value in out.items():
            value = value.numpy()
            np.testing.assert_array_equal(value[:4], clean[key].numpy(), err_msg=key)
            if value.dtype.kind == "f":
                assert np.all(np.isnan(value[4])), key
            else:
                assert np.all(value[4] == 0), key
    regression = _mlp(outputs=1)
    path = ku.export(
        regression,
        str(tmp_path / "reg"),
        "regression",
        num_samples=8,
        variance_head=False,
    )
    served = tf.saved_model.load(path)
    out = served.serve(np.array([[0, 0, 0], [np.nan, 0, 0]], "float32"))
    assert np.isfinite(out["mean"].numpy()[0]).all()
    assert (
        np.isnan(out["mean"].numpy()[1]).all() and np.isnan(out["std"].numpy()[1]).all()
    )


# Metrics at extreme std and y -----------------------------------------------

_MP = mpmath.mpf


def _ref_crps(y, mu, sigma):
    y, mu, sigma = _MP(y), _MP(mu), _MP(sigma)
    z = (y - mu) / sigma
    if abs(z) > 10**50:  # mpmath's erfc overflows; phi = 0, Phi = 0 or 1 exactly enough
        phi, cdf = 0, (1 if z > 0 else 0)
    else:
        phi, cdf = mpmath.npdf(z), mpmath.ncdf(z)
    return sigma * (z * (2 * cdf - 1) + 2 * phi - 1 / mpmath.sqrt(mpmath.pi))


def _ref_nll(y, mu, sigma):
    y, mu, sigma = _MP(y), _MP(mu), _MP(sigma)
    return (
        mpmath.log(sigma) + mpmath.log(2 * mpmath.pi) / 2 + ((y - mu) / sigma) ** 2 / 2
    )


def _ref_mixture_nll(y, mus, sigmas):
    y = _MP(y)
    terms = [
        -mpmath.log(_MP(s))
        - mpmath.log(2 * mpmath.pi) / 2
        - ((y - _MP(m)) / _MP(s)) ** 2 / 2
        for m, s in zip(mus, sigmas)
    ]
    peak = max(terms)
    return -(peak + mpmath.log(sum(mpmath.exp(t - peak) for t in terms) / len(terms)))


_YS = [0.0, 1e-300, 1.0, -3.5, 1e10, 1e200, -1e300, 1.7e308]
_STDS = [5e-324, 1e-300, 1e-200, 1e-8, 1.0, 1e10, 1e200, 1e300]
_MEANS = [0.0, -1.7e308]


def _close(value, reference, name):
    """float64 `value` against a high-precision reference: the same infinity,
    or a relative error below 1e-9 (1e-9 absolute near 0)."""
    if mpmath.isinf(reference) or abs(reference) > _MP("1.7976931348623157e308"):
        assert math.isinf(value) and (value > 0) == (reference > 0), (name, value)
        return
    assert math.isfinite(value), (name, value, reference)
    reference = float(reference)
    assert abs(value - reference) <= 1e-9 * max(abs(reference), 1e-300), (
        name,
        value,
        reference,
    )


def test_crps_and_nll_match_high_precision_on_a_grid_of_extremes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow / invalid warnings
        for y in _YS:
            for mu in _MEANS:
                for sigma in _STDS:
                    case = (y, mu, sigma)
                    crps = ku.metrics.crps_gaussian([y], [mu], [sigma])
                    _close(crps, _ref_crps(*case), ("crps", case))
                    nll = ku.metrics.gaussian_nll([y], [mu], [sigma])
                    _close(nll, _ref_nll(*case), ("nll", case))


def test_crps_at_tiny_std_is_the_absolute_error():
    # The case of the report: std 1e-200 gave NaN; the true value is |y - mu|.
    assert ku.metrics.crps_gaussian([1.0], [0.0], [1e-200]) == pytest.approx(1.0)
    assert ku.metrics.crps_gaussian([3.0, -2.0], [0.0, 0.0], [1e-200, 1e-300]) == (
        pytest.approx(2.5)
    )


def test_mixture_nll_matches_high_precision_on_a_grid_of_extremes():
    mus = np.array([[0.0], [1.0], [-2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y in _YS:
            for scale in _STDS:
                sigmas = np.array(
                    [[scale], [2 * scale if scale < 1e300 else scale], [scale]]
                )
                value = ku.metrics.mixture_nll(
                    np.array([y]), mus[:, None, :], sigmas[:, None, :]
                )
                reference = _ref_mixture_nll(y, mus[:, 0], sigmas[:, 0])
                _close(value, reference, ("mixture_nll", y, scale))
    # The report's case: y = 1e200 against unit Gaussians is +inf, not NaN.
    assert ku.metrics.mixture_nll(
        np.array([1e200]), np.zeros((3, 1)), np.ones((3, 1))
    ) == (math.inf)


def test_other_regression_metrics_stay_finite_or_correctly_infinite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # RMSE of errors whose squares overflow float64.
        assert ku.metrics.rmse([1e200, -1e200], [0.0, 0.0]) == pytest.approx(1e200)
        assert ku.metrics.rmse([1e308, 1e308], [-1e308, -1e308]) == math.inf
        # Means of values whose sum overflows.
        assert ku.metrics.crps_gaussian(
            [1e308, 1e308], [0.0, 0.0], [1e-300, 1e-300]
        ) == (pytest.approx(1e308))
        # y - mean overflows but z does not: the NLL is finite.
        nll = ku.metrics.gaussian_nll([1e308], [-1e308], [1e300])
        assert nll == pytest.approx(float(_ref_nll(1e308, -1e308, 1e300)), rel=1e-12)
        assert ku.metrics.interval_score([1e308], [-1e308], [1.0]) == math.inf
        coverage, width = ku.metrics.interval_coverage([1.0], [0.0], [1e-300])
        assert coverage == 0.0 and width == pytest.approx(2 * 1.959963984540054e-300)
        expected, observed = ku.metrics.regression_calibration_curve(
            [1e308, 0.0], [-1e308, 0.0], [1e300, 5e-324]
        )
        assert np.all(np.isfinite(observed)) and observed[-1] == 1.0


# Aleatoric std underflow and temperature scaling ------------------------------


def _variance_head_model(log_var):
    inputs = keras.Input((2,))
    hidden = ku.layers.MCDropout(0.1)(inputs)
    out = keras.layers.Dense(
        2,
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant([0.5, log_var]),
    )(hidden)
    return keras.Model(inputs, out)


def test_aleatoric_std_that_underflows_to_zero_warns_naming_the_field():
    x = np.ones((4, 2), "float32")
    # Below about -745 exp underflows float64, where the moments are taken
    # (-200 no longer underflows, as it did in float32).
    model = _variance_head_model(-2000.0)
    with pytest.warns(RuntimeWarning, match="aleatoric_std of exactly 0"):
        pred = ku.predict_regression(
            model, x, num_samples=4, seed=0, variance_head=True
        )
    assert np.all(pred.aleatoric_std == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pred = ku.predict_regression(
            _variance_head_model(-20.0), x, num_samples=4, seed=0, variance_head=True
        )
    assert np.all(pred.aleatoric_std > 0)


def test_temperature_scaling_on_all_right_confident_predictions_warns():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    probs = np.full((200, 3), 0.005)
    probs[np.arange(200), labels] = 0.99
    prediction = ku.ClassificationPrediction(
        probs=probs,
        label=labels.astype(np.int64),
        votes=None,
        entropy=np.zeros(200),
        expected_entropy=np.zeros(200),
        mutual_information=np.zeros(200),
    )
    with pytest.warns(UserWarning, match="every prediction right"):
        scaler = TemperatureScaling().fit(prediction, labels)
    assert scaler.temperature_ < 1


def test_hashed_uniform_draws_stay_inside_the_open_unit_interval():
    import tensorflow as tf

    from keras_uncertainty.sampling import keys

    # The extreme hash words: the top cell would round to 1.0 in float32,
    # and ndtri(1.0) is +inf.
    words = tf.constant([0, 255, 2**32 - 256, 2**32 - 1], tf.uint32)
    uniform = keys.unit_interval(words).numpy()
    assert uniform.dtype == np.float32
    assert np.all((uniform > 0) & (uniform < 1)), uniform
    normal = tf.math.ndtri(uniform).numpy()
    assert np.all(np.isfinite(normal)) and normal.max() < 5.4 and normal.min() > -5.5
