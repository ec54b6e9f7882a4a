"""Sphinx extension: a component's contract table and classic bugs, read at build time.

Two directives for the component pages (MyST: ```` ```{contract-table} attention ```` ):

* ``contract-table COMPONENT``: the ``clause | tests | oracle`` table from the module docstring
  of ``specs/test_<component>.py`` (read with ``ast``, without importing the spec);
* ``classic-bugs COMPONENT``: the ``MUTANTS`` of ``tests/mutants/<component>.py``, each with the
  functions it replaces and, where ``HINTS`` names it, the cause the spec's failure message
  names; and the count of triaged ``EQUIVALENT`` mutants.

Both register their source files as dependencies, so an incremental build picks up a changed
spec or mutants file. A missing file or table is a build error naming the file.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]


def contract_rows(doc: str) -> list[tuple[str, str, str]]:
    """(clause, tests, oracle) cells of the Markdown table after the line ``Contract:``.

    The same reading as ``tests/test_spec_contracts.py``: the table starts after
    ``Contract:`` and ends at the first line that is not a table row; the header and the
    separator are skipped.

    >>> contract_rows("Spec.\\n\\nContract:\\n\\n| clause | tests | oracle |\\n|---|---|---|\\n"
    ...               "| sums to one | `test_a` | torch |\\n\\nAfter.")
    [('sums to one', '`test_a`', 'torch')]
    """
    _, found, rest = doc.partition("\nContract:")
    if not found:
        raise ValueError("the module docstring has no 'Contract:' table")
    rows = []
    for line in rest.strip().splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or set(cells[0]) <= set("-: ") or cells[0].lower() == "clause":
            continue
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def spec_path(component: str) -> Path:
    return ROOT / "specs" / f"test_{component}.py"


def spec_contract(component: str) -> list[tuple[str, str, str]]:
    """The contract rows of ``specs/test_<component>.py``, read without importing it."""
    path = spec_path(component)
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), str(path)), clean=False)
    return contract_rows(doc or "")


def classic_bugs(component: str) -> tuple[dict[str, list[str]], int]:
    """``{mutant: [functions it replaces]}`` and the number of ``EQUIVALENT`` entries."""
    module = importlib.import_module(f"tests.mutants.{component}")
    mutants = {name: sorted(patch) for name, patch in module.MUTANTS.items()}
    return mutants, len(getattr(module, "EQUIVALENT", {}))


def bug_hints(component: str) -> dict[str, str]:
    """``{mutant: the regex its first failure message must match}`` (``HINTS``)."""
    return dict(getattr(importlib.import_module(f"tests.mutants.{component}"), "HINTS", {}))


class _ComponentDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def markdown(self, component: str) -> list[str]:
        raise NotImplementedError

    def source(self, component: str) -> Path:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        component = self.arguments[0]
        path = self.source(component)
        if not path.is_file():
            raise self.error(f"{self.name}: no file {path.relative_to(ROOT)} for {component!r}")
        self.env.note_dependency(str(path))
        try:
            lines = self.markdown(component)
        except Exception as e:  # a broken spec or mutants file: name it, fail the build
            raise self.error(f"{self.name} {component}: {path.relative_to(ROOT)}: {e}") from e
        box = nodes.container(classes=[self.name, f"{self.name}-{component}"])
        self.state.nested_parse(StringList(lines, str(path)), self.content_offset, box)
        return [box]


class ContractTable(_ComponentDirective):
    """The contract table of ``specs/test_<component>.py``."""

    def source(self, component: str) -> Path:
        return spec_path(component)

    def markdown(self, component: str) -> list[str]:
        rows = spec_contract(component)
        if not rows:
            raise ValueError("the contract table has no rows")
        return [
            f"The {len(rows)} clauses of `specs/test_{component}.py` (its module docstring):",
            "",
            "| clause | tests | oracle |",
            "|---|---|---|",
            *(f"| {clause} | {tests} | {oracle} |" for clause, tests, oracle in rows),
        ]


class ClassicBugs(_ComponentDirective):
    """The classic learner bugs of ``tests/mutants/<component>.py``."""

    def source(self, component: str) -> Path:
        return ROOT / "tests" / "mutants" / f"{component}.py"

    def markdown(self, component: str) -> list[str]:
        mutants, equivalent = classic_bugs(component)
        hints = bug_hints(component)
        triaged = (f"; {equivalent} survivors of the mutation tool are triaged there as "
                   "equivalent (`EQUIVALENT`)" if equivalent else "")
        lines = [
            f"The spec catches each of these {len(mutants)} bugs "
            f"(`tests/mutants/{component}.py`, proved by `tests/test_mutants.py`){triaged}. "
            f"For {len(hints)} of them the first failing test names the likely cause; the "
            "pattern its message matches is shown.",
            "",
        ]
        lines += [f"- `{name}` (replaces {', '.join(f'`{f}`' for f in functions)})"
                  + (f"; the message names: {code(hints[name])}" if name in hints else "")
                  for name, functions in mutants.items()]
        return lines


def code(text: str) -> str:
    """Inline code in Markdown, for text that may hold a backtick itself."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("contract-table", ContractTable)
    app.add_directive("classic-bugs", ClassicBugs)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
