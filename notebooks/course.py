"""What the chapter notebooks share: your code where you wrote it, the library's where you have not.

Every notebook starts with ``from course import pick, data_dir``, whether it runs from the
repository root or from ``notebooks/`` (this module puts the root on ``sys.path``).

``pick(component, name, fallback)`` returns ``exercises.<component>.<name>`` when you have filled
it in, else ``fallback`` (the library's, or the worked solution's for a chapter the library has no
use for), and prints one line saying which it uses and why::

    attention.softmax: using yours (exercises/attention.py)
    attention.softmax: using the library's (your exercises/attention.py::softmax is still a stub)

How it decides, exactly: a function is *filled* when it no longer is what
``scripts/make_exercises.py`` generates (the course board's own test, ``course_board.unfilled``:
syntax trees compared, never by running it); a class is filled when every stub among its methods
is. Your filled function may still call a stub of yours (your ``scaled_dot_product_attention``
calling your unfilled ``softmax``): a call that raises the generated ``NotImplementedError``
then runs ``fallback`` instead, with the same kind of line naming the stub it hit. Without
``scripts/course_board.py`` (a copy of the notebooks alone) only that call-time test is made.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the repository root
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def data_dir() -> Path:
    """The shared data folder: ``$LLMFS_DATA``, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("LLMFS_DATA", ROOT.parent / "shared" / "data"))


def in_colab() -> bool:
    """Whether this notebook runs on Google Colab."""
    return "google.colab" in sys.modules


def _whose(fallback: Any) -> str:
    module = getattr(fallback, "__module__", "") or ""
    return "the worked solution's" if module.startswith("solutions") else "the library's"


def _stubs_left(component: str, obj: Any, name: str) -> list[str] | None:
    """The names of the stubs of ``obj`` (a function, or a class and its methods) still as
    generated; ``None`` when the course board cannot tell (it is not importable)."""
    try:
        from scripts import course_board
    except Exception:  # a copy of the notebooks alone, or pytest missing
        return None
    try:
        path = Path(inspect.getsourcefile(inspect.unwrap(obj)) or "").resolve()  # past decorators
        file = path.relative_to(ROOT).as_posix()
    except (TypeError, ValueError):
        return None
    qualname = getattr(obj, "__qualname__", name)
    try:
        mine = [
            s for s in course_board.course_stubs(ROOT)
            if s.component == component and s.file == file
            and (s.qualname == qualname or s.qualname.startswith(qualname + "."))
        ]  # fmt: skip
        left = course_board.unfilled(ROOT, mine)
    except Exception:  # e.g. no solutions/ to generate the stubs from: test at call time
        return None
    return [s.name for s in mine if s in left]


def _guarded(label: str, yours: Callable[..., Any], fallback: Callable[..., Any]) -> Any:
    """``yours``, except that a call raising a stub's ``NotImplementedError`` runs ``fallback``."""

    said: set[str] = set()

    @functools.wraps(yours)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return yours(*args, **kwargs)
        except NotImplementedError as stub:
            hit = str(stub).split(" is a stub")[0]
            if hit not in said:  # once per stub, not once per call
                said.add(hit)
                print(f"{label}: using {_whose(fallback)} (your code calls {hit}, still a stub)")
            return fallback(*args, **kwargs)

    return call


def pick(component: str, name: str, fallback: Any) -> Any:
    """``exercises.<component>.<name>`` if you have filled it in, else ``fallback``; one line says
    which.

    >>> from reference.attention import softmax
    >>> f = pick("attention", "softmax", softmax)  # doctest: +ELLIPSIS
    attention.softmax: using ...
    >>> float(f(__import__("torch").zeros(2)).sum())
    1.0
    """
    label = f"{component}.{name}"
    try:
        yours = getattr(importlib.import_module(f"exercises.{component}"), name)
    except Exception as error:  # a file of yours that does not import is not usable either
        print(f"{label}: using {_whose(fallback)} (exercises.{component} does not give it: "
              f"{type(error).__name__}: {error})")
        return fallback
    left = _stubs_left(component, yours, name)
    if left:
        more = f" and {len(left) - 1} more are still stubs" if len(left) > 1 else " is still a stub"
        print(f"{label}: using {_whose(fallback)} (your {left[0]}{more})")
        return fallback
    file = getattr(inspect.getmodule(yours), "__file__", "") or ""
    where = Path(file).relative_to(ROOT).as_posix() if file.startswith(str(ROOT)) else file
    checked = "" if left is not None else "; the library's if a call hits a stub"
    print(f"{label}: using yours ({where}{checked})")
    if inspect.isfunction(yours) and callable(fallback):
        return _guarded(label, yours, fallback)
    return yours
