"""Pre-tokenization: where merges may never reach across.

Before BPE sees any text, two cuts are made, and no token ever spans either of them:

1. **Special tokens** such as ``<|endoftext|>`` are cut out first. Each becomes exactly one id of
   its own; the text on either side is encoded separately, so ``"cat<|endoftext|>dog"`` can never
   produce a token ``"t<|"`` or ``"catdog"``.
2. **GPT-2's regex** then splits each piece of ordinary text into pre-tokens: contractions
   (``'s``, ``'ll``), a word with its optional leading space (``" world"``), a number, a run of
   punctuation, runs of whitespace. A token never mixes a word with the punctuation after it,
   and ``" dog"`` is the same token whatever precedes it.

``\\p{L}`` (any letter) and ``\\p{N}`` (any number) need the ``regex`` package; the standard
``re`` module does not know them.
"""

from __future__ import annotations

import re
from collections.abc import Collection

# Given code from the library: GPT-2's pattern (contractions, a word with its optional leading
# space, a number, a run of punctuation, runs of whitespace) and ``pretokenize``, which applies it:
# pretokenize("Hello world, it's  42!") is
# ['Hello', ' world', ',', ' it', "'s", ' ', ' 42', '!']; the pieces concatenate back to the text.
from reference.bpe.pretokenize import GPT2_SPLIT_PATTERN, pretokenize

__all__ = ["GPT2_SPLIT_PATTERN", "pretokenize", "split_on_special_tokens"]


def split_on_special_tokens(text: str, special_tokens: Collection[str]) -> list[str]:
    """Cut ``text`` into special tokens and the ordinary text between them.

    Contract: returns the non-empty pieces of ``text`` in order, so ``"".join(pieces) == text``;
    every occurrence of a special token is a piece of its own, and a piece is a special token iff
    it is in ``special_tokens``. Scanning goes left to right; where special tokens overlap, the
    **longest** one that matches at a position wins (with ``"<|a|>"`` and ``"<|a|><|b|>"`` both
    special, ``"<|a|><|b|>"`` is one piece). With no special tokens, the whole text is one piece
    (none if it is empty).

    Example::

        >>> split_on_special_tokens("a<|endoftext|>b<|endoftext|>", ["<|endoftext|>"])
        ['a', '<|endoftext|>', 'b', '<|endoftext|>']
        >>> split_on_special_tokens("<|x|><|y|>!", ["<|x|>", "<|x|><|y|>"])
        ['<|x|><|y|>', '!']
        >>> split_on_special_tokens("plain", [])
        ['plain']

    Hints: ``re.split`` with a capturing group ``"(" + "|".join(...) + ")"`` keeps the
    separators; ``re.escape`` each special token (``|`` is a regex operator); a regex tries the
    alternatives in the order written, so sort them longest first.
    """
    raise NotImplementedError("exercises/bpe/pretokenize.py::split_on_special_tokens is a stub: fill it in (task bpe), then run `pytest exercises -m bpe`")
