"""Build the executed notebooks: every ``tutorials/NN_*.py`` -> ``tutorials/NN_*.ipynb``.

    pip install ".[notebooks]"
    python tutorials/build_notebooks.py            # all tutorials, full size (a few minutes)
    python tutorials/build_notebooks.py 03 09      # some of them

The ``.py`` file is the source; the notebook is generated from it (jupytext), run
top to bottom in a fresh kernel (nbclient) in full mode, and written with its
printed output and figures. What would change on every rebuild without a real
change is left out: the figures and tables the tutorials save go to a temporary
folder whose path is replaced by ``output/`` in the printed text, progress bars
are off, execution timestamps are not recorded, cell ids are numbered, and inline
figures are PNGs at a fixed resolution. Measured timings do vary from run to run:
they are results, and the prose around them is written to hold for any run.
``tests/test_notebooks.py`` checks that each notebook's cells are its ``.py``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 1800  # per cell; 07 trains for a few minutes
# inline figures: PNG at 80 dpi reads well on screen and keeps each notebook small
SETUP = (
    "%matplotlib inline\n"
    "%config InlineBackend.figure_formats = ['png']\n"
    "%config InlineBackend.print_figure_kwargs = {'dpi': 80, 'bbox_inches': 'tight'}"
)


def tutorials(selected):
    paths = sorted(HERE.glob("[0-9][0-9]_*.py"))
    if selected:
        paths = [p for p in paths if p.name[:2] in selected]
    return paths


def scrub(text, out_dir):
    """Machine-specific paths -> stable ones."""
    for path, stable in ((out_dir, "output"), (str(HERE), "tutorials"), (str(ROOT), ".")):
        text = text.replace(path, stable)
    return text


def is_widget_warning(output):
    """tqdm.auto's warning that ipywidgets is missing (progress bars are off here anyway)."""
    return output.get("name") == "stderr" and "TqdmWarning: IProgress not found" in "".join(
        output.get("text", "")
    )


def build(path, tiny=False):
    notebook = jupytext.read(path)
    with tempfile.TemporaryDirectory(prefix="minisynth-notebook-") as out_dir:
        env_before = dict(os.environ)
        os.environ.update(MINISYNTH_TUTORIAL_OUT=out_dir, TQDM_DISABLE="1")
        os.environ.pop("MINISYNTH_TUTORIAL_TINY", None)
        if tiny:
            os.environ["MINISYNTH_TUTORIAL_TINY"] = "1"
        os.environ.pop("MPLBACKEND", None)
        try:
            setup = nbformat.v4.new_code_cell(SETUP)
            notebook.cells.insert(0, setup)
            client = NotebookClient(
                notebook,
                timeout=TIMEOUT_S,
                kernel_name="python3",
                resources={"metadata": {"path": str(HERE)}},
                record_timing=False,
            )
            client.execute()
        finally:
            os.environ.clear()
            os.environ.update(env_before)
        notebook.cells.pop(0)  # the setup cell is not part of the tutorial
        for i, cell in enumerate(notebook.cells):
            cell["id"] = f"cell-{i}"
            cell["metadata"].pop("execution", None)
            if cell["cell_type"] != "code":
                continue
            cell["execution_count"] = i  # stable numbering, not the kernel's counter
            cell["outputs"] = [o for o in cell["outputs"] if not is_widget_warning(o)]
            for output in cell["outputs"]:
                if "execution_count" in output:
                    output["execution_count"] = i
                if output.get("name") == "stderr":  # warnings, not lessons: keep them, scrubbed
                    output["text"] = scrub(output["text"], out_dir)
                elif "text" in output:
                    output["text"] = scrub(output["text"], out_dir)
                for key in ("text/plain", "text/html"):
                    if key in output.get("data", {}):
                        output["data"][key] = scrub(output["data"][key], out_dir)
    notebook.metadata["minisynth"] = {"mode": "tiny" if tiny else "full"}  # tests require full
    notebook.metadata.pop("widgets", None)
    notebook.metadata.get("language_info", {}).pop("version", None)
    target = path.with_suffix(".ipynb")
    nbformat.write(notebook, target)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tutorials", nargs="*", help="two-digit numbers (default: all)")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes, to check the build (never commit these)"
    )
    args = parser.parse_args(argv)
    for path in tutorials(args.tutorials):
        start = time.perf_counter()
        target = build(path, tiny=args.tiny)
        size = target.stat().st_size / 1e6
        print(f"{target.name}: {size:.2f} MB, {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
