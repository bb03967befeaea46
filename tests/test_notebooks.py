"""The committed notebooks are their tutorials' ``.py`` sources, executed in full mode.

``python tutorials/build_notebooks.py`` writes them (see its docstring). These tests
read the notebooks without executing anything: they fail when a ``.py`` was edited
without rebuilding its notebook, and when a notebook carries what a rebuild should
never leave (tiny mode, errors, machine paths, unexecuted cells, missing figures).
"""

import json
import re
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")  # the `test` extra has it; CI fails on skips

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
MAX_BYTES = 1_000_000
MACHINE_PATHS = ("/tmp/", "/work/", "/home/", "/Users/", "minisynth-notebook-")


def notebook(path):
    nb_path = path.with_suffix(".ipynb")
    assert nb_path.exists(), (
        f"{nb_path.name} is missing: run python tutorials/build_notebooks.py {path.name[:2]}"
    )
    return json.loads(nb_path.read_text(encoding="utf-8"))


def source_text(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_notebook_cells_are_the_py_source(path):
    want = [(c.cell_type, c.source) for c in jupytext.read(path).cells]
    got = [(c["cell_type"], source_text(c)) for c in notebook(path)["cells"]]
    assert got == want, (
        f"{path.name} and its notebook differ: rebuild it with "
        f"python tutorials/build_notebooks.py {path.name[:2]}"
    )


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_notebook_is_executed_in_full_clean_and_small(path):
    nb = notebook(path)
    assert nb["metadata"].get("minisynth", {}).get("mode") == "full", "built with --tiny"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert path.with_suffix(".ipynb").stat().st_size < MAX_BYTES
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] is not None for c in code), "a code cell was not run"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure shown"
    text = json.dumps(outputs)
    for marker in MACHINE_PATHS:
        assert marker not in text, f"a machine path ({marker}) in the outputs"


FIGURE_NAME = re.compile(r"\b\d\d_[A-Za-z0-9_]+\.png\b")


def output_text(cell):
    return "".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for o in cell.get("outputs", [])
    )


def shows_image(cell):
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_every_figure_the_text_names_is_shown(path):
    """A figure file named in the prose or in printed output (``08_compare_layer1.png``)
    is displayed by a cell that names it (in its source or its printed output)."""
    cells = notebook(path)["cells"]
    named = set()
    for cell in cells:
        text = source_text(cell) if cell["cell_type"] == "markdown" else output_text(cell)
        named |= set(FIGURE_NAME.findall(text))
    shown = set()
    for cell in cells:
        if cell["cell_type"] == "code" and shows_image(cell):
            shown |= set(FIGURE_NAME.findall(source_text(cell) + output_text(cell)))
    missing = sorted(named - shown)
    assert not missing, f"{path.name} names figures it does not display: {missing}"
