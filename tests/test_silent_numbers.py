"""No silent wrong number (issue 35, item 3): each fault a probe found gives
the right number, refuses with a ValueError naming the argument, or warns
naming what it guessed."""

import dataclasses
import importlib.util
import json
import shutil
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
