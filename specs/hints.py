"""Hints that teach: failure messages that say what is probably wrong, not only that it is.

A spec compares the learner's answer with an oracle's. When they differ, :func:`assert_close`
also compares the answer with what each *classic bug* of that clause would have produced
(computed in the test from torch ops, never from the learner's code) and names the bug it
matches; when none matches it gives the clause's general hint. The message starts with the
hint, so it is the first thing a learner reads (and what ``tests/test_mutants.py`` checks:
every mutant in a component's ``HINTS`` must fail with a message naming its cause).

Example::

    >>> right = torch.tensor([0.5, 0.5])
    >>> likely(torch.tensor([1.0, 1.0]), {"the weights are not normalised": right * 2})
    'likely cause: the weights are not normalised'
    >>> assert_close(torch.tensor([1.0, 1.0]), right, what="attention weights",
    ...              wrong={"the weights are not normalised": right * 2})
    Traceback (most recent call last):
    ...
    AssertionError: attention weights: likely cause: the weights are not normalised
    ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Wrong", "assert_close", "likely"]

# cause -> what the bug would produce (a tensor, or a function computing it lazily)
Wrong = Mapping[str, "Tensor | Callable[[], Tensor]"]


def likely(actual: Any, wrong: Wrong, *, atol: float = 1e-5, rtol: float = 1e-5) -> str:
    """``"likely cause: <cause>"`` for the first classic bug whose answer ``actual`` matches, else
    ``""``. A wrong answer that cannot be computed (it raises) or has another shape never matches.
    """
    if not isinstance(actual, Tensor):
        return ""
    for cause, value in wrong.items():
        try:
            candidate = value() if callable(value) else value
        except Exception:  # a bug's answer that cannot be formed matches nothing
            continue
        if (isinstance(candidate, Tensor) and candidate.shape == actual.shape
                and torch.allclose(actual.detach().double().cpu(),
                                   candidate.detach().double().cpu(), atol=atol, rtol=rtol,
                                   equal_nan=True)):
            return f"likely cause: {cause}"
    return ""


def assert_close(actual: Any, expected: Any, *, what: str, wrong: Wrong | None = None,
                 hint: str = "", **tolerances: Any) -> None:
    """``torch.testing.assert_close(actual, expected, **tolerances)``; on failure, an
    AssertionError that begins ``"<what>: likely cause: ..."`` (a matched bug in ``wrong``,
    else ``hint``), followed by torch's own account of the difference."""
    try:
        torch.testing.assert_close(actual, expected, **tolerances)
    except AssertionError as error:
        cause = likely(actual, wrong or {}) or (f"likely cause: {hint}" if hint else "")
        raise AssertionError(f"{what}: {cause}\n{error}" if cause else f"{what}\n{error}") from None
