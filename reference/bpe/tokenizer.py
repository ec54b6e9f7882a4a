"""The production tokenizer: the bpe spec's ``Tokenizer``, 2-5x faster than the course's.

What makes pure Python fast here (measured in ``benchmarks/test_bpe_bench.py``):

* a word cache: text repeats words, so each distinct pre-token is encoded once. It starts out
  holding every token that is itself a valid pre-token string (``" the"`` -> ``(262,)``): a
  token is always its own encoding under the merges that made it (true of any merge list
  learned by BPE, GPT-2's included; tiktoken takes the same shortcut). Beyond ``cache_size``
  other words, those are dropped, so memory does not grow with the input;
* the per-word BPE keeps one list of pair ranks and updates only the two neighbours of each
  merge, finding the lowest rank with C-level ``min`` and ``list.index``;
* ASCII text is pre-tokenized by the standard ``re`` module with GPT-2's pattern restricted to
  ASCII (identical there, about twice as fast as ``regex``);
* flattening is ``itertools.chain`` over ``map`` of the cache: no Python loop per word.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain, pairwise
from os import PathLike
from typing import Any, Literal

from .files import load_model, load_tiktoken_ranks, save_model
from .gpt2_files import load_gpt2_files
from .pretokenize import pretokenize, special_splitter

AllowedSpecial = Literal["all"] | AbstractSet[str]
_NO_RANK = 1 << 62


def resolve_special_tokens(
    vocab: dict[int, bytes], special_tokens: Iterable[str] | None
) -> dict[str, int]:
    """Give each special token an id: the largest id of ``vocab`` with its bytes, else the
    next id after the largest (added to ``vocab`` in place). Returns name -> id."""
    resolved: dict[str, int] = {}
    for token in special_tokens or ():
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
        if token in resolved:
            raise ValueError(f"special token {token!r} is given twice")
        raw = token.encode("utf-8")
        ids = [i for i, b in vocab.items() if b == raw]
        if ids:
            resolved[token] = max(ids)
        else:
            resolved[token] = max(vocab, default=-1) + 1
            vocab[resolved[token]] = raw
    return resolved


class _WordCache(dict[str, tuple[int, ...]]):
    """pre-token -> ids; a miss runs BPE (``__missing__``). Holds the seed plus at most ``limit``
    other words: when full, those are deleted (not the seed, and the table is not reallocated),
    so memory does not grow with the input."""

    def __init__(self, seed: dict[str, tuple[int, ...]], bpe: Any, limit: int) -> None:
        super().__init__(seed)
        self._seed, self._bpe, self._limit = seed, bpe, max(limit, 1)
        self._added: list[str] = []

    def __missing__(self, word: str) -> tuple[int, ...]:
        if len(self._added) >= self._limit:
            for added in self._added:
                del self[added]
            self._added.clear()
        ids: tuple[int, ...] = self._bpe(word)
        self[word] = ids
        self._added.append(word)
        return ids


class Tokenizer:
    """Byte-level BPE tokenizer (the contract: ``specs/test_bpe.py``).

    ``vocab``: id -> bytes with all 256 single bytes; ``merges``: the learned pairs in order;
    ``special_tokens``: strings that encode to one id. ``cache_size`` bounds the word cache.
    Not-allowed special token strings are encoded as ordinary text (never an error).

    Example::

        >>> tok = Tokenizer.from_tiktoken(GPT2_RANKS, ["<|endoftext|>"])  # gpt2.tiktoken's path
        >>> tok.encode("Hello world<|endoftext|>")
        [15496, 995, 50256]
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | None = None,
        *,
        cache_size: int = 1 << 16,
    ) -> None:
        if not isinstance(vocab, Mapping):
            raise TypeError(f"vocab must be a mapping id -> bytes, got {type(vocab).__name__}")
        for i, token in vocab.items():
            if isinstance(i, bool) or not isinstance(i, int) or not isinstance(token, bytes):
                raise TypeError(f"vocab must map int -> bytes; got {i!r} -> {token!r}")
        self._vocab: dict[int, bytes] = dict(vocab)
        self._merges: list[tuple[bytes, bytes]] = [(a, b) for a, b in merges]
        self._special_tokens = resolve_special_tokens(self._vocab, special_tokens)

        special_ids = set(self._special_tokens.values())
        token_ids: dict[bytes, int] = {}
        for i in sorted(self._vocab):
            if i not in special_ids:
                token_ids.setdefault(self._vocab[i], i)
        missing = [b for b in range(256) if bytes([b]) not in token_ids]
        if missing:
            raise ValueError(f"vocab lacks the single-byte tokens for bytes {missing[:10]}")
        self._byte_ids = [token_ids[bytes([b])] for b in range(256)]
        # bytes -> their ids in one C call, when every byte's id fits in a byte (GPT-2 permutes
        # the bytes; a trained vocabulary keeps them): ``word.translate(table)``
        self._byte_table = bytes(self._byte_ids) if max(self._byte_ids) < 256 else None
        self._ranks: dict[int, int] = {}  # (left id << 32 | right id) -> rank of the merge
        self._merged: list[int] = []  # rank -> the id it makes
        for rank, (left, right) in enumerate(self._merges):
            for part in (left, right, left + right):
                if part not in token_ids:
                    raise ValueError(f"merges[{rank}] = {(left, right)}: {part!r} is not in vocab")
            self._ranks[token_ids[left] << 32 | token_ids[right]] = rank
            self._merged.append(token_ids[left + right])

        # Seed the cache with every single byte and merged token that is a whole string.
        seed: dict[str, tuple[int, ...]] = {}
        for i in [*self._byte_ids, *self._merged]:
            with contextlib.suppress(UnicodeDecodeError):  # half a character: never a word
                seed[self._vocab[i].decode("utf-8")] = (i,)
        self._cache = _WordCache(seed, self._bpe, cache_size)
        self._splitters: dict[frozenset[str], re.Pattern[str] | None] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def vocab(self) -> dict[int, bytes]:
        """id -> token bytes (a copy), special tokens included."""
        return dict(self._vocab)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges, in the order learned (a copy)."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token -> id (a copy)."""
        return dict(self._special_tokens)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id."""
        return max(self._vocab) + 1

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        """Encode ``text``; allowed special tokens become their id, everything else is BPE on
        GPT-2's pre-tokens. Raises TypeError if ``text`` is not a str."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        specials, splitter = self._allowed(allowed_special)
        if splitter is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for n, piece in enumerate(splitter.split(text)):
            if n % 2:  # split() with one capturing group: odd pieces are the special tokens
                ids.append(specials[piece])
            elif piece:
                ids += self._encode_ordinary(piece)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """``encode(text, allowed_special=set())``: special token strings are plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._encode_ordinary(text)

    def _encode_ordinary(self, text: str) -> list[int]:
        return list(chain.from_iterable(map(self._cache.__getitem__, pretokenize(text))))

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Merge the lowest-ranked adjacent pair until none is a learned merge.

        One leftmost occurrence at a time: a pair made with the new token always ranks after
        the merge that made it, so this equals merging every occurrence of the best pair at
        once (the solutions' version). Pairs are keyed as one int, cheaper than a tuple.
        """
        raw = word.encode("utf-8")
        if self._byte_table is not None:
            ids = list(raw.translate(self._byte_table))
        else:
            ids = list(map(self._byte_ids.__getitem__, raw))
        get, merged, none = self._ranks.get, self._merged, _NO_RANK
        ranks = [get(a << 32 | b, none) for a, b in pairwise(ids)]
        while ranks:
            best = min(ranks)
            if best == none:
                break
            i = ranks.index(best)
            ids[i : i + 2] = (merged[best],)
            del ranks[i]
            if i:
                ranks[i - 1] = get(ids[i - 1] << 32 | ids[i], none)
            if i < len(ranks):
                ranks[i] = get(ids[i] << 32 | ids[i + 1], none)
        return tuple(ids)

    def encode_iterable(
        self, iterable: Iterable[str], allowed_special: AllowedSpecial = "all",
        *, block_size: int = 1 << 16,
    ) -> Iterator[int]:
        """Lazily yield ``encode("".join(iterable))``, holding at most about ``block_size``
        characters plus one piece: a text file handle (its lines) or ``iter_text_blocks`` is
        encoded in memory that does not grow with the input.

        Text is encoded once ``block_size`` characters are buffered, except a tail that a later
        piece could still change: the last two pre-tokens, and the last ``L - 1`` characters
        (``L``: the longest allowed special token), which may begin a special token.
        """
        specials, splitter = self._allowed(allowed_special)
        longest = max(map(len, specials), default=0)
        parts: list[str] = []
        buffered = 0
        for piece in iterable:
            if not isinstance(piece, str):
                raise TypeError(f"encode_iterable expects strings, got {type(piece).__name__}")
            parts.append(piece)
            buffered += len(piece)
            if buffered >= block_size:
                text = "".join(parts)
                ids, rest = self._encode_stable_prefix(text, specials, splitter, longest)
                yield from ids
                parts, buffered = [rest], len(rest)
        yield from self.encode("".join(parts), allowed_special=set(specials))

    def _encode_stable_prefix(
        self, text: str, specials: dict[str, int], splitter: re.Pattern[str] | None, longest: int
    ) -> tuple[list[int], str]:
        """Encode the part of ``text`` no continuation can change; return it and the rest."""
        ids: list[int] = []
        start = 0  # where the ordinary text after the last final special token begins
        if splitter is not None:
            limit = len(text) - longest  # a special starting after this may still grow
            for m in splitter.finditer(text):
                if m.start() > limit:
                    break
                ids += self._encode_ordinary(text[start : m.start()])
                ids.append(specials[m.group()])
                start = m.end()
        end = len(text) - longest + 1 if longest else len(text)
        if end <= start:
            return ids, text[start:]
        words = pretokenize(text[start:end])[:-2]  # the last two may still change
        ids += chain.from_iterable(map(self._cache.__getitem__, words))
        return ids, text[start + sum(map(len, words)) :]

    def _allowed(
        self, allowed_special: AllowedSpecial
    ) -> tuple[dict[str, int], re.Pattern[str] | None]:
        if allowed_special == "all":
            names = frozenset(self._special_tokens)
        elif isinstance(allowed_special, AbstractSet) and not isinstance(allowed_special, str):
            names = frozenset(allowed_special)
            unknown = sorted(names - self._special_tokens.keys())
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {unknown}; "
                                 f"known: {sorted(self._special_tokens)}")
        else:
            raise TypeError(f"allowed_special must be 'all' or a set, got {allowed_special!r}")
        if names not in self._splitters:
            self._splitters[names] = special_splitter(sorted(names))
        return {t: self._special_tokens[t] for t in names}, self._splitters[names]

    # -- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids``; ValueError naming an unknown id."""
        if hasattr(ids, "tolist"):  # a NumPy array or a torch tensor
            ids = ids.tolist()
        try:
            return b"".join(map(self._vocab.__getitem__, ids))
        except KeyError as e:
            raise ValueError(f"unknown token id {e.args[0]!r}: the vocabulary has ids "
                             f"0..{max(self._vocab)}") from None
        except TypeError as e:
            raise TypeError(f"decode expects an iterable of int ids: {e}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to text; invalid UTF-8 (a character cut between tokens) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- files --------------------------------------------------------------------------------

    def save(self, path: str | PathLike[str]) -> None:
        """Write the tokenizer (JSON, see ``reference.bpe.files``), atomically."""
        save_model(path, self._vocab, self._merges, self._special_tokens)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`; ValueError names a malformed field."""
        vocab, merges, special_tokens = load_model(path)
        return cls(vocab, merges, special_tokens)

    @classmethod
    def from_tiktoken(
        cls, path: str | PathLike[str], special_tokens: Iterable[str] | None = None
    ) -> Tokenizer:
        """GPT-2's (or any tiktoken-format) ranks file; specials get the next ids."""
        vocab, merges = load_tiktoken_ranks(path)
        return cls(vocab, merges, special_tokens)

    @classmethod
    def from_gpt2_files(
        cls,
        vocab_json: str | PathLike[str],
        merges_txt: str | PathLike[str],
        special_tokens: Iterable[str] | None = None,
    ) -> Tokenizer:
        """OpenAI's / Hugging Face's ``vocab.json`` + ``merges.txt`` (GPT-2's byte-to-unicode
        alphabet); ``special_tokens`` may name entries of ``vocab.json`` (``<|endoftext|>``)."""
        vocab, merges = load_gpt2_files(vocab_json, merges_txt)
        return cls(vocab, merges, special_tokens)
