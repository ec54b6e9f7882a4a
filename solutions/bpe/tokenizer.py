"""The tokenizer: text -> ids with the learned merges, ids -> text with the vocabulary.

Encoding replays training on each pre-token: start from its bytes and keep merging the adjacent
pair that was learned *first* (lowest rank), until no learned pair is left. Decoding concatenates
the tokens' bytes and decodes UTF-8 once at the end: a character may be split across tokens.

Special tokens: ``encode(text, allowed_special=...)`` names the special tokens that become their
own id. ``"all"`` (the default) allows every one; a set allows those in it; a special token
string that is *not* allowed is encoded as ordinary text, byte by byte like anything else (it
never raises, and never yields a special id). ``allowed_special=set()`` is therefore tiktoken's
``encode_ordinary``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from os import PathLike
from typing import Literal

from reference.bpe.files import load_model, save_model  # given: the file format
from reference.bpe.tokenizer import resolve_special_tokens  # given: special-token ids

from .merge import merge
from .pretokenize import pretokenize, split_on_special_tokens
from .stats import get_pair_counts

AllowedSpecial = Literal["all"] | AbstractSet[str]


class Tokenizer:
    """A byte-level BPE tokenizer.

    ``vocab`` maps id -> bytes and must contain all 256 single bytes (at any ids: GPT-2's are
    permuted); ``merges`` lists the learned pairs of byte strings in the order learned, each
    merged token being in ``vocab``. ``special_tokens`` are strings that encode to one id: one
    already in ``vocab`` with the same bytes (the largest such id), else the next free id.

    Example::

        >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"<|eot|>"}
        >>> tok = Tokenizer(vocab, [(b"a", b"b")], special_tokens=["<|eot|>"])
        >>> tok.encode("abc<|eot|>")
        [256, 99, 257]
        >>> tok.decode([256, 99, 257])
        'abc<|eot|>'
    """

    def __init__(
        self,
        vocab: Mapping[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | None = None,
    ) -> None:
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges: list[tuple[bytes, bytes]] = list(merges)
        self.special_tokens: dict[str, int] = resolve_special_tokens(self.vocab, special_tokens)
        # bytes -> id of the ordinary tokens (a special token's id is not an ordinary token)
        special_ids = set(self.special_tokens.values())
        self.token_ids: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            if i not in special_ids:
                self.token_ids.setdefault(self.vocab[i], i)
        missing = [b for b in range(256) if bytes([b]) not in self.token_ids]
        if missing:
            raise ValueError(f"vocab lacks the single-byte tokens for bytes {missing[:10]}...")
        self.byte_ids: list[int] = [self.token_ids[bytes([b])] for b in range(256)]
        # (id, id) -> its rank (the merge learned first has rank 0) and the id it merges into
        self.merge_ranks: dict[tuple[int, int], int] = {}
        self.merge_ids: dict[tuple[int, int], int] = {}
        for rank, (left, right) in enumerate(self.merges):
            for part in (left, right, left + right):
                if part not in self.token_ids:
                    raise ValueError(f"merges[{rank}] = {(left, right)}: {part!r} is not in vocab")
            pair = (self.token_ids[left], self.token_ids[right])
            self.merge_ranks[pair] = rank
            self.merge_ids[pair] = self.token_ids[left + right]

    def allowed_specials(self, allowed_special: AllowedSpecial) -> dict[str, int]:
        """The special tokens ``encode`` keeps whole (given): name -> id, validated."""
        if allowed_special == "all":
            return dict(self.special_tokens)
        if isinstance(allowed_special, str) or not isinstance(allowed_special, AbstractSet):
            raise TypeError(f"allowed_special must be 'all' or a set, got {allowed_special!r}")
        unknown = sorted(set(allowed_special) - self.special_tokens.keys())
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens {unknown}; "
                             f"known: {sorted(self.special_tokens)}")
        return {token: self.special_tokens[token] for token in allowed_special}

    def encode(self, text: str, allowed_special: AllowedSpecial = "all") -> list[int]:
        """Encode ``text`` to token ids.

        Contract: the allowed special tokens (``allowed_special``: ``"all"`` or a set of them;
        see :meth:`allowed_specials`) are cut out with :func:`split_on_special_tokens` and each
        becomes its id; every other piece is split by :func:`pretokenize` and each pre-token's
        UTF-8 bytes are encoded by :meth:`encode_word`. ``decode(encode(s)) == s`` for every
        string ``s``. With GPT-2's merges this equals tiktoken's ``gpt2`` encoding exactly.
        Errors: ``TypeError`` naming the type, if ``text`` is not a str.

        Example (GPT-2; ``GPT2_RANKS`` is the path of its ranks file, ``gpt2.tiktoken``)::

            >>> from reference.bpe import load_tiktoken_ranks  # given: reads the ranks file
            >>> vocab, merges = load_tiktoken_ranks(GPT2_RANKS)
            >>> gpt2 = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
            >>> gpt2.encode("Hello world")
            [15496, 995]
            >>> gpt2.encode("<|endoftext|>"), gpt2.encode("<|endoftext|>", allowed_special=set())
            ([50256], [27, 91, 437, 1659, 5239, 91, 29])

        Hints: check the type first; ``self.allowed_specials(allowed_special)`` (given) gives
        the allowed special tokens as name -> id (and rejects unknown names); a piece that is
        one of them is a special token. Text repeats the same words over and over, so remember
        each pre-token's ids in a dict for the duration of the call: the whole of Tiny
        Shakespeare has 298k pre-tokens but only 15k distinct ones.
        """
        # BEGIN SOLUTION
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        specials = self.allowed_specials(allowed_special)
        ids: list[int] = []
        cache: dict[str, list[int]] = {}
        for piece in split_on_special_tokens(text, specials):
            if piece in specials:
                ids.append(specials[piece])
                continue
            for word in pretokenize(piece):
                if word not in cache:
                    cache[word] = self.encode_word(word.encode("utf-8"))
                ids.extend(cache[word])
        return ids
        # END SOLUTION

    def encode_word(self, word: bytes) -> list[int]:
        """BPE-encode one pre-token's bytes: apply the merges in the order they were learned.

        Contract: start from the ids of the single bytes (``self.byte_ids[b]``); while some
        adjacent pair is a learned merge, merge the pair of **lowest rank** (``merge_ranks``:
        learned first), everywhere in the word (:func:`merge`), into ``merge_ids[pair]``.
        Never merge in the order pairs happen to appear in the word: that gives other tokens.

        Example (merges (a, b) rank 0 -> 256, then (b, c) rank 1 -> 257)::

            >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"bc"}
            >>> tok = Tokenizer(vocab, [(b"a", b"b"), (b"b", b"c")])
            >>> tok.encode_word(b"abc")  # (a,b) has the lower rank: [ab, c], never [a, bc]
            [256, 99]
            >>> tok.encode_word(b"bcab")  # both merges apply, at different places
            [257, 256]

        Hints: :func:`get_pair_counts` lists the pairs present; ``min`` over them with
        ``key=lambda pair: self.merge_ranks.get(pair, math.inf)``; stop when that minimum is
        not a learned merge.
        """
        # BEGIN SOLUTION
        ids = [self.byte_ids[b] for b in word]
        while len(ids) >= 2:
            pairs = get_pair_counts(ids)
            pair = min(pairs, key=lambda p: self.merge_ranks.get(p, math.inf))
            if pair not in self.merge_ranks:
                break  # no learned merge left in this word
            ids = merge(ids, pair, self.merge_ids[pair])
        return ids
        # END SOLUTION

    def decode(self, ids: Iterable[int]) -> str:
        """Decode token ids to text.

        Contract: concatenate the tokens' bytes, then decode UTF-8 once; bytes that are not
        valid UTF-8 (a character cut between tokens, a lone byte) become U+FFFD, the
        replacement character, exactly as ``bytes.decode("utf-8", errors="replace")``; this
        never raises on partial UTF-8. Errors: ``ValueError`` naming an id that is not in the
        vocabulary.

        Example (a tokenizer of the 256 bytes alone: id ``b`` is byte ``b``)::

            >>> tok = Tokenizer({i: bytes([i]) for i in range(256)}, [])
            >>> tok.decode([104, 105])
            'hi'
            >>> tok.decode([0xC3, 0xA9]), tok.decode([0xC3])  # "é" is C3 A9; C3 alone: U+FFFD
            ('é', '�')
            >>> tok.decode([0xE4, 0xB8])  # "中" (E4 B8 AD) cut after 2 bytes: one U+FFFD
            '�'
        """
        # BEGIN SOLUTION
        parts: list[bytes] = []
        for i in ids:
            if i not in self.vocab:
                raise ValueError(f"unknown token id {i!r}: the vocabulary has "
                                 f"{len(self.vocab)} ids")
            parts.append(self.vocab[i])
        return b"".join(parts).decode("utf-8", errors="replace")
        # END SOLUTION

    def encode_iterable(
        self, iterable: Iterable[str], allowed_special: AllowedSpecial = "all"
    ) -> Iterator[int]:
        """Lazily encode the concatenation of ``iterable``'s strings (given).

        Yields exactly ``encode("".join(iterable))``, but holds only a short tail of text at a
        time: a file handle (its lines) or any iterable of strings of bounded size is encoded
        in memory that does not grow with its length. A pre-token or a special token may span
        two pieces, so the tail that a later piece could still change is held back: the last
        two pre-tokens (and the last ``len(longest special) - 1`` characters).
        """
        specials = self.allowed_specials(allowed_special)
        allowed = set(specials)
        buffer = ""
        for piece in iterable:
            if not isinstance(piece, str):
                raise TypeError(f"encode_iterable expects strings, got {type(piece).__name__}")
            buffer += piece
            cut = self._stable_prefix(buffer, specials)
            if cut:
                yield from self.encode(buffer[:cut], allowed_special=allowed)
                buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer, allowed_special=allowed)

    @staticmethod
    def _stable_prefix(text: str, specials: Mapping[str, int]) -> int:
        """Length of a prefix of ``text`` whose ids no continuation of ``text`` can change.

        A special token starting at least ``L = len(longest special)`` characters before the
        end is final; ordinary text then surely runs up to ``D = len(text) - L + 1``, and in it
        every pre-token but the last two is final (a regex match looks at most one character
        beyond itself, or two for ``'ll``). The cut also ends in a non-space character, so that
        the prefix pre-tokenizes alone as it does in the whole.
        """
        longest = max(map(len, specials), default=0)
        start = pos = 0
        for piece in split_on_special_tokens(text, specials):
            if piece in specials:
                if pos > len(text) - longest:
                    break
                start = pos + len(piece)
            pos += len(piece)
        end = len(text) - longest + 1 if longest else len(text)
        words = pretokenize(text[start:end]) if end > start else []
        cut = start + sum(map(len, words[:-2]))
        for word in reversed(words[:-2]):
            if not word[-1].isspace():
                return cut
            cut -= len(word)
        return start

    def save(self, path: str | PathLike[str]) -> None:
        """Write this tokenizer to ``path`` (JSON; see :func:`save_model`), atomically."""
        save_model(path, self.vocab, self.merges, self.special_tokens)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`; a malformed file raises ValueError."""
        vocab, merges, special_tokens = load_model(path)
        return cls(vocab, merges, special_tokens)
