"""Generate the learner's stubs in ``exercises/`` from the worked solutions in ``solutions/``.

The solutions are the single source. In a solution file, the part a learner writes is marked::

    def softmax(x: Tensor, dim: int = -1) -> Tensor:
        \"\"\"Contract, shapes, a worked example, hints: all kept in the stub.\"\"\"
        # BEGIN SOLUTION
        ...
        # END SOLUTION

Each marked region becomes ``raise NotImplementedError("<file>::<function> ...")`` in the stub,
so a failing spec names the function to fill and the task. Everything outside the markers
(imports, signatures, type hints, docstrings, helper code) is copied as it is. Solutions use
relative imports inside the package, so the copy works unchanged under ``exercises``.

For each spec ``specs/test_<component>.py`` it also writes ``exercises/test_<component>.py``, a
thin file that runs that spec against the stubs.

Usage::

    python scripts/make_exercises.py           # write exercises/
    python scripts/make_exercises.py --check   # exit 1 if exercises/ is out of date
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")

SPEC_RUNNER = '''"""Runs specs/test_{component}.py against your code in exercises/ (generated; do not edit)."""

from specs.test_{component} import *  # noqa: F403
'''


class MarkerError(ValueError):
    """A solution file's BEGIN/END SOLUTION markers are malformed."""


def _functions(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function and method in ``tree``."""
    found: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, f"{name}.")

    visit(tree, "")
    return found


def strip_solutions(source: str, stub_path: str, component: str) -> str:
    """Return ``source`` with every marked solution region replaced by a ``raise``.

    Example::

        >>> src = "def f():\\n    # BEGIN SOLUTION\\n    return 1\\n    # END SOLUTION\\n"
        >>> print(strip_solutions(src, "exercises/x.py", "x"), end="")
        def f():
            raise NotImplementedError("exercises/x.py::f is a stub: fill it in (task x), then run `pytest exercises -m x`")
    """  # noqa: E501
    lines = source.splitlines(keepends=True)
    functions = _functions(ast.parse(source))
    out: list[str] = []
    i = 0
    while i < len(lines):
        begin = BEGIN.match(lines[i])
        if END.match(lines[i]):
            raise MarkerError(f"{stub_path}:{i + 1}: END SOLUTION without BEGIN")
        if not begin:
            out.append(lines[i])
            i += 1
            continue
        lineno = i + 1
        enclosing = [f for f in functions if f[0] < lineno <= f[1]]
        if not enclosing:
            raise MarkerError(f"{stub_path}:{lineno}: a solution region must be inside a function")
        qualname = max(enclosing, key=lambda f: f[0])[2]
        j = i + 1
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]):
                raise MarkerError(f"{stub_path}:{j + 1}: nested BEGIN SOLUTION")
            j += 1
        if j == len(lines):
            raise MarkerError(f"{stub_path}:{lineno}: BEGIN SOLUTION without END")
        message = (
            f"{stub_path}::{qualname} is a stub: fill it in (task {component}), "
            f"then run `pytest exercises -m {component}`"
        )
        out.append(f'{begin["indent"]}raise NotImplementedError("{message}")\n')
        i = j + 1
    return "".join(out)


def generate(root: Path = ROOT) -> dict[Path, str]:
    """Every file of ``exercises/`` as it should be: relative path -> text."""
    files: dict[Path, str] = {}
    solutions = root / "solutions"
    for path in sorted(solutions.rglob("*.py")):
        rel = path.relative_to(solutions)
        text = path.read_text()
        if re.search(r"^\s*(from|import) solutions\b", text, re.MULTILINE):
            raise MarkerError(f"solutions/{rel}: use relative imports inside solutions/")
        component = rel.parts[0].removesuffix(".py")
        stub_path = f"exercises/{rel.as_posix()}"
        files[rel] = strip_solutions(text, stub_path, component)
    for spec in sorted((root / "specs").glob("test_*.py")):
        component = spec.stem.removeprefix("test_")
        files[Path(spec.name)] = SPEC_RUNNER.format(component=component)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    parser.add_argument(
        "--force", action="store_true", help="overwrite stubs that have uncommitted edits"
    )
    args = parser.parse_args(argv)
    target = ROOT / "exercises"
    expected = generate()
    existing = {
        p.relative_to(target)
        for p in target.rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "conftest.py"
    }
    stale = sorted(
        str(rel)
        for rel, text in expected.items()
        if not (target / rel).is_file() or (target / rel).read_text() != text
    )
    extra = sorted(str(rel) for rel in existing - expected.keys())
    if args.check:
        for rel in stale:
            print(f"exercises/{rel} differs from what solutions/ generates")
        for rel in extra:
            print(f"exercises/{rel} has no counterpart in solutions/ or specs/")
        return 1 if stale or extra else 0
    edited = _uncommitted(target, stale + extra)
    if edited and not args.force:
        print("refusing to overwrite uncommitted edits (yours?) in:", *edited, sep="\n  ")
        print("commit or move them, or pass --force")
        return 2
    for rel, text in expected.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)
    for rel in extra:
        (target / rel).unlink()
    print(f"wrote {len(expected)} files to exercises/ ({len(stale)} changed, {len(extra)} removed)")
    return 0


def _uncommitted(target: Path, rels: list[str]) -> list[str]:
    """Those of ``rels`` (under ``target``) that git reports as modified; [] outside git."""
    if not rels:
        return []
    paths = [str(target / rel) for rel in rels]
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in result.stdout.splitlines() if line[:2].strip() in {"M", "MM"}]


if __name__ == "__main__":
    sys.exit(main())
