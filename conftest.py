"""Test harness: one spec, three implementations.

Every spec in ``specs/test_<component>.py`` declares ``COMPONENT = "<component>"`` and asks for
the ``impl`` fixture. ``impl`` is the module ``<package>.<component>`` of one implementation:

* ``reference`` and ``solutions`` in the default run (``pytest``); a spec of a chapter the library
  has no use for (the NumPy backprop engine) sets ``IN_LIBRARY = False`` and runs on the
  solutions only;
* ``exercises`` for the thin files in ``exercises/`` (``pytest exercises``);
* whatever ``--impl`` names, when given (repeatable).

``--mutant MODULE:NAME`` (``NAME`` may be ``*``) patches deliberately broken variants into the
implementation, one parametrization each; the project's own tests use it to prove that the specs
catch classic bugs (see ``tests/mutants`` and ``tests/test_mutants.py``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

ROOT = Path(__file__).resolve().parent
IMPLEMENTATIONS = ("reference", "solutions", "exercises")

# Hypothesis: a derandomized, bounded profile for CI and the default run; "dev" explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=30,
    deadline=None,
    print_blob=True,
    # The explain phase re-runs a failing example hundreds of times: slow on the stubs and on
    # mutants, and it never runs when the tests pass.
    phases=[p for p in Phase if p is not Phase.explain],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-from-scratch")
    group.addoption(
        "--impl",
        action="append",
        choices=IMPLEMENTATIONS,
        help="run the specs against this implementation (repeatable). Default: 'exercises' for "
        "files under exercises/, else 'reference' and 'solutions'.",
    )
    group.addoption(
        "--mutant",
        action="append",
        metavar="MODULE:NAME",
        help="patch the broken variant NAME (or * for all) from MODULE's MUTANTS dict into the "
        "implementation (repeatable); each mutant is its own parametrization and stops at its "
        "first failing test",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("impl")
    if not chosen:
        under_exercises = (ROOT / "exercises") in Path(metafunc.definition.path).parents
        chosen = ["exercises"] if under_exercises else ["reference", "solutions"]
    if not getattr(metafunc.module, "IN_LIBRARY", True):
        chosen = [name for name in chosen if name != "reference"]
    mutants = _mutants(metafunc.config)
    params: list[Any] = list(chosen)
    if mutants:
        params = [
            pytest.param((name, m), id=f"{name}-{m.partition(':')[2]}")
            for name in chosen
            for m in mutants
        ]
    metafunc.parametrize("impl", params, indirect=True, scope="module")


def _component(request: pytest.FixtureRequest) -> str:
    component = getattr(request.module, "COMPONENT", None)
    if not isinstance(component, str):
        raise pytest.UsageError(f"{request.module.__name__} uses `impl` but sets no COMPONENT")
    return component


@pytest.fixture(scope="module")
def impl(request: pytest.FixtureRequest) -> Any:
    """The module ``<implementation>.<COMPONENT>`` the spec runs against."""
    name, mutant = request.param if isinstance(request.param, tuple) else (request.param, None)
    module: ModuleType = importlib.import_module(f"{name}.{_component(request)}")
    if mutant is None:
        yield module
        return
    module_name, _, mutant_name = mutant.partition(":")
    patches = importlib.import_module(module_name).MUTANTS[mutant_name]
    with pytest.MonkeyPatch.context() as mp:
        for dotted, replacement in patches.items():
            patch_everywhere(mp, module, dotted, replacement)
        yield module


def patch_everywhere(mp: pytest.MonkeyPatch, module: ModuleType, dotted: str,
                     replacement: Any) -> None:
    """Replace the object at ``module.<dotted>`` by ``replacement``, and every other reference
    to that same object in the modules of ``module``'s package (a function imported by name,
    ``from .merge import merge``, is one object under several names): the mutant is what
    every caller gets, without a hand-kept list of the modules that import it."""
    owner: Any = module
    *path, attr = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    target = getattr(owner, attr)  # raises if the attribute does not exist
    mp.setattr(owner, attr, replacement)
    if isinstance(owner, type):  # a method: the class is the one place
        return
    package = module.__name__.split(".")[0]
    for name, other in list(sys.modules.items()):
        if name.split(".")[0] != package or other is None:
            continue
        for alias, value in list(vars(other).items()):
            if value is target:
                mp.setattr(other, alias, replacement)


def _mutants(config: pytest.Config) -> list[str]:
    """The ``--mutant`` options expanded to a list of ``module:name``."""
    found = []
    for spec in config.getoption("mutant") or []:
        module_name, _, name = spec.partition(":")
        mutants = importlib.import_module(module_name).MUTANTS
        names = sorted(mutants) if name == "*" else [name]
        for n in names:
            if n not in mutants:
                raise pytest.UsageError(
                    f"no mutant {n!r} in {module_name}; known: {sorted(mutants)}"
                )
            found.append(f"{module_name}:{n}")
    return found


def _mutant_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("impl") if callspec is not None else None
    return param[1] if isinstance(param, tuple) else None


_caught_mutants: set[str] = set()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """With --mutant: once a spec test has caught a mutant, skip its remaining tests."""
    mutant = _mutant_of(item)
    if mutant in _caught_mutants:
        pytest.skip(f"mutant {mutant} already caught")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """For learners: a stub that is not filled in yet reports one line, not a traceback."""
    report = yield
    mutant = _mutant_of(item)
    if mutant is not None and report.failed and report.when == "call":
        _caught_mutants.add(mutant)
    callspec = getattr(item, "callspec", None)
    on_exercises = callspec is not None and callspec.params.get("impl") == "exercises"
    if (
        on_exercises
        and report.failed
        and call.excinfo is not None
        and call.excinfo.errisinstance(NotImplementedError)
    ):
        report.longrepr = f"NotImplementedError: {call.excinfo.value}"
    return report


def data_dir() -> Path:
    """Where the shared test data lives: ``$LLMFS_DATA``, else ``../shared/data``."""
    return Path(os.environ.get("LLMFS_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; a missing file fails under CI and skips elsewhere."""
    path = data_dir()
    expected = [path / "tinyshakespeare" / "input.txt", path / "gpt2" / "gpt2.tiktoken"]
    missing = [str(p) for p in expected if not p.is_file()]
    if missing:
        message = f"shared test data missing: {missing}; set LLMFS_DATA to the folder that has them"
        if os.environ.get("CI") or os.environ.get("LLMFS_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return path
