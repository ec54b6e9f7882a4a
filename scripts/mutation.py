"""Mutation testing of the course's solution regions with mutmut, one component at a time.

For each component this builds a scratch copy of the project under ``build/mutation/<component>``
in which every line of the component's solution files *outside* the ``# BEGIN/END SOLUTION``
regions is marked ``# pragma: no mutate``: mutmut then mutates exactly the code a learner writes.
It runs the component's spec against the solutions for every mutant (mutmut picks the tests that
reach the mutated function), then sorts the survivors:

* a survivor listed in ``tests/mutants/<component>.py``'s ``EQUIVALENT`` (by its function and the
  mutated line) is an *equivalent* mutant, one that no test can tell from the solution, with the
  reason written there;
* any other survivor is a *missing test* and makes the run fail.

Usage::

    python scripts/mutation.py                 # every component with a spec
    python scripts/mutation.py attention bpe   # some
    tox -e mutation                            # the same, in its own environment

It writes ``build/mutation/summary.json`` and prints killed/total per component. Not part of
the default test run: it takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutation"
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^(?P<indent>[ \t]*)# END SOLUTION\s*$")
COPIED = ("reference", "solutions", "specs", "conftest.py")


def only_regions_mutable(source: str) -> str:
    """``source`` with everything outside the solution regions wrapped in mutmut's
    ``# pragma: no mutate start`` / ``end`` comments."""
    out = ["# pragma: no mutate start\n"]
    for line in source.splitlines(keepends=True):
        if m := BEGIN.match(line):
            out += [line, f"{m['indent']}# pragma: no mutate end\n"]
        elif m := END.match(line):
            out += [f"{m['indent']}# pragma: no mutate start\n", line]
        else:
            out.append(line)
    return "".join(out) + "# pragma: no mutate end\n"


def component_path(component: str) -> Path:
    package = ROOT / "solutions" / component
    return package if package.is_dir() else ROOT / "solutions" / f"{component}.py"


def prepare(component: str) -> Path:
    """A scratch copy of the project set up for mutmut on ``component``; returns its path."""
    work = BUILD / component
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, work / name)
    target = component_path(component).relative_to(ROOT)
    files = [work / target] if (work / target).is_file() else sorted((work / target).rglob("*.py"))
    for path in files:
        path.write_text(only_regions_mutable(path.read_text()))
    config = (ROOT / "pyproject.toml").read_text() + f"""
[tool.mutmut]
source_paths = ["{target.as_posix()}"]
pytest_add_cli_args_test_selection = ["specs/test_{component}.py"]
pytest_add_cli_args = ["--impl=solutions", "-p", "no:cacheprovider", "-q"]
also_copy = {json.dumps(list(COPIED))}
"""
    (work / "pyproject.toml").write_text(config)
    return work


def survivors(work: Path) -> list[tuple[str, str, str]]:
    """(mutant name, function, the mutated line) of every mutant that survived."""
    mutmut = [sys.executable, "-m", "mutmut"]
    listing = subprocess.run([*mutmut, "results"], cwd=work, capture_output=True, text=True)
    found = []
    for line in listing.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status != "survived":
            continue
        diff = subprocess.run([*mutmut, "show", name], cwd=work, capture_output=True,
                              text=True).stdout
        added = [code_of(d[1:]) for d in diff.splitlines() if d.startswith("+ ")]
        function = name.rsplit(".", 1)[-1].removeprefix("x_").split("__mutmut_")[0]
        found.append((name, function, added[0] if added else ""))
    return found


def code_of(line: str) -> str:
    """A line of Python without its indentation and trailing comment (what a triage names)."""
    return re.sub(r"\s+#.*$", "", line).strip()


def counts(work: Path) -> dict[str, int]:
    subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=work,
                   capture_output=True, check=True)
    stats: dict[str, int] = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    return stats


def equivalent_mutants(component: str) -> dict[tuple[str, str], str]:
    """The triaged equivalent mutants: (function, mutated line without its comment) -> why no
    test can kill it (``EQUIVALENT`` in ``tests/mutants/<component>.py``)."""
    module = importlib.import_module(f"tests.mutants.{component}")
    table: dict[tuple[str, str], str] = getattr(module, "EQUIVALENT", {})
    return table


def run(component: str, max_children: int) -> dict[str, object]:
    started = time.perf_counter()
    work = prepare(component)
    # the scratch copy lies elsewhere: point it at the shared test data beside this checkout
    data = os.environ.get("LLMFS_DATA", str(ROOT.parent / "shared" / "data"))
    env = {**os.environ, "PYTHONPATH": str(work), "LLMFS_DATA": data}
    result = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                             str(max_children)], cwd=work, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"mutmut failed on {component}:\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    stats = counts(work)
    known = equivalent_mutants(component)
    missing: list[dict[str, str]] = []
    equivalent: list[dict[str, str]] = []
    for name, function, line in survivors(work):
        reason = known.get((function, line))
        (equivalent if reason else missing).append(
            {"mutant": name, "function": function, "line": line, **({"why": reason} if reason
                                                                     else {})})
    return {"component": component, "total": stats.get("total", 0),
            "killed": stats.get("killed", 0), "survived": stats.get("survived", 0),
            "timeout": stats.get("timeout", 0), "equivalent": equivalent, "missing": missing,
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("components", nargs="*", help="default: every spec's component")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    components = args.components or sorted(
        p.stem.removeprefix("test_") for p in (ROOT / "specs").glob("test_*.py"))
    sys.path.insert(0, str(ROOT))
    report = [run(c, args.max_children) for c in components]
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "summary.json").write_text(json.dumps(report, indent=1))
    for r in report:
        equivalent, missing = r["equivalent"], r["missing"]
        assert isinstance(equivalent, list) and isinstance(missing, list)
        print(f"{r['component']:10} killed {r['killed']}/{r['total']}, {len(equivalent)} "
              f"equivalent (triaged), {len(missing)} missing tests, {r['seconds']} s")
        for m in missing:
            print(f"    survived: {m['function']}: {m['line']}")
    return 1 if any(r["missing"] for r in report) else 0


if __name__ == "__main__":
    sys.exit(main())
