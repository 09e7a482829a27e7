"""The package's architecture, read from its import statements: floors that
only import downwards, no cycle, no private name across packages, and one
folder per method."""

import ast
import collections
import functools
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_uncertainty"

# The floors, bottom up: a unit imports only from its own floor or below.
FLOORS = (
    # Foundations: the shared checks, budgets, compatibility shims.
    {
        "_backend",
        "_budget",
        "_deprecation",
        "_keras_compat",
        "_precision",
        "_registration",
        "_split_gradient",
        "_validation",
    },
    # Formulas and data: no model in sight.
    {"conformal", "datasets", "losses", "metrics", "posthoc"},
    # The sampling engine and its contracts (imports no method), the plots.
    {"plots", "sampling"},
    # Layers, and what works on any sampled model; methods without layers.
    {
        "calibration",
        "callbacks",
        "evidential",
        "laplace",
        "layers",
        "mimo",
        "ood",
        "serving",
        "swag",
        "testing",
    },
    # Methods built on the layers.
    {"batch_ensemble", "ensemble", "models", "sngp"},
    # The benchmarks' protocols and method registry.
    {"experiments"},
    # The command line, which uses everything.
    {"cli"},
)
FLOOR_OF = {unit: i for i, units in enumerate(FLOORS) for unit in units}
METHODS = (
    "batch_ensemble",
    "ensemble",
    "evidential",
    "laplace",
    "mimo",
    "sngp",
    "swag",
)


def _imports():
    """`[(file, source unit, target unit, module, names)]` of every import
    of the package by the package (inside functions too)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        source = rel.parts[0].removesuffix(".py")
        if source in ("__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                modules = [(node.module or "", [a.name for a in node.names])]
            elif isinstance(node, ast.Import):
                modules = [(a.name, []) for a in node.names]
            else:
                continue
            for module, names in modules:
                parts = module.split(".")
                if parts[0] != "keras_uncertainty":
                    continue
                targets = [parts[1]] if len(parts) > 1 else names
                for target in targets:
                    if target != source:
                        found.append((str(rel), source, target, module, names))
    return found


def _graph():
    edges = collections.defaultdict(set)
    for _, source, target, _, _ in _imports():
        edges[source].add(target)
    return edges


def test_every_unit_of_the_package_has_a_floor():
    units = {
        p.name.removesuffix(".py")
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"
    } - {"__init__", "__main__"}
    assert units == set(FLOOR_OF), sorted(units ^ set(FLOOR_OF))


def test_imports_point_down_the_floors_and_form_no_cycle():
    upward = [
        f"{file}: {source} (floor {FLOOR_OF[source]}) imports {module} "
        f"(floor {FLOOR_OF[target]})"
        for file, source, target, module, _ in _imports()
        if FLOOR_OF[target] > FLOOR_OF[source]
    ]
    assert upward == []
    edges = _graph()
    state, cycles = {}, []

    def visit(unit, path):
        state[unit] = "open"
        for target in sorted(edges.get(unit, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[unit] = "done"

    for unit in sorted(FLOOR_OF):
        if unit not in state:
            visit(unit, [unit])
    assert cycles == []

    @functools.cache
    def depth(unit):
        return 1 + max((depth(t) for t in edges.get(unit, ())), default=0)

    # The longest chain of imports: 7 floors or fewer.
    assert max(depth(unit) for unit in FLOOR_OF) <= len(FLOORS) == 7


def test_no_private_name_is_imported_across_packages():
    crossing = [
        f"{file}: {module} {names}"
        for file, source, target, module, names in _imports()
        if not target.startswith("_")  # the shared foundations are meant to be
        and "." in module  # `from keras_uncertainty import _budget` names a unit
        and (
            any(part.startswith("_") for part in module.split(".")[2:])
            or any(name.startswith("_") for name in names)
        )
    ]
    assert crossing == []


def test_the_engine_and_the_metrics_import_no_method():
    edges = _graph()
    assert not edges["sampling"] & set(METHODS)
    assert not edges["metrics"] - {"_validation"}
    for method in METHODS:  # a method is never imported by another method
        assert not edges[method] & (set(METHODS) - {method}), method


@pytest.mark.parametrize(
    "method, parts",
    [
        ("ensemble", {"model.py", "sampled.py", "callbacks.py"}),
        ("batch_ensemble", {"model.py"}),
        ("mimo", {"model.py"}),
        ("sngp", {"model.py", "callbacks.py"}),
        ("laplace", {"laplace.py", "model.py"}),
        ("swag", {"model.py", "callback.py", "state.py"}),
        ("evidential", {"classification.py", "regression.py"}),
    ],
)
def test_each_method_is_one_folder(method, parts):
    folder = PACKAGE / method
    assert parts <= {p.name for p in folder.glob("*.py")}
    # Its sampling adapter (or its declaration) is defined in its folder.
    text = "".join(p.read_text() for p in folder.glob("*.py"))
    assert "class " in text and ("SampledModel)" in text or "task_reducer" in text), (
        method
    )
