"""The learner's course board (``scripts/course_board.py``, registered by exercises/conftest.py).

The board runs in real pytest subprocesses on copies of this project whose exercises/ holds stubs
generated afresh from solutions/ (one copy as generated, one with ``softmax`` filled in from the
worked solution), all started at once. Reset and compare run in-process on a tiny fake project.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scripts import course_board, make_exercises
from tests.outcomes import ROOT

SOLUTION = '''"""A worked solution."""


def double(x: int) -> int:
    """Twice ``x``."""
    # BEGIN SOLUTION
    return 2 * x
    # END SOLUTION


class Counter:
    def bump(self, n: int) -> int:
        """``n + 1``."""
        # BEGIN SOLUTION
        return n + 1
        # END SOLUTION


def triple(x: int) -> int:
    """Three times ``x``."""
    # BEGIN SOLUTION
    return 3 * x
    # END SOLUTION
'''


def _copy(tmp: Path) -> Path:
    """A copy of the project with freshly generated stubs and the board's conftest."""
    for name in ("reference", "solutions", "specs", "scripts"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp / name)
    for rel, text in make_exercises.generate(tmp).items():
        (tmp / "exercises" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "exercises" / rel).write_text(text)
    shutil.copy(ROOT / "exercises" / "conftest.py", tmp / "exercises" / "conftest.py")
    return tmp


def _fill(root: Path, file: str, qualname: str) -> None:
    """Fill one stub with the worked solution's function, as a learner would."""
    path = root / "exercises" / file
    solution = (root / "solutions" / file).read_text()
    path.write_text(course_board.reset_text(path.read_text(), solution, [qualname], file))


# One spec file, not `exercises -m attention`: collecting every spec costs seconds per run.
SPEC = "exercises/test_attention.py"
NO_CACHE = ["-p", "no:cacheprovider"]
RUNS = {  # name: (copy, pytest arguments)
    "pristine": ("stubs", [SPEC, "-m", "attention", "-k", "softmax or heads"]),
    "first_failure": ("stubs", [SPEC, "-x", "-q", *NO_CACHE]),
    "filled": ("filled", [SPEC, "-k", "softmax"]),
    "silent": ("filled", [SPEC, "-k", "softmax_of", "-qq", *NO_CACHE]),
    "maintainers": ("filled", ["specs/test_attention.py", SPEC,
                               "--impl=solutions", "-k", "softmax_matches", *NO_CACHE]),
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Exit code and output of each run in ``RUNS``, started together."""
    copies = {"stubs": _copy(tmp_path_factory.mktemp("stubs"))}
    copies["filled"] = _copy(tmp_path_factory.mktemp("filled"))
    _fill(copies["filled"], "attention.py", "softmax")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "COLUMNS": "100",
           "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # fmt: skip  # the board needs none: 40% less CPU
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pytest", "--tb=no", "-p", "no:randomly", *args],
            cwd=copies[copy], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name, (copy, args) in RUNS.items()
    }  # fmt: skip
    out = {}
    for name, proc in procs.items():
        try:
            stdout, _ = proc.communicate(timeout=600)
        finally:
            proc.kill()  # only if it is still running
        out[name] = (proc.returncode, stdout)
    return out


def _board(output: str) -> list[str]:
    """The board's lines: from its separator to the end."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ course board =+", line)]
    assert len(starts) == 1, output[-3000:]
    return lines[starts[0] + 1 :]


def _row(board: list[str], name: str) -> list[str]:
    rows = [line.split() for line in board if line.split()[:1] == [name]]
    assert len(rows) == 1, (name, board)
    return rows[0]


@pytest.mark.slow
def test_board_on_fresh_stubs_shows_nothing_filled_and_names_the_first_stub(
    runs: dict[str, tuple[int, str]],
) -> None:
    code, output = runs["pristine"]
    failed = int(re.search(r"(\d+) failed", output)[1])  # type: ignore[index]
    assert code == 1 and failed > 0 and not re.search(r"\d passed", output), output[-3000:]
    board = _board(output)
    stubs = course_board.course_stubs(ROOT)
    backprop = sum(s.component == "backprop" for s in stubs)
    attention = sum(s.component == "attention" for s in stubs)
    assert _row(board, "attention") == ["attention", f"0/{attention}", f"0/{failed}", "<-", "next"]
    assert _row(board, "softmax")[1] == "stub"
    assert _row(board, "backprop")[1:] == [f"0/{backprop}", "-"]  # did not run: no test count
    first = "exercises/attention.py::softmax"
    assert board[-1].startswith(f"progress: 0/{len(stubs)} stubs, next: {first} (")
    assert "failing test" in board[-1] and "pytest exercises -m attention" in board[-1]


@pytest.mark.slow
def test_a_filled_stub_counts_its_tests_pass_and_next_moves_on(
    runs: dict[str, tuple[int, str]],
) -> None:
    _, output = runs["filled"]
    board = _board(output)
    stubs = course_board.course_stubs(ROOT)
    total, attention = len(stubs), sum(s.component == "attention" for s in stubs)
    assert _row(board, "attention")[1] == f"1/{attention}"
    state, tests = _row(board, "softmax")[1:]
    passed, ran = tests.split("/")
    assert state == "filled" and passed == ran and int(ran) > 0, board
    assert board[-1].startswith(f"progress: 1/{total} stubs, next: exercises/attention.py::")
    assert "::softmax" not in board[-1]


@pytest.mark.slow
def test_quiet_is_one_line_and_very_quiet_is_nothing(runs: dict[str, tuple[int, str]]) -> None:
    code, output = runs["first_failure"]
    assert code == 1 and "course board" not in output
    progress = [line for line in output.splitlines() if line.startswith("progress:")]
    assert len(progress) == 1 and output.rstrip().endswith(progress[0])
    expected = r"progress: 0/\d+ stubs, next: exercises/attention\.py::\w+ \(1 failing test: "
    assert re.fullmatch(expected + r"pytest exercises -m attention.*\)", progress[0]), progress
    code, output = runs["silent"]
    assert code == 0 and "progress" not in output and "course board" not in output, output


@pytest.mark.slow
def test_no_board_in_the_maintainers_runs(runs: dict[str, tuple[int, str]]) -> None:
    """Not under --impl (here: specs and exercises on the solutions), and the default run
    (testpaths) never loads exercises/conftest.py."""
    code, output = runs["maintainers"]
    assert code == 0 and "2 passed" in output, output[-3000:]
    assert "course board" not in output and "progress:" not in output
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "exercises" not in config["tool"]["pytest"]["ini_options"]["testpaths"]


def test_the_generator_never_touches_the_boards_conftest() -> None:
    assert "conftest.py" not in {p.name for p in make_exercises.generate(ROOT)}
    assert (ROOT / "exercises" / "conftest.py").is_file()


# --- stubs, reset and compare on a tiny project -----------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """solutions/x.py (three stubs, one a method), specs/test_x.py, exercises/ generated."""
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "x.py").write_text(SOLUTION)
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "test_x.py").write_text('COMPONENT = "x"\n')
    for rel, text in make_exercises.generate(tmp_path).items():
        (tmp_path / "exercises" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "exercises" / rel).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _learner_fills_all(project: Path) -> Path:
    path = project / "exercises" / "x.py"
    path.write_text(SOLUTION.replace("return 3 * x", "return x + x + x  # mine"))
    return path


def _stdin(monkeypatch: pytest.MonkeyPatch, tty: bool, answer: str = "") -> None:
    stdin = io.StringIO(answer)
    stdin.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", stdin)


def test_stubs_are_filled_when_they_differ_from_the_generated_ones(project: Path) -> None:
    stubs = course_board.course_stubs(project)
    assert [s.name for s in stubs] == [
        "exercises/x.py::double", "exercises/x.py::Counter.bump", "exercises/x.py::triple",
    ]  # fmt: skip
    assert course_board.unfilled(project, stubs) == set(stubs)
    path = project / "exercises" / "x.py"
    text = path.read_text()
    path.write_text(text.replace('"""Twice ``x``."""', '"""Twice x, my notes."""  # a comment'))
    assert course_board.unfilled(project, stubs) == set(stubs)  # docstrings and comments aside
    path.write_text(text.replace("def triple(x: int)", "def triple(x: int, y: int = 0)"))
    assert course_board.unfilled(project, stubs) == set(stubs)  # an older stub: still a stub
    path.write_text(course_board.reset_text(text, SOLUTION, ["Counter.bump"], "x.py"))
    assert course_board.unfilled(project, stubs) == {stubs[0], stubs[2]}


def test_reset_one_function_keeps_the_others_and_a_backup(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _learner_fills_all(project)
    mine = path.read_text()
    _stdin(monkeypatch, tty=True, answer="y\n")
    assert course_board.main(["reset", "exercises/x.py::double"], root=project) == 0
    out = capsys.readouterr().out
    assert "-    return 2 * x" in out and "+    raise NotImplementedError(" in out  # the diff
    text = path.read_text()
    assert 'raise NotImplementedError("exercises/x.py::double is a stub' in text
    assert "return n + 1" in text and "return x + x + x  # mine" in text
    (backup,) = (project / "exercises").glob("x.py.bak-*")
    assert backup.read_text() == mine and backup.name in out
    stubs = course_board.course_stubs(project)
    assert course_board.unfilled(project, stubs) == {stubs[0]}


def test_reset_refuses_without_a_terminal_unless_yes(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _learner_fills_all(project)
    mine = path.read_text()
    _stdin(monkeypatch, tty=False)
    assert course_board.main(["reset", "exercises/x.py::Counter.bump"], root=project) == 2
    assert "refused, nothing changed" in capsys.readouterr().out
    assert path.read_text() == mine and not list(project.glob("exercises/*.bak-*"))
    _stdin(monkeypatch, tty=True, answer="\n")  # the default answer is no
    assert course_board.main(["reset", "exercises/x.py::Counter.bump"], root=project) == 1
    assert path.read_text() == mine and not list(project.glob("exercises/*.bak-*"))
    _stdin(monkeypatch, tty=False)
    assert course_board.main(["reset", "exercises/x.py", "--yes"], root=project) == 0
    assert path.read_text() == make_exercises.generate(project)[Path("x.py")]
    assert course_board.unfilled(project) == set(course_board.course_stubs(project))
    assert [b.read_text() for b in project.glob("exercises/x.py.bak-*")] == [mine]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("exercises/x.py::halve", "exercises/x.py has no stub 'halve'; its stubs: double, "
                                  "Counter.bump, triple"),
        ("exercises/y.py", "no stubs in exercises/y.py; the files with stubs: exercises/x.py"),
    ],
)  # fmt: skip
def test_an_unknown_target_is_one_line_listing_the_valid_ones(
    project: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    for command in ("reset", "compare"):
        assert course_board.main([command, target, "--yes"][: 3 if command == "reset" else 2],
                                 root=project) == 2  # fmt: skip
        assert capsys.readouterr().err == message + "\n"


def test_compare_prints_yours_and_the_solution_with_a_warning(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _learner_fills_all(project)
    assert course_board.main(["compare", "exercises/x.py::triple"], root=project) == 0
    out = capsys.readouterr().out
    assert out.startswith("warning: this shows the worked solution")
    yours, _, solution = out.partition("--- worked solution: solutions/x.py::triple")
    assert "--- yours: exercises/x.py::triple" in yours and "return x + x + x  # mine" in yours
    assert "# BEGIN SOLUTION\n    return 3 * x" in solution and "mine" not in solution


def test_docstring_examples_are_true() -> None:
    import doctest

    result = doctest.testmod(course_board, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_a_file_that_does_not_parse_keeps_its_untouched_stubs_and_is_named_first(
    project: Path,
) -> None:
    path = project / "exercises" / "x.py"
    raised = '    raise NotImplementedError("exercises/x.py::double'
    path.write_text(path.read_text().replace(raised, "    return (\n" + raised))  # unclosed
    stubs = course_board.course_stubs(project)
    assert course_board.unfilled(project, stubs) == set(stubs)
    results = {"t": course_board.Result("x", outcome="failed", name="test_double")}
    problem = "SyntaxError: '(' was never closed (x.py, line 7)"
    lines = course_board.render(stubs, set(stubs), results, {"t": None}, 0, [problem])
    assert lines[-1] == f"progress: 0/3 stubs, next: fix {problem}"


def test_when_everything_passes_next_is_the_first_stub_left_in_the_course(project: Path) -> None:
    stubs = course_board.course_stubs(project)
    results = {"t": course_board.Result("x", stub="", outcome="passed", name="test_double")}
    owner = {"t": stubs[0]}
    lines = course_board.render(stubs, set(stubs[1:]), results, owner)
    assert lines[-1] == "progress: 1/3 stubs, next: exercises/x.py::Counter.bump (a stub: " \
                        "pytest exercises -m x)"  # fmt: skip
    assert lines[1].split() == ["x", "1/3", "1/1", "<-", "next"]
    assert [line.split()[:3] for line in lines[2:5]] == [
        ["double", "filled", "1/1"], ["Counter.bump", "stub", "-"], ["triple", "stub", "-"],
    ]  # fmt: skip
    lines = course_board.render(stubs, set(), results, owner)
    assert lines[-1].endswith("next: nothing, every stub is filled and every test that ran passes")
