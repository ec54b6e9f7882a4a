"""Spec: bpe (issue 4): a byte-level BPE tokenizer, trained from raw text, exact against tiktoken.

Oracles, none written in the implementations: tiktoken's ``gpt2`` Encoding, built offline from the
same ranks file (``encode``, ``encode_ordinary``, ``decode``); ``bytes.replace`` (one merge:
left to right, never overlapping); ``collections.Counter`` over adjacent pairs; a brute-force BPE
trainer written here from the definition, over byte strings (no ids, no incremental counts); and
hand-worked examples (the merges and ids worked out in the comments).

Conventions under test (documented in ``solutions/bpe``):

* the vocabulary is the 256 bytes (ids 0..255), then one id per merge in order, then the special
  tokens; training merges the most frequent pair, ties going to the lexicographically greatest
  pair of byte strings; pairs are counted with overlaps (``aaa`` holds ``(a, a)`` twice);
* special tokens are cut out before pre-tokenization, longest first, never merged into or
  across; ``encode(text, allowed_special="all")`` is the default; a special token string that is
  not allowed is encoded as ordinary text (no error, no special id);
* ``decode`` turns invalid UTF-8 into U+FFFD (never raises on it); an unknown id is a ValueError;
  ``encode`` of a non-string is a TypeError; ``vocab_size < 256 + len(special_tokens)`` is a
  ValueError.

Exact comparisons throughout: token ids are integers, there is no tolerance.
"""

from __future__ import annotations

import base64
import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import regex
import tiktoken
from hypothesis import given
from hypothesis import strategies as st

COMPONENT = "bpe"
pytestmark = pytest.mark.bpe

EOT = "<|endoftext|>"
EOT_ID = 50256
# GPT-2's pre-tokenizer pattern (the issue's fact; tiktoken's "gpt2" uses the same).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# ----------------------------------------------------------------------------- strategies

# Any assigned Unicode character but surrogates (not encodable); unassigned code points (Cn) are
# left out of the tiktoken comparisons only, since Rust's and Python's Unicode tables may
# assign them differently.
ANY_CHAR = st.characters(codec="utf-8")
ASSIGNED_CHAR = st.characters(codec="utf-8", exclude_categories=("Cs", "Cn"))
# Fragments that stress the pre-tokenizer: contractions, whitespace runs before words, digits,
# a split multi-byte character, emoji, CRLF, and special-token strings.
TRICKY = [" ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "'s", "'ll", "'re", "'", "123", " 4",
          "é", "😀", "的", "Hello", " world", "!!", " ?", "<|", "|>", EOT]


def texts(chars: st.SearchStrategy[str], max_parts: int = 10) -> st.SearchStrategy[str]:
    """Strings built from random text and TRICKY fragments (possibly empty, possibly a lone
    special token)."""
    part = st.one_of(st.text(chars, max_size=12), st.sampled_from(TRICKY))
    return st.lists(part, max_size=max_parts).map("".join)


# ----------------------------------------------------------------------------- oracles


def brute_force_train(
    text: str, vocab_size: int, special_tokens: Sequence[str]
) -> list[tuple[bytes, bytes]]:
    """BPE training from its definition: words are tuples of byte strings; every step recounts
    all pairs and picks ``max((count, pair))``, i.e. ties to the greatest (bytes, bytes)."""
    if special_tokens:
        alternatives = "|".join(map(re.escape, sorted(special_tokens, key=len, reverse=True)))
        pieces = re.split(f"({alternatives})", text)[::2]  # odd pieces are the specials
    else:
        pieces = [text]
    words: Counter[tuple[bytes, ...]] = Counter()
    for piece in pieces:
        for word in regex.findall(GPT2_PATTERN, piece):
            words[tuple(bytes([b]) for b in word.encode("utf-8"))] += 1
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
    vocab = {i: bytes([i]) for i in range(256)}
    for k, (left, right) in enumerate(merges):
        vocab[256 + k] = left + right
    for j, token in enumerate(special_tokens):
        vocab[256 + len(merges) + j] = token.encode("utf-8")
    return vocab


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ranks_path(shared_data: Path) -> Path:
    return shared_data / "gpt2" / "gpt2.tiktoken"


@pytest.fixture(scope="module")
def tiktoken_gpt2(ranks_path: Path) -> tiktoken.Encoding:
    """tiktoken's GPT-2, offline: the ranks file read directly (tiktoken's format is one
    ``base64 rank`` per line), so nothing is downloaded or cached."""
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in ranks_path.read_bytes().splitlines() if line)
    }
    return tiktoken.Encoding(
        name="gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={EOT: EOT_ID},
    )


@pytest.fixture(scope="module")
def gpt2(impl: Any, ranks_path: Path) -> Any:
    """The implementation's tokenizer with GPT-2's ranks and ``<|endoftext|>``."""
    vocab, merges = impl.load_tiktoken_ranks(ranks_path)
    return impl.Tokenizer(vocab, merges, [EOT])


def single_byte_id(enc: tiktoken.Encoding, b: int) -> int:
    return enc.encode_single_token(bytes([b]))


# ----------------------------------------------------------------------------- pair counts


def test_get_pair_counts_worked_example(impl: Any) -> None:
    assert impl.get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    # overlapping occurrences both count: [7, 7, 7] has (7, 7) at positions 0 and 1
    assert impl.get_pair_counts([7, 7, 7]) == {(7, 7): 2}, "overlapping pairs must count twice"
    assert impl.get_pair_counts([5]) == {} and impl.get_pair_counts([]) == {}
    # accumulate into an existing dict, in place, each pair weighted
    totals = impl.get_pair_counts([1, 2], weight=10)
    assert totals == {(1, 2): 10}
    returned = impl.get_pair_counts([2, 1, 2], totals)
    assert returned is totals, "with counts=..., add to that dict and return it"
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
    assert impl.merge([7, 7, 7], (7, 7), 99) == [99, 7], "[a, a, a] merges to [aa, a]"
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
    assert split(f"a{EOT}b{EOT}", [EOT]) == ["a", EOT, "b", EOT]
    assert split(f"{EOT}{EOT}", [EOT]) == [EOT, EOT]
    assert split("plain text", []) == ["plain text"]
    assert split("", [EOT]) == []
    # "|" is a regex operator: the tokens must be matched literally
    assert split("a|b", ["<|x|>"]) == ["a|b"]
    # overlapping special tokens: the longest one wins, whatever the order given
    assert split("<|x|><|y|>!<|x|>", ["<|x|>", "<|x|><|y|>"]) == ["<|x|><|y|>", "!", "<|x|>"]


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
    assert merges == [(b"a", b"a"), (b"b", b"c"), (b"aa", b"a")]
    assert vocab == expected_vocab(merges, [EOT])
    assert (vocab[256], vocab[257], vocab[258], vocab[259]) == (b"aa", b"bc", b"aaa", EOT.encode())


def test_train_bpe_counts_overlapping_pairs(impl: Any) -> None:
    """"aaa" holds (a,a) twice: it beats (b,c) once, which would win a tie (greater bytes)."""
    _, merges = impl.train_bpe("aaa bc", 257)
    assert merges == [(b"a", b"a")], "pairs in 'aaa' must be counted with overlaps (2, not 1)"


def test_train_bpe_breaks_ties_toward_the_greatest_pair_of_byte_strings(impl: Any) -> None:
    # (a,b), (' ',c), (c,d) once each: (b"c", b"d") is the greatest; first seen would be (a,b)
    assert impl.train_bpe("ab cd", 257)[1] == [(b"c", b"d")]
    # same first byte: the second decides, (b"a", b"c") > (b"a", b"b")
    assert impl.train_bpe("ab ac", 257)[1] == [(b"a", b"c")]
    # (b"z", b"a") > (b" ", b"z") although " " comes first in the text
    assert impl.train_bpe(" za", 257)[1] == [(b"z", b"a")]


@given(
    text=st.lists(
        st.one_of(st.text("aab c\né", max_size=8), st.sampled_from([EOT, "<|x|>", "<|x|><|y|>"])),
        max_size=8,
    ).map("".join),
    special_tokens=st.sampled_from([(), (EOT,), ("<|x|>", "<|x|><|y|>")]),
    extra=st.integers(0, 12),
)
def test_train_bpe_matches_brute_force_definition(
    impl: Any, text: str, special_tokens: tuple[str, ...], extra: int
) -> None:
    vocab_size = 256 + len(special_tokens) + extra
    vocab, merges = impl.train_bpe(text, vocab_size, list(special_tokens))
    expected = brute_force_train(text, vocab_size, special_tokens)
    assert merges == expected, f"merges differ from BPE's definition on {text!r}"
    assert vocab == expected_vocab(expected, special_tokens)


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


def test_train_bpe_rejects_non_string_text(impl: Any) -> None:
    with pytest.raises(TypeError):
        impl.train_bpe(b"bytes are not text", 300)


# ----------------------------------------------------------------------------- encode (GPT-2)


def test_encode_hello_world_as_gpt2(gpt2: Any) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.decode([15496, 995]) == "Hello world"


@given(text=texts(ASSIGNED_CHAR))
def test_encode_matches_tiktoken_on_generated_text(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding, text: str
) -> None:
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special=set()) == tiktoken_gpt2.encode_ordinary(text)


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
    assert ids == tiktoken_gpt2.encode_ordinary(EOT) == [27, 91, 437, 1659, 5239, 91, 29]
    assert EOT_ID not in ids


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
def test_decode_encode_round_trips_any_string(gpt2: Any, text: str) -> None:
    assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.decode(gpt2.encode(text, allowed_special=set())) == text


# ----------------------------------------------------------------------------- decode


@given(ids=st.lists(st.integers(0, EOT_ID), max_size=20))
def test_decode_matches_tiktoken_on_any_ids(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding, ids: list[int]
) -> None:
    """Random ids often cut UTF-8 characters: tiktoken's decode replaces them with U+FFFD."""
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids, errors="replace")


def test_decode_of_partial_utf8_gives_the_replacement_character(
    gpt2: Any, tiktoken_gpt2: tiktoken.Encoding
) -> None:
    c3, a9 = (single_byte_id(tiktoken_gpt2, b) for b in "é".encode())  # é is C3 A9
    assert gpt2.decode([c3, a9]) == "é"
    assert gpt2.decode([c3]) == "\ufffd", "half a character must decode to U+FFFD, not raise"
    assert gpt2.decode([a9, c3]) == "\ufffd\ufffd"
    assert gpt2.decode([c3, 15496]) == "\ufffdHello"


def test_decode_rejects_an_unknown_id(gpt2: Any) -> None:
    with pytest.raises(ValueError, match="50257"):
        gpt2.decode([15496, 50257])
    with pytest.raises(ValueError, match="-1"):
        gpt2.decode([-1])


def test_encode_rejects_non_strings(gpt2: Any) -> None:
    for bad in (b"Hello", None, 42, ["Hello"]):
        with pytest.raises(TypeError):
            gpt2.encode(bad)


# ----------------------------------------------------------------------------- trained tokenizer

CORPUS = (
    "the cat sat on the mat. the cat's hat is flat; that's that!\n"
    f"{EOT}low lower lowest newer newest wider widest 1234 12 34 élan café naïve 😀😀\n"
) * 3


@pytest.fixture(scope="module")
def trained(impl: Any) -> Callable[[], Any]:
    """The tokenizer trained on CORPUS, built once on first use (inside a test, so that a stub's
    NotImplementedError fails the test rather than erroring its setup)."""

    @functools.cache
    def build() -> Any:
        vocab, merges = impl.train_bpe(CORPUS, 330, [EOT, "<|pad|>"])
        return impl.Tokenizer(vocab, merges, [EOT, "<|pad|>"])

    return build


@given(text=texts(ANY_CHAR))
def test_trained_tokenizer_round_trips_any_string(trained: Callable[[], Any], text: str) -> None:
    tok = trained()
    assert tok.decode(tok.encode(text)) == text


@given(
    parts=st.lists(
        st.one_of(texts(st.sampled_from("the cat<|>é \n"), max_parts=3),
                  st.sampled_from([EOT, "<|pad|>"])),
        max_size=8,
    )
)
def test_trained_tokenizer_keeps_special_tokens_whole(
    trained: Callable[[], Any], parts: list[str]
) -> None:
    """Each special token is exactly its own id, where it occurs; merges never produce one."""
    tok = trained()
    specials = {EOT: tok.encode(EOT), "<|pad|>": tok.encode("<|pad|>")}
    assert specials[EOT] != specials["<|pad|>"] and all(len(v) == 1 for v in specials.values())
    text = "".join(parts)
    expected: list[int] = []
    for piece in re.split(r"(<\|endoftext\|>|<\|pad\|>)", text):
        expected += specials[piece] if piece in specials else tok.encode(piece)
    assert tok.encode(text) == expected
    ordinary = tok.encode(text, allowed_special=set())
    special_ids = {v[0] for v in specials.values()}
    assert not special_ids & set(ordinary), "a special id came out of ordinary text"


# ----------------------------------------------------------------------------- encode_iterable


@given(text=texts(ASSIGNED_CHAR, max_parts=14), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_encode_iterable_equals_encode_on_the_joined_text(
    gpt2: Any, text: str, cuts: list[int]
) -> None:
    """Pieces cut anywhere, even inside a word or a special token, encode as the whole."""
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in pairwise(bounds)]
    expected = gpt2.encode(text)
    assert list(gpt2.encode_iterable(iter(pieces))) == expected
    expected = gpt2.encode(text, allowed_special=set())
    assert list(gpt2.encode_iterable(iter(pieces), allowed_special=set())) == expected


def test_encode_iterable_over_a_file_handle(gpt2: Any, tmp_path: Path) -> None:
    text = f"First line.\n\n  indented 'll\n{EOT}\nlast   \n  \n" * 20
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    expected = gpt2.encode(text)
    with path.open(encoding="utf-8") as f:
        assert list(gpt2.encode_iterable(f)) == expected


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(impl: Any, trained: Callable[[], Any], tmp_path: Path) -> None:
    tok = trained()
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = impl.Tokenizer.load(path)
    samples = [CORPUS, f"unseen wörds {EOT} and <|pad|>!", "😀 café", ""]
    for s in samples:
        assert loaded.encode(s) == tok.encode(s), f"loaded tokenizer encodes {s!r} differently"
        assert loaded.decode(tok.encode(s)) == s
    assert loaded.encode(EOT) == tok.encode(EOT)


def test_save_load_round_trip_gpt2(impl: Any, gpt2: Any, tmp_path: Path) -> None:
    path = tmp_path / "gpt2.json"
    gpt2.save(path)
    loaded = impl.Tokenizer.load(path)
    text = f"Hello world{EOT} it's 2024!"
    assert loaded.encode(text) == gpt2.encode(text) == [15496, 995, 50256, 340, 338, 48609, 0]
