"""The README's Python blocks run as written, in order, in one namespace.

A line `# prints: TEXT` right after a statement that prints states its real
output: the test checks that TEXT appears in what the block printed, in order.
"""

import contextlib
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    return {"__name__": "readme"}, tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_and_prints_what_it_says(index, namespace, monkeypatch):
    scope, folder = namespace
    monkeypatch.chdir(folder)  # blocks that write files write them here
    block = BLOCKS[index]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, f"README.md python block {index}", "exec"), scope)
    plt.close("all")
    printed = output.getvalue()
    position = 0
    for expected in re.findall(r"^# prints: (.*)$", block, re.M):
        found = printed.find(expected, position)
        assert found >= 0, f"block {index}: expected {expected!r} in {printed!r}"
        position = found + len(expected)
