"""Pair statistics: how often each adjacent pair of token ids occurs."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise


def get_pair_counts(
    ids: Sequence[int], counts: dict[tuple[int, int], int] | None = None, weight: int = 1
) -> dict[tuple[int, int], int]:
    """Count every adjacent pair ``(ids[i], ids[i + 1])``.

    Contract: each of the ``len(ids) - 1`` adjacent positions adds ``weight`` to its pair's
    count, **overlapping pairs included**: in ``[a, a, a]`` the pair ``(a, a)`` occurs twice. If
    ``counts`` is given, the counts are added to it (in place) and it is returned; this is how a
    trainer sums the pairs of many words, each word weighted by how often it occurs.

    Example::

        >>> get_pair_counts([1, 2, 3, 1, 2])
        {(1, 2): 2, (2, 3): 1, (3, 1): 1}
        >>> get_pair_counts([7, 7, 7])  # overlapping: both (7, 7) positions count
        {(7, 7): 2}
        >>> totals = get_pair_counts([1, 2], weight=10)  # the word [1, 2], seen 10 times
        >>> get_pair_counts([2, 1, 2], totals)
        {(1, 2): 11, (2, 1): 1}

    Hints: ``itertools.pairwise(ids)`` walks the adjacent pairs; ``dict.get(pair, 0)``.
    """
    # BEGIN SOLUTION
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts
    # END SOLUTION
