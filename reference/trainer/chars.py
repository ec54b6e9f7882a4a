"""A character-level tokenizer: one token per distinct character of the training text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class CharTokenizer:
    """Maps each character of a fixed alphabet to its index in the sorted alphabet.

    Example::

        >>> tok = CharTokenizer.from_text("hello")
        >>> tok.chars, tok.encode("hole"), tok.decode([2, 3, 1])
        ('ehlo', [1, 3, 2, 0], 'loh')
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        alphabet = sorted(set(chars))
        if not alphabet:
            raise ValueError("a character tokenizer needs at least one character")
        if any(len(c) != 1 for c in alphabet):
            raise ValueError("every entry of the alphabet must be a single character")
        self.chars = "".join(alphabet)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in this tokenizer's alphabet of "
                f"{self.vocab_size} characters (it was not in the training text)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if d.get("kind") != cls.kind or not isinstance(d.get("chars"), str):
            raise ValueError(f"not a character tokenizer description: {d!r}")
        return cls(d["chars"])
