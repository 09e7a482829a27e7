"""Every notebook runs top to bottom at its saved settings, without error."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# Notebooks executed at a time. Each kernel keeps about one core busy (a
# notebook is mostly small Keras steps, one after another), so on two cores
# two kernels at a time take about half as long as one after another. Each
# notebook still runs alone in its own kernel, top to bottom.
_AT_ONCE = 2


def test_the_eight_notebooks_are_there():
    assert [p.name[:3] for p in NOTEBOOKS] == [f"0{i}_" for i in range(1, 9)]


def _execute(path):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    return notebook


@pytest.fixture(scope="module")
def executed(request):
    """The notebooks this session runs, `_AT_ONCE` at a time, in the order of
    the tests: each test waits for its own notebook only."""
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if item.originalname == "test_notebook_runs_without_error"
    ]
    pool = ThreadPoolExecutor(max_workers=_AT_ONCE)
    try:
        yield {path: pool.submit(_execute, path) for path in selected}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# The notebooks that train packed convolutional ensembles, BatchEnsembles or
# Bayesian convolutions run again with oneDNN off in .ci/run.
_KERNELS = ("03_", "06_", "07_", "08_")


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.kernels) if p.name.startswith(_KERNELS) else p
        for p in NOTEBOOKS
    ],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_runs_without_error(path, executed):
    notebook = executed[path].result()  # re-raises the CellExecutionError
    saved = nbformat.read(path, as_version=4)
    for ran, stored in zip(notebook.cells, saved.cells):
        if ran.cell_type == "code":
            kinds = {o.output_type for o in ran.outputs}
            assert "error" not in kinds
            # Saved outputs read well on a code host: every figure is there.
            assert sum(o.output_type == "display_data" for o in stored.outputs) == sum(
                o.output_type == "display_data" for o in ran.outputs
            )
