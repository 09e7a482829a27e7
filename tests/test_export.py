"""`ku.export`: SavedModels that serve the uncertainty summary, read back by
a process that imports only TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

T = 400
# Two independent estimates of a mean over T samples differ by at most
# 5 * sqrt(2) standard errors except with probability below 1e-6 (normal
# approximation); a standard error is (spread of one sample) / sqrt(T).
Z = 5 * np.sqrt(2)

# Runs in a fresh interpreter: TensorFlow only, two loads, two calls each,
# one seeded call twice.
_SERVER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    path, x_path, out_path = sys.argv[1:]
    x = np.load(x_path)
    results = {}
    for load in ("a", "b"):
        served = tf.saved_model.load(path)
        for call in ("1", "2"):
            out = served.signatures["serving_default"](tf.constant(x))
            results[load + call] = {k: v.numpy().tolist() for k, v in out.items()}
        seeded = [served.serve_seeded(x, tf.constant(11, tf.int64)) for _ in "12"]
        for i, out in enumerate(seeded):
            results[load + "seeded" + str(i)] = {
                k: v.numpy().tolist() for k, v in out.items()
            }
    assert "keras_uncertainty" not in sys.modules
    with open(out_path, "w") as f:
        json.dump(results, f)
    """
)


def _serve_in_fresh_process(path, x, tmp_path):
    x_path, out_path = tmp_path / "x.npy", tmp_path / "out.json"
    np.save(x_path, x)
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(x_path), str(out_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(out_path.read_text())
    return {
        call: {key: np.asarray(value) for key, value in out.items()}
        for call, out in loaded.items()
    }


@pytest.fixture(scope="module")
def served_regression(regression_model, regression_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    path = ku.export(regression_model, folder / "1", task="regression", num_samples=T)
    x = regression_data[0][:64]
    return path, x, _serve_in_fresh_process(path, x, folder)


def test_served_regression_summary_matches_predict_regression(
    regression_model, served_regression
):
    _, x, served = served_regression
    expected = ku.predict_regression(regression_model, x, num_samples=T, seed=0)
    out = served["a1"]
    assert set(out) == {"mean", "std", "aleatoric_std", "epistemic_std"}
    for key in out:
        assert out[key].shape == (len(x), 1)
    mean_bound = Z * expected.epistemic_std / np.sqrt(T) + 1e-5
    assert np.all(np.abs(out["mean"] - expected.mean) <= mean_bound)
    # std^2 is a mean over samples of sigma_t^2 + (mu_t - mean)^2; its
    # sample-to-sample spread is bounded by the largest such term.
    spread = (expected.aleatoric_std + 3 * expected.epistemic_std) ** 2
    var_bound = Z * spread / np.sqrt(T) + 1e-5
    assert np.all(np.abs(out["std"] ** 2 - expected.std**2) <= var_bound)
    np.testing.assert_allclose(
        out["std"] ** 2,
        out["aleatoric_std"] ** 2 + out["epistemic_std"] ** 2,
        rtol=1e-4,
    )


def test_every_call_and_every_load_draws_fresh_masks(served_regression):
    _, _, served = served_regression
    means = [served[call]["mean"] for call in ("a1", "a2", "b1", "b2")]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert not np.array_equal(means[i], means[j]), (i, j)


def test_a_seeded_call_repeats_exactly_across_calls_and_loads(served_regression):
    _, _, served = served_regression
    reference = served["aseeded0"]
    for call in ("aseeded1", "bseeded0", "bseeded1"):
        for key, values in reference.items():
            np.testing.assert_array_equal(served[call][key], values)
    assert not np.array_equal(reference["mean"], served["a1"]["mean"])


# A subprocess end to end: the slow tier (CI runs it).
@pytest.mark.slow
def test_saved_model_cli_lists_the_signature_and_its_named_outputs(served_regression):
    path, _, _ = served_regression
    cli = Path(sys.executable).parent / "saved_model_cli"
    result = subprocess.run(
        [str(cli), "show", "--dir", str(path), "--all"],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    default = result.stdout.split("signature_def['serving_default']")[1]
    default = default.split("signature_def[")[0]
    for name in ("mean", "std", "aleatoric_std", "epistemic_std"):
        assert f"outputs['{name}']" in default
    assert "signature_def['serve_seeded']" in result.stdout
    assert "inputs['seed']" in result.stdout


def test_served_classification_summary_matches_predict_classification(
    classifier, class_inputs, tmp_path
):
    path = ku.export(
        classifier, tmp_path / "c", task="classification", num_samples=T, votes=True
    )
    served = tf.saved_model.load(str(path))
    out = {key: value.numpy() for key, value in served.serve(class_inputs).items()}
    expected = ku.predict_classification(classifier, class_inputs, num_samples=T)
    assert set(out) == {
        "probs",
        "entropy",
        "expected_entropy",
        "mutual_information",
        "votes",
    }
    # Each probability lies in [0, 1], so one sample's spread is at most 1/2.
    assert np.all(np.abs(out["probs"] - expected.probs) <= Z * 0.5 / np.sqrt(T))
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["votes"].sum(-1), T)
    np.testing.assert_allclose(
        out["mutual_information"],
        np.maximum(out["entropy"] - out["expected_entropy"], 0),
        atol=1e-6,
    )


def test_exported_deterministic_ensemble_equals_predict_regression_exactly(tmp_path):
    keras.utils.set_random_seed(2)
    ensemble = ku.Ensemble(
        lambda: ku.models.mlp(3, 2, hidden_units=(8,), dropout_rate=0.0),
        num_members=3,
    )
    ensemble.compile("adam", loss=ku.losses.gaussian_nll)
    x = np.random.default_rng(1).normal(size=(20, 3)).astype("float32")
    path = ku.export(ensemble, tmp_path / "e", task="regression")

    served = tf.saved_model.load(str(path))
    out = served.serve(x)
    expected = ku.predict_regression(ensemble, x)
    for key in ("mean", "std", "aleatoric_std", "epistemic_std"):
        np.testing.assert_allclose(out[key].numpy(), getattr(expected, key), rtol=2e-5)
    assert np.all(expected.epistemic_std > 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "regress"}, "`task`"),
        ({"task": "regression", "num_samples": 0}, "`num_samples`"),
        ({"task": "regression", "from_logits": True}, "classification"),
        ({"task": "classification", "variance_head": True}, "`variance_head`"),
        ({"task": "classification", "votes": 1}, "`votes`"),
    ],
)
def test_bad_export_arguments_are_rejected(classifier, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ku.export(classifier, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_a_model_without_symbolic_inputs_is_refused(tmp_path):
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dropout = ku.layers.MCDropout(0.2)

        def call(self, x):
            return self.dropout(x)

    with pytest.raises(ValueError, match="keras.Input"):
        ku.export(Subclassed(), tmp_path / "s", task="regression")
