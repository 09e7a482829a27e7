"""Every notebook runs top to bottom at its saved settings, without error."""

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_six_notebooks_are_there():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_without_error(path):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    saved = nbformat.read(path, as_version=4)
    for ran, stored in zip(notebook.cells, saved.cells):
        if ran.cell_type == "code":
            kinds = {o.output_type for o in ran.outputs}
            assert "error" not in kinds
            # Saved outputs read well on a code host: every figure is there.
            assert sum(o.output_type == "display_data" for o in stored.outputs) == sum(
                o.output_type == "display_data" for o in ran.outputs
            )
