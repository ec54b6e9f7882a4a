"""JSON Lines files: one JSON value per line, blank lines skipped, errors naming ``file:line``.

Read by the fine-tuning data (``reference/finetune.py``) and the evaluation task files
(``reference/evaluation/scorers.py``); each checks the shape of its own records.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
    >>> _ = path.write_text('{"a": 1}\\n\\n[2]\\n', encoding="utf-8")
    >>> [(where.rsplit(":", 1)[1], value) for where, value in iter_jsonl(path)]
    [('1', {'a': 1}), ('3', [2])]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["iter_jsonl"]


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of the file at ``path``, ``where`` being
    ``"path:line"`` for the caller's own errors. A missing file is a FileNotFoundError naming it;
    a line that is not JSON a ValueError naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found")
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({e})") from None
            yield f"{p}:{lineno}", value
