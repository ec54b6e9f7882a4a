"""Fast pre-tokenization and word counting, in one process or several, on text or on a file.

The trainer needs only how often each distinct pre-token occurs, so a corpus of any size is
reduced to a ``Counter`` of words. Large inputs are cut into chunks at safe places (a special
token's start, or a newline between two printable ASCII characters: cuts where GPT-2's regex
provably starts a new pre-token) and the chunks are counted in a process pool; each worker reads
only its chunk, so memory is bounded by the chunk size times the number of processes, plus the
distinct words.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from os import PathLike
from pathlib import Path
from typing import AnyStr, BinaryIO

import regex

# GPT-2's pattern, as in OpenAI's encoder.py and tiktoken's "gpt2" encoding: contractions, a word
# with its optional leading space, a number, a run of punctuation, runs of whitespace. \p{L} (any
# letter) and \p{N} (any number) need the ``regex`` package.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)
# GPT-2's pattern restricted to ASCII, for the standard ``re`` module (about 2x faster than
# ``regex`` here): in ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and \s is [\t\n\v\f\r ].
_WS = r"\t\n\x0b\x0c\r "
_ASCII_SPLIT = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+"""
    rf"""|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)

DEFAULT_CHUNK_SIZE = 4 << 20  # bytes (or characters) per counting task


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens of ``text``, in order; they concatenate back to ``text``.

    ASCII text goes through the standard ``re`` module (the same result, about twice as fast).

    Example::

        >>> pretokenize("Hello world, it's  42!")
        ['Hello', ' world', ',', ' it', "'s", ' ', ' 42', '!']
    """
    return (_ASCII_SPLIT if text.isascii() else _SPLIT).findall(text)


def split_on_special_tokens(text: str, special_tokens: Sequence[str]) -> list[str]:
    """The non-empty pieces of ``text`` in order, each special token a piece of its own (the
    longest wins where they overlap); ``"".join`` of the pieces is ``text``.

    Example::

        >>> split_on_special_tokens("a<|endoftext|>b", ["<|endoftext|>"])
        ['a', '<|endoftext|>', 'b']
    """
    splitter = special_splitter(list(special_tokens))
    if splitter is None:
        return [text] if text else []
    return [piece for piece in splitter.split(text) if piece]


def special_splitter(special_tokens: Sequence[str]) -> re.Pattern[str] | None:
    """A compiled regex whose ``split`` cuts out the special tokens, longest first (or None)."""
    if not special_tokens:
        return None
    longest_first = sorted(special_tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")


def count_pretokens(
    text: str, special_tokens: Sequence[str] = (), *, processes: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Counter[str]:
    """How often each pre-token occurs in ``text``; special tokens are cut out and not counted.

    With ``processes > 1`` and text longer than ``chunk_size``, chunks cut at safe places are
    counted in a process pool; the result is identical to one process.
    """
    _check_processes(processes)
    if processes == 1 or len(text) <= chunk_size:
        return _count(text, special_tokens)
    bounds = chunk_boundaries(text, special_tokens, chunk_size)
    tasks = [(text[a:b], tuple(special_tokens)) for a, b in pairwise(bounds)]
    total: Counter[str] = Counter()
    with _pool(processes) as pool:
        for counts in pool.imap_unordered(_count_task, tasks):
            total.update(counts)
    return total


def count_pretokens_in_file(
    path: str | PathLike[str], special_tokens: Sequence[str] = (), *, processes: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Counter[str]:
    """:func:`count_pretokens` of a UTF-8 file, read chunk by chunk (never whole)."""
    _check_processes(processes)
    path = Path(path)
    with path.open("rb") as f:
        bounds = chunk_boundaries(f, special_tokens, chunk_size)
    specials = tuple(special_tokens)
    tasks = [(str(path), a, b, specials) for a, b in pairwise(bounds)]
    total: Counter[str] = Counter()
    if processes == 1 or len(tasks) <= 1:
        for task in tasks:
            total.update(_count_file_task(task))
        return total
    with _pool(processes) as pool:
        for counts in pool.imap_unordered(_count_file_task, tasks):
            total.update(counts)
    return total


def chunk_boundaries(
    data: str | BinaryIO, special_tokens: Sequence[str], chunk_size: int
) -> list[int]:
    """Offsets ``[0, ..., end]`` cutting ``data`` (a str; or a binary file, in byte offsets)
    into chunks of about ``chunk_size`` at safe places; a chunk is longer where none is near."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if isinstance(data, str):
        text = data
        specials = list(special_tokens)

        def read(offset: int, n: int) -> str:
            return text[offset : offset + n]

        return _boundaries(len(text), chunk_size, lambda pos: _next_cut(read, pos, specials, "\n"))
    f = data
    size = f.seek(0, os.SEEK_END)
    specials_b = [t.encode("utf-8") for t in special_tokens]

    def read_bytes(offset: int, n: int) -> bytes:
        f.seek(offset)
        return f.read(n)

    return _boundaries(size, chunk_size, lambda pos: _next_cut(read_bytes, pos, specials_b, b"\n"))


def _boundaries(size: int, chunk_size: int, next_cut: Callable[[int], int | None]) -> list[int]:
    bounds = [0]
    while bounds[-1] + chunk_size < size:
        cut = next_cut(bounds[-1] + chunk_size)
        if cut is None or cut >= size:
            break
        bounds.append(cut)
    if size > 0:
        bounds.append(size)
    return bounds


_WINDOW = 1 << 16


def _next_cut(
    read: Callable[[int, int], AnyStr], pos: int, specials: Sequence[AnyStr], newline: AnyStr
) -> int | None:
    """The first offset >= ``pos`` where cutting is safe, or None; scans window by window.

    Safe: (a) the start of a special token that no special occurrence overlaps from the left
    (then the whole text's leftmost-longest scan also starts a special there); (b) just after a
    newline between two printable non-space ASCII characters: GPT-2's regex then ends a
    pre-token with the newline and starts one after it, and no special token spans it (unless
    one contains a newline: then (b) is not used).
    """
    longest = max((len(s) for s in specials), default=1)
    newline_ok = not any(newline in s for s in specials)
    while True:
        base = max(pos - longest, 0)  # see what overlaps pos from the left
        want = (pos - base) + _WINDOW + longest
        window = read(base, want)
        lo = pos - base  # candidate cuts: window offsets in [lo, hi)
        if lo >= len(window):
            return None
        hi = min(len(window), lo + _WINDOW)
        cuts: list[int] = []
        for s in specials:
            i = window.find(s, lo)
            while i != -1 and i < hi:
                if _no_overlap_from_left(window, i, specials):
                    cuts.append(i)
                    break
                i = window.find(s, i + 1)
        if newline_ok:
            i = window.find(newline, max(lo - 1, 1))
            while i != -1 and i + 1 < hi:
                if _graphic(window[i - 1 : i]) and _graphic(window[i + 1 : i + 2]):
                    cuts.append(i + 1)
                    break
                i = window.find(newline, i + 1)
        if cuts:
            return base + min(cuts)
        if len(window) < want:
            return None  # the data ends within this window
        pos = base + hi


def _no_overlap_from_left(window: AnyStr, i: int, specials: Sequence[AnyStr]) -> bool:
    """No special occurrence starts in the ``len - 1`` positions before ``i`` (so reaching past
    ``i``)."""
    return all(window.find(s, max(i - len(s) + 1, 0), i - 1 + len(s)) == -1 for s in specials)


def _graphic(ch: str | bytes) -> bool:
    """A printable, non-space ASCII character (a one-character str or a one-byte bytes)."""
    return len(ch) == 1 and 0x21 <= ord(ch) <= 0x7E


def _count(text: str, special_tokens: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    splitter = special_splitter(special_tokens)
    pieces = splitter.split(text)[::2] if splitter else [text]  # odd indices: the specials
    for piece in pieces:
        counts.update(pretokenize(piece))
    return counts


def _count_task(task: tuple[str, tuple[str, ...]]) -> Counter[str]:
    return _count(*task)


def _count_file_task(task: tuple[str, int, int, tuple[str, ...]]) -> Counter[str]:
    path, start, end, special_tokens = task
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 at byte {start + e.start}: {e.reason}") from None
    return _count(text, special_tokens)


def _check_processes(processes: int) -> None:
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive int, got {processes!r}")


def _pool(processes: int) -> multiprocessing.pool.Pool:
    # "spawn": a fresh interpreter per worker; forking a process that runs threads (torch's
    # thread pools, a test runner) can deadlock.
    return multiprocessing.get_context("spawn").Pool(processes)


def iter_text_blocks(path: str | PathLike[str], block_size: int = 1 << 20) -> Iterator[str]:
    """The text of a UTF-8 file in blocks of about ``block_size`` characters (bounded memory)."""
    with open(path, encoding="utf-8") as f:
        while block := f.read(block_size):
            yield block
