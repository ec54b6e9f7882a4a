"""Tests of the specs themselves: each classic learner bug must make its component's spec fail.

A mutant is a broken variant of a solution, declared in ``tests/mutants/<component>.py`` as
``MUTANTS = {"name": {"dotted.attribute": replacement, ...}}``. The spec is run in a subprocess
with the replacement patched into the solutions; at least one spec test must fail.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.outcomes import ROOT, run_specs


def _mutants() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "tests" / "mutants").glob("[a-z]*.py")):
        module = importlib.import_module(f"tests.mutants.{path.stem}")
        found += [(path.stem, name) for name in module.MUTANTS]
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("component", "mutant"), _mutants())
def test_spec_catches_mutant(component: str, mutant: str, tmp_path: Path) -> None:
    code, outcomes = run_specs(
        [
            f"specs/test_{component}.py",
            "--impl=solutions",
            f"--mutant=tests.mutants.{component}:{mutant}",
            "-x",
        ],
        tmp_path,
    )
    failed = [k for k, o in outcomes.items() if o.outcome == "failed"]
    assert code == 1 and failed, f"specs/test_{component}.py did not catch the mutant {mutant!r}"
