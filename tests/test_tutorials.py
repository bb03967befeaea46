"""Every numbered tutorial runs as a script in its tiny mode and saves a figure or table.

Tutorials are ``tutorials/NN_*.py`` percent-format files (see tutorials/README.md);
new ones are picked up automatically. Each runs in a subprocess with
``MINISYNTH_TUTORIAL_TINY=1`` and ``MINISYNTH_TUTORIAL_OUT`` set to a temporary
folder, with that folder as the working directory, so nothing is written into
the checkout.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
OUTPUT_SUFFIXES = {".png", ".svg", ".pdf", ".csv", ".md", ".txt"}
TIMEOUT_S = 120  # tiny mode takes seconds; this only catches a hang


def test_tutorials_exist():
    assert TUTORIALS, f"no tutorials found in {TUTORIALS_DIR}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_and_saves_output(path, tmp_path):
    if "\nimport torch\n" in path.read_text(encoding="utf-8"):
        pytest.importorskip("torch")  # the PyTorch tutorial needs the torch extra
    out = tmp_path / "out"  # the tutorial must create it if missing
    env = {**os.environ, "MINISYNTH_TUTORIAL_TINY": "1", "MINISYNTH_TUTORIAL_OUT": str(out)}
    env.pop("MPLBACKEND", None)  # the tutorials draw with Figure objects: no GUI backend needed
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"{path.name} failed (exit {proc.returncode})\n"
        f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr (tail) ---\n{proc.stderr[-3000:]}"
    )
    saved = [p for p in out.rglob("*") if p.is_file() and p.suffix in OUTPUT_SUFFIXES]
    assert saved, f"{path.name} saved no figure or table into MINISYNTH_TUTORIAL_OUT ({out})"
    assert all(p.stat().st_size > 0 for p in saved), f"{path.name} saved an empty file"


def _private_names(tree):
    """Imported or attribute names that start with one underscore (dunders are fine)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        for name in names:
            for part in name.split("."):
                if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
                    found.add(name)
    return found


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_uses_only_public_api(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert not _private_names(tree), f"{path.name} uses private names {_private_names(tree)}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_percent_format(path):
    """Opens as a notebook in Jupyter (jupytext) and VS Code: cells marked by '# %%'."""
    lines = path.read_text(encoding="utf-8").splitlines()
    markers = [line for line in lines if line.startswith("# %%")]
    assert any(m.startswith("# %% [markdown]") for m in markers), "no markdown cell"
    assert any(m.rstrip() == "# %%" for m in markers), "no code cell"
    # the jupytext header (format and kernel), then the first cell
    assert lines[0] == "# ---" and "#   kernelspec:" in lines, "no jupytext header with a kernel"
    end = lines.index("# ---", 1)
    first = next(line for line in lines[end + 1 :] if line.strip())
    assert first.startswith("# %%"), "the first cell should follow the header"
