# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: bpe (issue 4): a byte-level BPE tokenizer, trained from raw text, exact against tiktoken.

Every tokenizer test runs on two subjects: GPT-2's ranks (oracle: tiktoken, built offline from the
same file) and a tokenizer trained here on a corpus of accented Latin, CJK and emoji (oracle: a
brute-force trainer and encoder written below from BPE's definition, over byte strings), so the
spec kills its mutants even where the shared data is missing. Special tokens are cut out by a
leftmost-longest scan written here (``split_longest_first``, with ``str.find``). Exact comparisons
throughout: token ids are integers, there is no tolerance.

Contract:

| clause | tests | oracle |
|---|---|---|
| pair counts: every adjacent pair, overlaps included, weighted, added in place to ``counts`` | `test_get_pair_counts_worked_example`, `test_get_pair_counts_matches_counter_of_adjacent_pairs` | hand-worked; ``collections.Counter`` of ``itertools.pairwise`` |
| merge: left to right, never overlapping, last element kept, input untouched | `test_merge_worked_example`, `test_merge_matches_bytes_replace` | hand-worked; ``bytes.replace`` |
| special tokens cut out leftmost, then longest, whatever the order given; pieces non-empty and join to the text; none for empty text | `test_split_on_special_tokens_worked_example`, `test_split_on_special_tokens_matches_a_leftmost_longest_scan` | hand-worked; ``split_longest_first`` (``str.find``) |
| training: most frequent pair, overlaps counted, each word weighted by its count; vocab = bytes, merges, then specials in the order given | `test_train_bpe_worked_example`, `test_train_bpe_counts_overlapping_pairs`, `test_train_bpe_matches_brute_force_definition` | hand-worked; brute-force trainer |
| training ties go to the greatest (bytes, bytes), compared as bytes (not ids, not decoded text, not the joined bytes), multi-byte characters included | `test_train_bpe_breaks_ties_toward_the_greatest_pair_of_byte_strings`, `test_train_bpe_ties_between_multibyte_characters_compare_bytes`, `test_train_bpe_matches_brute_force_on_multibyte_text` | hand-worked byte orders; brute-force trainer |
| training never merges across or into a special token; stops early when nothing is left | `test_train_bpe_never_merges_across_or_into_special_tokens`, `test_train_bpe_stops_when_nothing_is_left_to_merge` | hand-worked |
| training errors: vocab below 256 + specials (ValueError), repeated or empty specials (ValueError), text not a str (TypeError) | `test_train_bpe_rejects_a_vocab_smaller_than_bytes_plus_specials`, `test_train_bpe_rejects_repeated_or_empty_special_tokens`, `test_train_bpe_rejects_non_string_text` | the documented errors |
| encode equals GPT-2's tiktoken encoding (``encode``, ``encode_ordinary``) on generated text and a real corpus | `test_encode_hello_world_as_gpt2`, `test_encode_matches_tiktoken_on_generated_text`, `test_encode_matches_tiktoken_on_tiny_shakespeare` | tiktoken; hand-worked ids |
| encode of a trained tokenizer: lowest rank first, everywhere, until no merge applies; decode(encode(s)) == s | `test_trained_tokenizer_encodes_as_the_brute_force_encoder`, `test_decode_encode_round_trips_any_string` | brute-force encoder; the input string |
| numeric extremes: words of hundreds of bytes, long whitespace/digit/emoji runs, control characters, back-to-back specials | `test_encode_extreme_inputs` | tiktoken; brute-force encoder |
| special tokens of several lengths (2 to 13 characters, multi-byte, overlapping) combined with every ``allowed_special`` ("all", any subset, the empty set): allowed ones are one id, the others ordinary text, never a special id | `test_special_token_alone_and_inside_text`, `test_special_token_not_allowed_is_encoded_as_ordinary_text`, `test_special_tokens_match_longest_first`, `test_encode_special_tokens_of_several_lengths_with_allowed_subsets` | tiktoken ``encode(allowed_special=...)`` for non-overlapping specials; ``split_longest_first`` + tiktoken/brute-force ordinary encoding |
| encode_iterable equals encode of the joined text for cuts anywhere: inside a pre-token, inside a special token, at every character, after a piece longer than any buffer, over a file | `test_encode_iterable_cut_inside_special_tokens_and_pre_tokens`, `test_encode_iterable_after_a_first_piece_longer_than_a_buffer`, `test_encode_iterable_over_a_file_handle` | tiktoken; brute-force encoder (never the implementation's own encode) |
| decode: concatenate the bytes, then UTF-8 with errors="replace": a cut character is U+FFFD exactly as ``bytes.decode`` makes it (one per maximal invalid subpart) | `test_decode_matches_tiktoken_on_any_ids`, `test_decode_of_partial_utf8_gives_the_replacement_character`, `test_decode_of_cut_characters_worked_example`, `test_decode_of_ids_that_cut_characters_equals_bytes_decode_replace` | tiktoken ``decode(errors="replace")``; ``bytes.decode("utf-8", errors="replace")``; hand-worked |
| errors: an unknown id is a ValueError naming it; encode of a non-str is a TypeError naming its type | `test_decode_rejects_an_unknown_id`, `test_encode_rejects_non_strings` | the documented errors |
| save/load round trip keeps every id (GPT-2's permuted bytes, specials) | `test_save_load_round_trip` | tiktoken; brute-force encoder |
"""

from __future__ import annotations

import base64
import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

COMPONENT = "bpe"
pytestmark = pytest.mark.bpe

EOT = "<|endoftext|>"
EOT_ID = 50256
# GPT-2's pre-tokenizer pattern (the issue's fact; tiktoken's "gpt2" uses the same).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BYTES = {i: bytes([i]) for i in range(256)}

# Special tokens of several lengths (2 to 13 characters; "§§" is 4 bytes of UTF-8). The first five
# never overlap one another in any text (no one's suffix is another's prefix), so tiktoken, which
# tries its special tokens in no set order, is an oracle for them; the last three overlap them.
DISJOINT = [EOT, "<s>", "</s>", "§§", "<|x|>"]
SPECIALS = [*DISJOINT, "<|x|><|y|>", "<|y|>", "|><|"]

# `subject` is a function-scoped fixture that returns a cached builder: no state per example.
with_subject = settings(suppress_health_check=[HealthCheck.function_scoped_fixture,
                                               HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------------------- strategies

# Any assigned Unicode character but surrogates (not encodable); unassigned code points (Cn) are
# left out of the tiktoken comparisons only, since Rust's and Python's Unicode tables may
# assign them differently.
ANY_CHAR = st.characters(codec="utf-8")
ASSIGNED_CHAR = st.characters(codec="utf-8", exclude_categories=("Cs", "Cn"))
# Fragments that stress the pre-tokenizer: contractions, whitespace runs before words, digits,
# multi-byte characters (a combining accent, the Angstrom sign that NFC would change), emoji with
# a skin tone, CRLF, and special-token strings.
TRICKY = [" ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "'s", "'ll", "'re", "'", "123", " 4",
          "é", "e\u0301", "\u212b", "😀", "👍🏽", "的", "Hello", " world", "!!", " ?", "<|", "|>",
          EOT]
# Pieces of special tokens, so that texts hold near-misses and cuts fall inside the real ones.
FRAGMENTS = ["<|", "|>", "<|x", "x|>", "<|y", "</", "<s", "s>", "§", "<|endoftext", "endoftext|>"]
# Byte order differs from the order of first bytes' ids and of decoded (replaced) text here.
MULTIBYTE = "azé中😀ñ的ÿĀ€𝄞 \n"


def texts(chars: st.SearchStrategy[str], max_parts: int = 10) -> st.SearchStrategy[str]:
    """Strings built from random text and TRICKY fragments (possibly empty, possibly a lone
    special token)."""
    part = st.one_of(st.text(chars, max_size=12), st.sampled_from(TRICKY))
    return st.lists(part, max_size=max_parts).map("".join)


# One part of a text full of special tokens, their fragments and what surrounds them.
SPECIAL_PART = st.one_of(
    st.text(st.sampled_from(list("<|>/sxy§ é中😀\n'l!")), max_size=6),
    st.sampled_from(SPECIALS + [f" {s}" for s in SPECIALS] + FRAGMENTS + TRICKY),
)
SPECIAL_TEXT = st.lists(SPECIAL_PART, max_size=12).map("".join)
# allowed_special: "all", any subset (the empty set is encode_ordinary)
ALLOWED = st.one_of(st.just("all"), st.frozensets(st.sampled_from(SPECIALS)))
# Text as parts, each with where to cut it (0: before it; its length or more: after it).
CUT_PARTS = st.lists(st.tuples(SPECIAL_PART, st.integers(0, 14)), max_size=10)


def pieces_of(parts: Sequence[tuple[str, int]]) -> tuple[str, list[str]]:
    """The text of ``parts`` and its pieces, cut where each part says."""
    text = "".join(part for part, _ in parts)
    cuts, pos = {0, len(text)}, 0
    for part, k in parts:
        cuts.add(pos + min(k, len(part)))
        pos += len(part)
    bounds = sorted(cuts)
    return text, [text[a:b] for a, b in pairwise(bounds)]


# ----------------------------------------------------------------------------- oracles


def split_longest_first(text: str, special_tokens: Collection[str]) -> list[str]:
    """Cut out the special tokens: the leftmost occurrence, and of those starting there the
    longest, found with ``str.find``; the text between them in pieces of its own."""
    pieces: list[str] = []
    start = 0
    while True:
        hits = [(i, -len(s), s) for s in special_tokens if (i := text.find(s, start)) != -1]
        if not hits:
            break
        i, _, token = min(hits)
        pieces += [text[start:i], token] if i > start else [token]
        start = i + len(token)
    return [*pieces, text[start:]] if start < len(text) else pieces


def brute_force_train(
    text: str, vocab_size: int, special_tokens: Sequence[str], *, weighted: bool = True
) -> list[tuple[bytes, bytes]]:
    """BPE training from its definition: words are tuples of byte strings; every step recounts
    all pairs and picks ``max((count, pair))``, i.e. ties to the greatest (bytes, bytes).
    ``weighted=False`` is the classic bug: each distinct word counted once."""
    words: Counter[tuple[bytes, ...]] = Counter()
    for piece in split_longest_first(text, special_tokens):
        if piece in special_tokens:
            continue
        for word in regex.findall(GPT2_PATTERN, piece):
            key = tuple(bytes([b]) for b in word.encode("utf-8"))
            words[key] = words[key] + 1 if weighted else 1
    merges: list[tuple[bytes, bytes]] = []
    while 256 + len(merges) + len(special_tokens) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            out: list[bytes] = []
            i = 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def expected_vocab(
    merges: Sequence[tuple[bytes, bytes]], special_tokens: Sequence[str]
) -> dict[int, bytes]:
    vocab = dict(BYTES)
    for k, (left, right) in enumerate(merges):
        vocab[256 + k] = left + right
    for j, token in enumerate(special_tokens):
        vocab[256 + len(merges) + j] = token.encode("utf-8")
    return vocab


@dataclass
class BruteForceEncoder:
    """Encoding from its definition (tiktoken's algorithm): each pre-token's bytes, merged at the
    leftmost adjacent pair of lowest rank until no pair is a merge; ids looked up by bytes."""

    merges: Sequence[tuple[bytes, bytes]]
    ranks: dict[tuple[bytes, bytes], int] = field(init=False)
    ids: dict[bytes, int] = field(init=False)
    words: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.ids = {token: i for i, token in expected_vocab(self.merges, []).items()}

    def word(self, word: str) -> list[int]:
        if word not in self.words:
            parts = [bytes([b]) for b in word.encode("utf-8")]
            while len(parts) > 1:
                ranked = [(self.ranks.get(p, math.inf), i) for i, p in enumerate(pairwise(parts))]
                rank, i = min(ranked)
                if rank == math.inf:
                    break
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            self.words[word] = [self.ids[p] for p in parts]
        return self.words[word]

    def __call__(self, text: str) -> list[int]:
        return [i for word in regex.findall(GPT2_PATTERN, text) for i in self.word(word)]


# The trained subject: a corpus where most characters are 2 to 4 bytes of UTF-8, special tokens
# of several lengths inside it, words repeated with different counts.
CORPUS = (
    "the cat sat on the mat. the cat's hat is flat; that's that! we'll see, you'll see'll\n"
    "they're here, we're there; you've been, we've gone.\n"
    f"{EOT}low lower lowest newer newest wider widest 1234 12 34 élan café naïve 😀😀\n"
    "<s>中文的文字 日本語の文字 中文</s> señor niño año ÿÿ Āā § émigré été été\n"
    "🙂🙃 🙂 emoji 👍🏽👍🏽 <|x|><|y|> x|> <|x|> |><| … €10 €20   \t\n"
    "not special: <|z|> <|zz|> <|x <|y </ <s <<|s|>>\n"
) * 3
TRAINED_VOCAB_SIZE = 256 + 120 + len(SPECIALS)


@functools.cache
def trained_oracle() -> BruteForceEncoder:
    return BruteForceEncoder(brute_force_train(CORPUS, TRAINED_VOCAB_SIZE, SPECIALS))


@dataclass(frozen=True)
class Subject:
    """An implementation's tokenizer with the special tokens SPECIALS, and its oracles."""

    tok: Any
    special_ids: dict[str, int]  # oracle: each special token's id
    ordinary: Callable[[str], list[int]]  # oracle: the ids of text without special tokens
    token_bytes: Callable[[int], bytes]  # oracle: the bytes of an id
    byte_ids: list[int]  # oracle: the id of each single byte
    enc: tiktoken.Encoding | None  # tiktoken with the DISJOINT special tokens (GPT-2 only)

    def expected(self, text: str, allowed: str | Collection[str]) -> list[int]:
        names = SPECIALS if allowed == "all" else allowed
        ids: list[int] = []
        for piece in split_longest_first(text, names):
            ids += [self.special_ids[piece]] if piece in names else self.ordinary(piece)
        return ids


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ranks_path(shared_data: Path) -> Path:
    return shared_data / "gpt2" / "gpt2.tiktoken"


@functools.cache
def gpt2_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken's format is one ``base64 rank`` per line; read directly, nothing downloaded."""
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in path.read_bytes().splitlines() if line)
    }


@pytest.fixture(scope="module")
def tiktoken_gpt2(ranks_path: Path) -> tiktoken.Encoding:
    """tiktoken's GPT-2, offline, with ``<|endoftext|>``."""
    return tiktoken.Encoding(
        name="gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=gpt2_ranks(ranks_path),
        special_tokens={EOT: EOT_ID},
    )


@pytest.fixture(scope="module")
def gpt2(impl: Any, ranks_path: Path) -> Any:
    """The implementation's tokenizer with GPT-2's ranks and ``<|endoftext|>``."""
    vocab, merges = impl.load_tiktoken_ranks(ranks_path)
    return impl.Tokenizer(vocab, merges, [EOT])


@pytest.fixture(scope="module")
def trained(impl: Any) -> Callable[[], Subject]:
    """The implementation's tokenizer trained on CORPUS, built on first use (inside a test, so
    that a stub's NotImplementedError fails the test rather than erroring its setup)."""

    @functools.cache
    def build() -> Subject:
        vocab, merges = impl.train_bpe(CORPUS, TRAINED_VOCAB_SIZE, SPECIALS)
        oracle = trained_oracle()
        first = 256 + len(oracle.merges)
        return Subject(
            tok=impl.Tokenizer(vocab, merges, SPECIALS),
            special_ids={s: first + k for k, s in enumerate(SPECIALS)},
            ordinary=oracle,
            token_bytes=expected_vocab(oracle.merges, SPECIALS).__getitem__,
            byte_ids=list(range(256)),
            enc=None,
        )

    return build


@pytest.fixture(scope="module")
def built_subjects(impl: Any) -> dict[str, Callable[[], Subject]]:
    """The subjects of this implementation, each built once (see ``subject``)."""
    return {}


# Function-scoped, each subject built once per implementation (``built_subjects``): a
# module-scoped parametrized fixture would make pytest reorder the tests across the
# implementations, and the spec's tests must run in file order, so that the first one to fail
# is the simplest (a worked example) and its message names the likely cause.
@pytest.fixture(params=["trained", "gpt2"])
def subject(request: pytest.FixtureRequest, impl: Any,
            built_subjects: dict[str, Callable[[], Subject]]) -> Callable[[], Subject]:
    """Each tokenizer test runs on both subjects (GPT-2's skips without the shared data)."""
    if request.param not in built_subjects:
        built_subjects[request.param] = _subject(request, impl, request.param)
    return built_subjects[request.param]


def _subject(request: pytest.FixtureRequest, impl: Any, name: str) -> Callable[[], Subject]:
    if name == "trained":
        built: Callable[[], Subject] = request.getfixturevalue("trained")
        return built
    path: Path = request.getfixturevalue("ranks_path")
    ranks = gpt2_ranks(path)
    first = max(ranks.values()) + 1  # 50256: the special tokens follow the ranks, in order
    enc = tiktoken.Encoding(
        name="gpt2-specials", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={s: first + k for k, s in enumerate(DISJOINT)},
    )

    @functools.cache
    def build() -> Subject:
        vocab, merges = impl.load_tiktoken_ranks(path)
        return Subject(
            tok=impl.Tokenizer(vocab, merges, SPECIALS),
            special_ids={s: first + k for k, s in enumerate(SPECIALS)},
            ordinary=enc.encode_ordinary,
            token_bytes=enc.decode_single_token_bytes,
            byte_ids=[enc.encode_single_token(bytes([b])) for b in range(256)],
            enc=enc,
        )

    return build


# ----------------------------------------------------------------------------- pair counts


def test_get_pair_counts_worked_example(impl: Any) -> None:
    assert impl.get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    # overlapping occurrences both count: [7, 7, 7] has (7, 7) at positions 0 and 1
    assert impl.get_pair_counts([7, 7, 7]) == {(7, 7): 2}, (
        "likely cause: the loop skips past a pair it counted; every adjacent pair counts, "
        "overlapping pairs twice")
    assert impl.get_pair_counts([5]) == {} and impl.get_pair_counts([]) == {}
    # accumulate into an existing dict, in place, each pair weighted
    totals = impl.get_pair_counts([1, 2], weight=10)
    assert totals == {(1, 2): 10}, (
        "likely cause: the weight is not used: counts[pair] += weight (a word seen 10 times "
        f"counts 10 times), got {totals}")
    returned = impl.get_pair_counts([2, 1, 2], totals)
    assert returned is totals, (
        "likely cause: the counts argument is ignored (a fresh dict); with counts=..., add to "
        "that dict and return it")
    assert totals == {(1, 2): 11, (2, 1): 1}


@given(
    ids=st.lists(st.integers(0, 5), max_size=30),
    weight=st.integers(1, 5),
    start=st.dictionaries(st.tuples(st.integers(0, 5), st.integers(0, 5)), st.integers(1, 9)),
)
def test_get_pair_counts_matches_counter_of_adjacent_pairs(
    impl: Any, ids: list[int], weight: int, start: dict[tuple[int, int], int]
) -> None:
    expected = Counter(start)
    for pair in pairwise(ids):
        expected[pair] += weight
    got = impl.get_pair_counts(ids, dict(start), weight=weight)
    assert got == dict(expected)
    assert impl.get_pair_counts(ids) == dict(Counter(pairwise(ids)))


# ----------------------------------------------------------------------------- merge


def test_merge_worked_example(impl: Any) -> None:
    ids = [5, 6, 6, 5, 6]
    assert impl.merge(ids, (5, 6), 99) == [99, 6, 99]
    assert ids == [5, 6, 6, 5, 6], "merge must not modify its input"
    # overlapping: left to right, never overlapping
    got = impl.merge([7, 7, 7], (7, 7), 99)
    assert got == [99, 7], {
        (7, 99): "likely cause: the scan goes right to left; merge left to right: ",
        (99, 99): "likely cause: overlapping occurrences are both merged; after a merge, step "
                  "past both elements (i += 2): ",
        (99,): "likely cause: the last element is dropped (a loop `while i < len(ids) - 1` "
               "forgets it): ",
    }.get(tuple(got), "") + f"[a, a, a] merges to [aa, a], got {got}"
    assert impl.merge([7, 7, 7, 7], (7, 7), 99) == [99, 99]
    assert impl.merge([1, 2, 3], (3, 4), 99) == [1, 2, 3], "the last element must be kept"
    assert impl.merge([], (1, 2), 99) == []


@given(
    ids=st.lists(st.integers(0, 3), max_size=40),
    pair=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_merge_matches_bytes_replace(impl: Any, ids: list[int], pair: tuple[int, int]) -> None:
    """``bytes.replace`` replaces non-overlapping occurrences left to right: exactly a merge."""
    expected = list(bytes(ids).replace(bytes(pair), bytes([255])))
    assert impl.merge(ids, pair, 255) == expected


# ----------------------------------------------------------------------------- special tokens


def test_split_on_special_tokens_worked_example(impl: Any) -> None:
    split = impl.split_on_special_tokens
    text = f"a{EOT}b{EOT}"
    got = split(text, [EOT])
    unescaped = [p for p in re.split(f"({EOT})", text) if p]  # "|" as an alternation
    assert got == ["a", EOT, "b", EOT], {
        (text,): "likely cause: the special tokens are not cut out of the text",
        ("ab",): "likely cause: the special tokens are dropped and the text around them glued "
                 "together; they must cut the text (no merge across them)",
        ("a", EOT, "b", EOT, ""): "likely cause: empty pieces are kept (re.split leaves '' "
                                  "beside a token at an end or between two); drop them",
        tuple(unescaped): "likely cause: the tokens are not escaped (re.escape): '|' in "
                          "'<|endoftext|>' is a regex alternation",
    }.get(tuple(got), "pieces") + f", got {got}"
    assert split(f"{EOT}{EOT}", [EOT]) == [EOT, EOT]
    assert split("plain text", []) == ["plain text"]
    assert split("", [EOT]) == [] and split("", []) == [], "empty text has no piece"
    # "|" is a regex operator: the tokens must be matched literally
    assert split("a|b", ["<|x|>"]) == ["a|b"]
    # overlapping special tokens: the longest one wins, whatever the order given
    got = split("<|x|><|y|>!<|x|>", ["<|x|>", "<|x|><|y|>"])
    assert got == ["<|x|><|y|>", "!", "<|x|>"], (
        "likely cause: the first listed (or the shortest) special token wins; of those starting "
        "at one place the longest must (try them longest first)"
        if got[:1] == ["<|x|>"] else "the longest special token wins") + f", got {got}"
    # the leftmost wins over a longer one that starts later: "|><|" starts inside "<|x|>"
    assert split("<|x|><|y|>", ["|><|", "<|x|>"]) == ["<|x|>", "<|y|>"]


@example(text=f"a<|x|><|y|>|><|y|>§§§{EOT}", special_tokens=SPECIALS)
@example(text="<|x|><|y|><|x|> <|y|>", special_tokens=["<|y|>", "<|x|><|y|>", "<|x|>"])
@given(
    text=st.lists(st.sampled_from([*SPECIALS, *FRAGMENTS, "x", " ", "é"]), max_size=12).map("".join),
    special_tokens=st.one_of(
        st.permutations(SPECIALS), st.lists(st.sampled_from(SPECIALS), unique=True)),
)
def test_split_on_special_tokens_matches_a_leftmost_longest_scan(
    impl: Any, text: str, special_tokens: list[str]
) -> None:
    expected = split_longest_first(text, special_tokens)
    assert "".join(expected) == text and all(expected)
    # the order the special tokens are given in never matters
    for order in (special_tokens, special_tokens[::-1], sorted(special_tokens, key=len)):
        assert impl.split_on_special_tokens(text, order) == expected, f"order {order}"


# ----------------------------------------------------------------------------- training


def test_train_bpe_worked_example(impl: Any) -> None:
    """Pre-tokens "aaa", " bc" (twice each; the special token splits the text):

    1. counts: (a,a) 2+2 = 4 (overlapping, twice per "aaa"), (' ',b) 2, (b,c) 2 -> (a,a) = 256;
    2. words [aa, a], [' ', b, c]: (aa,a), (' ',b), (b,c) all 2; the greatest pair of byte
       strings is (b"b", b"c") (b"b" > b"aa" > b" "), although id 98 < 256 -> 257;
    3. words [aa, a], [' ', bc]: (aa,a) 2, (' ',bc) 2 -> (b"aa", b"a") = 258;
    then the special token gets 259.
    """
    vocab, merges = impl.train_bpe(f"aaa bc{EOT}aaa bc", 260, [EOT])
    wrong = {  # what each wrong tie-break picks here, worked the same way
        "ties broken by comparing ids (256 > 98), not the pairs of byte strings":
            [(b"a", b"a"), (b"aa", b"a"), (b"b", b"c")],
        "ties broken by the first pair seen (max by count alone); the greatest pair of byte "
        "strings wins": [(b"a", b"a"), (b"aa", b"a"), (b" ", b"b")],
        "ties go to the smallest pair; the greatest pair of byte strings wins":
            [(b"a", b"a"), (b" ", b"b"), (b" b", b"c")],
        "ties compare the second token first; compare (first, second) as a tuple":
            [(b"a", b"a"), (b"b", b"c"), (b" ", b"bc")],
        "one merge short: vocab_size - 256 - len(special_tokens) merges":
            [(b"a", b"a"), (b"b", b"c")],
    }
    assert merges == [(b"a", b"a"), (b"b", b"c"), (b"aa", b"a")], (
        "".join(f"likely cause: {cause}; " for cause, m in wrong.items() if merges == m)
        + f"merges {merges}")
    assert vocab == expected_vocab(merges, [EOT]), (
        "likely cause: the special tokens get their ids before the merges; they follow them "
        "(256 + len(merges) + k)" if vocab.get(256) == EOT.encode() else "vocab")
    assert (vocab[256], vocab[257], vocab[258], vocab[259]) == (b"aa", b"bc", b"aaa", EOT.encode())


def test_train_bpe_counts_overlapping_pairs(impl: Any) -> None:
    """"aaa" holds (a,a) twice: it beats (b,c) once, which would win a tie (greater bytes)."""
    _, merges = impl.train_bpe("aaa bc", 257)
    assert merges == [(b"a", b"a")], "pairs in 'aaa' must be counted with overlaps (2, not 1)"


def test_train_bpe_breaks_ties_toward_the_greatest_pair_of_byte_strings(impl: Any) -> None:
    def hint(merges: list[tuple[bytes, bytes]]) -> str:
        if any(b" " in (a + b)[1:] for a, b in merges):  # a space inside a merged token
            return ("likely cause: merges cross word boundaries: pre-tokenize each piece with "
                    f"GPT-2's pattern and count pairs inside words; got {merges}")
        return f"merges {merges}"

    # (a,b), (' ',c), (c,d) once each: (b"c", b"d") is the greatest; first seen would be (a,b)
    merges = impl.train_bpe("ab cd", 257)[1]
    assert merges == [(b"c", b"d")], hint(merges)
    # same first byte: the second decides, (b"a", b"c") > (b"a", b"b")
    merges = impl.train_bpe("ab ac", 257)[1]
    assert merges == [(b"a", b"c")], hint(merges)
    # (b"z", b"a") > (b" ", b"z") although " " comes first in the text
    merges = impl.train_bpe(" za", 257)[1]
    assert merges == [(b"z", b"a")], hint(merges)
    # "abc", " ab", " az": (a,b) 2 wins a tie with (' ',a) 2; then (ab,c), (' ',ab), (' ',a),
    # (a,z) once each: (b"ab", b"c") > (b"a", b"z") as pairs, although b"abc" < b"az" joined
    merges = impl.train_bpe("abc ab az", 258)[1]
    assert merges == [(b"a", b"b"), (b"ab", b"c")], (
        "likely cause: ties compared by the joined bytes (b'az' > b'abc'); compare the pairs: "
        f"(b'ab', b'c') > (b'a', b'z'); got {merges}"
        if merges == [(b"a", b"b"), (b"a", b"z")] else hint(merges))


def test_train_bpe_ties_between_multibyte_characters_compare_bytes(impl: Any) -> None:
    """z is 7A, é is C3 A9, 中 is E4 B8 AD, 😀 is F0 9F 98 80; every pair below occurs once.

    * "zé": (C3, A9) > (7A, C3); comparing the bytes' reprs ("b'z'" > "b'\\\\xc3'") or the
      first seen picks (z, C3);
    * "é中": (E4, B8) is the greatest; half characters all decode to U+FFFD, so comparing
      decoded text ties them all and picks the first seen, (C3, A9);
    * "中😀": (F0, 9F), the emoji's first two bytes;
    * then "é中" to 261: (E4, B8) -> 256, then ((E4 B8), AD) > (C3, A9) > (A9, (E4 B8)) ->
      257 = 中, then (C3, A9) > (A9, 中) -> 258 = é, then (é, 中) -> 259 = é中.
    """
    got = impl.train_bpe("zé", 257)[1]
    assert got == [(b"\xc3", b"\xa9")], (
        "likely cause: ties compared as str(bytes) (\"b'z'\" > \"b'\\\\xc3'\") or as first seen; "
        "compare the bytes" if got == [(b"z", b"\xc3")] else "ties") + f", got {got}"
    got = impl.train_bpe("é中", 257)[1]
    assert got == [(b"\xe4", b"\xb8")], (
        "likely cause: ties compared as decoded text (every half character decodes to U+FFFD, "
        "so they all tie) or as first seen; compare the bytes"
        if got == [(b"\xc3", b"\xa9")] else "ties") + f", got {got}"
    assert impl.train_bpe("中😀", 257)[1] == [(b"\xf0", b"\x9f")]
    vocab, merges = impl.train_bpe("é中", 261, ["§§"])
    assert merges == [(b"\xe4", b"\xb8"), (b"\xe4\xb8", b"\xad"), (b"\xc3", b"\xa9"),
                      ("é".encode(), "中".encode())]
    assert vocab[259] == "é中".encode() and vocab[260] == "§§".encode()


@given(
    text=st.lists(
        st.one_of(st.text("aab c\né", max_size=8), st.sampled_from([EOT, "<|x|>", "<|x|><|y|>"])),
        max_size=8,
    ).map("".join),
    special_tokens=st.sampled_from([(), (EOT,), ("<|x|>", "<|x|><|y|>"),
                                    ("<|x|><|y|>", EOT, "<|x|>")]),
    extra=st.integers(0, 12),
)
def test_train_bpe_matches_brute_force_definition(
    impl: Any, text: str, special_tokens: tuple[str, ...], extra: int
) -> None:
    vocab_size = 256 + len(special_tokens) + extra
    vocab, merges = impl.train_bpe(text, vocab_size, list(special_tokens))
    expected = brute_force_train(text, vocab_size, special_tokens)
    assert merges == expected, train_hint(merges, text, vocab_size, special_tokens)
    assert vocab == expected_vocab(expected, special_tokens), vocab_hint(vocab, expected,
                                                                         special_tokens)


def train_hint(merges: list[tuple[bytes, bytes]], text: str, vocab_size: int,
               special_tokens: Sequence[str]) -> str:
    """The likely cause, when ``merges`` are what a classic bug of training gives."""
    if merges == brute_force_train(text, vocab_size, special_tokens, weighted=False):
        return ("likely cause: each distinct word is counted once; weight its pairs by how "
                f"often the word occurs (on {text!r})")
    return f"merges differ from BPE's definition on {text!r}"


def vocab_hint(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
               special_tokens: Sequence[str]) -> str:
    if sorted(special_tokens) != list(special_tokens) and vocab == expected_vocab(
            merges, sorted(special_tokens)):
        return ("likely cause: the special tokens take ids in sorted order; they take them in "
                "the order given")
    return "vocab: bytes, then the merges, then the special tokens in the order given"


@given(
    text=st.lists(
        st.one_of(st.text(MULTIBYTE, max_size=8), st.sampled_from([*SPECIALS, "§", "👍🏽"])),
        max_size=10,
    ).map("".join),
    special_tokens=st.lists(st.sampled_from(SPECIALS), unique=True, max_size=4),
    extra=st.integers(0, 16),
)
def test_train_bpe_matches_brute_force_on_multibyte_text(
    impl: Any, text: str, special_tokens: list[str], extra: int
) -> None:
    """Ties between the bytes of accented Latin, CJK and emoji; specials in any order."""
    vocab_size = 256 + len(special_tokens) + extra
    vocab, merges = impl.train_bpe(text, vocab_size, special_tokens)
    expected = brute_force_train(text, vocab_size, special_tokens)
    assert merges == expected, train_hint(merges, text, vocab_size, special_tokens)
    assert vocab == expected_vocab(expected, special_tokens), vocab_hint(vocab, expected,
                                                                         special_tokens)


def test_train_bpe_never_merges_across_or_into_special_tokens(impl: Any) -> None:
    # each pre-token is one byte: nothing may merge, not "x" with "y" across the special token,
    # nor the bytes of "<|endoftext|>"
    vocab, merges = impl.train_bpe(f"x{EOT}y{EOT}" * 5, 300, [EOT])
    assert merges == [], f"merged across or into a special token: {merges}"
    assert vocab == expected_vocab([], [EOT]), "the special token's id follows the merges"
    vocab, merges = impl.train_bpe(f"ab{EOT}ab{EOT}{EOT}", 300, [EOT])
    assert merges == [(b"a", b"b")]
    assert vocab[257] == EOT.encode() and len(vocab) == 258


def test_train_bpe_stops_when_nothing_is_left_to_merge(impl: Any) -> None:
    vocab, merges = impl.train_bpe("aaaa", 1000)
    assert merges == [(b"a", b"a"), (b"aa", b"aa")]
    assert len(vocab) == 258


def test_train_bpe_rejects_a_vocab_smaller_than_bytes_plus_specials(impl: Any) -> None:
    with pytest.raises(ValueError, match="255"):
        impl.train_bpe("hello", 255)
    with pytest.raises(ValueError, match="256"):
        impl.train_bpe("hello", 256, [EOT])  # 256 bytes + 1 special do not fit in 256
    vocab, merges = impl.train_bpe("hello", 257, [EOT])  # exactly fits: no merge
    assert merges == [] and vocab[256] == EOT.encode()


def test_train_bpe_rejects_repeated_or_empty_special_tokens(impl: Any) -> None:
    with pytest.raises(ValueError, match="distinct"):
        impl.train_bpe("hello", 300, [EOT, "<s>", EOT])
    with pytest.raises(ValueError, match="non-empty"):
        impl.train_bpe("hello", 300, [""])


def test_train_bpe_rejects_non_string_text(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.train_bpe(b"bytes are not text", 300)


# ----------------------------------------------------------------------------- encode (GPT-2)


def test_encode_hello_world_as_gpt2(gpt2: Any) -> None:
    assert gpt2.encode("Hello world") == [15496, 995], (
        "likely cause: the merges are applied in the wrong order: in each word, merge the "
        "adjacent pair of lowest rank (learned first), again and again until none is left; not "
        "the first pair found, not the highest rank, not one pass; got "
        f"{gpt2.encode('Hello world')}")
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.encode(f"Hello world{EOT} it's 2024!") == [15496, 995, 50256, 340, 338, 48609, 0]


@given(text=texts(ASSIGNED_CHAR))
def test_encode_matches_tiktoken_on_generated_text(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding, text: str
) -> None:
    got = gpt2.encode(text)
    assert got == tiktoken_gpt2.encode(text, allowed_special="all"), encode_hint(
        got, text, tiktoken_gpt2)
    got = gpt2.encode(text, allowed_special=set())
    assert got == tiktoken_gpt2.encode_ordinary(text), encode_hint(got, text, tiktoken_gpt2, {
        "allowed_special is ignored: a special token not allowed is ordinary text":
            lambda: tiktoken_gpt2.encode(text, allowed_special="all")})


def encode_hint(got: list[int], text: str, enc: tiktoken.Encoding,
                wrong: dict[str, Callable[[], list[int]]] | None = None) -> str:
    """The likely cause, when ``got`` is what a classic bug of encode gives (tiktoken's)."""
    every: dict[str, Callable[[], list[int]]] = {
        **(wrong or {}),
        "the text is Unicode-normalized (NFC); encode the code points as given":
            lambda: enc.encode(unicodedata.normalize("NFC", text), allowed_special="all"),
        "no pre-tokenization: split the text with GPT-2's pattern and merge inside each word":
            lambda: unsplit(enc).encode(text, allowed_special="all"),
    }
    for cause, ids in every.items():
        if got == ids():
            return f"likely cause: {cause}; got {got}"
    return f"{text!r}: got {got}"


@functools.cache
def unsplit(enc: tiktoken.Encoding) -> tiktoken.Encoding:
    """``enc`` whose pre-tokenizer takes each piece whole: what encoding without it gives."""
    return tiktoken.Encoding(name="gpt2-unsplit", pat_str=r"[\s\S]+",
                             mergeable_ranks=enc._mergeable_ranks,
                             special_tokens=enc._special_tokens)


def test_encode_matches_tiktoken_on_tiny_shakespeare(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding, shared_data: Path
) -> None:
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert len(expected) == 338_025
    if ids != expected:
        first = next(i for i, (a, b) in enumerate(zip(ids, expected, strict=False)) if a != b)
        pytest.fail(f"{len(ids)} ids vs tiktoken's {len(expected)}; first difference at "
                    f"{first}: {ids[first:first + 5]} vs {expected[first:first + 5]}")


def test_special_token_alone_and_inside_text(gpt2: Any, tiktoken_gpt2: tiktoken.Encoding) -> None:
    assert gpt2.encode(EOT) == [EOT_ID]
    assert gpt2.encode(f"a{EOT}b") == tiktoken_gpt2.encode(f"a{EOT}b", allowed_special="all")
    assert gpt2.decode([EOT_ID]) == EOT
    assert gpt2.encode("") == []


def test_special_token_not_allowed_is_encoded_as_ordinary_text(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding
) -> None:
    ids = gpt2.encode(EOT, allowed_special=set())
    assert ids == tiktoken_gpt2.encode_ordinary(EOT) == [27, 91, 437, 1659, 5239, 91, 29], (
        "likely cause: allowed_special is ignored: a special token not allowed is ordinary "
        "text" if ids == [EOT_ID] else "") + f"; got {ids}"
    assert EOT_ID not in ids
    # not cut out and encoded alone: " <|" is one pre-token of the whole text
    assert gpt2.encode(f"a {EOT}", allowed_special=set()) == tiktoken_gpt2.encode_ordinary(
        f"a {EOT}"), ("likely cause: special tokens not allowed are cut out and encoded alone; "
                      "they are ordinary text, pre-tokenized with what surrounds them")


def test_special_tokens_match_longest_first(impl: Any, ranks_path: Path) -> None:
    vocab, merges = impl.load_tiktoken_ranks(ranks_path)
    # the shorter one is listed first: a first-listed match would cut "<|x|>" + "<|y|>"
    tok = impl.Tokenizer(vocab, merges, ["<|x|>", "<|x|><|y|>"])
    x, xy = 50256, 50257
    assert tok.encode("<|x|><|y|><|x|>") == [xy, x]
    assert tok.encode("<|x|><|x|><|y|>") == [x, xy]
    only_x = tok.encode("<|x|><|y|>", allowed_special={"<|x|>"})
    assert only_x == [x, *tok.encode("<|y|>", allowed_special=set())]


@given(text=texts(ANY_CHAR))
def test_decode_encode_round_trips_any_string(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding, text: str
) -> None:
    for ids in (gpt2.encode(text), gpt2.encode(text, allowed_special=set())):
        got = gpt2.decode(ids)
        assert got == text, decode_hint(got, [tiktoken_gpt2.decode_single_token_bytes(i)
                                              for i in ids])


# ----------------------------------------------------------------------------- encode (both)


@given(text=texts(ANY_CHAR))
def test_trained_tokenizer_encodes_as_the_brute_force_encoder(
    trained: Callable[[], Subject], text: str
) -> None:
    s = trained()
    ids = s.tok.encode(text, allowed_special=set())
    assert ids == s.ordinary(text), f"{text!r}: ids differ from BPE's definition"
    assert s.tok.decode(ids) == text
    assert s.tok.decode(s.tok.encode(text)) == text


EXTREMES = [
    "a" * 600,  # one word of 600 bytes
    "z" + "é" * 300,  # 601 bytes, a 2-byte character repeated
    "中文" * 100,
    "😀" * 150 + "👍🏽" * 40,
    " " * 600 + "x",
    "\n" * 300,
    " \t" * 150 + "\r\n" * 150,
    "9" * 400,
    "'ll" * 100 + "'LL's've're'd'm't",
    "e\u0301" * 200 + "\u212b" * 50,
    "".join(map(chr, range(0x300))),  # control characters, Latin-1, Latin Extended
    EOT * 30 + "<|x|><|y|>" * 20 + "<|x|>" * 20 + "|><|" * 10 + "§§§" * 10 + "<s></s>" * 10,
]


@pytest.mark.parametrize("text", EXTREMES, ids=range(len(EXTREMES)))
def test_encode_extreme_inputs(subject: Callable[[], Subject], text: str) -> None:
    s = subject()
    assert s.tok.encode(text) == s.expected(text, "all")
    assert s.tok.encode(text, allowed_special=set()) == s.ordinary(text)
    assert s.tok.decode(s.tok.encode(text)) == text


@example(text=f"a <|x|> {EOT}<s>!</s> §§", allowed=frozenset({"<s>"}))
@with_subject
@given(text=SPECIAL_TEXT, allowed=ALLOWED)
def test_encode_special_tokens_of_several_lengths_with_allowed_subsets(
    subject: Callable[[], Subject], text: str, allowed: str | frozenset[str]
) -> None:
    """The allowed special tokens are cut out leftmost-longest and become their ids; every other
    special token string is ordinary text, pre-tokenized with what surrounds it."""
    s = subject()
    expected = s.expected(text, allowed)
    assert s.tok.encode(text, allowed_special=allowed) == expected
    if s.enc is not None and allowed != "all" and allowed <= set(DISJOINT):
        assert expected == s.enc.encode(text, allowed_special=allowed, disallowed_special=())


# ----------------------------------------------------------------------------- encode_iterable


@example(parts=[("we'll", 4), (" they've", 7), ("<|x|><|y|>", 3), (EOT, 6), (" §§", 2)],
         allowed="all")
@example(parts=[("x'r", 2), ("e  ", 2), ("<s", 2), ("></s>", 1)], allowed=frozenset({"<s>"}))
@with_subject
@given(parts=CUT_PARTS, allowed=ALLOWED)
def test_encode_iterable_cut_inside_special_tokens_and_pre_tokens(
    subject: Callable[[], Subject], parts: list[tuple[str, int]], allowed: str | frozenset[str]
) -> None:
    """Pieces cut inside a word, a run of spaces, a contraction or a special token of any length
    (and empty pieces) encode exactly as the joined text."""
    s = subject()
    text, pieces = pieces_of(parts)
    expected = s.expected(text, allowed)
    got = list(s.tok.encode_iterable(iter(pieces), allowed_special=allowed))
    assert got == expected, (
        "likely cause: each piece is encoded alone; a word or special token cut between pieces "
        "must be joined first (hold back the text that may still grow)"
        if got == [i for piece in pieces for i in s.expected(piece, allowed)]
        else f"pieces {pieces}") + f": got {got}"
    one_by_one = ["", *text, ""]  # a cut at every character
    assert list(s.tok.encode_iterable(iter(one_by_one), allowed_special=allowed)) == expected


# Longer than the library's 64k-character buffer; ends in a pre-token (".") that ends there
# whatever follows, and holds no special token.
HEAD = "the cat sat on the mat." * 2850


# the contraction "'ll" cut after "x'l", at the end of the text or 12 characters before it
# (where a 13-character special token could start)
@example(parts=[("'l", 2), ("l", 0)], allowed=frozenset())
@example(parts=[("'ll be there  ", 14), ("now", 0)], allowed="all")
# inside "<|x|><|y|>", one character short of the longest allowed special token
@example(parts=[("<|x|><|", 7), ("y|>", 0)], allowed="all")
@example(parts=[("<|x|><|y|", 9), (">", 0)], allowed=frozenset({"<|x|>", "<|x|><|y|>"}))
@example(parts=[(" <|endoftext", 12), ("|> ", 0)], allowed=frozenset({EOT}))
@with_subject
@given(parts=CUT_PARTS, allowed=ALLOWED)
def test_encode_iterable_after_a_first_piece_longer_than_a_buffer(
    subject: Callable[[], Subject], parts: list[tuple[str, int]], allowed: str | frozenset[str]
) -> None:
    """A first piece so long that the text read so far is encoded before the next piece comes;
    it ends where ``parts`` cut, e.g. inside a special token."""
    s = subject()
    text, pieces = pieces_of(parts)
    expected = s.expected(HEAD, allowed) + s.expected("x" + text, allowed)
    # "x": HEAD's last pre-token "." ends before it, whatever follows
    pieces = [HEAD + "x" + (pieces[0] if pieces else ""), *pieces[1:]]
    assert list(s.tok.encode_iterable(iter(pieces), allowed_special=allowed)) == expected


def test_encode_iterable_over_a_file_handle(subject: Callable[[], Subject], tmp_path: Path) -> None:
    s = subject()
    text = f"First line.\n\n  indented 'll\n{EOT}\nlast   \n  \n<|x|>\n<|y|> 中文\n §§\n" * 20
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    with path.open(encoding="utf-8") as f:
        assert list(s.tok.encode_iterable(f)) == s.expected(text, "all")


# ----------------------------------------------------------------------------- decode


@given(ids=st.lists(st.integers(0, EOT_ID), max_size=20))
def test_decode_matches_tiktoken_on_any_ids(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding, ids: list[int]
) -> None:
    """Random ids often cut UTF-8 characters: tiktoken's decode replaces them with U+FFFD."""
    try:
        got = gpt2.decode(ids)
    except UnicodeDecodeError as error:
        raise AssertionError(f"likely cause: {DECODE_RAISES}\n{error}") from None
    assert got == tiktoken_gpt2.decode(ids, errors="replace"), decode_hint(
        got, [tiktoken_gpt2.decode_single_token_bytes(i) for i in ids])


DECODE_RAISES = ("bytes.decode('utf-8') raises on a cut character; decode with "
                 "errors='replace'")


def decode_hint(got: str, pieces: list[bytes]) -> str:
    """The likely cause, when ``got`` is what a classic bug of decode makes of these tokens'
    bytes."""
    raw = b"".join(pieces)
    wrong = {
        "invalid bytes are dropped (errors='ignore'); replace them (errors='replace')":
            raw.decode("utf-8", errors="ignore"),
        "one U+FFFD per invalid byte; errors='replace' gives one per maximal invalid "
        "subpart": re.sub("[\udc80-\udcff]", "\ufffd", raw.decode("utf-8", "surrogateescape")),
        "each token decoded alone; a character split across tokens needs their bytes joined "
        "first": "".join(p.decode("utf-8", errors="replace") for p in pieces),
        "the bytes are decoded as Latin-1; they are UTF-8": raw.decode("latin-1"),
    }
    want = raw.decode("utf-8", errors="replace")
    causes = [cause for cause, text in wrong.items() if got == text != want]
    return f"likely cause: {causes[0]}; got {got!r}" if causes else f"got {got!r}"
def test_decode_of_partial_utf8_gives_the_replacement_character(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding
) -> None:
    c3, a9 = (tiktoken_gpt2.encode_single_token(bytes([b])) for b in "é".encode())  # C3 A9

    def check(ids: list[int], want: str) -> None:
        try:
            got = gpt2.decode(ids)
        except UnicodeDecodeError as error:
            raise AssertionError(f"likely cause: {DECODE_RAISES}\n{error}") from None
        assert got == want, decode_hint(got, [tiktoken_gpt2.decode_single_token_bytes(i)
                                              for i in ids]) + f", want {want!r}"

    check([c3, a9], "é")
    check([c3], "\ufffd")  # half a character decodes to U+FFFD, never raises
    check([a9, c3], "\ufffd\ufffd")
    check([c3, 15496], "\ufffdHello")
    # token 447 is b"\xe2\x80", the first two bytes of "’" (E2 80 99); 247 is b"\x99"
    check([447, 247], "’")
    check([447], "\ufffd")


def test_decode_of_cut_characters_worked_example(impl: Any) -> None:
    """One id per byte; U+FFFD for each maximal invalid subpart, as ``bytes.decode`` does."""
    tok = impl.Tokenizer(BYTES, [])

    def decode(raw: bytes) -> str:
        return str(tok.decode(list(raw)))

    assert decode("中".encode()) == "中"
    assert decode(b"\xe4\xb8") == "\ufffd", "a character cut after 2 of 3 bytes: one U+FFFD"
    assert decode(b"\xf0\x9f\x98") == "\ufffd", "an emoji cut after 3 of 4 bytes: one U+FFFD"
    assert decode(b"\xe4\xb8a") == "\ufffda"
    assert decode(b"\xb8\xad") == "\ufffd\ufffd", "two stray continuation bytes: one each"
    assert decode(b"\xe4\xb8\xe4\xb8\xad") == "\ufffd中"
    assert decode(b"\xc3\x28") == "\ufffd("
    assert decode(b"\xed\xa0\x80") == "\ufffd\ufffd\ufffd", "an encoded surrogate is not UTF-8"
    assert decode(b"\xff") == "\ufffd"


@with_subject
@given(text=st.one_of(texts(ANY_CHAR, max_parts=6), st.text(MULTIBYTE, max_size=30)))
def test_decode_of_ids_that_cut_characters_equals_bytes_decode_replace(
    subject: Callable[[], Subject], text: str
) -> None:
    """Every prefix and every suffix of the ids: characters cut at the end and at the start."""
    s = subject()
    by_byte = [s.byte_ids[x] for x in text.encode("utf-8")]  # one id per byte
    by_token = s.ordinary(text)  # the text's own tokens, which may split a character
    for ids in (by_byte, by_token):
        raw = [s.token_bytes(i) for i in ids]
        for k in range(len(ids) + 1):
            for part, expected in ((ids[:k], raw[:k]), (ids[k:], raw[k:])):
                assert s.tok.decode(part) == b"".join(expected).decode("utf-8", errors="replace")


def test_decode_rejects_an_unknown_id(impl: Any) -> None:
    tok = impl.Tokenizer(BYTES, [], ["<s>"])  # ids 0..256
    assert tok.decode([104, 256, 105]) == "h<s>i"
    try:
        got = tok.decode([104, 257])
    except ValueError as error:
        assert "257" in str(error), f"the error names the unknown id 257: {error}"
    else:
        pytest.fail("likely cause: unknown ids are skipped (vocab.get(i, b'')); an id outside "
                    f"the vocabulary is a ValueError naming it, got {got!r}")
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def test_encode_rejects_non_strings(impl: Any) -> None:
    tok = impl.Tokenizer(BYTES, [])
    for bad, name in ((b"Hello", "bytes"), (None, "NoneType"), (42, "int"), (["Hello"], "list")):
        with pytest.raises(TypeError, match=name):
            tok.encode(bad)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(impl: Any, subject: Callable[[], Subject], tmp_path: Path) -> None:
    s = subject()
    path = tmp_path / "tok.json"
    s.tok.save(path)
    loaded = impl.Tokenizer.load(path)
    for text in [CORPUS, f"unseen wörds {EOT} and <|x|><|y|>!", "😀 café 中文", "", *SPECIALS]:
        expected = s.expected(text, "all")
        assert loaded.encode(text) == expected, f"the loaded tokenizer encodes {text!r} wrongly"
        assert loaded.decode(expected) == text
        assert loaded.encode(text, allowed_special=set()) == s.ordinary(text)
