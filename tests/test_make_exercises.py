"""scripts/make_exercises.py keeps the learner's work safe, and the learner's copy stays green.

The generator runs on a tiny fake project in a temporary folder, with real files and real git:
it may overwrite or delete only pristine generated files (tracked by git, unmodified relative to
HEAD); anything else is named, and nothing changes, unless ``--force``. The last test fills in a
stub in a copy of this project and runs the project's own harness there, as a learner would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import make_exercises
from tests.outcomes import ROOT

SOLUTION = '''"""A worked solution."""


def double(x: int) -> int:
    """Twice ``x``."""
    # BEGIN SOLUTION
    return 2 * x
    # END SOLUTION
'''
SPEC = 'COMPONENT = "x"\n'


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (git's own files included): relative path -> bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake project: solutions/x.py, specs/test_x.py, and exercises/ generated, not in git."""
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above it
    root = tmp_path / "project"
    (root / "solutions").mkdir(parents=True)
    (root / "solutions" / "x.py").write_text(SOLUTION)
    (root / "specs").mkdir()
    (root / "specs" / "test_x.py").write_text(SPEC)
    assert make_exercises.main([], root=root) == 0  # nothing there yet: nothing at risk
    return root


@pytest.fixture
def repo(project: Path) -> Path:
    """The fake project with its generated exercises/ committed to git."""
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "generated")
    return project


def change_solution(root: Path) -> None:
    """Make the committed stub exercises/x.py stale."""
    path = root / "solutions" / "x.py"
    path.write_text(path.read_text().replace('"""Twice ``x``."""', '"""Two times ``x``."""'))


def refuse(root: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Run the generator, expect a refusal that changed nothing; return the lines naming files."""
    before = snapshot(root)
    assert make_exercises.main([], root=root) == 2
    assert snapshot(root) == before, "a refusal must change nothing"
    *named, last = capsys.readouterr().err.splitlines()
    assert last.startswith("refused, nothing changed") and "--force" in last
    return named


def test_check_exits_1_when_stale_and_0_when_fresh(repo: Path) -> None:
    assert make_exercises.main(["--check"], root=repo) == 0
    change_solution(repo)
    before = snapshot(repo)
    assert make_exercises.main(["--check"], root=repo) == 1
    assert snapshot(repo) == before, "--check only reads"
    assert make_exercises.main([], root=repo) == 0
    assert make_exercises.main(["--check"], root=repo) == 0


def test_a_pristine_stale_stub_is_regenerated_without_force(repo: Path) -> None:
    change_solution(repo)
    assert make_exercises.main([], root=repo) == 0
    assert "Two times" in (repo / "exercises" / "x.py").read_text()
    assert make_exercises.main(["--check"], root=repo) == 0


def test_a_pristine_stub_whose_solution_is_gone_is_deleted_without_force(repo: Path) -> None:
    (repo / "solutions" / "y.py").write_text(SOLUTION)
    assert make_exercises.main([], root=repo) == 0
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "y")
    (repo / "solutions" / "y.py").unlink()
    assert make_exercises.main([], root=repo) == 0
    assert not (repo / "exercises" / "y.py").exists()


def test_an_untracked_extra_file_is_named_and_kept(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "exercises" / "helpers.py").write_text("def mine(): ...\n")
    assert refuse(repo, capsys) == ["exercises/helpers.py: untracked, would be deleted"]


def test_an_ignored_extra_file_counts_as_untracked(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / ".gitignore").write_text("scratch*.py\n")
    (repo / "exercises" / "scratch.py").write_text("x = 1\n")
    assert refuse(repo, capsys) == ["exercises/scratch.py: untracked, would be deleted"]


def test_an_edited_stub_is_named_and_kept(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "exercises" / "x.py").write_text(SOLUTION)  # the learner filled it in
    assert refuse(repo, capsys) == ["exercises/x.py: modified, would be overwritten"]


def test_a_staged_but_uncommitted_edit_is_kept(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "exercises" / "x.py").write_text(SOLUTION)
    git(repo, "add", "exercises/x.py")
    assert refuse(repo, capsys) == ["exercises/x.py: modified, would be overwritten"]


def test_one_file_at_risk_stops_every_change(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check everything first, then write: a pristine stale stub is not rewritten either."""
    change_solution(repo)
    (repo / "exercises" / "test_x.py").write_text("# my notes\n")
    assert refuse(repo, capsys) == ["exercises/test_x.py: modified, would be overwritten"]


def test_outside_git_every_differing_file_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change_solution(project)
    (project / "exercises" / "helpers.py").write_text("def mine(): ...\n")
    (project / "exercises" / "test_x.py").unlink()  # missing: would be created, if allowed
    assert refuse(project, capsys) == [
        "exercises/helpers.py: not in a git checkout, would be deleted",
        "exercises/x.py: not in a git checkout, would be overwritten",
    ]


def test_without_git_every_differing_file_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    change_solution(repo)
    monkeypatch.setenv("PATH", str(repo / "no-such-dir"))
    assert refuse(repo, capsys) == ["exercises/x.py: git is not available, would be overwritten"]


def test_force_rewrites_stubs_and_removes_extra_py_files_only(repo: Path) -> None:
    (repo / "exercises" / "x.py").write_text(SOLUTION)
    keep = {name: f"{name}\n" for name in ("notes.md", "data.txt", "conftest.py")}
    for name, text in {**keep, "helpers.py": "def mine(): ...\n"}.items():
        (repo / "exercises" / name).write_text(text)
    (repo / "exercises" / "__pycache__").mkdir()
    (repo / "exercises" / "__pycache__" / "old.py").write_text("")
    assert make_exercises.main(["--force"], root=repo) == 0
    assert not (repo / "exercises" / "helpers.py").exists()
    assert (repo / "exercises" / "__pycache__" / "old.py").exists()
    assert {name: (repo / "exercises" / name).read_text() for name in keep} == keep
    assert make_exercises.main(["--check"], root=repo) == 0


@pytest.mark.slow
def test_a_learners_filled_in_stub_keeps_the_test_run_green(tmp_path: Path) -> None:
    """In a copy of the project with exercises/attention.py filled in, the harness still passes
    (it never reads exercises/), and the learner's loop shows the filled-in softmax passing."""
    try:
        tracked = git(ROOT, "ls-files", "-z").split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("this project is not a git checkout: no list of its files to copy")
    copy = tmp_path / "project"
    for rel in filter(None, tracked):
        if (ROOT / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, copy / rel)
    (copy / "exercises" / "attention.py").write_text(
        (ROOT / "solutions" / "attention.py").read_text()
    )
    from conftest import data_dir

    env = {**os.environ, "LLMFS_DATA": str(data_dir())}
    procs = {  # both at once, in the copy: the harness, and the learner's loop for attention
        name: subprocess.Popen(
            [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
            cwd=copy,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in {
            "harness": ["tests/test_harness.py"],
            "learner": ["exercises/test_attention.py", "-rA"],
        }.items()
    }
    try:  # each runs on its own: a full pipe only pauses it until its turn to be read
        learner = procs["learner"].communicate(timeout=600)[0]
        harness = procs["harness"].communicate(timeout=600)[0]
    finally:
        for proc in procs.values():
            proc.kill()  # only if still running
    assert procs["harness"].returncode == 0, harness[-5000:]
    passed = re.search(r"(\d+) passed", learner)
    assert passed and int(passed[1]) > 0, learner[-4000:]
    softmax = "exercises/test_attention.py::test_softmax_matches_torch_softmax[exercises]"
    assert f"PASSED {softmax}" in learner, learner[-4000:]
