"""The package as users get it: ``python -m build`` makes an sdist and a wheel that pass
``twine check``, hold what they must, and install into a fresh venv where the CLI starts.

Offline: the build runs without isolation (hatchling from this environment), and the fresh venv
gets the wheel with ``--no-deps --no-index`` plus copies of the few pure runtime dependencies
``--help`` needs, so no package index is contacted and torch is never installed.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from productdesc import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What `productdesc --help` imports besides productdesc: attrs (configs), orjson, tomli-w, tqdm.
HELP_DEPENDENCIES = ("attrs", "orjson", "tomli-w", "tqdm")


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="pip install build")
    pytest.importorskip("hatchling", reason="pip install hatchling (the build backend)")
    out = tmp_path_factory.mktemp("dist")
    # Default mode: the sdist first, then the wheel built *from the sdist*, so a file missing
    # from the sdist breaks the wheel too.
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
    return out


def _one(dist: Path, pattern: str) -> Path:
    (path,) = dist.glob(pattern)
    return path


def test_build_makes_sdist_and_wheel_that_pass_twine(dist: Path) -> None:
    pytest.importorskip("twine", reason="pip install twine")
    sdist = _one(dist, f"productdesc-{__version__}.tar.gz")
    wheel = _one(dist, f"productdesc-{__version__}-py3-none-any.whl")
    result = run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)
    assert result.stdout.count("PASSED") == 2


def test_wheel_holds_types_sample_data_and_license(dist: Path) -> None:
    wheel = _one(dist, "*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"productdesc-{__version__}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "productdesc/py.typed" in names
    assert "productdesc/data/sample/trn_sample.jsonl" in names
    assert f"{info}/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert "productdesc = productdesc.cli:main" in entry_points
    # every module of the checkout is packaged, and nothing from outside the package
    source = {
        p.relative_to(ROOT / "src").as_posix()
        for p in (ROOT / "src" / "productdesc").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert source <= names
    assert all(n.startswith(("productdesc/", info + "/")) for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_sdist_holds_sources_tests_docs_and_examples(dist: Path) -> None:
    sdist = _one(dist, "*.tar.gz")
    top = f"productdesc-{__version__}"
    with tarfile.open(sdist) as tf:
        names = {name.removeprefix(top + "/") for name in tf.getnames()}
    for required in (
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "src/productdesc/py.typed",
        "src/productdesc/data/sample/trn_sample.jsonl",
        "tests/conftest.py",
        "docs/conf.py",
        "examples/plugin_example/pyproject.toml",
    ):
        assert required in names, required
    assert not any(n.startswith("docs/_build") or "__pycache__" in n for n in names)


def _copy_distribution(name: str, target: Path) -> None:
    """Copy an installed distribution's files (no index needed: it is already here)."""
    dist = importlib.metadata.distribution(name)
    for file in dist.files or ():
        source = Path(dist.locate_file(file))
        if source.is_file() and ".." not in file.parts:
            destination = target / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


@pytest.fixture(scope="module")
def fresh_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv)  # not --system-site-packages: nothing leaks in
    python = venv / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", _one(dist, "*.whl"))
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    for name in HELP_DEPENDENCIES:
        _copy_distribution(name, site)
    return venv


def test_wheel_installs_and_the_cli_starts_without_torch(fresh_venv: Path, tmp_path: Path) -> None:
    bindir = fresh_venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = bindir / "python"
    where = run(python, "-c", "import productdesc; print(productdesc.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv)  # the wheel, not the checkout
    missing = subprocess.run([python, "-c", "import torch"], capture_output=True, cwd=tmp_path)
    assert missing.returncode != 0  # so --help below really runs without torch

    top = run(bindir / "productdesc", "--help", cwd=tmp_path)
    for command in ("prepare", "train", "describe", "demo", "evaluate", "plugins"):
        assert command in top.stdout
    demo = run(bindir / "productdesc", "demo", "--help", cwd=tmp_path)
    assert demo.stdout.startswith("usage: productdesc demo")
    version = run(bindir / "productdesc", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"productdesc {__version__}"

    sample = run(
        python,
        "-c",
        "from productdesc.data import sample_path; p = sample_path(); "
        "print(p.is_file(), sum(1 for _ in p.open()))",
        cwd=tmp_path,
    )
    is_file, lines = sample.stdout.split()
    assert is_file == "True" and int(lines) > 0
