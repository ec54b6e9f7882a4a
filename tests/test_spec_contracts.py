"""Every spec states its contract and is held to the component standard.

* Its module docstring has a contract table: a Markdown table after a line ``Contract:``, with
  the columns ``clause | tests | oracle``. Every test it names exists in the spec, and every
  test of the spec is named by some clause: no clause without a test, no test without a clause.
* It has a mutants file, ``tests/mutants/<component>.py``, with classic learner bugs (``MUTANTS``)
  that ``tests/test_mutants.py`` proves the spec catches.
* No tolerance looser than the dtype needs: an ``atol``/``rtol`` (or a ``*_TOL`` constant) above
  1e-5 carries a comment on its line saying why.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.outcomes import ROOT

SPECS = sorted((ROOT / "specs").glob("test_*.py"))
TOLERANCE = re.compile(
    r"(?:\b[ar]tol\s*=\s*|\b[A-Z_]*(?:TOL|ATOL|RTOL)\w*\s*(?::\s*\w+\s*)?=\s*)"
    r"(?P<value>[0-9][0-9_.]*(?:e-?\d+)?)"
)


def contract_rows(doc: str) -> list[tuple[str, list[str], str]]:
    """(clause, tests, oracle) rows of the table after the line ``Contract:``."""
    _, found, rest = doc.partition("\nContract:")
    assert found, "the module docstring has no 'Contract:' table"
    rows = []
    for line in rest.strip().splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or set(cells[0]) <= set("-: ") or cells[0].lower() == "clause":
            continue
        tests = [t.strip(" `") for t in cells[1].split(",") if t.strip(" `")]
        rows.append((cells[0], tests, cells[2]))
    return rows


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_the_spec_has_a_contract_table_tying_every_test_to_a_clause(spec: Path) -> None:
    module = importlib.import_module(f"specs.{spec.stem}")
    rows = contract_rows(module.__doc__ or "")
    assert len(rows) >= 5, f"{spec.name}: a contract of {len(rows)} clauses is too thin"
    tests = {name for name in dir(module) if name.startswith("test_")}
    named = {t for _, ts, _ in rows for t in ts}
    assert not named - tests, f"{spec.name}: the table names tests that do not exist: " \
        f"{sorted(named - tests)}"
    assert not tests - named, f"{spec.name}: tests tied to no clause: {sorted(tests - named)}"
    empty = [clause for clause, ts, oracle in rows if not ts or not oracle]
    assert not empty, f"{spec.name}: clauses without a test or an oracle: {empty}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_the_spec_has_a_mutants_file(spec: Path) -> None:
    component = spec.stem.removeprefix("test_")
    path = ROOT / "tests" / "mutants" / f"{component}.py"
    assert path.is_file(), f"{spec.name} has no mutants file {path.relative_to(ROOT)}"
    mutants = importlib.import_module(f"tests.mutants.{component}")
    assert len(mutants.MUTANTS) >= 5, f"{path.name}: too few classic bugs"
    for (function, line), why in getattr(mutants, "EQUIVALENT", {}).items():
        assert function and line and len(why) > 20, f"{path.name}: triage {function!r} " \
            "needs the mutated line and the reason no test can tell it apart"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_no_tolerance_looser_than_the_dtype_needs_without_a_reason(spec: Path) -> None:
    loose = []
    for number, line in enumerate(spec.read_text().splitlines(), 1):
        code, _, comment = line.partition("#")
        for match in TOLERANCE.finditer(code):
            if float(match["value"].replace("_", "")) > 1e-5 and not comment.strip():
                loose.append(f"{spec.name}:{number}: {line.strip()}")
    assert not loose, "tolerances above 1e-5 need a reason on their line:\n" + "\n".join(loose)


def test_the_contract_table_parser_reads_a_table() -> None:
    doc = ("Spec.\n\nContract:\n\n| clause | tests | oracle |\n|---|---|---|\n"
           "| sums to one | `test_a`, `test_b` | torch.softmax |\n\nAfter.\n")
    assert contract_rows(doc) == [("sums to one", ["test_a", "test_b"], "torch.softmax")]
