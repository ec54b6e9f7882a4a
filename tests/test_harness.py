"""The spec harness itself: no spec that cannot fail, and every spec passes on the solutions.

The stubs are generated afresh from solutions/ into a copy of the project, so these tests never
depend on the learner's exercises/. That the committed exercises/ equals the generated stubs is a
maintainers' check that CI runs: ``python scripts/make_exercises.py --check``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripts import make_exercises
from tests.outcomes import ROOT, Outcome, start_specs


def _spec_name(nodeid: str) -> str:
    """``exercises/test_x.py::test_y[exercises]`` -> ``test_x.py::test_y``."""
    path, _, rest = nodeid.partition("::")
    return f"{Path(path).name}::{rest.split('[')[0]}"


def test_every_spec_gets_a_runner_in_exercises() -> None:
    """The generator writes exercises/test_<component>.py for each spec, and only those."""
    specs = {p.name for p in (ROOT / "specs").glob("test_*.py")}
    runners = {p.name for p in make_exercises.generate(ROOT) if p.name.startswith("test_")}
    assert specs, "no spec files found in specs/"
    assert specs == runners


def test_strip_solutions_names_function_and_task() -> None:
    source = (
        "class Linear:\n"
        "    def forward(self, x):\n"
        '        """Doc."""\n'
        "        # BEGIN SOLUTION\n"
        "        return x\n"
        "        # END SOLUTION\n"
    )
    stub = make_exercises.strip_solutions(source, "exercises/layers.py", "backprop")
    assert stub.splitlines()[:3] == source.splitlines()[:3]
    assert stub.splitlines()[3] == (
        '        raise NotImplementedError("exercises/layers.py::Linear.forward is a stub: '
        'fill it in (task backprop), then run `pytest exercises -m backprop`")'
    )
    assert len(stub.splitlines()) == 4


@pytest.mark.parametrize(
    "source",
    [
        "# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n",  # not inside a function
        "def f():\n    # BEGIN SOLUTION\n    return 1\n",  # no END
        "def f():\n    return 1\n    # END SOLUTION\n",  # no BEGIN
    ],
)
def test_malformed_markers_are_rejected(source: str) -> None:
    with pytest.raises(make_exercises.MarkerError):
        make_exercises.strip_solutions(source, "exercises/x.py", "x")


@pytest.fixture(scope="module")
def stub_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project whose exercises/ holds the stubs generated from solutions/."""
    copy = tmp_path_factory.mktemp("project")
    for name in ("reference", "solutions", "specs", "tests"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / name, copy / name)
    for rel, text in make_exercises.generate(copy).items():
        (copy / "exercises" / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / "exercises" / rel).write_text(text)
    return copy


@pytest.fixture(scope="module")
def spec_runs(
    stub_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[int, dict[str, Outcome]]]:
    """Exit code and outcomes of the specs on those stubs and on the solutions (run at once)."""
    mktemp = tmp_path_factory.mktemp
    # --tb=no: the outcomes carry the messages; formatting 200 tracebacks costs seconds.
    runs = {
        "stubs": start_specs(["exercises", "--tb=no"], mktemp("stubs"), cwd=stub_project),
        "solutions": start_specs(["specs", "--impl=solutions"], mktemp("solutions")),
    }
    return {name: result() for name, result in runs.items()}


@pytest.fixture(scope="module")
def stub_outcomes(spec_runs: dict[str, tuple[int, dict[str, Outcome]]]) -> dict[str, Outcome]:
    return spec_runs["stubs"][1]


@pytest.mark.slow
def test_every_spec_fails_on_the_stubs_with_not_implemented(
    stub_outcomes: dict[str, Outcome],
) -> None:
    """Against freshly generated stubs, every spec test fails, and only with NotImplementedError."""
    assert stub_outcomes, "no spec ran against the stubs"
    wrong = {
        nodeid: (o.outcome, o.exception, o.message)
        for nodeid, o in stub_outcomes.items()
        if not (o.outcome == "failed" and o.exception == "NotImplementedError")
    }
    assert not wrong, f"spec tests that do not fail with NotImplementedError on the stubs: {wrong}"
    for nodeid, o in stub_outcomes.items():
        assert "exercises/" in o.message and "is a stub" in o.message, (nodeid, o.message)


@pytest.mark.slow
def test_every_spec_passes_on_the_solutions(
    spec_runs: dict[str, tuple[int, dict[str, Outcome]]], stub_outcomes: dict[str, Outcome]
) -> None:
    """The same spec tests that fail on the stubs all pass on the worked solutions."""
    code, outcomes = spec_runs["solutions"]
    not_passed = {k: (o.outcome, o.message) for k, o in outcomes.items() if o.outcome != "passed"}
    assert not not_passed, f"spec tests that do not pass on the solutions: {not_passed}"
    assert code == 0 and outcomes
    assert {_spec_name(k) for k in outcomes} == {_spec_name(k) for k in stub_outcomes}


def test_each_spec_is_marked_with_its_registered_component() -> None:
    """``pytest exercises -m <component>`` selects exactly that spec (markers are --strict)."""
    import importlib
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    registered = {m.split(":")[0] for m in config["tool"]["pytest"]["ini_options"]["markers"]}
    for path in sorted((ROOT / "specs").glob("test_*.py")):
        module = importlib.import_module(f"specs.{path.stem}")
        component = path.stem.removeprefix("test_")
        assert component == module.COMPONENT, path
        assert component in registered, f"register the marker {component!r} in pyproject.toml"
        marks = module.pytestmark if isinstance(module.pytestmark, list) else [module.pytestmark]
        assert component in {m.name for m in marks}, (
            f"{path}: set pytestmark = pytest.mark.{component}"
        )
