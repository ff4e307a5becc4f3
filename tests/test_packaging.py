"""The distribution as users get it: the wheel and sdist build, twine accepts them,
the wheel carries everything the package loads at run time, and the code is lint
clean. Skipped (with the reason) where the tools are not installed, except under
CI, which installs them (conftest's require_module)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

import django_poolbackend

from .conftest import ROOT, require_module, require_tool

ENGINES = ["postgresql", "mysql", "sqlite3", "postgis", "mysql_gis"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: Any) -> dict[str, Path]:
    require_module("build", "build", "the dev extra installs it")
    out = tmp_path_factory.mktemp("dist")
    # The sdist first, then the wheel from it: what `python -m build` does, so a
    # file missing from the sdist shows up as one missing from the wheel.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_wheel_has_templates_types_and_every_engine(dist: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    assert "django_poolbackend/py.typed" in names
    assert "django_poolbackend/templates/django_poolbackend/panel.html" in names
    for engine in ENGINES:
        assert f"django_poolbackend/{engine}/base.py" in names
    assert not [name for name in names if name.startswith(("tests/", "testproject/"))]


def test_license_travels_with_both(dist: dict[str, Path]) -> None:
    version = django_poolbackend.__version__
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        info = f"django_poolbackend-{version}.dist-info"
        assert wheel.read(f"{info}/licenses/LICENSE").decode() == license_text
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert metadata.get_all("License-File") == ["LICENSE"]
    top = dist["sdist"].name.removesuffix(".tar.gz")
    with tarfile.open(dist["sdist"]) as sdist:
        member = sdist.extractfile(f"{top}/LICENSE")
        assert member is not None
        assert member.read().decode() == license_text


def test_metadata_version_from_one_place(dist: dict[str, Path]) -> None:
    version = django_poolbackend.__version__
    assert dist["wheel"].name == f"django_poolbackend-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        raw = wheel.read(f"django_poolbackend-{version}.dist-info/METADATA").decode()
    metadata = Parser().parsestr(raw)
    assert metadata["Name"] == "django-poolbackend"
    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert {"postgresql", "mysql", "debug-toolbar", "prometheus"} <= set(
        metadata.get_all("Provides-Extra")
    )
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_sdist_can_run_the_suite_and_read_the_docs(dist: dict[str, Path]) -> None:
    top = dist["sdist"].name.removesuffix(".tar.gz")
    names = set(tarfile.open(dist["sdist"]).getnames())
    for path in [
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "docs/engines.md",
        "tests/conftest.py",
        "tests/settings.py",
        "testproject/settings.py",
    ]:
        assert f"{top}/{path}" in names, path
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_twine_accepts_both(dist: dict[str, Path]) -> None:
    require_module("twine", "twine", "the dev extra installs it")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(dist["wheel"]),
            str(dist["sdist"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_ruff_is_clean_on_the_package() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    require_tool("ruff", ruff is not None, "the dev extra installs it")
    assert ruff is not None  # for the type checker: require_tool() returned, so it is
    result = subprocess.run(
        [ruff, "check", "--no-cache", "django_poolbackend"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All checks passed" in result.stdout


def test_mypy_strict_accepts_the_package() -> None:
    require_module("mypy", "mypy", "pip install mypy django-stubs (the dev extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "django_poolbackend"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
