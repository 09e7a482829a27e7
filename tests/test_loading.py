"""`import keras_uncertainty` is all `keras.models.load_model` needs: every
model the toolkit saves loads in a new process, without `custom_objects`,
whether Keras or the package is imported first."""

import ast
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_uncertainty as ku

PACKAGE = Path(ku.__file__).parent
SAMPLES = 3
SEED = 7

# Runs in a fresh interpreter: the two imports (in the order given), then
# every model loaded before anything else of the package is used; then each
# loaded model's seeded samples, and the registry once every module that
# registers a class has been imported.
_LOADER = textwrap.dedent(
    """
    import json, sys
    for name in sys.argv[1].split(","):
        __import__(name)
    import keras
    import keras_uncertainty

    def registry():
        return sorted(
            name
            for name in keras.saving.get_custom_objects()
            if name.startswith("keras_uncertainty>")
        )

    registered = registry()
    folder = sys.argv[2]
    with open(folder + "/models.json") as f:
        saved = json.load(f)
    loaded = {
        name: keras.models.load_model(f"{folder}/{name}.keras")
        for name in saved["names"]
    }

    import warnings

    import numpy as np

    warnings.simplefilter("ignore", UserWarning)  # deterministic members
    ku = keras_uncertainty
    x = np.load(folder + "/x.npy")
    arrays, report = {}, {"registered": registered}
    for name, model in loaded.items():
        samples = ku.sample(model, x, saved["samples"], seed=saved["seed"])
        arrays[name] = np.asarray(samples)
        report[name] = {
            "class": type(model).__qualname__,
            "loss": type(getattr(model, "loss", None)).__name__,
            "gaussian_nll_loss": getattr(model, "loss", None)
            is ku.losses.gaussian_nll,
        }
    np.savez(folder + "/" + sys.argv[3] + ".npz", **arrays)
    # Each registered class is the one its module holds (no module ran twice).
    for name, value in keras.saving.get_custom_objects().items():
        if name.startswith("keras_uncertainty>"):
            module = sys.modules[value.__module__]
            assert getattr(module, value.__qualname__) is value, name
    for module in json.loads(sys.argv[4]):
        __import__(module)
    report["registered_after_all"] = registry()
    with open(folder + "/" + sys.argv[3] + ".json", "w") as f:
        json.dump(report, f)
    """
)


def _registering_modules():
    """The package's modules that call `keras.saving.register_keras_serializable`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any(
            isinstance(node, ast.Attribute)
            and node.attr == "register_keras_serializable"
            for node in ast.walk(tree)
        ):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            found.append(".".join(p for p in parts if p != "__init__"))
    return found


def _dense(units, **kwargs):
    return keras.layers.Dense(units, **kwargs)


def _models(x):
    """One model of each method, built (and fitted where the method needs
    it), keyed by a file name."""
    keras.utils.set_random_seed(0)
    labels = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    models = {}
    models["mc_dropout"] = keras.Sequential(
        [
            keras.Input((4,)),
            _dense(8, activation="relu"),
            ku.layers.MCDropout(0.3),
            _dense(2),
        ]
    )
    for pack in (True, False):
        ensemble = ku.Ensemble(
            lambda: ku.models.mlp(4, 2, hidden_units=(8,), dropout_rate=0.0),
            num_members=2,
            pack=pack,
        )
        ensemble.compile("adam", loss=ku.losses.gaussian_nll)
        ensemble(x[:1])
        models[f"ensemble_{'packed' if pack else 'unpacked'}"] = ensemble
    models["batch_ensemble"] = ku.BatchEnsemble(
        lambda m: keras.Sequential(
            [
                keras.Input((4,)),
                ku.layers.BatchEnsembleDense(8, m, activation="relu"),
                ku.layers.BatchEnsembleDense(3, m, activation="softmax"),
            ]
        ),
        num_members=2,
    )

    def backbone(shape):
        inputs = keras.Input(shape)
        return keras.Model(inputs, _dense(8, activation="relu")(inputs))

    models["mimo"] = ku.MIMO(backbone, (4,), num_outputs=3, num_members=2)
    models["flipout"] = keras.Sequential(
        [
            keras.Input((4,)),
            ku.layers.DenseFlipout(8, activation="relu", seed=1),
            ku.layers.DenseFlipout(2, seed=2),
        ]
    )
    base = keras.Sequential(
        [
            keras.Input((4,)),
            _dense(8, activation="relu"),
            _dense(3, activation="softmax"),
        ]
    )
    models["laplace"] = (
        ku.laplace.Laplace(base, "classification", hessian="kron")
        .fit(x, labels)
        .as_model()
    )
    net = keras.Sequential([keras.Input((4,)), _dense(8, activation="relu"), _dense(2)])
    state = ku.swag.SWAGState(max_rank=2)
    flat = np.concatenate([np.ravel(w) for w in net.get_weights()])
    rng = np.random.default_rng(0)
    for _ in range(3):
        state.collect(flat + 0.1 * rng.normal(size=flat.size))
    models["swag"] = ku.swag.SWAG(net, state)
    inputs = keras.Input((4,))
    hidden = ku.layers.SNGPSpectralNormalization(
        _dense(8, activation="relu"), 0.95, seed=0
    )(inputs)
    models["sngp"] = ku.sngp.SNGPModel(
        inputs,
        ku.layers.RandomFeatureGaussianProcess(3, num_inducing=16, seed=0)(hidden),
    )
    inputs = keras.Input((4,))
    evidential = keras.Model(
        inputs, ku.evidential.NormalInverseGammaHead(1)(_dense(8)(inputs))
    )
    evidential.compile("adam", loss=ku.evidential.EvidentialRegressionLoss(0.01))
    models["evidential"] = evidential
    nll = keras.Sequential([keras.Input((4,)), _dense(2)])
    nll.compile("adam", loss=ku.losses.gaussian_nll)
    models["gaussian_nll"] = nll
    return models


def _save(folder, models, x):
    """Saves `models` into `folder` (with `x` and the list of names) and
    returns their seeded samples here."""
    np.save(folder / "x.npy", x)
    expected = {}
    for name, model in models.items():
        model.save(folder / f"{name}.keras")
        expected[name] = np.asarray(ku.sample(model, x, SAMPLES, seed=SEED))
    saved = {"names": list(models), "samples": SAMPLES, "seed": SEED}
    (folder / "models.json").write_text(json.dumps(saved))
    return expected


def _load_in_new_processes(folder, models, expected):
    """Loads the saved models in a fresh process per import order, both at
    once (two cores), and checks each against the original."""
    runs = {}
    for tag, order in (
        ("keras_first", "keras,keras_uncertainty"),
        ("package_first", "keras_uncertainty,keras"),
    ):
        runs[tag] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LOADER,
                order,
                str(folder),
                tag,
                json.dumps(_registering_modules()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
    reports = {}
    for tag, process in runs.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{tag}:\n{err[-3000:]}"
        report = json.loads((folder / f"{tag}.json").read_text())
        samples = np.load(folder / f"{tag}.npz")
        for name, model in models.items():
            assert report[name]["class"] == type(model).__qualname__, (tag, name)
            np.testing.assert_allclose(
                samples[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name
            )
        # Every class the package registers was registered on import.
        assert report["registered"] == report["registered_after_all"], tag
        assert "keras_uncertainty>MCDropout" in report["registered"]
        reports[tag] = report
    return reports


# A subprocess end to end: the slow tier (CI runs it).
@pytest.mark.slow
def test_a_saved_mc_dropout_model_loads_after_either_import_order(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    nll = keras.Sequential([keras.Input((4,)), _dense(2)])
    nll.compile("adam", loss=ku.losses.gaussian_nll)
    models = {
        "mc_dropout": keras.Sequential(
            [
                keras.Input((4,)),
                _dense(8, activation="relu"),
                ku.layers.MCDropout(0.3),
                _dense(2),
            ]
        ),
        "gaussian_nll": nll,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a deterministic model
        expected = _save(tmp_path, models, x)
    reports = _load_in_new_processes(tmp_path, models, expected)
    for report in reports.values():
        assert report["gaussian_nll"]["gaussian_nll_loss"]


@pytest.mark.slow
def test_every_saved_model_loads_after_importing_the_package_in_either_order(
    tmp_path,
):
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    models = _models(x)
    with warnings.catch_warnings():
        # Deterministic members give one sample each: the point here is that
        # the loaded models give the same ones.
        warnings.simplefilter("ignore", UserWarning)
        expected = _save(tmp_path, models, x)
    reports = _load_in_new_processes(tmp_path, models, expected)
    for report in reports.values():
        assert report["gaussian_nll"]["gaussian_nll_loss"]
        assert report["ensemble_packed"]["gaussian_nll_loss"]
        assert report["evidential"]["loss"] == "EvidentialRegressionLoss"


# A subprocess end to end: the slow tier (CI runs it).
@pytest.mark.slow
def test_importing_the_package_then_keras_imports_no_module_twice():
    # The first part of the package imported before Keras loads Keras (the
    # backend check) and registers the classes once that part has loaded.
    script = textwrap.dedent(
        """
        import sys
        import keras_uncertainty
        from keras_uncertainty.layers.mc_dropout import MCDropout
        import keras
        registered = keras.saving.get_custom_objects()
        assert registered["keras_uncertainty>MCDropout"] is MCDropout
        assert registered["keras_uncertainty>Ensemble"] is keras_uncertainty.Ensemble
        for name, value in registered.items():
            if name.startswith("keras_uncertainty>"):
                module = sys.modules[value.__module__]
                assert getattr(module, value.__qualname__) is value, name
        finders = [type(f).__module__ for f in sys.meta_path]
        assert not [m for m in finders if m.startswith("keras_uncertainty")], finders
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    "class_name",
    ["planted_reducer.Planted", "keras_uncertainty.sampling.reducers.importlib"],
)
def test_a_reducer_config_naming_another_module_is_refused_before_importing_it(
    tmp_path, monkeypatch, class_name
):
    (tmp_path / "planted_reducer.py").write_text(
        "import pathlib\n"
        "pathlib.Path(__file__).with_name('ran').write_text('ran')\n"
        "class Planted:\n"
        "    @classmethod\n"
        "    def from_config(cls, config):\n"
        "        return cls()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {"reducers": [["y", class_name, {}]]}
    with pytest.raises(
        ValueError,
        match=rf"argument `config`.*Received: a reducer named '{class_name}'",
    ):
        ku.sampling.PerOutput.from_config(config)
    assert not (tmp_path / "ran").exists()
    assert "planted_reducer" not in sys.modules


def test_per_output_rebuilds_the_package_reducers_and_others_given_by_name():
    class Quantile(ku.sampling.Reducer):
        def __init__(self, q):
            self.q = q

    evidential = ku.evidential
    reducer = ku.sampling.PerOutput(
        {
            "a": ku.sampling.RegressionMoments(True),
            "b": ku.sampling.ClassificationSummary(from_logits=True, votes=True),
            "c": ku.sampling.RawSamples(2),
            "d": evidential.EvidentialRegressionSummary(),
            "e": evidential.EvidentialClassificationSummary(),
            "q": Quantile(0.1),
        }
    )
    config = reducer.get_config()
    with pytest.raises(ValueError, match="custom_objects"):
        ku.sampling.PerOutput.from_config(config)
    rebuilt = ku.sampling.PerOutput.from_config(
        config, custom_objects={"Quantile": Quantile}
    )
    assert rebuilt.get_config() == config
    assert [type(r) for r in rebuilt.reducers.values()] == [
        type(r) for r in reducer.reducers.values()
    ]
    with pytest.raises(ValueError, match="`custom_objects`"):
        ku.sampling.PerOutput.from_config(config, custom_objects={"Quantile": object})
    with pytest.raises(ValueError, match="argument `config`"):
        ku.sampling.PerOutput.from_config({"reducers": [["a", "x"]]})
