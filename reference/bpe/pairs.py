"""The two primitives of byte-pair encoding: count adjacent pairs, merge one pair.

The library's own copies of the clear versions (the course derives them in
``solutions/bpe/stats.py`` and ``merge.py``; the shared spec keeps both honest). The production
trainer and tokenizer use specialised forms of these in their inner loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

__all__ = ["get_pair_counts", "merge"]


def get_pair_counts(
    ids: Sequence[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1
) -> dict[tuple[int, int], int]:
    """Add ``weight`` to ``counts`` (a new dict by default) for every adjacent pair of ``ids``,
    overlapping pairs included; return ``counts``.

    Example::

        >>> get_pair_counts([7, 7, 7])
        {(7, 7): 2}
    """
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """A new list with every occurrence of ``pair`` in ``ids``, left to right and never
    overlapping, replaced by ``new_id``.

    Example::

        >>> merge([7, 7, 7], (7, 7), 99)
        [99, 7]
    """
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
