"""Tests of the specs themselves: each classic learner bug must make its component's spec fail.

A mutant is a broken variant of a solution, declared in ``tests/mutants/<component>.py`` as
``MUTANTS = {"name": {"dotted.attribute": replacement, ...}}`` (paths relative to the module
``solutions.<component>``). One subprocess per component runs its spec against every mutant, each
patched into the solutions in turn and stopped at its first failing test; every mutant must make
at least one spec test fail (in the test itself, not in set-up).

Hints that teach: a mutants file's ``HINTS = {"name": "regex"}`` names, for the classic bugs, the
cause the learner should read. The first spec test that catches such a mutant (the first red test
a learner with that bug sees) must fail with a message matching the regex (case-insensitive);
``specs/hints.py`` helps a spec name the bug its wrong answer matches.

Check one mutant by hand::

    pytest specs/test_attention.py --impl=solutions --mutant=tests.mutants.attention:no_scale
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.outcomes import ROOT, run_specs

COMPONENTS = sorted(p.stem for p in (ROOT / "tests" / "mutants").glob("[a-z]*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("component", COMPONENTS)
def test_spec_catches_every_mutant(component: str, tmp_path: Path) -> None:
    mutants = set(importlib.import_module(f"tests.mutants.{component}").MUTANTS)
    assert mutants, f"tests/mutants/{component}.py declares no MUTANTS"
    _, outcomes = run_specs(
        [
            f"specs/test_{component}.py",
            "--impl=solutions",
            f"--mutant=tests.mutants.{component}:*",
        ],
        tmp_path,
    )
    caught = set()
    for nodeid, o in outcomes.items():
        match = re.search(r"[\[-]solutions-(\w+)[\]-]", nodeid)
        assert match and match[1] in mutants, f"not a mutant run: {nodeid}"
        assert o.when == "call" or o.outcome != "failed", (
            f"{nodeid}: the mutant broke the test set-up ({o.exception}: {o.message})"
        )
        if o.outcome == "failed":
            caught.add(match[1])
    assert mutants - caught == set(), f"specs/test_{component}.py misses mutants"
    hints = hints_of(component)
    silent = {}
    for nodeid, o in outcomes.items():
        name = re.search(r"[\[-]solutions-(\w+)[\]-]", nodeid)[1]  # type: ignore[index]
        if o.outcome == "failed" and name in hints and not re.search(hints[name], o.message, re.I):
            silent[name] = f"{nodeid}: {o.message[:300]!r} does not match {hints[name]!r}"
    assert not silent, (
        f"specs/test_{component}.py: the first failure of these mutants does not name their "
        "likely cause:\n" + "\n".join(silent.values())
    )


def hints_of(component: str) -> dict[str, str]:
    return dict(getattr(importlib.import_module(f"tests.mutants.{component}"), "HINTS", {}))


MIN_HINTS = 5


@pytest.mark.parametrize("component", COMPONENTS)
def test_classic_bugs_have_hints(component: str) -> None:
    """Every component names the likely cause of at least five classic bugs (all, if fewer)."""
    mutants = importlib.import_module(f"tests.mutants.{component}").MUTANTS
    hints = hints_of(component)
    assert set(hints) <= set(mutants), f"HINTS names no mutant: {sorted(set(hints) - set(mutants))}"
    assert len(hints) >= min(MIN_HINTS, len(mutants)), (
        f"tests/mutants/{component}.py: HINTS covers {len(hints)} of {len(mutants)} mutants; "
        f"give the likely cause of at least {min(MIN_HINTS, len(mutants))} classic bugs"
    )
    for regex in hints.values():
        re.compile(regex)
