"""The source distribution carries what its own tests need, and the licences; the runtime
dependencies are enough to train."""

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_version():
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    if _setuptools_version() < (77,):
        pytest.skip("building the sdist needs setuptools>=77 (pip install '.[dev]')")
    out = tmp_path_factory.mktemp("sdist")
    code = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    name = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    with tarfile.open(out / name) as tar:
        top = name.removesuffix(".tar.gz")
        members = {m.removeprefix(top + "/") for m in tar.getnames()}
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    return members, pkg_info


def test_sdist_holds_the_tests_and_everything_they_run(sdist):
    members, _ = sdist
    needed = [
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("tutorials/*.py"),
        *ROOT.glob("tutorials/*.md"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("minisynth/**/*.py"),
        *ROOT.glob("minisynth/corpus/*"),
    ]
    assert len(needed) > 40
    missing = sorted(
        str(p.relative_to(ROOT)) for p in needed if str(p.relative_to(ROOT)) not in members
    )
    assert not missing, missing
    assert not any("output/" in m or m.endswith(".npz") for m in members)


def test_sdist_declares_the_licences(sdist):
    members, pkg_info = sdist
    assert {"LICENSE", "LICENSE-DATA.md"} <= members
    assert "License-Expression: MIT" in pkg_info
    assert "License-File: LICENSE-DATA.md" in pkg_info
    assert "CC BY-SA" in (ROOT / "LICENSE-DATA.md").read_text()


def _names(requirements):
    return {re.match(r"[A-Za-z0-9_.-]+", r).group().lower() for r in requirements}


def test_train_needs_no_package_that_only_an_extra_installs(tmp_path):
    """The README's first command is `pip install . && minisynth train`: with every package
    that only an extra adds made unimportable, training runs, on the full path and in tiles."""
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set().union(*map(_names, project["optional-dependencies"].values()))
    blocked = sorted(n.replace("-", "_") for n in extras - _names(project["dependencies"]))
    assert "torch" in blocked and "pytest" in blocked  # pyproject.toml was read
    code = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # as if not installed: importing it raises ImportError\n"
        "from minisynth.cli import main\n"
        "for tiles, length in (('auto', '16'), ('always', '64')):\n"
        "    status = main(['train', '--steps', '2', '--warmup-steps', '1', '--d-model', '16',\n"
        "                   '--n-heads', '2', '--n-layers', '1', '--max-len', length,\n"
        "                   '--batch-size', '2', '--tiles', tiles, '--sample-length', '8',\n"
        f"                   '--out', {str(tmp_path)!r} + '/' + tiles, '--quiet'])\n"
        "    assert status == 0, status\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
