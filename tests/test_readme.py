"""The README's Python blocks, then those of the guide pages it continues
into (`docs/guide/`), run as written, in order, in one namespace.

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

ROOT = Path(__file__).resolve().parents[1]
# The README, then the guide pages its sections moved to, in reading order.
PAGES = [
    ROOT / "README.md",
    *(
        ROOT / "docs" / "guide" / name
        for name in ("methods.md", "evaluation.md", "deploying.md", "internals.md")
    ),
]
BLOCKS = [
    (page.name, block)
    for page in PAGES
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
]


def test_the_guide_pages_with_code_are_all_run():
    guide = {p.name for p in (ROOT / "docs" / "guide").glob("*.md")}
    with_code = {
        n for n in guide if "```python" in (ROOT / "docs/guide" / n).read_text()
    }
    assert with_code <= {p.name for p in PAGES}


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    return {"__name__": "readme"}, tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_and_prints_what_it_says(index, namespace, monkeypatch):
    scope, folder = namespace
    monkeypatch.chdir(folder)  # blocks that write files write them here
    page, block = BLOCKS[index]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(block, f"{page} python block {index}", "exec"), scope)
    plt.close("all")
    printed = output.getvalue()
    position = 0
    for expected in re.findall(r"^# prints: (.*)$", block, re.M):
        found = printed.find(expected, position)
        assert found >= 0, f"block {index}: expected {expected!r} in {printed!r}"
        position = found + len(expected)
