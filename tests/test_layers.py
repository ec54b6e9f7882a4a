"""The layers point one way: the library (``reference/``) at the bottom, the course on top.

``lint-imports`` (import-linter) checks the contracts in ``pyproject.toml``: the library imports
nothing from ``solutions`` or ``exercises``; the solutions never import the stubs; the stubs never
import the solutions. The second test proves the check can fail: a copy of the three packages
with one wrong import must break the contract it violates, and name the module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("reference", "solutions", "exercises")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("reference/model.py", "import solutions.attention", "the library imports nothing"),
        ("reference/trainer/loop.py", "from exercises import gpt", "the library imports nothing"),
        ("solutions/gpt/model.py", "import exercises.attention", "solutions never import"),
        ("exercises/attention.py", "from solutions.bpe import merge", "stubs never import"),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, f"{wrong_import} in {module} went unnoticed:\n{result.stdout}"
    # (an indirect import counts too: the stubs import the library, so a library module that
    # imports the solutions also breaks "the stubs never import the solutions")
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(contract in line for line in broken), result.stdout[-3000:]
    dotted = module.removesuffix(".py").replace("/", ".")
    assert dotted in result.stdout, f"the report should name {dotted}:\n{result.stdout[-3000:]}"
