"""The benchmarks page states every method's defaults as the classes hold them,
and the tables of the README and the page are those of the result files."""

import importlib.util
import json
from pathlib import Path

from keras_uncertainty.experiments import (
    mnist_methods,
    protocols,
    registry,
    uci_methods,
)

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guide" / "benchmarks.md"


def test_the_defaults_tables_are_the_methods_settings():
    text = PAGE.read_text()
    assert protocols.settings_table(uci_methods.METHODS, "uci") in text
    assert protocols.settings_table(mnist_methods.METHODS, "mnist") in text


def test_every_source_a_setting_cites_is_listed():
    cited = {
        source
        for method in registry.METHODS.values()
        for settings in method.settings.values()
        for _, _, source in settings
    }
    assert cited <= {*protocols.SOURCES, "ours"}
    text = PAGE.read_text()
    for key, title in protocols.SOURCES.items():
        assert f"{key} {title}" in text


def _method_table():
    """`benchmarks/method_table.py`, the script that prints the tables."""
    path = ROOT / "benchmarks" / "method_table.py"
    spec = importlib.util.spec_from_file_location("method_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_tables_are_those_of_the_result_files():
    # The README's and the benchmarks page's tables must be what the script
    # prints from the committed result files, so a rerun that changes a
    # number cannot leave an old table behind.
    table = _method_table()
    mnist = json.loads(Path(table.MNIST).read_text())["results"]
    uci = json.loads(Path(table.UCI).read_text())["results"]
    readme = (ROOT / "README.md").read_text()
    summary, _ = table.uci_summary(uci)
    assert table.mnist_table(mnist) in readme
    assert summary in readme
    page = PAGE.read_text()
    assert summary in page
    assert table.uci_table(uci) in page


def test_the_kernel_sets_table_is_that_of_its_result_file():
    path = ROOT / "benchmarks" / "kernel_sets.py"
    spec = importlib.util.spec_from_file_location("kernel_sets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads(
        (ROOT / "benchmarks" / "results" / "kernel_sets.json").read_text()
    )
    table = module.markdown(results["kernel_sets"])
    assert table in (ROOT / "README.md").read_text()


def test_the_variance_heads_table_is_that_of_its_result_file():
    path = ROOT / "benchmarks" / "variance_objective.py"
    spec = importlib.util.spec_from_file_location("variance_objective", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = json.loads(
        (ROOT / "benchmarks" / "results" / "variance_objective.json").read_text()
    )
    assert module.table(record) in PAGE.read_text()
