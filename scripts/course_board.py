"""The learner's course board: where you are after every ``pytest exercises`` run, and a reset.

After any run of the specs against your stubs (``pytest exercises``, ``pytest exercises -m
attention``, ``pytest exercises/test_gpt.py -x``) pytest prints a short table: per component,
how many of its stubs you have filled and how many of its tests passed; under the component you
are working on, the same per stub; and one line naming the next stub to work on in the course
order. ``-q`` shrinks it to one line, ``-qq`` hides it, ``-v`` lists every stub of the
components that ran. ``exercises/conftest.py`` registers it; it never shows in the maintainers'
run (``pytest``: specs and tests, on the reference and the solutions) nor under ``--impl``.

A stub is *filled* when its function no longer is what ``scripts/make_exercises.py`` generates
(compared as syntax trees, docstrings and comments aside), never by running it. A failing test
belongs to the stub its ``NotImplementedError`` names, else to the stub it named last time
(pytest's cache), else to its component.

Reset and compare, one function or one file at a time::

    python scripts/course_board.py reset exercises/attention.py::softmax   # back to the stub
    python scripts/course_board.py reset exercises/attention.py            # each stub of a file
    python scripts/course_board.py compare exercises/attention.py::softmax # yours and the solution

``reset`` rewrites only that function (found by its position in the syntax tree), shows the diff,
asks ``[y/N]`` (without a terminal it refuses unless ``--yes``) and first copies the file to
``<file>.bak-<time>``: nothing you wrote is lost.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `scripts` importable
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:  # mypy reads scripts/ (no __init__.py) as top-level modules
    import make_exercises
else:
    from scripts import make_exercises

# The course order (the README's learning path); components not listed come after, by name.
COURSE = (
    "backprop", "attention", "gpt", "bpe", "trainer", "lora", "finetune", "kvcache",
    "quantization", "batching", "evaluation", "server", "llama", "moe", "muon",
)  # fmt: skip
STUB_RAISED = re.compile(r"(?P<file>exercises/[\w/]+\.py)::(?P<qualname>[\w.]+) is a stub")
PROPERTY = "course_board"  # the user property a report carries: (component, stub or "")
CACHE_KEY = "course_board/stub_of"  # pytest's cache: test id -> the stub it last named


@dataclass(frozen=True)
class Stub:
    """One function a learner fills in: ``exercises/attention.py::softmax``."""

    file: str  # "exercises/attention.py"
    qualname: str  # "softmax", "Value.__add__._backward"
    component: str

    @property
    def name(self) -> str:
        return f"{self.file}::{self.qualname}"

    @property
    def short(self) -> str:
        """The name in a component's table: ``softmax``, or ``layers.py::linear_forward``."""
        inner = self.file.removeprefix(f"exercises/{self.component}/")
        return self.qualname if inner == self.file else f"{inner}::{self.qualname}"


# --- stubs and whether they are filled -------------------------------------------------------


def functions(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function and method of ``tree`` by qualified name (``Value.__add__._backward``).

    >>> sorted(functions(ast.parse("class A:\\n    def f(self):\\n        def g(): pass\\n")))
    ['A.f', 'A.f.g']
    """
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.setdefault(name, child)
                visit(child, f"{name}.")

    visit(tree, "")
    return found


def _module_order(root: Path, component: str) -> dict[str, int]:
    """Rank of each module of a package component, as its ``__init__`` docstring lists them:
    ``layers.py`` mentioned first, else the order after a line ``Suggested order:``."""
    init = root / "solutions" / component / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) if init.is_file() else None
    if not doc:
        return {}
    suggested = doc.partition("Suggested order:")[2]
    ranks: dict[str, int] = {}
    for path in (root / "solutions" / component).glob("*.py"):
        at = doc.find(f"{path.name}")
        if at < 0 and (m := re.search(rf"\b{path.stem}\b", suggested)):
            at = m.start()
        ranks[path.name] = at if at >= 0 else 10**9
    return ranks


@functools.lru_cache(maxsize=8)
def _generated(root: Path) -> dict[Path, str]:
    """What ``make_exercises`` generates from ``root/solutions`` (read once per process)."""
    return make_exercises.generate(root)


def course_stubs(root: Path = ROOT) -> list[Stub]:
    """Every stub ``make_exercises`` generates, in the course order: the components in
    ``COURSE`` order, a package's modules in its suggested order, functions as in the file."""
    found: list[tuple[int, str, int, str, int, Stub]] = []
    ranks: dict[str, dict[str, int]] = {}
    for rel, text in _generated(root).items():
        if rel.name.startswith("test_"):
            continue
        component = rel.parts[0].removesuffix(".py")
        order = ranks.setdefault(component, _module_order(root, component))
        course = COURSE.index(component) if component in COURSE else len(COURSE)
        for lineno, line in enumerate(text.splitlines()):
            m = STUB_RAISED.search(line)
            if m and "raise NotImplementedError" in line:
                stub = Stub(m["file"], m["qualname"], component)
                found.append(
                    (course, component, order.get(rel.name, 10**9), stub.file, lineno, stub)
                )
    found.sort(key=lambda k: k[:5])
    return list(dict.fromkeys(key[-1] for key in found))  # a function with two regions: once


def _body(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's signature and statements as a syntax tree dump, docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return ast.dump(node.args) + "".join(ast.dump(s) for s in body)


def unfilled(root: Path = ROOT, stubs: Sequence[Stub] | None = None) -> set[Stub]:
    """Those of ``stubs`` (default: all) whose function in ``root/exercises`` is still the stub
    as generated. A missing file counts as unfilled; in a file that does not parse, a stub
    counts as unfilled while its generated ``raise`` line is still there."""
    stubs = course_stubs(root) if stubs is None else stubs
    generated = _generated(root)
    left: set[Stub] = set()
    by_file: dict[str, list[Stub]] = defaultdict(list)
    for stub in stubs:
        by_file[stub.file].append(stub)
    for file, group in by_file.items():
        path = root / file
        if not path.is_file():
            left.update(group)
            continue
        text = path.read_text()
        want = functions(ast.parse(generated[Path(file).relative_to("exercises")]))
        try:
            have = functions(ast.parse(text))
        except SyntaxError:
            left.update(s for s in group if f"{s.name} is a stub" in text)
            continue
        for stub in group:
            mine = have.get(stub.qualname)
            if mine is None or _body(mine) == _body(want[stub.qualname]) or _raises(mine, stub):
                left.add(stub)
    return left


def _raises(node: ast.FunctionDef | ast.AsyncFunctionDef, stub: Stub) -> bool:
    """Whether the function still has the generated ``raise`` among its own statements (a stub
    generated from an older solution differs from today's, yet is no less a stub)."""
    return any(
        isinstance(s, ast.Raise)
        and isinstance(s.exc, ast.Call)
        and s.exc.args
        and isinstance(s.exc.args[0], ast.Constant)
        and str(s.exc.args[0].value).startswith(f"{stub.name} is a stub")
        for s in node.body
    )


# --- the pytest plugin -----------------------------------------------------------------------


def _on_exercises(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("impl") == "exercises"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Tag each report of a spec run on the stubs with its component and the stub it named
    (a user property, so that it also reaches an xdist controller)."""
    report = yield
    if _on_exercises(item) and report.when in ("setup", "call"):
        component = str(getattr(item.module, "COMPONENT", "")) if hasattr(item, "module") else ""
        stub = problem = ""
        if call.excinfo is not None and call.excinfo.errisinstance(NotImplementedError):
            m = STUB_RAISED.search(str(call.excinfo.value))
            stub = f"{m['file']}::{m['qualname']}" if m else ""
        elif call.excinfo is not None and report.failed and report.when == "setup":
            # e.g. your file does not parse: no test of it can start
            problem = f"{call.excinfo.typename}: {str(call.excinfo.value)[:200]}"
        report.user_properties.append((PROPERTY, (component, stub, problem)))
    return report


def pytest_configure(config: pytest.Config) -> None:
    """Register the board, on the main process only (never on an xdist worker)."""
    if hasattr(config, "workerinput") or config.pluginmanager.has_plugin(PROPERTY):
        return
    config.pluginmanager.register(Board(config), PROPERTY)


@dataclass
class Result:
    component: str
    stub: str = ""  # the stub its NotImplementedError named, if it did
    outcome: str = "passed"  # "passed", "failed" or "skipped"
    name: str = ""  # the test function's name, for -k


@dataclass(eq=False)  # a plugin must be hashable
class Board:
    """Collects the outcome of each spec test run on the stubs and prints the board."""

    config: pytest.Config
    results: dict[str, Result] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)  # errors before any test could run

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        on_stubs = not self.config.getoption("impl", default=None)  # not under --impl
        if report.failed and on_stubs and report.nodeid.startswith("exercises/"):
            self.broken.append(f"the error collecting {report.nodeid} (shown above)")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        tag: Any = dict(report.user_properties).get(PROPERTY)
        if tag is None and report.nodeid not in self.results:
            return
        result = self.results.setdefault(report.nodeid, Result(component=""))
        if tag is not None:
            result.component, stub, problem = (str(t) for t in tag)
            result.stub = result.stub or stub
            if problem and problem not in self.broken:
                self.broken.append(problem)
            result.name = report.nodeid.partition("::")[2].split("[")[0]
        if report.failed:
            result.outcome = "failed"
        elif report.skipped and result.outcome != "failed":
            result.outcome = "skipped"

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Last, after pytest's own summary line, so the next step is what the learner reads."""
        terminalreporter = config.pluginmanager.get_plugin("terminalreporter")
        verbosity = self.config.get_verbosity()
        if not (self.results or self.broken) or verbosity <= -2 or terminalreporter is None:
            return
        root = Path(str(self.config.rootpath))
        stubs = course_stubs(root)
        left = unfilled(root, stubs)
        owner = self._attribute(stubs)
        lines = render(stubs, left, self.results, owner, verbosity, self.broken)
        if verbosity < 0:
            terminalreporter.write_line(lines[-1])
            return
        terminalreporter.write_sep("=", "course board")
        for line in lines:
            terminalreporter.write_line(line)

    def _attribute(self, stubs: Sequence[Stub]) -> dict[str, Stub | None]:
        """The stub each test belongs to: the one it named now, else last time, else a stub of
        its component whose name is in the test's name, else none (the component)."""
        by_name = {s.name: s for s in stubs}
        cache = getattr(self.config, "cache", None)
        before: dict[str, str] = cache.get(CACHE_KEY, {}) if cache is not None else {}
        now = {nodeid: r.stub for nodeid, r in self.results.items() if r.stub in by_name}
        if cache is not None:
            cache.set(CACHE_KEY, {**before, **now})
        owner: dict[str, Stub | None] = {}
        for nodeid, r in self.results.items():
            named = now.get(nodeid) or before.get(nodeid)
            if named in by_name:
                owner[nodeid] = by_name[named]
                continue
            guesses = [
                s for s in stubs
                if s.component == r.component
                and _word(s).strip("_").lower() in r.name.lower()
            ]  # fmt: skip
            owner[nodeid] = max(guesses, key=lambda s: len(_word(s)), default=None)
        return owner


def render(
    stubs: Sequence[Stub],
    left: set[Stub],
    results: dict[str, Result],
    owner: dict[str, Stub | None],
    verbosity: int = 0,
    broken: Sequence[str] = (),
) -> list[str]:
    """The board's lines; the last one is the ``progress: ..., next: ...`` line."""
    components = list(dict.fromkeys(s.component for s in stubs))
    ran: dict[str, list[Result]] = defaultdict(list)
    per_stub: dict[Stub, list[Result]] = defaultdict(list)
    loose: dict[str, list[Result]] = defaultdict(list)  # failing, owned by no stub
    for nodeid, r in results.items():
        ran[r.component].append(r)
        stub = owner.get(nodeid)
        if stub is not None:
            per_stub[stub].append(r)
        elif r.outcome == "failed":
            loose[r.component].append(r)

    def passed(rs: list[Result]) -> str:
        return f"{sum(r.outcome == 'passed' for r in rs)}/{len(rs)}" if rs else "-"

    bad = {s: [r for r in rs if r.outcome == "failed"] for s, rs in per_stub.items()}
    nxt, hint = _next(stubs, left, bad, loose, set(ran))
    if broken:  # tests that could not even start: often a syntax error in your file
        nxt, hint = None, f"fix {broken[0]}"
    focus = nxt.component if isinstance(nxt, Stub) else nxt
    shown = {c for c in components if c == focus or (verbosity > 0 and ran[c])}
    width = max([12, *(len(s.short) + 4 for s in stubs if s.component in shown)])
    lines = [f"{'component':<{width}}{'stubs filled':>14}{'tests passed':>14}"]
    for component in components:
        mine = [s for s in stubs if s.component == component]
        done = sum(s not in left for s in mine)
        here = "   <- next" if component == focus else ""
        lines.append(
            f"{component:<{width}}{f'{done}/{len(mine)}':>14}{passed(ran[component]):>14}{here}"
        )
        if component in shown:
            for s in mine:
                state = "stub" if s in left else "filled"
                lines.append(f"  {s.short:<{width - 2}}{state:>14}{passed(per_stub[s]):>14}")
    filled = sum(s not in left for s in stubs)
    lines.append(f"progress: {filled}/{len(stubs)} stubs, next: {hint}")
    return lines


def _next(
    stubs: Sequence[Stub],
    left: set[Stub],
    bad: dict[Stub, list[Result]],
    loose: dict[str, list[Result]],
    ran: set[str],
) -> tuple[Stub | str | None, str]:
    """The next thing to work on, in the course order, and its line: the first stub with a
    failing test, else a component's failing tests no stub owns, else the first unfilled stub
    from the first component that ran on, else from the start of the course."""
    for component in dict.fromkeys(s.component for s in stubs):
        for s in (s for s in stubs if s.component == component):
            if bad.get(s):
                return s, f"{s.name} ({_tests(len(bad[s]))}: {_command(s, bad[s])})"
        if loose[component]:
            n = len(loose[component])
            return component, f"{component} ({_tests(n)}: pytest exercises -m {component})"
    components = list(dict.fromkeys(s.component for s in stubs))
    start = min((components.index(c) for c in ran if c in components), default=0)
    onwards = [s for s in stubs if components.index(s.component) >= start]
    for s in onwards + [s for s in stubs if s not in onwards]:  # on from here, then the rest
        if s in left:
            return s, f"{s.name} (a stub: pytest exercises -m {s.component})"
    return None, "nothing, every stub is filled and every test that ran passes"


def _word(stub: Stub) -> str:
    """The stub's own name: ``_backward`` for ``Value.__add__._backward``."""
    return stub.qualname.split(".")[-1]


def _tests(n: int) -> str:
    return f"{n} failing test{'s' if n != 1 else ''}"


def _command(stub: Stub, bad: list[Result]) -> str:
    """``pytest exercises -m attention -k softmax`` when ``-k`` selects every failing test."""
    word = _word(stub)
    command = f"pytest exercises -m {stub.component}"
    if all(word.lower() in r.name.lower() for r in bad):
        command += f" -k {word}"
    return command


# --- reset and compare ------------------------------------------------------------------------


class BoardError(Exception):
    """A bad target: one line for the learner."""


def _target(root: Path, target: str) -> tuple[Path, list[Stub]]:
    """``exercises/x.py[::qualname]`` -> (the file, the stubs named)."""
    file, _, qualname = target.partition("::")
    path = Path(file)
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    try:
        rel = path.relative_to((root / "exercises").resolve()).as_posix()
    except ValueError:
        rel = ""
    stubs = course_stubs(root)
    files = list(dict.fromkeys(s.file for s in stubs))
    mine = [s for s in stubs if s.file == f"exercises/{rel}"]
    if not mine:
        raise BoardError(f"no stubs in {file}; the files with stubs: {', '.join(files)}")
    if not qualname:
        return path, mine
    chosen = [s for s in mine if s.qualname == qualname]
    if not chosen:
        valid = ", ".join(s.qualname for s in mine)
        raise BoardError(f"{mine[0].file} has no stub {qualname!r}; its stubs: {valid}")
    return path, chosen


def _span(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: Sequence[str]) -> tuple[int, int]:
    """The 0-based line range [first, last) of a function in ``lines``: decorators included,
    and the comments indented under it after its last statement."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    end = last = node.end_lineno or node.lineno
    while last < len(lines):
        line = lines[last]
        if line.strip() and not (
            line.lstrip().startswith("#") and len(line) - len(line.lstrip()) > node.col_offset
        ):
            break
        last += 1
        if line.strip():
            end = last
    return first - 1, end


def reset_text(text: str, generated: str, qualnames: Sequence[str], file: str) -> str:
    """``text`` with each function in ``qualnames`` replaced by its version in ``generated``;
    every other line stays as it is.

    >>> stub = "def f():\\n    raise NotImplementedError\\n\\n\\ndef g():\\n    raise NotImplementedError\\n"
    >>> mine = "def f():\\n    return 1\\n\\n\\ndef g():\\n    return 2\\n"
    >>> print(reset_text(mine, stub, ["f"], "x.py"), end="")
    def f():
        raise NotImplementedError
    <BLANKLINE>
    <BLANKLINE>
    def g():
        return 2
    """  # noqa: E501
    new = generated.splitlines(keepends=True)
    for qualname in qualnames:
        try:
            have = functions(ast.parse(text))
        except SyntaxError as e:
            raise BoardError(
                f"{file} does not parse (line {e.lineno}: {e.msg}); reset the whole file: "
                f"python scripts/course_board.py reset {file}"
            ) from None
        if qualname not in have:
            raise BoardError(f"{file} has no function {qualname}; reset the whole file instead")
        lines = text.splitlines(keepends=True)
        start, end = _span(have[qualname], lines)
        g_start, g_end = _span(functions(ast.parse(generated))[qualname], new)
        text = "".join(lines[:start] + new[g_start:g_end] + lines[end:])
    return text


def reset(root: Path, target: str, yes: bool = False) -> int:
    """Restore the stubs named by ``target`` (``exercises/x.py::f`` or a whole file)."""
    path, stubs = _target(root, target)
    file = stubs[0].file
    generated = _generated(root)[Path(file).relative_to("exercises")]
    text = path.read_text() if path.is_file() else ""
    whole = "::" not in target
    try:
        new = reset_text(text, generated, [s.qualname for s in stubs], file)
    except BoardError:
        if not whole or not text:
            raise
        new = generated  # a whole file that does not parse: back to the generated file
    if not text:
        new = generated
    if new == text:
        print(f"{target}: already the stub as generated; nothing to do")
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            text.splitlines(keepends=True), new.splitlines(keepends=True),
            f"{file} (yours)", f"{file} (after the reset)",
        )
    )  # fmt: skip
    if not yes:
        if not sys.stdin.isatty():
            print("refused, nothing changed: no terminal to ask on; pass --yes to reset anyway")
            return 2
        answer = input(f"reset {target} to the stub? your version is kept as a backup [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 1
    backup = None
    if path.is_file():
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        shutil.copy2(path, backup)
    tmp = path.with_name(f".{path.name}.reset-tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    kept = f"; your version is in {backup.relative_to(root).as_posix()}" if backup else ""
    print(f"reset {target}{kept}")
    return 0


def _source(path: Path, qualname: str) -> str:
    if not path.is_file():
        return f"({path.name} is missing)\n"
    text = path.read_text()
    try:
        node = functions(ast.parse(text)).get(qualname)
    except SyntaxError as e:
        return f"({path.name} does not parse: line {e.lineno}: {e.msg})\n"
    if node is None:
        return f"(no function {qualname} in {path.name})\n"
    lines = text.splitlines(keepends=True)
    start, end = _span(node, lines)
    return "".join(lines[start:end])


def compare(root: Path, target: str) -> int:
    """Print the learner's function and then the worked solution's."""
    path, stubs = _target(root, target)
    print("warning: this shows the worked solution; try on your own first")
    for stub in stubs:
        solution = root / "solutions" / Path(stub.file).relative_to("exercises")
        print(f"--- yours: {stub.name}")
        print(_source(path, stub.qualname), end="")
        print(f"--- worked solution: solutions/{solution.relative_to(root / 'solutions')}"
              f"::{stub.qualname}")  # fmt: skip
        print(_source(solution, stub.qualname), end="")
    return 0


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    """``reset TARGET [--yes]`` or ``compare TARGET``; TARGET is ``exercises/x.py[::name]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reset", help="restore one stub (or each stub of a file); asks first")
    p.add_argument("target", help="exercises/attention.py::softmax or exercises/attention.py")
    p.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    p = sub.add_parser("compare", help="show your function beside the worked solution")
    p.add_argument("target", help="exercises/attention.py::softmax")
    args = parser.parse_args(argv)
    try:
        if args.command == "reset":
            return reset(root, args.target, yes=args.yes)
        return compare(root, args.target)
    except BoardError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
