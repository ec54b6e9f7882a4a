"""Text to token ids and back: the character, BPE (trained or GPT-2's) and symbol tokenizers,
behind one interface.

Every tokenizer has ``vocab_size``, ``eot_id`` (the end-of-text id, or None), ``encode``,
``decode``, ``decode_bytes`` (the UTF-8 bytes of ids, so a stream of ids can be turned into text
piece by piece without splitting a character) and ``to_dict`` (its description in a dataset's or
a checkpoint's ``meta.json``). :func:`load_tokenizer` reads one back from such a directory.

Example::

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.chars, tok.encode("hole"), tok.decode([2, 3, 1])
    ('ehlo', [1, 3, 2, 0], 'loh')
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from . import bpe

__all__ = [
    "META_NAME",
    "TOKENIZER_NAME",
    "BPETokenizer",
    "CharTokenizer",
    "SymbolTokenizer",
    "Tokenizer",
    "from_description",
    "gpt2_tokenizer",
    "load_tokenizer",
]

META_NAME = "meta.json"
TOKENIZER_NAME = "tokenizer.json"
EOT = "<|endoftext|>"


class Tokenizer(Protocol):
    """What training, generation and serving need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Each character of a fixed alphabet is one token: its index in the sorted alphabet."""

    kind = "char"
    eot_id: int | None = None

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
        try:
            return "".join(self.chars[i] for i in _ints(ids))
        except IndexError:
            raise ValueError(f"token id outside the alphabet [0, {self.vocab_size})") from None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if d.get("kind") != cls.kind or not isinstance(d.get("chars"), str):
            raise ValueError(f"not a character tokenizer description: {d!r}")
        return cls(d["chars"])


class BPETokenizer:
    """The library's byte-level BPE tokenizer (``reference.bpe.Tokenizer``) behind
    :class:`Tokenizer`; stored beside ``meta.json`` as ``tokenizer.json``."""

    kind = "bpe"

    def __init__(self, inner: bpe.Tokenizer) -> None:
        self.inner = inner

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def eot_id(self) -> int | None:
        return self.inner.special_tokens.get(EOT)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def encode_stream(self, pieces: Iterable[str]) -> Iterator[int]:
        return iter(self.inner.encode_iterable(pieces))

    def decode(self, ids: Iterable[int]) -> str:
        return self.inner.decode(_ints(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.inner.decode_bytes(_ints(ids))

    def save(self, directory: str | os.PathLike[str]) -> None:
        self.inner.save(Path(directory) / TOKENIZER_NAME)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": TOKENIZER_NAME}


class SymbolTokenizer:
    """A synthetic source's ids shown as letters: 0 -> 'a', 1 -> 'b'... (for samples)."""

    kind = "symbols"
    eot_id: int | None = None
    ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

    def __init__(self, vocab_size: int) -> None:
        if not 1 <= vocab_size <= len(self.ALPHABET):
            raise ValueError(f"a symbol tokenizer has 1 to {len(self.ALPHABET)} symbols, "
                             f"got {vocab_size}")
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        symbols = self.ALPHABET[: self.vocab_size]
        if bad := sorted(set(text) - set(symbols)):
            raise ValueError(f"{text!r} has symbols {bad} outside {symbols!r}")
        return [symbols.index(c) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.ALPHABET[i] if 0 <= i < self.vocab_size else "?" for i in _ints(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("ascii")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size}


def _ints(ids: Iterable[int]) -> list[int]:
    """A list of ints from a list, a NumPy array or a tensor of ids."""
    tolist = getattr(ids, "tolist", None)
    return list(tolist()) if tolist is not None else list(ids)


def gpt2_tokenizer(ranks_path: str | os.PathLike[str]) -> BPETokenizer:
    """GPT-2's tokenizer from a tiktoken ranks file (``gpt2.tiktoken``): 50,257 ids."""
    return BPETokenizer(bpe.Tokenizer.from_tiktoken(ranks_path, special_tokens=[EOT]))


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """The tokenizer described by ``directory/meta.json`` (a prepared dataset or a checkpoint).

    Raises FileNotFoundError or ValueError naming the file and what is wrong with it.
    """
    meta_path = Path(directory) / META_NAME
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta_path} not found: no tokenizer is described there") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not a JSON file ({e})") from None
    desc = meta.get("tokenizer") if isinstance(meta, dict) else None
    return from_description(desc, meta_path)


def from_description(desc: Any, meta_path: Path) -> Tokenizer:
    """The tokenizer a ``meta.json`` ``"tokenizer"`` entry describes (files beside it)."""
    kind = desc.get("kind") if isinstance(desc, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(desc)
    if kind == "bpe":
        return BPETokenizer(bpe.Tokenizer.load(meta_path.parent / desc["file"]))
    if kind == "symbols":
        return SymbolTokenizer(int(desc["vocab_size"]))
    if kind == "chat":
        from .chat import ChatTokenizer  # the chat format builds on this module

        return ChatTokenizer(from_description(desc.get("base"), meta_path))
    raise ValueError(f"{meta_path}: 'tokenizer' must describe a char, bpe, symbols or chat "
                     f"tokenizer, got {desc!r}")
