"""The docstrings' examples are true: every ``>>>`` example in the library, the worked
solutions and the specs' hint helper runs as a doctest in the default test run (the learner's
worked examples included).

Examples that use GPT-2's ranks file find its path in the global ``GPT2_RANKS`` (the shared test
data); they run with the project's root as the working directory.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from tests.outcomes import ROOT

MODULES = [
    *sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("reference", "solutions")
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "__main__.py"
    ),
    "specs.hints",  # the specs' one helper module with examples
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_are_true(
    name: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(name)
    globs = {"GPT2_RANKS": str(shared_data / "gpt2" / "gpt2.tiktoken")}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    failures: list[str] = []
    for test in finder.find(module, name, extraglobs=globs):
        result = runner.run(test, out=failures.append)
        del result
    assert runner.failures == 0, "".join(failures)


def test_the_examples_are_found() -> None:
    """A refactoring that hid every example from the finder would make the test above empty."""
    count = 0
    for name in MODULES:
        tests = doctest.DocTestFinder(exclude_empty=True).find(importlib.import_module(name))
        count += sum(len(t.examples) for t in tests)
    assert count >= 100, f"only {count} docstring examples found"
