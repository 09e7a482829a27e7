"""No silent wrong number (issue 35, item 3): each fault a probe found gives
the right number, refuses with a ValueError naming the argument, or warns
naming what it guessed."""

import dataclasses
import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.cli.main import main
from keras_uncertainty.datasets import _files
from keras_uncertainty.experiments import uci, uci_methods

ROOT = Path(__file__).resolve().parents[1]


def _yacht_copy(folder, change_target):
    """A copy of the packaged yacht folder whose target column (6) is
    `change_target(values)`, written with every float64 digit."""
    shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", folder)
    data = np.loadtxt(folder / "data.txt")
    data[:, 6] = change_target(data[:, 6])
    np.savetxt(folder / "data.txt", data, fmt="%.17g")
    return folder


# UCI: un-normalization in float64 ----------------------------------------------


def test_uci_mixture_scores_keep_every_digit_of_a_target_far_from_zero():
    """`SplitMixtureNLL` against the mixture computed in float64 by
    `ku.metrics.mixture_log_density`: two groups of two members with their
    own standardizations, targets near 1e9 (float32's spacing there is 64)."""
    rng = np.random.default_rng(0)
    members, t, n = 4, 5, 7
    y_mean = np.array([1e9 + 3.25, 1e9 + 3.5, -2e9 + 0.75, -2e9 + 1.0])
    y_std = np.array([2.0, 2.5, 0.5, 0.25])
    samples = np.concatenate(
        [
            rng.normal(size=(members * t, n, 1)),
            rng.normal(-1, 0.3, (members * t, n, 1)),
        ],
        -1,
    ).astype("float32")
    y = np.stack([1e9 + rng.normal(size=n), -2e9 + rng.normal(size=n)], -1)
    reducer = uci.SplitMixtureNLL(members, 2, y_mean, y_std)
    state = tuple(np.asarray(v) for v in reducer.reduce(samples, y))
    score, diverged = reducer.finalize(state, members * t)
    assert not diverged.any()
    by_member = samples.astype(np.float64).reshape(members, t, n, 2)
    mu = by_member[..., 0] * y_std[:, None, None] + y_mean[:, None, None]
    sigma = np.exp(0.5 * by_member[..., 1]) * y_std[:, None, None]
    for group in range(2):
        rows = slice(2 * group, 2 * group + 2)
        mean = mu[rows].reshape(-1, n).mean(0)
        log_density = ku.metrics.mixture_log_density(
            y[:, group], mu[rows].reshape(-1, n), sigma[rows].reshape(-1, n)
        )
        np.testing.assert_allclose(
            score.prediction.mean[:, group], mean, rtol=0, atol=1e-5
        )
        np.testing.assert_allclose(
            score.log_likelihood[:, group], log_density, rtol=1e-5
        )
        rmse, nll = uci.scored_group(score, diverged, y[:, group], group)
        assert rmse == pytest.approx(np.sqrt(np.mean((y[:, group] - mean) ** 2)), 1e-5)
        assert nll == pytest.approx(-log_density.mean(), 1e-5)


# End to end (a subprocess or a UCI training): the slow tier (CI runs it).
@pytest.mark.slow
@pytest.mark.parametrize("method", ["evidential", "vi"])
def test_uci_method_scores_do_not_change_when_the_target_is_shifted_by_1e9(
    tmp_path, method
):
    """The probe: every method but Laplace reported RMSE 17.82 on yacht
    shifted by 1e9 (float32's rounding there), against about 13 unshifted."""
    shifted = _yacht_copy(tmp_path / "yacht", lambda y: y + 1e9)
    protocol = uci_methods.Protocol(1 / 40, 1e-2, "cosine", 10, 0)
    results = [
        uci_methods.run("yacht", method, [ku.datasets.load_uci(folder, 0)], protocol)
        for folder in (f"{_files.PACKAGED_DIR}/yacht", str(shifted))
    ]
    plain, moved = results
    assert moved.rmse_mean == pytest.approx(plain.rmse_mean, rel=1e-5)
    assert moved.nll_mean == pytest.approx(plain.nll_mean, rel=1e-5)


@pytest.mark.parametrize(
    "scale, why", [(1e-30, "standard deviation 1.5"), (1e300, "float32 numbers")]
)
def test_uci_refuses_a_target_float32_cannot_standardize_naming_the_column(
    tmp_path, scale, why
):
    folder = _yacht_copy(tmp_path / "yacht", lambda y: y * scale)
    with pytest.raises(
        ValueError, match=rf"column 6 of data.txt \(the target\).*{why}"
    ):
        ku.datasets.load_uci(str(folder), 0)
    # The library's runner checks splits made without the loader too.
    split = ku.datasets.load_uci("yacht", 0)
    scaled = dataclasses.replace(
        split, y_train=split.y_train * scale, y_test=split.y_test * scale
    )
    protocol = uci_methods.Protocol(1 / 40, 1e-2, "cosine", 10, 0)
    with pytest.raises(ValueError, match=r"argument `splits`.*the target"):
        uci_methods.run("yacht", "laplace", [scaled], protocol)


def test_uci_refuses_a_feature_float32_rounds_to_a_fraction_of_its_spread(tmp_path):
    folder = tmp_path / "yacht"
    shutil.copytree(f"{_files.PACKAGED_DIR}/yacht", folder)
    data = np.loadtxt(folder / "data.txt")
    data[:, 2] += 1e9  # std about 0.02: float32 holds multiples of 64 there
    np.savetxt(folder / "data.txt", data, fmt="%.17g")
    with pytest.raises(
        ValueError, match=r"column 2 of data.txt reaches.*multiples of 64"
    ):
        ku.datasets.load_uci(str(folder), 0)


def test_uci_command_exits_2_on_such_data_before_any_training(
    tmp_path, monkeypatch, capsys
):
    runs = []
    monkeypatch.setattr(uci_methods, "run", lambda *a, **k: runs.append(a))
    folder = _yacht_copy(tmp_path / "boat", lambda y: y * 1e-30)
    with pytest.raises(SystemExit) as exit_info:
        main(["uci", str(folder), "--splits", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "column 6 of data.txt (the target)" in err[0]
    assert runs == []


# UCI: one split has no standard error --------------------------------------------


def test_one_split_has_no_standard_error_in_the_result_the_file_and_the_tables(
    tmp_path, monkeypatch, capsys
):
    one = uci.Result.from_splits("yacht", "laplace", [1.5], [2.5], 3.0)
    assert one.rmse_se is None and one.nll_se is None
    monkeypatch.setattr(uci_methods, "run", lambda dataset, *a, **k: one)
    output = tmp_path / "results.json"
    args = ["uci", "--splits", "0", "--method", "laplace", "--output", str(output)]
    assert main(args) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if "laplace" in line]
    assert "1.50 ± n/a" in row[0] and "2.50 ± n/a" in row[0] and "0.00" not in row[0]
    record = json.loads(output.read_text())["results"][0]
    assert record["rmse_se"] is None and record["nll_se"] is None
    # The file is read back (resumed) and printed the same way.
    assert main([*args, "--resume"]) == 0
    assert "1.50 ± n/a" in capsys.readouterr().out
    # And by the README's table script.
    spec = importlib.util.spec_from_file_location(
        "method_table", ROOT / "benchmarks" / "method_table.py"
    )
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    assert "| 1.50 ± n/a | 2.50 ± n/a |" in table.uci_table([record])


# Evidential classification: labels checked as Keras checks them ---------------


@pytest.mark.parametrize("labels", [[5, 1], [-1, 0], [0.7, 1.0]])
def test_evidential_classification_loss_refuses_labels_that_are_not_classes(labels):
    """7 of 2 classes or -1 was an all-zero target, 0.7 class 0."""
    loss = ku.evidential.EvidentialClassificationLoss(annealing_epochs=None)
    alpha = np.array([[2.0, 1.0], [1.0, 3.0]], "float32")
    with pytest.raises(ValueError, match=r"`y_true`.*labels in \[0, 2\).*Received"):
        loss(np.array(labels), alpha)
    # Valid labels: the loss of their one-hot rows.
    np.testing.assert_allclose(
        loss(np.array([0, 1]), alpha), loss(np.eye(2, dtype="float32"), alpha)
    )


def _dirichlet_model(jit_compile):
    import keras

    model = keras.Sequential([keras.Input((3,)), ku.evidential.DirichletHead(2)])
    model.compile(
        "adam",
        loss=ku.evidential.EvidentialClassificationLoss(annealing_epochs=None),
        jit_compile=jit_compile,
    )
    return model


def test_fit_on_labels_outside_the_classes_raises_naming_them():
    import tensorflow as tf

    x = np.zeros((8, 3), "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels in \[0, 2\)"):
        _dirichlet_model(False).fit(x, np.full(8, 7), epochs=1, verbose=0)
    # XLA drops the assertion: the loss is NaN there, never a plausible number.
    history = _dirichlet_model(True).fit(x, np.full(8, 7), epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][0])


# Conformal and recalibration ------------------------------------------------------


def test_cqr_sorts_crossed_quantiles_and_never_returns_lower_above_upper():
    """Test quantiles crossed on every row (calibration ones crossed on
    half): the interval is CQR's on the sorted bands, computed here by hand
    (the conformal rank of the sorted calibration scores)."""
    rng = np.random.default_rng(0)
    n, alpha = 200, 0.1
    y = rng.normal(size=n)
    low, high = rng.normal(-1.5, 0.3, n), rng.normal(1.5, 0.3, n)
    low[::2], high[::2] = high[::2], low[::2]
    cqr = ku.conformal.ConformalizedQuantileRegressor(alpha).fit((low, high), y)
    band_low, band_high = np.minimum(low, high), np.maximum(low, high)
    scores = np.sort(np.maximum(band_low - y, y - band_high))
    q = scores[int(np.ceil((n + 1) * (1 - alpha))) - 1]
    test_low, test_high = np.array([1.0, 2.0, 0.5]), np.array([-1.0, -2.0, -0.5])
    interval = cqr.predict_interval((test_low, test_high))
    np.testing.assert_allclose(interval.lower, test_high - q)
    np.testing.assert_allclose(interval.upper, test_low + q)
    assert np.all(interval.lower <= interval.upper)


def test_cqr_collapses_a_band_narrower_than_its_negative_quantile_to_its_midpoint():
    y = np.zeros(100)
    cqr = ku.conformal.ConformalizedQuantileRegressor(0.1).fit(
        (np.full(100, -5.0), np.full(100, 5.0)), y
    )
    assert cqr.quantile_[0, 0] == -5.0  # every point 5 inside its band
    interval = cqr.predict_interval((np.array([1.0, -1.0]), np.array([2.0, 9.0])))
    np.testing.assert_array_equal(interval.lower, [1.5, -1.0 + 5.0])
    np.testing.assert_array_equal(interval.upper, [1.5, 9.0 - 5.0])


def test_conformal_alpha_set_after_fit_is_validated_where_it_is_used():
    rng = np.random.default_rng(1)
    method = ku.conformal.SplitConformalRegressor(0.1).fit(
        rng.normal(size=50), rng.normal(size=50)
    )
    method.alpha = 5
    with pytest.raises(ValueError, match=r"argument `alpha`.*Received: alpha=5"):
        method.predict_interval(np.zeros(3))
    with pytest.raises(ValueError, match=r"argument `alpha`"):
        method.transform(np.zeros(3))


def test_conformal_classifier_refuses_a_score_setting_changed_after_fit():
    """Its calibration scores were computed with the fit's settings."""
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), size=60)
    labels = rng.integers(0, 3, size=60)
    method = ku.conformal.ConformalClassifier(0.1, score="aps").fit(probs, labels)
    method.score = "lac"
    with pytest.raises(ValueError, match=r"argument `score`.*'aps'.*score='lac'"):
        method.predict_set(probs)
    method.score = "aps"
    method.alpha = 0.2  # the scores do not depend on alpha: honoured
    assert method.predict_set(probs).shape == (60, 3)


@pytest.mark.parametrize("argument", ["prediction", "y"])
def test_conformal_fit_refuses_complex_input_naming_the_argument(argument):
    """Cast to float64, the imaginary parts were dropped with a NumPy warning."""
    values = {"prediction": np.arange(20.0), "y": np.arange(20.0)}
    values[argument] = values[argument] + 1j
    method = ku.conformal.SplitConformalRegressor(0.1)
    with pytest.raises(ValueError, match=rf"argument `{argument}`.*real numbers"):
        method.fit(values["prediction"], values["y"])


def test_conformal_warning_for_a_small_calibration_set_names_its_count_and_level():
    with pytest.warns(UserWarning, match=r"\(5 points\).*alpha=0.1.*at least 9"):
        ku.conformal.SplitConformalRegressor(0.1).fit(np.zeros(5), np.ones(5))


def test_quantile_recalibration_on_too_few_points_warns_naming_count_and_level():
    """One point gave 29% coverage at 90% without a word; a 90% interval
    needs a calibration point at or below its 0.05 tail: 20 points."""
    rng = np.random.default_rng(3)
    test = (np.zeros(4), np.ones(4))
    one = ku.calibration.QuantileRecalibration().fit(
        (np.zeros(1), np.ones(1)), np.array([0.3])
    )
    with pytest.warns(
        UserWarning, match=r"fitted on 1 calibration point.*0.9 interval"
    ):
        one.interval(test, 0.9)
    with pytest.warns(UserWarning, match=r"fitted on 1 .*0.05 quantile.*at least 20"):
        one.quantile(test, 0.05)
    enough = ku.calibration.QuantileRecalibration().fit(
        (np.zeros(20), np.ones(20)), rng.normal(size=20)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enough.interval(test, 0.9)


# Feature-space OOD scorers at large and small norms ---------------------------


def _features_and_labels():
    rng = np.random.default_rng(4)
    return rng.normal(size=(120, 4)), rng.integers(0, 3, 120), rng.normal(size=(6, 4))


@pytest.mark.parametrize("scale", [1e160, 1e200, 1e-200])
def test_feature_scorers_give_the_scores_of_the_same_features_at_unit_scale(scale):
    """Mahalanobis distances do not depend on the features' unit; the log
    density moves by the Jacobian, `-D log scale`. (At 1e200 Mahalanobis
    scored 0.0 and FeatureDensity NaN, at 1e-200 both refused the fit.)"""
    features, labels, test = _features_and_labels()
    plain = ku.ood.Mahalanobis().fit(features, labels).transform(test)
    scaled = ku.ood.Mahalanobis().fit(features * scale, labels)
    np.testing.assert_allclose(scaled.transform(test * scale), plain, rtol=1e-10)
    plain = ku.ood.FeatureDensity().fit(features, labels).transform(test)
    scaled = ku.ood.FeatureDensity().fit(features * scale, labels)
    np.testing.assert_allclose(
        scaled.transform(test * scale), plain + 4 * np.log(scale), rtol=1e-10
    )


def test_feature_scorers_score_a_point_beyond_float64_as_infinitely_far():
    features, labels, test = _features_and_labels()
    for scorer in (ku.ood.Mahalanobis(), ku.ood.FeatureDensity()):
        scores = scorer.fit(features, labels).transform(test * 1e200)
        assert np.all(scores == np.inf), type(scorer).__name__


# Laplace and ensembles: inputs checked before work, a random network refused ------


def _small_classifier(mc_dropout=False):
    import keras

    layers = [keras.Input((4,)), keras.layers.Dense(8, activation="relu")]
    if mc_dropout:
        layers.append(ku.layers.MCDropout(0.5))
    layers.append(keras.layers.Dense(3, activation="softmax"))
    return keras.Sequential(layers)


def test_laplace_refuses_a_network_with_mc_layers_naming_them():
    """Its features were random: two identical `predict` calls differed."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 3, 32)
    laplace = ku.laplace.Laplace(_small_classifier(mc_dropout=True), "classification")
    with pytest.raises(ValueError, match=r"argument `model`.*MC layers \['mc_dropout"):
        laplace.fit(x, y)


@pytest.mark.parametrize(
    "x, received",
    [
        (np.zeros((32, 3), "float32"), r"shape \(None, 4\).*Received: shape \(32, 3\)"),
        (np.full((32, 4), "a"), r"Received: strings"),
    ],
)
def test_laplace_checks_its_inputs_before_any_work_naming_x(x, received):
    """Were an InvalidArgumentError (a wrong width) and an UnimplementedError
    (strings) from inside TensorFlow."""
    rng = np.random.default_rng(6)
    good = rng.normal(size=(32, 4)).astype("float32")
    labels = rng.integers(0, 3, 32)
    laplace = ku.laplace.Laplace(_small_classifier(), "classification")
    with pytest.raises(ValueError, match=rf"argument `x`.*{received}"):
        laplace.fit(x, labels)
    laplace.fit(good, labels)
    with pytest.raises(ValueError, match=rf"argument `x`.*{received}"):
        laplace.predict(x)


def test_ensemble_fit_checks_the_inputs_against_its_members_before_training():
    """28x28 images for a 32x32 LeNet were a MatMul error from inside the step."""
    ensemble = ku.Ensemble(lambda: ku.models.lenet5(dropout_rate=0), num_members=2)
    ensemble.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(
        ValueError,
        match=r"argument `x`.*\(None, 32, 32, 1\).*Received: shape \(4, 28, 28, 1\)",
    ):
        ensemble.fit(np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, int), verbose=0)


def test_sngp_regression_head_refuses_a_loss_without_a_variance_head():
    """Compiled with "mse", its (mean, log-variance) output was read as a
    2-column mean."""
    import keras

    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    head = ku.layers.RandomFeatureGaussianProcess(
        1, num_inducing=16, task="regression"
    )(hidden)
    model = ku.sngp.SNGPModel(inputs, head)
    with pytest.raises(ValueError, match=r"argument `loss`.*Received: loss='mse'"):
        model.compile("adam", "mse")
    model.compile("adam", ku.losses.gaussian_nll)
    x = np.random.default_rng(7).normal(size=(16, 2)).astype("float32")
    assert ku.predict_regression(model, x).mean.shape == (16, 1)


# Served summaries of finite rows near float32's largest values -------------------


def test_served_regression_summary_of_a_1e38_row_is_finite_and_scales(tmp_path):
    """A linear network with MC dropout: the seeded endpoint draws the same
    masks for row 0 whatever its value, so the row 1e38 serves 1e38 times
    the summary of the row 1 (it served mean -inf: float32 sums)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((1,))
    dropped = ku.layers.MCDropout(0.5)(inputs)
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(dropped)
    model = keras.Model(inputs, outputs)
    path = ku.export(model, tmp_path / "served", "regression", 50, variance_head=False)
    served = tf.saved_model.load(str(path))
    seed = tf.constant(3, tf.int64)
    one = served.serve_seeded(tf.constant([[1.0]]), seed)
    big = served.serve_seeded(tf.constant([[1e38]]), seed)
    for name in ("mean", "std", "epistemic_std"):
        value = np.asarray(big[name], np.float64)
        assert np.all(np.isfinite(value)), name
        np.testing.assert_allclose(value, 1e38 * np.asarray(one[name]), rtol=1e-6)
