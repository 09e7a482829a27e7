"""The package stands on Keras's and TensorFlow's public API.

Only `keras_uncertainty/_keras_compat.py` may import `keras.src` (or
TensorFlow's internals) or read a private attribute of a Keras or TensorFlow
object, so that a Keras upgrade breaks one checked place, loudly.
"""

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import keras_uncertainty as ku

PACKAGE = Path(ku.__file__).parent
COMPAT = PACKAGE / "_keras_compat.py"
PRIVATE_MODULES = ("keras.src", "tensorflow.python", "tensorflow.core", "tf_keras")


def _keras_private_names():
    """Private attribute names of the Keras and TensorFlow objects we subclass
    or hold: a `self._name` among them reads Keras's internals."""
    compiled = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    compiled.compile("adam", "mse")
    objects = [
        compiled,
        keras.Model(),
        keras.layers.Dense(2),
        keras.layers.Dropout(0.1),
        keras.optimizers.Adam(),
        keras.losses.MeanSquaredError(),
        keras.metrics.Mean(),
        keras.callbacks.Callback(),
        keras.regularizers.L2(),
        keras.random.SeedGenerator(0),
        keras.Variable(0.0),
        tf.Variable(0.0),
    ]
    names = set()
    for obj in objects:
        names.update(dir(obj))
        names.update(vars(obj) if hasattr(obj, "__dict__") else ())
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _violations(path, keras_private):
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(PRIVATE_MODULES):
                found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PRIVATE_MODULES):
                    found.append((node.lineno, f"import {alias.name}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")
        ):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if not name.startswith("_") or name.startswith("__"):
                continue
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            is_module = isinstance(owner, ast.Name) and owner.id in _module_aliases(
                tree
            )
            if is_module:
                continue  # our own modules' private helpers
            if not own or name in keras_private:
                found.append((node.lineno, f".{name}"))
    return found


def _module_aliases(tree):
    """Names bound to our own modules (`from keras_uncertainty.x import y`)
    and to other libraries' modules that are not Keras or TensorFlow
    (`import os`: `os._exit` is no Keras internal)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "keras_uncertainty"
        ):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith(("keras", "tensorflow", "tf_keras")):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def test_no_private_keras_access_outside_the_compat_module():
    keras_private = _keras_private_names()
    report = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == COMPAT:
            continue
        for line, what in _violations(path, keras_private):
            report.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not report, "private Keras/TensorFlow access:\n" + "\n".join(report)


def test_the_scan_catches_private_access(tmp_path):
    # The scanner itself: each of these lines must be reported.
    source = tmp_path / "bad.py"
    source.write_text(
        "from keras.src.saving import serialization_lib\n"
        "import tensorflow.python.ops\n"
        "x = model._compile_config\n"
        "class M:\n"
        "    def f(self):\n"
        "        return self._loss_tracker\n"
        "y = getattr(layer, '_seed_generators', [])\n"
        "import os\n"
        "os._exit(0)\n"
        "import keras\n"
        "keras._tf_keras\n"
    )
    lines = sorted(line for line, _ in _violations(source, _keras_private_names()))
    assert lines == [1, 2, 3, 6, 7, 11]


def test_compat_module_names_the_keras_version_when_it_cannot_work(monkeypatch):
    from keras_uncertainty import _keras_compat

    monkeypatch.setattr(_keras_compat, "_CHECKED", False)
    monkeypatch.delattr(keras.layers.Layer, "_flatten_layers")
    with pytest.raises(RuntimeError, match=keras.__version__):
        _keras_compat.flatten_layers(keras.layers.Dense(2))


def test_importing_the_package_leaves_tensorflows_logger_alone():
    # The "frequent retracing" filter is installed only during a sampling call.
    for name in ku.__all__:
        getattr(ku, name, None)  # every public part loaded
    assert not tf.get_logger().filters


def _run(script):
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=120,
    )


_OTHER_BACKEND_STATEMENTS = [
    "import keras_uncertainty as ku; ku.layers",
    "from keras_uncertainty import Ensemble",
    "import keras_uncertainty.layers",
    "from keras_uncertainty.sampling import predict_regression",
]


@pytest.fixture(scope="module")
def other_backend_runs():
    """Each statement after `import keras_uncertainty`, in a process whose
    Keras reports the "jax" backend. The processes (each mostly one import,
    on one core) are started together; each test waits for its own."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    processes = {
        statement: subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import keras; keras.backend.backend = lambda: 'jax'\n"
                "import keras_uncertainty\n"
                "print('package imported')\n" + statement,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for statement in _OTHER_BACKEND_STATEMENTS
    }

    def result(statement):
        process = processes[statement]
        stdout, stderr = process.communicate(timeout=120)
        return subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )

    try:
        yield result
    finally:
        for process in processes.values():
            process.kill()  # a no-op once it has exited
            process.communicate()


# A subprocess end to end: the slow tier (CI runs it).
@pytest.mark.slow
@pytest.mark.parametrize("statement", _OTHER_BACKEND_STATEMENTS)
def test_importing_with_another_keras_backend_names_it_and_the_fix(
    statement, other_backend_runs
):
    # Keras's other backends need their own frameworks (JAX, torch), which
    # the test machines lack, so the process reports "jax" as its backend.
    # `import keras_uncertainty` alone loads no Keras; the first part that
    # does checks the backend, however it is reached.
    result = other_backend_runs(statement)
    assert result.returncode == 1
    assert result.stdout.strip() == "package imported"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:")
    assert "'jax' backend" in last and "KERAS_BACKEND=tensorflow" in last


def test_importing_the_package_and_its_command_line_loads_no_keras():
    from keras_uncertainty import _backend

    keras_free = sorted(m for m in _backend.KERAS_FREE if not m.endswith("__main__"))
    result = _run(
        "import sys\n"
        "import keras_uncertainty as ku\n"
        f"for name in {keras_free!r}:\n"
        "    __import__(name)\n"
        "assert isinstance(ku.__version__, str)\n"
        "assert set(ku.__all__) <= set(dir(ku))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'keras', 'tensorflow', 'numpy'}))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_load_on_first_use():
    import importlib

    for name in ku.__all__:
        module_name = ku._LAZY[name]
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            # Listed ahead of its module: absent, not an import error.
            assert not hasattr(ku, name)
            continue
        value = getattr(ku, name)
        if inspect.ismodule(value):
            assert value.__name__ == module_name == f"keras_uncertainty.{name}"
        else:
            assert value is getattr(sys.modules[module_name], name)
    from keras_uncertainty import predict_regression, sample

    assert sample is ku.sampling.sample
    assert predict_regression is ku.sampling.predict_regression
    assert set(ku.__all__) <= set(ku._LAZY) and set(ku.__all__) <= set(dir(ku))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ku.nonsense  # noqa: B018


def test_the_version_is_the_package_metadatas_and_has_a_changelog_entry():
    import importlib.metadata
    import re

    assert importlib.metadata.version("keras-uncertainty") == ku.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", ku.__version__)
    changelog = (PACKAGE.parent / "CHANGELOG.md").read_text()
    assert f"## [{ku.__version__}]" in changelog


def test_every_public_name_has_a_docstring_with_its_sections():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "docs_hooks", PACKAGE.parent / "docs" / "hooks.py"
    )
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert hooks.docstring_problems() == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("layers.SNGPModel", "sngp.SNGPModel"),
        ("layers.sngp.SNGPModel", "sngp.SNGPModel"),
        ("layers.sngp.gaussian_process_layers", "sngp.gaussian_process_layers"),
        ("callbacks.SNGPCovarianceReset", "sngp.SNGPCovarianceReset"),
        ("callbacks.TerminateOnNonFiniteMember", "ensemble.TerminateOnNonFiniteMember"),
        ("ensemble.MIMO", "mimo.MIMO"),
        ("ensemble.build_mimo_network", "mimo.build_mimo_network"),
        ("ensemble.mimo.MIMO", "mimo.MIMO"),
        ("ensemble.batch_ensemble.BatchEnsemble", "batch_ensemble.BatchEnsemble"),
    ],
)
def test_a_moved_name_still_resolves_for_one_release_with_a_deprecation_warning(
    old, new
):
    import importlib

    def resolve(path):
        *module, name = path.split(".")
        return getattr(
            importlib.import_module(".".join(["keras_uncertainty", *module])), name
        )

    with pytest.warns(
        DeprecationWarning, match=rf"ku\.{old}.*moved to ku\.{new}.*0\.4"
    ):
        value = resolve(old)
    assert value is resolve(new)
    with pytest.raises(AttributeError, match="no attribute 'Nonsense'"):
        resolve(old.rpartition(".")[0] + ".Nonsense")


def test_each_method_lives_in_its_own_package():
    # The model, its sampling adapter and its own callbacks, side by side.
    assert (
        ku.sngp.SNGPModel.as_sampled_model.__module__ == "keras_uncertainty.sngp.model"
    )
    assert ku.sngp.SNGPCovarianceReset.__module__ == "keras_uncertainty.sngp.callbacks"
    assert ku.MIMO.__module__ == "keras_uncertainty.mimo.model"
    assert ku.BatchEnsemble.__module__ == "keras_uncertainty.batch_ensemble.model"
    assert ku.ensemble.TerminateOnNonFiniteMember.__module__ == (
        "keras_uncertainty.ensemble.callbacks"
    )
    assert ku.callbacks.__all__ == ["UncertaintyMetrics"]
    import keras

    for name in ku.layers.__all__:
        value = getattr(ku.layers, name)
        building_block = (keras.layers.Layer, keras.regularizers.Regularizer)
        if isinstance(value, type) and not issubclass(value, building_block):
            # Layers (and their regularizer), and the conversion's report.
            assert name == "ConversionReport", name
