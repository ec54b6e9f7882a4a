"""The production BPE trainer: incremental pair counts, a heap, parallel pre-tokenization.

Same result as the course's ``solutions.bpe.train_bpe`` (the tests check it merge for merge), but
instead of recounting every pair after each merge it keeps:

* ``counts``: pair -> count over all words (each distinct word weighted by its frequency);
* ``where``: pair -> the words that may contain it (a superset: stale entries are skipped);
* a max-heap of ``(count, pair)`` with lazy deletion: an entry whose count is no longer the
  pair's current count is dropped when it reaches the top.

A merge touches only the words that contain the merged pair: each such word's old pairs are
subtracted and its new pairs added (so overlaps like ``aaa`` are exact), and only the pairs whose
count changed are pushed again. The heap orders ties by the *greatest* pair of byte strings via
a sort key that reverses byte order (see :func:`_reverse_key`), so ``heapq``'s min-heap pops
exactly what ``max(counts, key=(count, bytes_a, bytes_b))`` would pick.
"""

from __future__ import annotations

import heapq
import sys
import warnings
from collections.abc import Mapping, Sequence
from itertools import pairwise
from os import PathLike

from tqdm import tqdm

from ..console import Notice
from .pretokenize import DEFAULT_CHUNK_SIZE, count_pretokens, count_pretokens_in_file
from .vocab import build_vocab

Pair = tuple[int, int]
_END = chr(257)  # sorts after every chr(256 - byte): a shorter string sorts after its extensions


def check_train_args(text: object, vocab_size: object, special_tokens: Sequence[str]) -> None:
    """Raise a clear TypeError/ValueError for arguments ``train_bpe`` cannot use."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size={vocab_size} is too small: it must hold the 256 byte tokens plus "
            f"{len(special_tokens)} special token(s), so at least {256 + len(special_tokens)}"
        )


def train_bpe(
    text: str,
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    processes: int = 1,
    progress: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on ``text``; the contract of the bpe spec's ``train_bpe``.

    ``processes``: pre-tokenize in that many processes (chunks cut at special tokens); the
    workers are started with "spawn", so a script must call this under
    ``if __name__ == "__main__":``. ``progress``: a tqdm bar over the merges (default: only when
    stderr is a terminal).

    Example::

        >>> vocab, merges = train_bpe("aaa bc<|endoftext|>aaa bc", 260, ["<|endoftext|>"])
        >>> merges
        [(b'a', b'a'), (b'b', b'c'), (b'aa', b'a')]
    """
    check_train_args(text, vocab_size, special_tokens)
    counts = count_pretokens(text, special_tokens, processes=processes)
    return train_from_counts(counts, vocab_size, special_tokens, progress=progress)


def train_bpe_from_file(
    path: str | PathLike[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    processes: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """:func:`train_bpe` on a UTF-8 file of any size, read in chunks of ``chunk_size`` bytes:
    memory holds the distinct pre-tokens and a few chunks, never the whole file."""
    check_train_args("", vocab_size, special_tokens)
    counts = count_pretokens_in_file(
        path, special_tokens, processes=processes, chunk_size=chunk_size
    )
    return train_from_counts(counts, vocab_size, special_tokens, progress=progress)


def train_from_counts(
    word_counts: Mapping[str, int],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    progress: bool | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Learn merges from pre-token counts (pre-token -> occurrences); see :func:`train_bpe`."""
    check_train_args("", vocab_size, special_tokens)
    num_merges = vocab_size - 256 - len(special_tokens)
    words: list[list[int]] = []
    freqs: list[int] = []
    for word, n in word_counts.items():
        ids = list(word.encode("utf-8"))
        if len(ids) > 1 and n > 0:  # a single byte has no pair to merge
            words.append(ids)
            freqs.append(n)

    counts: dict[Pair, int] = {}
    where: dict[Pair, set[int]] = {}
    for wi, ids in enumerate(words):
        n = freqs[wi]
        for pair in pairwise(ids):
            counts[pair] = counts.get(pair, 0) + n
            where.setdefault(pair, set()).add(wi)

    tokens = [bytes([i]) for i in range(256)]
    keys = [_reverse_key(t) for t in tokens]
    heap = [(-c, keys[a] + keys[b], (a, b)) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=num_merges, desc="BPE merges", unit="merge", disable=not show) as bar:
        while len(merges) < num_merges:
            best = _pop_best(heap, counts)
            if best is None:
                break  # every word is a single token
            a, b = best
            new = len(tokens)
            tokens.append(tokens[a] + tokens[b])
            keys.append(keys[a][:-1] + keys[b])
            merges.append((tokens[a], tokens[b]))
            changed = _apply_merge(best, new, words, freqs, counts, where)
            for p in changed:
                c = counts.get(p, 0)
                if c > 0:
                    heapq.heappush(heap, (-c, keys[p[0]] + keys[p[1]], p))
            bar.update()
    if len(merges) < num_merges:
        got = 256 + len(merges) + len(special_tokens)
        warnings.warn(f"the training text gives only {len(merges)} merges: the vocabulary has "
                      f"{got} tokens, not the {vocab_size} asked for (every word is already one "
                      "token; train on more text for a larger vocabulary)", Notice, stacklevel=3)
    return build_vocab(merges, special_tokens), merges


def _reverse_key(token: bytes) -> str:
    """A string whose order is the *reverse* of ``token``'s byte-string order.

    Byte ``x`` becomes ``chr(256 - x)`` (greater byte, smaller char) and the key ends with
    ``_END``, greater than all of them, so ``b"a" < b"ab"`` becomes ``key(b"a") > key(b"ab")``.
    Keys are prefix-free, so ``key(a) + key(b)`` orders pairs as ``(a, b)`` tuples, reversed.
    """
    return "".join(chr(256 - x) for x in token) + _END


def _pop_best(heap: list[tuple[int, str, Pair]], counts: dict[Pair, int]) -> Pair | None:
    """Pop until the top entry is current (its count is the pair's count now)."""
    while heap:
        neg, _, pair = heapq.heappop(heap)
        if counts.get(pair, 0) == -neg:
            return pair
    return None


def _apply_merge(
    pair: Pair,
    new: int,
    words: list[list[int]],
    freqs: list[int],
    counts: dict[Pair, int],
    where: dict[Pair, set[int]],
) -> set[Pair]:
    """Merge ``pair`` into ``new`` in every word that has it; update counts and ``where``.

    Returns the pairs whose count changed. Each touched word's old pairs are subtracted and its
    new pairs added, so overlapping occurrences (``a a a``) are counted exactly.
    """
    a, b = pair
    delta: dict[Pair, int] = {}
    for wi in where.pop(pair, ()):
        ids = words[wi]
        merged = _merge(ids, a, b, new)
        if len(merged) == len(ids):
            continue  # stale: this word no longer has the pair
        n = freqs[wi]
        for p in pairwise(ids):
            delta[p] = delta.get(p, 0) - n
        for p in pairwise(merged):
            delta[p] = delta.get(p, 0) + n
            if new in p:
                where.setdefault(p, set()).add(wi)
        words[wi] = merged
    changed = set()
    for p, d in delta.items():
        if d:
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
            else:
                counts.pop(p, None)
            changed.add(p)
    return changed


def _merge(ids: list[int], a: int, b: int, new: int) -> list[int]:
    """``solutions.bpe.merge`` specialised for the trainer's inner loop."""
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
