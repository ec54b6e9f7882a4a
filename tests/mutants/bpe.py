"""Classic learner bugs in the BPE tokenizer; specs/test_bpe.py must catch every one.

Each mutant replaces functions of ``solutions.bpe`` (patched in place; the harness patches every
module that imported the function by name, so the whole package uses the broken version). Named
for the bug, commented with the tests expected to catch it. ``EQUIVALENT`` lists the survivors of
the mutation tool (``scripts/mutation.py bpe``) that no test can tell from the solution.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any

from solutions.bpe import pretokenize, split_on_special_tokens
from solutions.bpe.tokenizer import Tokenizer

Pair = tuple[int, int]


# ----------------------------------------------------------------------------- pair counts


def _counts_skip_overlaps(
    ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1
) -> dict[Pair, int]:
    """After counting a pair, skip past it: [a, a, a] counts (a, a) once instead of twice."""
    counts = {} if counts is None else counts
    i = 0
    while i + 1 < len(ids):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + weight
        i += 2 if ids[i] == ids[i + 1] else 1
    return counts


def _counts_ignore_weight(
    ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1
) -> dict[Pair, int]:
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def _counts_fresh_dict(
    ids: Sequence[int], counts: dict[Pair, int] | None = None, weight: int = 1
) -> dict[Pair, int]:
    """Ignores the ``counts`` argument: nothing accumulates across words."""
    fresh: dict[Pair, int] = {}
    for pair in pairwise(ids):
        fresh[pair] = fresh.get(pair, 0) + weight
    return fresh


# ----------------------------------------------------------------------------- merge


def _merge_right_to_left(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Scans from the right: [a, a, a] becomes [a, aa] instead of [aa, a]."""
    out: list[int] = []
    i = len(ids) - 1
    while i >= 0:
        if i >= 1 and ids[i - 1] == pair[0] and ids[i] == pair[1]:
            out.append(new_id)
            i -= 2
        else:
            out.append(ids[i])
            i -= 1
    return out[::-1]


def _merge_overlapping(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replaces every position where the pair starts, overlaps included: [a, a, a] -> [aa, aa]."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            if i + 2 < len(ids) and (ids[i + 1], ids[i + 2]) == pair:
                i += 1  # steps one: the second element is used twice
                continue
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_drops_last(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """The classic ``while i < len(ids) - 1`` loop that forgets the last element."""
    out: list[int] = []
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ----------------------------------------------------------------------------- tie-breaking


def _ties_smallest(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    """Ties go to the smallest pair of byte strings."""
    top = max(counts.values())
    return min((p for p in counts if counts[p] == top), key=lambda p: (vocab[p[0]], vocab[p[1]]))


def _ties_by_ids(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    """Compares ids, not bytes: id 256 (b"aa") beats id 98 (b"b")."""
    return max(counts, key=lambda p: (counts[p], p))


def _ties_first_seen(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    """``max`` by count alone: ties go to whichever pair was counted first."""
    return max(counts, key=lambda p: counts[p])


def _ties_decoded_text(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    """Compares decoded text: every half character is U+FFFD, so their pairs tie."""
    def text(i: int) -> str:
        return vocab[i].decode("utf-8", errors="replace")
    return max(counts, key=lambda p: (counts[p], text(p[0]), text(p[1])))


def _ties_repr(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    """Compares ``str(bytes)``: "b'\\xc3'" < "b'z'" although b"\\xc3" > b"z"."""
    return max(counts, key=lambda p: (counts[p], str(vocab[p[0]]), str(vocab[p[1]])))


def _ties_joined(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    """Compares the merged token's bytes, not the pair: b"az" > b"abc" but (b"ab", b"c") wins."""
    return max(counts, key=lambda p: (counts[p], vocab[p[0]] + vocab[p[1]]))


def _ties_second_first(counts: dict[Pair, int], vocab: dict[int, bytes]) -> Pair:
    return max(counts, key=lambda p: (counts[p], vocab[p[1]], vocab[p[0]]))


# ----------------------------------------------------------------------------- training loops


def _trainer(
    *,
    split: Callable[[str, Collection[str]], list[str]] = split_on_special_tokens,
    pre: Callable[[str], list[str]] = pretokenize,
    weighted: bool = True,
    specials_first: bool = False,
    specials_sorted: bool = False,
    merges_short_by: int = 0,
) -> Callable[..., tuple[dict[int, bytes], list[tuple[bytes, bytes]]]]:
    """train_bpe with one knob turned the wrong way (otherwise the solution's loop)."""
    from solutions.bpe.train import best_pair, check_train_args

    def train_bpe(
        text: str, vocab_size: int, special_tokens: Sequence[str] = ()
    ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
        check_train_args(text, vocab_size, special_tokens)
        specials = set(special_tokens)
        word_counts: Counter[str] = Counter()
        for piece in split(text, specials):
            if piece not in specials:
                word_counts.update(pre(piece))
        words = [(list(w.encode("utf-8")), n if weighted else 1) for w, n in word_counts.items()]
        vocab = {i: bytes([i]) for i in range(256)}
        ids_of_specials = {}
        if specials_first:
            for token in special_tokens:
                ids_of_specials[token] = len(vocab)
                vocab[len(vocab)] = token.encode("utf-8")
        merges: list[tuple[bytes, bytes]] = []
        while len(merges) < vocab_size - 256 - len(special_tokens) - merges_short_by:
            counts: dict[Pair, int] = {}
            for ids, n in words:
                for pair in pairwise(ids):
                    counts[pair] = counts.get(pair, 0) + n
            if not counts:
                break
            pair = best_pair(counts, vocab)
            new_id = len(vocab)
            vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
            merges.append((vocab[pair[0]], vocab[pair[1]]))
            words = [(_merge(ids, pair, new_id), n) for ids, n in words]
        if not specials_first:
            for token in sorted(special_tokens) if specials_sorted else special_tokens:
                vocab[len(vocab)] = token.encode("utf-8")
        return vocab, merges

    return train_bpe


def _merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """A correct merge, for the mutants whose bug is elsewhere."""
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _no_special_split(text: str, special_tokens: Collection[str]) -> list[str]:
    """Special tokens are not cut out: "<|endoftext|>" is trained on as ordinary text."""
    return [text] if text else []


def _glue_around_specials(text: str, special_tokens: Collection[str]) -> list[str]:
    """Drops the special tokens but glues the text around them: merges reach across."""
    pieces = split_on_special_tokens(text, special_tokens)
    glued = "".join(p for p in pieces if p not in special_tokens)
    return [glued] if glued else []


def _no_pretokenization(piece: str) -> list[str]:
    """The whole piece is one word: merges cross word and punctuation boundaries."""
    return [piece] if piece else []


# ----------------------------------------------------------------------------- special tokens


def _split_first_listed(text: str, special_tokens: Collection[str]) -> list[str]:
    """Alternatives in the order given, not longest first: "<|x|>" cuts "<|x|><|y|>" short."""
    if not special_tokens:
        return [text] if text else []
    pattern = "(" + "|".join(re.escape(t) for t in special_tokens) + ")"
    return [p for p in re.split(pattern, text) if p]


def _split_shortest_first(text: str, special_tokens: Collection[str]) -> list[str]:
    return _split_first_listed(text, sorted(special_tokens, key=len))


def _split_unescaped(text: str, special_tokens: Collection[str]) -> list[str]:
    """Forgets ``re.escape``: "<|endoftext|>" becomes the alternation "<" | "endoftext" | ">"."""
    if not special_tokens:
        return [text] if text else []
    pattern = "(" + "|".join(sorted(special_tokens, key=len, reverse=True)) + ")"
    return [p for p in re.split(pattern, text) if p]



def _split_keeps_empty_pieces(text: str, special_tokens: Collection[str]) -> list[str]:
    """``re.split`` without dropping the empty strings between adjacent special tokens."""
    if not special_tokens:
        return [text]
    pattern = "(" + "|".join(re.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
    return re.split(pattern + ")", text)

# ----------------------------------------------------------------------------- encode / decode


def _encode_word_discovery_order(self: Tokenizer, word: bytes) -> list[int]:
    """Merges the first learned pair found scanning left to right, not the lowest rank."""
    ids = [self.byte_ids[b] for b in word]
    while True:
        for i in range(len(ids) - 1):
            pair = (ids[i], ids[i + 1])
            if pair in self.merge_ranks:
                ids = [*ids[:i], self.merge_ids[pair], *ids[i + 2 :]]
                break
        else:
            return ids


def _encode_word_highest_rank(self: Tokenizer, word: bytes) -> list[int]:
    """``max`` instead of ``min``: the merge learned last goes first."""
    ids = [self.byte_ids[b] for b in word]
    while True:
        known = [p for p in pairwise(ids) if p in self.merge_ranks]
        if not known:
            return ids
        pair = max(known, key=lambda p: self.merge_ranks[p])
        ids = _merge(ids, pair, self.merge_ids[pair])


def _encode_word_one_pass(self: Tokenizer, word: bytes) -> list[int]:
    """Stops after the first merge that applies: words stay split."""
    ids = [self.byte_ids[b] for b in word]
    ranked = [p for p in pairwise(ids) if p in self.merge_ranks]
    if ranked:
        pair = min(ranked, key=lambda p: self.merge_ranks.get(p, math.inf))
        ids = _merge(ids, pair, self.merge_ids[pair])
    return ids


def _encode_without_pretokenization(self: Tokenizer, text: str, allowed_special: Any = "all"
                                    ) -> list[int]:
    if not isinstance(text, str):
        raise TypeError("not a str")
    specials = self.allowed_specials(allowed_special)
    ids: list[int] = []
    for piece in split_on_special_tokens(text, specials):
        ids += [specials[piece]] if piece in specials else self.encode_word(piece.encode())
    return ids


def _encode_all_specials_always(self: Tokenizer, text: str, allowed_special: Any = "all"
                                ) -> list[int]:
    """Ignores ``allowed_special``: special token strings always become special ids."""
    return _ORIGINAL_ENCODE(self, text)


_ORIGINAL_ENCODE = Tokenizer.encode


def _encode_cuts_out_every_special(self: Tokenizer, text: str, allowed_special: Any = "all"
                                   ) -> list[int]:
    """Cuts out every special token, then encodes the ones not allowed as text on their own:
    " <|endoftext|>" loses the pre-token " <|"."""
    if not isinstance(text, str):
        raise TypeError(f"encode expects a str, got {type(text).__name__}")
    allowed = self.allowed_specials(allowed_special)
    ids: list[int] = []
    for piece in split_on_special_tokens(text, self.special_tokens):
        ids += [allowed[piece]] if piece in allowed else _ORIGINAL_ENCODE(self, piece, set())
    return ids


def _encode_normalizes(self: Tokenizer, text: str, allowed_special: Any = "all") -> list[int]:
    """NFC-normalizes first: "e\u0301" comes back as "é", the Angstrom sign as "Å"."""
    if not isinstance(text, str):
        raise TypeError(f"encode expects a str, got {type(text).__name__}")
    return _ORIGINAL_ENCODE(self, unicodedata.normalize("NFC", text), allowed_special)


def _decode_strict(self: Tokenizer, ids: Iterable[int]) -> str:
    return b"".join(self.vocab[i] for i in ids).decode("utf-8")  # raises on partial UTF-8


def _decode_token_by_token(self: Tokenizer, ids: Iterable[int]) -> str:
    """Decodes each token alone: a character split across two tokens becomes two U+FFFD."""
    return "".join(self.vocab[i].decode("utf-8", errors="replace") for i in ids)


def _decode_skips_unknown(self: Tokenizer, ids: Iterable[int]) -> str:
    return b"".join(self.vocab.get(i, b"") for i in ids).decode("utf-8", errors="replace")


def _decode_latin1(self: Tokenizer, ids: Iterable[int]) -> str:
    """Never raises, but is not UTF-8."""
    return b"".join(self.vocab[i] for i in ids).decode("latin-1")


def _decode_ignore(self: Tokenizer, ids: Iterable[int]) -> str:
    """Drops invalid bytes instead of replacing them."""
    return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="ignore")


def _decode_replacement_per_byte(self: Tokenizer, ids: Iterable[int]) -> str:
    """One U+FFFD per invalid byte: a character cut after 2 of 3 bytes gives two, not one."""
    text = b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="surrogateescape")
    return re.sub("[\udc80-\udcff]", "\ufffd", text)


def _encode_iterable_per_piece(self: Tokenizer, iterable: Iterable[str],
                               allowed_special: Any = "all") -> Iterator[int]:
    """Encodes each piece alone: a word or special token cut between pieces is split."""
    for piece in iterable:
        yield from self.encode(piece, allowed_special=allowed_special)


def _stable_prefix(keep: int, special_tail: bool) -> Any:
    """The given ``Tokenizer._stable_prefix`` holding back the last ``keep`` pre-tokens (it
    holds 2), and the last ``len(longest special) - 1`` characters only if ``special_tail``."""

    def stable_prefix(text: str, specials: dict[str, int]) -> int:
        longest = max(map(len, specials), default=0)
        start = pos = 0
        for piece in split_on_special_tokens(text, specials):
            if piece in specials:
                if pos > len(text) - longest:
                    break
                start = pos + len(piece)
            pos += len(piece)
        end = len(text) - longest + 1 if longest and special_tail else len(text)
        words = pretokenize(text[start:end]) if end > start else []
        cut = start + sum(map(len, words[:-keep]))
        for word in reversed(words[:-keep]):
            if not word[-1].isspace():
                return cut
            cut -= len(word)
        return start

    return staticmethod(stable_prefix)


MUTANTS: dict[str, dict[str, Any]] = {
    # test_get_pair_counts_worked_example, test_train_bpe_counts_overlapping_pairs
    "pair_counts_skip_overlaps": {"get_pair_counts": _counts_skip_overlaps},
    # test_get_pair_counts_*, the brute-force comparison
    "pair_counts_ignore_weight": {"get_pair_counts": _counts_ignore_weight},
    "pair_counts_ignore_counts_arg": {"get_pair_counts": _counts_fresh_dict},
    # test_merge_matches_bytes_replace, test_train_bpe_worked_example
    "merge_right_to_left": {"merge": _merge_right_to_left},
    "merge_overlapping_occurrences": {"merge": _merge_overlapping},
    "merge_drops_last_element": {"merge": _merge_drops_last},
    # test_train_bpe_breaks_ties_*, test_train_bpe_worked_example
    "ties_to_smallest_pair": {"train.best_pair": _ties_smallest},
    "ties_compared_by_ids": {"train.best_pair": _ties_by_ids},
    "ties_to_first_seen": {"train.best_pair": _ties_first_seen},
    "ties_second_token_first": {"train.best_pair": _ties_second_first},
    # test_train_bpe_ties_between_multibyte_characters_compare_bytes, brute force on multibyte
    "ties_compared_as_decoded_text": {"train.best_pair": _ties_decoded_text},
    "ties_compared_by_repr": {"train.best_pair": _ties_repr},
    # test_train_bpe_breaks_ties_toward_the_greatest_pair_of_byte_strings ("abc ab az")
    "ties_compared_by_joined_bytes": {"train.best_pair": _ties_joined},
    # test_train_bpe_never_merges_across_or_into_special_tokens, brute-force comparison
    "train_specials_not_cut_out": {"train.split_on_special_tokens": _no_special_split},
    "train_merges_across_specials": {"train.split_on_special_tokens": _glue_around_specials},
    "train_without_pretokenization": {"train.pretokenize": _no_pretokenization},
    "train_counts_each_word_once": {"train_bpe": _trainer(weighted=False)},
    "train_special_ids_before_merges": {"train_bpe": _trainer(specials_first=True)},
    # test_train_bpe_matches_brute_force_on_multibyte_text (specials in any order)
    "train_special_ids_in_sorted_order": {"train_bpe": _trainer(specials_sorted=True)},
    "train_one_merge_short": {"train_bpe": _trainer(merges_short_by=1)},
    # test_split_on_special_tokens_*, test_special_tokens_match_longest_first
    "specials_first_listed_wins": {"split_on_special_tokens": _split_first_listed},
    "specials_shortest_first": {"split_on_special_tokens": _split_shortest_first},
    "specials_not_escaped": {"split_on_special_tokens": _split_unescaped},
    "specials_keep_empty_pieces": {"split_on_special_tokens": _split_keeps_empty_pieces},
    # test_encode_matches_tiktoken_*, test_trained_tokenizer_encodes_as_the_brute_force_encoder
    "encode_merges_in_discovery_order": {"Tokenizer.encode_word": _encode_word_discovery_order},
    "encode_merges_highest_rank_first": {"Tokenizer.encode_word": _encode_word_highest_rank},
    "encode_stops_after_one_merge": {"Tokenizer.encode_word": _encode_word_one_pass},
    "encode_without_pretokenization": {"Tokenizer.encode": _encode_without_pretokenization},
    # test_decode_encode_round_trips_any_string, ..._brute_force_encoder ("e\u0301", Angstrom)
    "encode_normalizes_unicode": {"Tokenizer.encode": _encode_normalizes},
    # test_special_token_not_allowed_is_encoded_as_ordinary_text, ..._with_allowed_subsets
    "encode_ignores_allowed_special": {"Tokenizer.encode": _encode_all_specials_always},
    "encode_cuts_out_specials_not_allowed": {"Tokenizer.encode": _encode_cuts_out_every_special},
    # test_decode_of_partial_utf8_gives_the_replacement_character, test_decode_of_cut_characters_*
    "decode_raises_on_partial_utf8": {"Tokenizer.decode": _decode_strict},
    "decode_token_by_token": {"Tokenizer.decode": _decode_token_by_token},
    "decode_latin1": {"Tokenizer.decode": _decode_latin1},
    "decode_drops_invalid_bytes": {"Tokenizer.decode": _decode_ignore},
    "decode_one_replacement_per_invalid_byte": {"Tokenizer.decode": _decode_replacement_per_byte},
    # test_decode_rejects_an_unknown_id
    "decode_skips_unknown_ids": {"Tokenizer.decode": _decode_skips_unknown},
    # test_encode_iterable_cut_inside_special_tokens_and_pre_tokens (and ..._longer_than_a_buffer)
    "encode_iterable_per_piece": {"Tokenizer.encode_iterable": _encode_iterable_per_piece},
    "encode_iterable_holds_back_one_pre_token": {
        "Tokenizer._stable_prefix": _stable_prefix(keep=1, special_tail=True)},
    "encode_iterable_forgets_a_cut_special_token": {
        "Tokenizer._stable_prefix": _stable_prefix(keep=2, special_tail=False)},
}

# Survivors of ``scripts/mutation.py bpe`` that no test can tell from the solution:
# (function, the mutated line) -> why.
_CODEC_NAME = ("codec names are looked up case-insensitively: 'UTF-8' is the very same codec as "
               "'utf-8', so every string encodes and every byte string decodes identically")
_LONGEST_FIRST = ("reverse lexicographic order also puts every special token before each of its "
                  "proper prefixes (a prefix sorts first), and two alternatives of the regex can "
                  "both match at one position only when one is a prefix of the other: the longest "
                  "still wins wherever the order matters")
# Hints that teach: the cause the first failing spec test must name for each classic bug
# (a regex, case-insensitive; tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "pair_counts_skip_overlaps": r"skips past a pair",
    "pair_counts_ignore_weight": r"weight is not used",
    "pair_counts_ignore_counts_arg": r"counts argument is ignored",
    "merge_right_to_left": r"right to left",
    "merge_overlapping_occurrences": r"overlapping occurrences are both merged",
    "merge_drops_last_element": r"last element is dropped",
    "specials_first_listed_wins": r"first listed",
    "specials_shortest_first": r"shortest",
    "specials_not_escaped": r"not escaped",
    "specials_keep_empty_pieces": r"empty pieces are kept",
    "train_specials_not_cut_out": r"not cut out",
    "train_merges_across_specials": r"glued together",
    "ties_compared_by_ids": r"comparing ids",
    "ties_to_first_seen": r"first pair seen",
    "ties_to_smallest_pair": r"smallest pair",
    "ties_second_token_first": r"second token first",
    "ties_compared_by_repr": r"str\(bytes\)",
    "ties_compared_as_decoded_text": r"decoded text",
    "ties_compared_by_joined_bytes": r"joined bytes",
    "train_one_merge_short": r"one merge short",
    "train_counts_each_word_once": r"each distinct word is counted once",
    "train_special_ids_in_sorted_order": r"sorted order",
    "train_special_ids_before_merges": r"ids before the merges",
    "train_without_pretokenization": r"cross word boundaries",
    "encode_merges_highest_rank_first": r"not the highest rank",
    "encode_merges_in_discovery_order": r"not the first pair found",
    "encode_stops_after_one_merge": r"not one pass",
    "encode_normalizes_unicode": r"normalized",
    "encode_ignores_allowed_special": r"allowed_special is ignored",
    "encode_without_pretokenization": r"no pre-tokenization",
    "encode_cuts_out_specials_not_allowed": r"cut out and encoded alone",
    "encode_iterable_per_piece": r"each piece is encoded alone",
    "decode_drops_invalid_bytes": r"dropped \(errors='ignore'\)",
    "decode_raises_on_partial_utf8": r"raises on a cut character",
    "decode_latin1": r"Latin-1",
    "decode_token_by_token": r"each token decoded alone",
    "decode_one_replacement_per_invalid_byte": r"one U\+FFFD per invalid byte",
    "decode_skips_unknown_ids": r"unknown ids are skipped",
}

EQUIVALENT: dict[tuple[str, str], str] = {
    ("xǁTokenizerǁencode", 'cache[word] = self.encode_word(word.encode("UTF-8"))'): _CODEC_NAME,
    ("train_bpe", 'words = [(list(word.encode("UTF-8")), count) for word, count in '
                  'word_counts.items()]'): _CODEC_NAME,
    ("train_bpe", 'vocab[len(vocab)] = token.encode("UTF-8")'): _CODEC_NAME,
    ("xǁTokenizerǁdecode", 'return b"".join(parts).decode("UTF-8", errors="replace")'):
        _CODEC_NAME,
    ("xǁTokenizerǁdecode", 'return b"".join(parts).decode(errors="replace")'):
        "bytes.decode's default encoding is 'utf-8' (fixed by the language, not the locale)",
    ("split_on_special_tokens",
     "longest_first = sorted(special_tokens, key=None, reverse=True)"): _LONGEST_FIRST,
    ("split_on_special_tokens", "longest_first = sorted(special_tokens, reverse=True)"):
        _LONGEST_FIRST,
}
