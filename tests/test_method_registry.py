"""The benchmark's one method registry (issue 36, item 5): the `uci` and
`mnist` commands offer its names, every entry builds, trains and predicts
under each protocol it runs in, and its names and settings load without
Keras."""

import ast
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.cli.main import build_parser
from keras_uncertainty.experiments import mnist, protocols, registry, uci_methods

ROOT = Path(__file__).resolve().parents[1]


def _method_choices(command):
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    (method,) = [a for a in commands.choices[command]._actions if a.dest == "method"]
    return tuple(method.choices)


def test_the_commands_method_choices_are_the_registrys():
    assert _method_choices("uci") == (*registry.names("uci"), "all")
    assert _method_choices("mnist") == (*registry.names("mnist"), "all")
    # The protocols, the runners and the results files read the same names.
    assert protocols.METHODS == registry.names("uci") == tuple(uci_methods.METHODS)
    assert protocols.MNIST_METHODS == registry.names("mnist") == mnist.METHODS
    assert protocols.MNIST_BASELINE == mnist.DETERMINISTIC == "deterministic"
    assert "deterministic" not in _method_choices("mnist")  # it always runs


def test_a_new_entry_is_a_choice_of_the_commands_it_runs_in(monkeypatch):
    class Probe(registry.Method):
        name, label, family = "probe", "Probe", "One pass"
        settings = {"mnist": (("network", "none", "ours"),)}

    monkeypatch.setitem(registry.METHODS, "probe", Probe())
    assert "probe" in _method_choices("mnist")
    assert "probe" not in _method_choices("uci")


def test_every_entry_states_its_settings_and_sources_for_its_protocols():
    assert set(registry.METHODS) == {
        *registry.names("uci"),
        *registry.names("mnist"),
        registry.baseline("mnist"),
    }
    for name, method in registry.METHODS.items():
        assert method.name == name and method.label and method.family
        assert method.settings and set(method.settings) <= {"uci", "mnist"}
        for rows in method.settings.values():
            assert rows and all(len(row) == 3 for row in rows)
            assert {source for _, _, source in rows} <= {*protocols.SOURCES, "ours"}


_KERAS_FREE_SCRIPT = """
import sys
from keras_uncertainty.experiments import protocols, registry
from keras_uncertainty.datasets import UCI_DATASETS
assert registry.names("uci") and registry.names("mnist")
assert "yacht" in UCI_DATASETS == protocols.UCI_DATASETS
for protocol in ("uci", "mnist"):
    protocols.settings_table(registry.methods(protocol), protocol)
print(sorted({m.split(".")[0] for m in sys.modules} & {"keras", "tensorflow", "numpy"}))
"""


def test_the_registrys_names_and_settings_load_without_keras():
    result = subprocess.run(
        [sys.executable, "-c", _KERAS_FREE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_harness_imports_at_the_top_of_its_modules():
    """No import inside a function in the harness (the registry's hooks
    reach Keras through `registry._OnFirstUse`, its one lazy import)."""
    inside = []
    for path in sorted((ROOT / "keras_uncertainty" / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [
                    f"{path.name}:{inner.lineno}"
                    for inner in ast.walk(node)
                    if isinstance(inner, (ast.Import, ast.ImportFrom))
                ]
    assert inside == []


# Every entry under every protocol it runs in, on tiny data ----------------


@pytest.fixture
def two_members(monkeypatch):
    """The ensembles' members cut to 2 (the protocols' 5 cost 2.5x)."""
    monkeypatch.setattr(registry.METHODS["ensemble"], "members", 2)


@pytest.mark.slow  # about 40 s: ten LeNet-5 variants trained, predicted, served
@pytest.mark.kernels  # their convolutions, on both kernel sets
@pytest.mark.parametrize("name", list(registry.methods("mnist", baseline=True)))
def test_every_mnist_entry_trains_predicts_exports_and_reports_through_the_verb(
    name, two_members, tmp_path
):
    """Every method through the toolkit's one verb: trained with the
    `UncertaintyMetrics` callback, predicted by `ku.predict_classification`
    and served by `ku.export` (a fitted Laplace as well)."""
    import tensorflow as tf

    method = registry.METHODS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32, 32, 1)).astype("float32")
    y = np.arange(32) % 10
    keras.utils.set_random_seed(0)
    model = method.mnist_build(len(x))
    metrics = ku.callbacks.UncertaintyMetrics((x[:8], y[:8]), num_samples=2, seed=0)
    predictor = method.mnist_fit(model, x, y, 1, callbacks=[metrics])
    assert np.isfinite(model.history.history["val_mc_accuracy"][-1])
    prediction = method.mnist_predict(predictor, x[:8], 3, 0)
    assert isinstance(prediction, ku.ClassificationPrediction)
    assert prediction.probs.shape == (8, 10)
    np.testing.assert_allclose(prediction.probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(prediction.entropy))
    if method.votes:  # the samples' (or members') votes are counted
        assert prediction.votes is not None
    num_samples = None if method.one_pass else 3
    verb = ku.predict_classification(predictor, x[:4], num_samples, seed=1, verbose=0)
    path = ku.export(
        predictor, str(tmp_path / name), task="classification", num_samples=num_samples
    )
    loaded = tf.saved_model.load(path)  # held: its variables live with it
    served = loaded.serve_seeded(tf.constant(x[:4]), tf.constant(1, tf.int64))
    np.testing.assert_allclose(
        served["probs"].numpy(), verb.probs, rtol=1e-4, atol=1e-5
    )


@pytest.mark.slow  # about 40 s: the packed grids and the ensemble's checks
@pytest.mark.parametrize("name", registry.names("uci"))
def test_every_uci_entry_builds_trains_and_predicts(name, two_members):
    split = ku.datasets.load_uci("yacht", 0)
    protocol = uci_methods.Protocol(1 / 40, 1e-2, "cosine", 4, 0)
    result = uci_methods.run("yacht", name, [split], protocol)
    assert result.method == name and result.num_splits == 1
    assert np.isfinite(result.rmse_mean) and np.isfinite(result.nll_mean)
    # In the target's units (yacht's residuary resistance: std about 15).
    assert 0.1 < result.rmse_mean < 100
