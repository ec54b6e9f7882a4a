"""What the command lines print when something goes wrong: one line, no traceback.

Both ``python -m reference`` and ``python -m reference.bpe`` report an error as one line on
stderr, ``error: ...``, and a warning as ``warning: ...``; the traceback only with ``--debug``
or ``LLMFS_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class Notice(UserWarning):
    """A warning of this project's (a fallback taken, a request that cannot be met in full):
    always shown by the command lines, whatever the warning filters say."""


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
BAD_INPUT = (ValueError, TypeError, OSError, ImportError)  # settings, files, network


def debugging(flag: bool = False) -> bool:
    """Whether to show tracebacks: ``--debug`` or ``LLMFS_DEBUG`` set (and not 0)."""
    return flag or os.environ.get("LLMFS_DEBUG", "") not in ("", "0")


def report(error: BaseException, *, debug: bool = False, unexpected: bool = False) -> None:
    """Print ``error`` as one line on stderr (its traceback first when ``debug``)."""
    if debug:
        traceback.print_exception(error)
    text = " ".join(str(error).split()) or type(error).__name__
    if unexpected:
        text = f"{type(error).__name__}: {text} (run with --debug for the traceback)"
    print(f"error: {text}", file=sys.stderr)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, each warning prints as one ``warning: ...`` line on stderr."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.simplefilter("default", Notice)
        yield
