"""The spec harness itself: stubs in sync with solutions, and no spec that cannot fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import make_exercises
from tests.outcomes import ROOT, Outcome, run_specs


def _spec_name(nodeid: str) -> str:
    """``exercises/test_x.py::test_y[exercises]`` -> ``test_x.py::test_y``."""
    path, _, rest = nodeid.partition("::")
    return f"{Path(path).name}::{rest.split('[')[0]}"


def test_exercises_are_generated_from_solutions() -> None:
    """exercises/ equals what scripts/make_exercises.py generates from solutions/ and specs/."""
    assert make_exercises.main(["--check"]) == 0, (
        "exercises/ is stale: run `python scripts/make_exercises.py` (maintainers). "
        "Learners: this fails once you fill in stubs; run `pytest exercises` instead."
    )


def test_every_spec_has_a_runner_in_exercises() -> None:
    specs = {p.name for p in (ROOT / "specs").glob("test_*.py")}
    runners = {p.name for p in (ROOT / "exercises").glob("test_*.py")}
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
def stub_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    _, outcomes = run_specs(["exercises"], tmp_path_factory.mktemp("stubs"))
    return outcomes


@pytest.mark.slow
def test_every_spec_fails_on_the_stubs_with_not_implemented(
    stub_outcomes: dict[str, Outcome],
) -> None:
    """Against the committed stubs, every spec test fails, and only with NotImplementedError."""
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
    stub_outcomes: dict[str, Outcome], tmp_path: Path
) -> None:
    """The same spec tests that fail on the stubs all pass on the worked solutions."""
    code, outcomes = run_specs(["specs", "--impl=solutions"], tmp_path)
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
