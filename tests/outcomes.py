"""A pytest plugin (``-p tests.outcomes``) and a runner that record each test's outcome.

The project's own tests run the specs in a subprocess against one implementation (the stubs, the
solutions, a broken variant) and read back, per test, whether it passed and what it raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Outcome:
    outcome: str  # "passed", "failed" or "skipped"
    exception: str | None  # the type name of what the test raised, if it failed
    message: str
    when: str  # the phase of the report: "setup", "call" or "teardown"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--outcomes-json", help="write each test's outcome to this JSON file")


_results: dict[str, dict[str, Any]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" or report.outcome != "passed":
        exc = call.excinfo
        _results.setdefault(
            item.nodeid,
            {
                "outcome": report.outcome,
                "exception": exc.typename if exc is not None and report.failed else None,
                "message": str(exc.value)[:500] if exc is not None else "",
                "when": report.when,
            },
        )
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("outcomes_json")
    if path:
        Path(path).write_text(json.dumps(_results, indent=1))


def run_specs(args: list[str], tmp_path: Path, cwd: Path = ROOT) -> tuple[int, dict[str, Outcome]]:
    """Run pytest with ``args`` in a subprocess; return its exit code and outcome per test id."""
    return start_specs(args, tmp_path, cwd)()


def start_specs(
    args: list[str], tmp_path: Path, cwd: Path = ROOT
) -> Callable[[], tuple[int, dict[str, Outcome]]]:
    """Start ``run_specs`` in the background; call the function it returns for the result.

    It runs in ``cwd``: this project, or a copy of it elsewhere, which finds this project's
    shared data (``LLMFS_DATA``).
    """
    from conftest import data_dir  # the project's conftest, loaded by the calling test run

    out = tmp_path / "outcomes.json"
    env = {**os.environ, "PYTHONHASHSEED": "0", "LLMFS_DATA": str(data_dir())}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tests.outcomes",
        f"--outcomes-json={out}",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def result() -> tuple[int, dict[str, Outcome]]:
        try:
            stdout, stderr = proc.communicate(timeout=900)
        finally:
            proc.kill()  # only if it is still running
        if not out.exists():
            raise AssertionError(
                f"pytest wrote no outcomes (exit {proc.returncode}):\n"
                f"{stdout[-4000:]}\n{stderr[-4000:]}"
            )
        raw = json.loads(out.read_text())
        return proc.returncode, {k: Outcome(**v) for k, v in raw.items()}

    return result
