"""The source distribution carries what its own tests need, and the licences."""

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
