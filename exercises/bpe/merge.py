"""Applying one merge: every occurrence of a pair of ids becomes one new id."""

from __future__ import annotations

from collections.abc import Sequence


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    Contract: returns a new list (``ids`` is not modified). Occurrences are taken greedily from
    the left and never overlap: in ``[a, a, a]`` the pair ``(a, a)`` is replaced once, at the
    start, giving ``[new_id, a]``; ``[a, a, a, a]`` gives ``[new_id, new_id]``. This is exactly
    what ``bytes.replace`` does to a byte string.

    Example::

        >>> merge([5, 6, 6, 5, 6], (5, 6), 99)
        [99, 6, 99]
        >>> merge([7, 7, 7], (7, 7), 99)  # overlapping: left to right, [77, 7], not [7, 77]
        [99, 7]

    Hints: walk with an index ``i``; where ``ids[i], ids[i + 1]`` is the pair, emit ``new_id``
    and step 2, else emit ``ids[i]`` and step 1. Mind the last element.
    """
    raise NotImplementedError("exercises/bpe/merge.py::merge is a stub: fill it in (task bpe), then run `pytest exercises -m bpe`")
