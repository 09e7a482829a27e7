"""MkDocs hooks: the API reference fails the strict build when a public name
of `keras_uncertainty` lacks its docstring, or a docstring lacks the `Args:`
or `Returns:` section its signature calls for.

`docstring_problems()` is also run by `tests/test_public_api.py`, so the
suite catches the same gaps without building the site.
"""

import ast
import dataclasses
import importlib
import inspect
import logging
import textwrap

# Every module the reference documents; a public name is one in `__all__`.
MODULES = (
    "keras_uncertainty",
    "keras_uncertainty.layers",
    "keras_uncertainty.losses",
    "keras_uncertainty.sampling",
    "keras_uncertainty.ensemble",
    "keras_uncertainty.evidential",
    "keras_uncertainty.laplace",
    "keras_uncertainty.metrics",
    "keras_uncertainty.posthoc",
    "keras_uncertainty.calibration",
    "keras_uncertainty.conformal",
    "keras_uncertainty.ood",
    "keras_uncertainty.callbacks",
    "keras_uncertainty.plots",
    "keras_uncertainty.datasets",
    "keras_uncertainty.models",
    "keras_uncertainty.serving",
    "keras_uncertainty.swag",
    "keras_uncertainty.testing",
)

log = logging.getLogger("mkdocs.plugins.keras_uncertainty")


def _returns_a_value(function):
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return False
    tree = ast.parse(source)
    body = tree.body[0]
    for node in ast.walk(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if node is not body:
                continue
        if isinstance(node, ast.Return) and node.value is not None:
            return True
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
    return False


def _parameters(function):
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [
        p for name, p in signature.parameters.items() if name not in ("self", "cls")
    ]


def _problems_of(qualified, obj):
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{qualified}: no docstring"]
    problems = []
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            if "Attributes:" not in doc:
                problems.append(f"{qualified}: a dataclass without 'Attributes:'")
        elif _parameters(obj.__init__) and obj.__init__ is not object.__init__:
            own_init = "__init__" in vars(obj)
            if own_init and "Args:" not in doc:
                problems.append(f"{qualified}: no 'Args:' for its constructor")
    elif callable(obj):
        if _parameters(obj) and "Args:" not in doc:
            problems.append(f"{qualified}: no 'Args:'")
        if _returns_a_value(obj) and "Returns:" not in doc:
            problems.append(f"{qualified}: no 'Returns:'")
    return problems


def docstring_problems():
    """Every gap in the public API's docstrings, as one line each."""
    problems, seen = [], set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if not inspect.getdoc(module):
            problems.append(f"{module_name}: no module docstring")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            problems.extend(_problems_of(f"{module_name}.{name}", obj))
    return problems


def on_pre_build(config, **kwargs):
    for problem in docstring_problems():
        log.warning("public API docstring: %s", problem)
