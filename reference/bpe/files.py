"""Files: this project's tokenizer format, and GPT-2's ranks in tiktoken's format.

The course's tokenizer (``solutions/bpe``) reads and writes these as given code.

**Tokenizer file** (``Tokenizer.save`` / ``Tokenizer.load``): one UTF-8 JSON object::

    {
      "format": "llm-from-scratch/bpe",
      "version": 1,
      "pattern": "<the pre-tokenizer regex: GPT2_SPLIT_PATTERN>",
      "vocab": [[0, "AA=="], [1, "AQ=="], ...],        # [id, base64(token bytes)], by id
      "merges": [["aA==", "aA=="], ...],               # [base64(left), base64(right)], in order
      "special_tokens": {"<|endoftext|>": 50256}       # name -> id; vocab[id] is its UTF-8
    }

Base64 because tokens are arbitrary bytes (half a UTF-8 character is a valid token). Loading
checks every field and names the one that is wrong. Writing is atomic (``reference/atomic.py``):
a crash never leaves a half-written tokenizer behind.

**tiktoken format** (``gpt2.tiktoken``): one line per token, ``base64(token bytes) rank``,
ranks 0..n-1. It has no merge list; :func:`load_tiktoken_ranks` recovers it (minbpe's trick):
token ``t`` of rank ``r`` is what BPE makes of ``t``'s bytes using only the ranks below ``r``,
which must leave exactly two parts: the pair merged into ``t``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping, Sequence
from itertools import pairwise
from os import PathLike
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .pretokenize import GPT2_SPLIT_PATTERN

FORMAT = "llm-from-scratch/bpe"
VERSION = 1


def save_model(
    path: str | PathLike[str],
    vocab: Mapping[int, bytes],
    merges: Sequence[tuple[bytes, bytes]],
    special_tokens: Mapping[str, int],
) -> None:
    """Write a tokenizer to ``path`` in the format above, atomically."""
    b64 = _b64encode
    document = {
        "format": FORMAT,
        "version": VERSION,
        "pattern": GPT2_SPLIT_PATTERN,
        "vocab": [[i, b64(vocab[i])] for i in sorted(vocab)],
        "merges": [[b64(left), b64(right)] for left, right in merges],
        "special_tokens": dict(special_tokens),
    }
    atomic_write_text(Path(path), json.dumps(document, ensure_ascii=False, indent=0) + "\n")


def load_model(
    path: str | PathLike[str],
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]], dict[str, int]]:
    """Read ``(vocab, merges, special_tokens)`` from a file written by :func:`save_model`.

    Raises ``ValueError`` naming the file and the field (``vocab[3]``, ``merges[17]``...) that
    is malformed, ``FileNotFoundError`` if there is no file.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a tokenizer file (invalid JSON: {e})") from e

    def fail(field: str, problem: str) -> ValueError:
        return ValueError(f"{path}: {field}: {problem}")

    if not isinstance(document, dict):
        raise fail("top level", "expected a JSON object")
    if document.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {document.get('format')!r}")
    if document.get("version") != VERSION:
        raise fail("version", f"unsupported version {document.get('version')!r}, "
                              f"this code reads version {VERSION}")
    if document.get("pattern") != GPT2_SPLIT_PATTERN:
        raise fail("pattern", "only GPT-2's pre-tokenizer pattern is supported")
    for key, kind in (("vocab", list), ("merges", list), ("special_tokens", dict)):
        if not isinstance(document.get(key), kind):
            raise fail(key, f"missing, or not a JSON {'array' if kind is list else 'object'}")

    vocab: dict[int, bytes] = {}
    for n, entry in enumerate(document["vocab"]):
        if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0])):
            raise fail(f"vocab[{n}]", f"expected [id, base64], got {entry!r}")
        if entry[0] in vocab:
            raise fail(f"vocab[{n}]", f"id {entry[0]} appears twice")
        vocab[entry[0]] = _b64decode(entry[1], lambda p, n=n: fail(f"vocab[{n}]", p))
    tokens = set(vocab.values())

    merges: list[tuple[bytes, bytes]] = []
    for n, entry in enumerate(document["merges"]):
        if not (isinstance(entry, list) and len(entry) == 2):
            raise fail(f"merges[{n}]", f"expected [base64, base64], got {entry!r}")
        left, right = (_b64decode(e, lambda p, n=n: fail(f"merges[{n}]", p)) for e in entry)
        for part in (left, right, left + right):
            if part not in tokens:
                raise fail(f"merges[{n}]", f"token {part!r} is not in the vocab")
        merges.append((left, right))

    special_tokens: dict[str, int] = {}
    for name, i in document["special_tokens"].items():
        if not _is_int(i) or vocab.get(i) != name.encode("utf-8"):
            raise fail(f"special_tokens[{name!r}]", f"id {i!r} is not a vocab entry with the "
                                                    "token's bytes")
        special_tokens[name] = i
    return vocab, merges, special_tokens


def load_tiktoken_ranks(
    path: str | PathLike[str],
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Read a tiktoken-format ranks file; return ``(vocab, merges)`` with id = rank.

    Recovering GPT-2's 50,000 merges takes about a second, so the result is remembered per
    file (path, size and modification time); each call returns fresh copies.

    Example::

        >>> vocab, merges = load_tiktoken_ranks(GPT2_RANKS)  # the path of gpt2.tiktoken
        >>> len(vocab), len(merges), vocab[15496], merges[0]
        (50256, 50000, b'Hello', (b' ', b't'))

    Raises ``ValueError`` naming the line that is malformed, or the token that is not a merge of
    two lower-ranked tokens.
    """
    path = Path(path).resolve()
    stat = path.stat()
    vocab, merges = _load_tiktoken_ranks(path, stat.st_size, stat.st_mtime_ns)
    return dict(vocab), list(merges)


@functools.lru_cache(maxsize=4)
def _load_tiktoken_ranks(
    path: Path, size: int, mtime_ns: int
) -> tuple[dict[int, bytes], tuple[tuple[bytes, bytes], ...]]:
    ranks: dict[bytes, int] = {}
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'base64 rank', got {line[:80]!r}")
            token = _b64decode(fields[0], lambda p, n=lineno: ValueError(f"{path}:{n}: {p}"))
            if token in ranks:
                raise ValueError(f"{path}:{lineno}: token {token!r} appears twice")
            ranks[token] = int(fields[1])
    vocab = {rank: token for token, rank in ranks.items()}
    if sorted(vocab) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1}, each once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: no token for the single bytes {missing[:10]}")

    merges: list[tuple[bytes, bytes]] = []
    for rank in sorted(vocab):
        token = vocab[rank]
        if len(token) == 1:
            continue
        parts = _bpe_below(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"{path}: token {token!r} (rank {rank}) is not a merge of two "
                             f"lower-ranked tokens (got parts {parts})")
        merges.append((parts[0], parts[1]))
    return vocab, tuple(merges)


def _bpe_below(ranks: Mapping[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE of ``token`` using only ranks below ``max_rank``: repeatedly merge the
    adjacent parts whose concatenation has the lowest rank (leftmost on a tie)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    inf = max_rank
    pair_ranks = [ranks.get(a + b, inf) for a, b in pairwise(parts)]
    while pair_ranks:
        best = min(pair_ranks)
        if best >= max_rank:
            break
        i = pair_ranks.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = min(ranks.get(parts[i - 1] + parts[i], inf), inf)
        if i < len(pair_ranks):
            pair_ranks[i] = min(ranks.get(parts[i] + parts[i + 1], inf), inf)
    return parts


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _b64encode(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _b64decode(text: Any, fail: Any) -> bytes:
    """Strict base64 -> bytes; ``fail(problem)`` builds the exception to raise."""
    if not isinstance(text, str | bytes):
        raise fail(f"expected a base64 string, got {text!r}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise fail(f"invalid base64 {text!r}: {e}") from e
