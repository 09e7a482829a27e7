"""The benchmarks page states every method's defaults as the classes hold them."""

from pathlib import Path

from keras_uncertainty.experiments import mnist_methods, protocols, uci_methods

PAGE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "benchmarks.md"


def test_the_defaults_tables_are_the_methods_settings():
    text = PAGE.read_text()
    assert protocols.settings_table(uci_methods.METHODS) in text
    assert protocols.settings_table(mnist_methods.METHODS) in text


def test_every_source_a_setting_cites_is_listed():
    cited = {
        source
        for registry in (uci_methods.METHODS, mnist_methods.METHODS)
        for method in registry.values()
        for _, _, source in method.settings
    }
    assert cited <= {*protocols.SOURCES, "ours"}
    text = PAGE.read_text()
    for key, title in protocols.SOURCES.items():
        assert f"{key} {title}" in text
