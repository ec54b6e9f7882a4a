"""A pytest plugin (``-p tests.outcomes``) and a runner that record each test's outcome.

The project's own tests run the specs in a subprocess against one implementation (the stubs, the
solutions, a broken variant) and read back, per test, whether it passed and what it raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def run_specs(args: list[str], tmp_path: Path) -> tuple[int, dict[str, Outcome]]:
    """Run pytest with ``args`` in a subprocess; return its exit code and outcome per test id."""
    out = tmp_path / "outcomes.json"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
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
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        raise AssertionError(
            f"pytest wrote no outcomes (exit {proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    raw = json.loads(out.read_text())
    return proc.returncode, {k: Outcome(**v) for k, v in raw.items()}
