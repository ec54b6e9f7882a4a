"""Training: learn the merges from raw text.

The loop, as in GPT-2 and minbpe::

    words  = pre-tokens of the text (specials cut out first), each a list of byte ids, with counts
    repeat until the vocabulary is full:
        count every adjacent pair, each word weighted by how often it occurs
        pick the most frequent pair (ties: the lexicographically greatest pair of byte strings)
        give it the next id, and merge it in every word

Counting each *distinct* word once, times its frequency, is what makes this affordable: "the"
occurs thousands of times but is merged once. This learner's version recounts all pairs after
every merge, which is clear but O(corpus) per merge; ``reference.bpe`` updates the counts
incrementally and gives identical merges.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from reference.bpe.trainer import check_train_args  # given: argument checks

from .merge import merge
from .pretokenize import pretokenize, split_on_special_tokens
from .stats import get_pair_counts


def best_pair(counts: dict[tuple[int, int], int], vocab: dict[int, bytes]) -> tuple[int, int]:
    """The pair to merge next: the most frequent one; ties go to the greatest pair of bytes.

    Contract: among the pairs with the highest count, return the one whose
    ``(vocab[a], vocab[b])`` is lexicographically greatest, comparing byte strings, not ids.
    ``counts`` is not empty. The rule makes training deterministic: no dependence on dict order.

    Example::

        >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"aa"}
        >>> best_pair({(97, 98): 3, (99, 100): 1}, vocab)  # most frequent wins: (b"a", b"b")
        (97, 98)
        >>> best_pair({(97, 98): 1, (99, 100): 1, (32, 99): 1}, vocab)  # tie: (b"c", b"d")
        (99, 100)
        >>> best_pair({(256, 97): 1, (98, 99): 1}, vocab)  # b"b" > b"aa" although 98 < 256
        (98, 99)

    Hints: ``max`` with ``key=lambda pair: (counts[pair], vocab[pair[0]], vocab[pair[1]])``.
    """
    raise NotImplementedError("exercises/bpe/train.py::best_pair is a stub: fill it in (task bpe), then run `pytest exercises -m bpe`")


def train_bpe(
    text: str, vocab_size: int, special_tokens: Sequence[str] = ()
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on ``text``; return ``(vocab, merges)``.

    Contract:

    * ``vocab`` maps id -> bytes: ids 0..255 are the single bytes (``vocab[i] == bytes([i])``),
      then merge ``k`` creates id ``256 + k``, then the special tokens get the next ids in the
      order given (``vocab[id] == token.encode("utf-8")``).
    * ``merges[k] == (vocab[a], vocab[b])``, the pair of byte strings merged into id ``256 + k``.
    * Special tokens are cut out of the text first (:func:`split_on_special_tokens`) and never
      take part in a merge; the ordinary pieces are pre-tokenized with :func:`pretokenize`, and
      no merge crosses a pre-token.
    * Each step merges the most frequent pair (counted over all pre-tokens, overlapping pairs
      included); ties go to the lexicographically greatest ``(bytes, bytes)`` (:func:`best_pair`).
    * Merging stops when ``len(vocab) == vocab_size`` (specials included), or earlier when no
      pair is left (every pre-token is one token); the vocabulary is then smaller.
    * Errors: ``TypeError`` if ``text`` is not a str; ``ValueError`` if ``vocab_size`` is below
      ``256 + len(special_tokens)`` or the special tokens are empty or repeated.

    Example (pre-tokens ``"aaa"``, ``" bc"``, ``"aaa"``, ``" bc"``)::

        >>> vocab, merges = train_bpe("aaa bc<|endoftext|>aaa bc", 260, ["<|endoftext|>"])
        >>> merges  # (a,a) 4×; then a 3-way tie at 2, won by (b"b", b"c"); then (b"aa", b"a")
        [(b'a', b'a'), (b'b', b'c'), (b'aa', b'a')]
        >>> vocab[256], vocab[257], vocab[258], vocab[259]
        (b'aa', b'bc', b'aaa', b'<|endoftext|>')

    Hints: start with ``check_train_args(text, vocab_size, special_tokens)`` (given). Count the
    pre-tokens with a ``collections.Counter``, turn each distinct one into a list of byte ids
    (``list(word.encode("utf-8"))``), and keep them with their counts. Each step: sum
    :func:`get_pair_counts` over the words (``weight=count``), take :func:`best_pair`, record
    the merge and the new token's bytes, and :func:`merge` it into every word.
    """
    raise NotImplementedError("exercises/bpe/train.py::train_bpe is a stub: fill it in (task bpe), then run `pytest exercises -m bpe`")
