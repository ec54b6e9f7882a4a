"""The wheel ships the library and its command line, and nothing of the course.

A wheel is built from a copy of the project (setuptools' PEP 517 backend, no network), then
installed into a bare folder and imported from there, away from the checkout: the library and
its command line work without the course packages ``solutions`` and ``exercises``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for package in ("reference", "solutions", "exercises"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = src / "dist"
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=src, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dist / result.stdout.strip().splitlines()[-1]


def test_wheel_holds_only_the_library(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"reference", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1]
                   + ".dist-info"}, sorted(top)
    shipped = {name for name in names if name.endswith(".py")}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "reference").rglob("*.py")}
    assert shipped == expected
    page = {f"reference/server/static/{n}" for n in ("index.html", "app.js", "style.css")}
    assert page <= set(names), "the playground page must ship with the server"


def test_wheel_declares_the_command_line(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        entry_points = next(n for n in z.namelist() if n.endswith("entry_points.txt"))
        text = z.read(entry_points).decode()
    assert "llm-from-scratch = reference.cli:main" in text


def test_installed_library_runs_without_the_course(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # what pip would put in site-packages (no dependencies needed here)
    code = (
        "import sys, reference, reference.cli, reference.trainer.loop, reference.bpe, "
        "reference.inference\n"
        "assert reference.__file__.startswith(sys.argv[1]), reference.__file__\n"
        "assert not {'solutions', 'exercises'} & {m.split('.')[0] for m in sys.modules}\n"
        "sys.argv = ['llm-from-scratch', '--help']\n"
        "reference.cli.main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-P", "-c", code, str(site)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout
