"""reference.bpe beyond the spec: the production trainer and tokenizer.

* the incremental trainer gives the same merges as the solutions' recount-everything loop (the
  oracle) on corpora full of overlaps, ties, Unicode and special tokens;
* parallel pre-tokenization equals one process; chunk boundaries never change the counts;
* the ASCII fast path of the pre-tokenizer equals GPT-2's regex;
* encode_iterable runs in bounded memory and, with blocks of a few characters, equals encode
  wherever the blocks end; the word cache's reset changes nothing;
* clear errors at the edges, the progress bar, the vocabulary inspector.
"""

from __future__ import annotations

import io
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import regex
from hypothesis import example, given
from hypothesis import strategies as st

from reference import bpe as ref
from reference.bpe.pretokenize import _count
from solutions import bpe as sol

pytestmark = pytest.mark.bpe

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|x|>", "<|x|><|y|>"]


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path) -> str:
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- trainer


@given(
    text=st.lists(
        st.one_of(st.text("aaab c\n", max_size=10), st.text(max_size=4), st.sampled_from(SPECIALS)),
        max_size=12,
    ).map("".join),
    specials=st.sampled_from([[], [EOT], SPECIALS]),
    extra=st.integers(0, 40),
)
def test_incremental_trainer_equals_recounting_trainer(
    text: str, specials: list[str], extra: int
) -> None:
    """Small alphabets make overlaps (aaaa) and ties everywhere: the hard cases for incremental
    counts and for the heap's tie order."""
    vocab_size = 256 + len(specials) + extra
    assert ref.train_bpe(text, vocab_size, specials) == sol.train_bpe(text, vocab_size, specials)


@pytest.mark.parametrize(
    ("start", "length", "vocab_size"), [(0, 20_000, 600), (500_000, 8_000, 900)]
)
def test_incremental_trainer_equals_recounting_trainer_on_shakespeare(
    shakespeare: str, start: int, length: int, vocab_size: int
) -> None:
    text = shakespeare[start : start + length].replace("\n\n", f"\n{EOT}")
    expected = sol.train_bpe(text, vocab_size, [EOT])
    assert ref.train_bpe(text, vocab_size, [EOT]) == expected


def test_trainer_with_two_processes_equals_one(shakespeare: str, tmp_path: Path) -> None:
    text = shakespeare[:300_000].replace("\n\n", f"\n{EOT}")
    one = ref.train_bpe(text, 700, [EOT])
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    from_file = ref.train_bpe_from_file(path, 700, [EOT], processes=2, chunk_size=50_000)
    assert from_file == one
    counts = ref.count_pretokens(text, [EOT], processes=2, chunk_size=40_000)
    assert counts == ref.count_pretokens(text, [EOT])


def test_file_without_special_tokens_is_cut_at_safe_newlines(
    shakespeare: str, tmp_path: Path
) -> None:
    text = shakespeare[:200_000]
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    with path.open("rb") as f:
        bounds = ref.chunk_boundaries(f, [], 10_000)
    assert len(bounds) > 10, "no newline cut was found"
    assert ref.count_pretokens_in_file(path, [], processes=1, chunk_size=10_000) == Counter(
        regex.findall(ref.GPT2_SPLIT_PATTERN, text)
    )


@given(
    text=st.lists(
        st.one_of(st.text("ab \n\t'.é", max_size=6), st.sampled_from([*SPECIALS, "\n", " \n"])),
        max_size=30,
    ).map("".join),
    specials=st.sampled_from([[], [EOT], SPECIALS, ["a\nb"]]),
    chunk_size=st.integers(1, 12),
)
def test_chunk_boundaries_never_change_the_counts(
    text: str, specials: list[str], chunk_size: int
) -> None:
    """Counting chunk by chunk equals counting the whole text, for str and for bytes offsets."""
    whole = _count(text, specials)
    bounds = ref.chunk_boundaries(text, specials, chunk_size)
    assert bounds[0] == 0 and bounds[-1] == len(text) and bounds == sorted(set(bounds))
    by_chunk: Counter[str] = Counter()
    for a, b in pairwise(bounds):
        by_chunk.update(_count(text[a:b], specials))
    assert by_chunk == whole
    data = text.encode("utf-8")
    byte_bounds = ref.chunk_boundaries(io.BytesIO(data), specials, chunk_size)
    by_byte_chunk: Counter[str] = Counter()
    for a, b in pairwise(byte_bounds):
        by_byte_chunk.update(_count(data[a:b].decode("utf-8"), specials))
    assert by_byte_chunk == whole


def test_progress_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    ref.train_bpe("hello hello world", 262, progress=True)
    assert "BPE merges" in capsys.readouterr().err
    ref.train_bpe("hello hello world", 262, progress=False)
    assert capsys.readouterr().err == ""


def test_trainer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 257"):
        ref.train_bpe("text", 256, [EOT])
    with pytest.raises(TypeError, match="str"):
        ref.train_bpe(b"text", 300)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="distinct"):
        ref.train_bpe("text", 300, [EOT, EOT])
    with pytest.raises(ValueError, match="processes"):
        ref.train_bpe("text", 300, processes=0)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 at byte 3"):
        ref.train_bpe_from_file(bad, 300)


# ----------------------------------------------------------------------------- pre-tokenizer


@given(text=st.text(st.characters(max_codepoint=127), max_size=60))
def test_ascii_fast_path_equals_gpt2_regex(text: str) -> None:
    assert ref.pretokenize(text) == regex.findall(ref.GPT2_SPLIT_PATTERN, text)


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def gpt2(shared_data: Path) -> ref.Tokenizer:
    return ref.Tokenizer.from_tiktoken(shared_data / "gpt2" / "gpt2.tiktoken", [EOT])


def test_tiny_word_cache_gives_the_same_ids(gpt2: ref.Tokenizer, shakespeare: str) -> None:
    small = ref.Tokenizer(gpt2.vocab, gpt2.merges, [EOT], cache_size=10)
    text = shakespeare[:50_000]
    assert small.encode(text) == gpt2.encode(text)
    assert len(small._cache) <= len(small._cache._seed) + 10


def _lines(n: int) -> Iterator[str]:
    """n lines, each with a fresh number (so a cache that never forgets would grow with them)."""
    for i in range(n):
        yield f"the quick brown fox jumps {i * 7919} times over the lazy dog{EOT}\n"


def _streaming_peak(tok: ref.Tokenizer, n_lines: int) -> tuple[int, int]:
    """(ids yielded, peak bytes allocated) while streaming ``n_lines`` lines."""
    tracemalloc.start()
    try:
        count = sum(1 for _ in tok.encode_iterable(_lines(n_lines)))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_encode_iterable_memory_does_not_grow_with_the_input(gpt2: ref.Tokenizer) -> None:
    tok = ref.Tokenizer(gpt2.vocab, gpt2.merges, [EOT], cache_size=1_000)
    count_small, peak_small = _streaming_peak(tok, 4_000)  # 0.28 MB of text
    count_big, peak_big = _streaming_peak(tok, 20_000)  # 1.4 MB of text, 300k ids
    assert count_big > 5 * count_small > 0
    # 5x the input, about the same peak: a 64k-character block, its pre-tokens and ids
    assert peak_big < 1.25 * peak_small + 100_000, (
        f"peak grew from {peak_small / 1e6:.2f} MB to {peak_big / 1e6:.2f} MB with 5x the input")
    assert peak_big < 1_500_000, f"peak {peak_big / 1e6:.2f} MB while streaming 1.4 MB of text"


def test_encode_iterable_over_text_blocks(gpt2: ref.Tokenizer, tmp_path: Path) -> None:
    text = "".join(_lines(300))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    ids = list(gpt2.encode_iterable(ref.iter_text_blocks(path, block_size=777), block_size=500))
    assert ids == gpt2.encode(text)


STREAM_SPECIALS = [EOT, "<s>", "§§", "<|x|>", "<|x|><|y|>", "|><|"]
STREAM_PART = st.one_of(
    st.text(st.sampled_from(list("<|>/sxy§ é中😀\n'l!")), max_size=6),
    st.sampled_from([*STREAM_SPECIALS, "<|", "|>", "<|x", "'ll", "'ve", "  ", " \n", "we'll"]),
)


@pytest.fixture(scope="module")
def streaming_tokenizer() -> ref.Tokenizer:
    corpus = "we'll see <|x|> you've <s> 中文 §§ émigré <|x|><|y|> |><| we'll  \n" * 4
    vocab, merges = ref.train_bpe(corpus, 256 + 60 + len(STREAM_SPECIALS), STREAM_SPECIALS)
    return ref.Tokenizer(vocab, merges, STREAM_SPECIALS)


@example(parts=[("<|x|><|y|", 9), (">", 0)], block_size=1,  # one short of the longest special
         allowed=frozenset({"<|x|>", "<|x|><|y|>"}))
@example(parts=[("we'l", 4), ("l", 0)], block_size=1, allowed=frozenset())
@given(
    parts=st.lists(st.tuples(STREAM_PART, st.integers(0, 12)), max_size=12),
    block_size=st.integers(1, 24),
    allowed=st.one_of(st.just("all"), st.frozensets(st.sampled_from(STREAM_SPECIALS))),
)
def test_encode_iterable_with_small_blocks_equals_encode(
    streaming_tokenizer: ref.Tokenizer, parts: list[tuple[str, int]], block_size: int,
    allowed: str | frozenset[str],
) -> None:
    """Blocks of a few characters: the stable prefix is encoded again and again, with the cut
    inside words, contractions and special tokens of every length (the spec reaches this code
    only past 64k characters)."""
    text = "".join(part for part, _ in parts)
    cuts, pos = {0, len(text)}, 0
    for part, k in parts:
        cuts.add(pos + min(k, len(part)))
        pos += len(part)
    bounds = sorted(cuts)
    pieces = [text[a:b] for a, b in pairwise(bounds)]
    expected = streaming_tokenizer.encode(text, allowed_special=allowed)  # type: ignore[arg-type]
    for stream in (pieces, list(text)):
        got = streaming_tokenizer.encode_iterable(
            iter(stream), allowed_special=allowed, block_size=block_size  # type: ignore[arg-type]
        )
        assert list(got) == expected


def test_tokenizer_edges(gpt2: ref.Tokenizer) -> None:
    with pytest.raises(ValueError, match="unknown special tokens"):
        gpt2.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(TypeError, match="allowed_special"):
        gpt2.encode("x", allowed_special="none")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        gpt2.encode_ordinary(b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="single-byte"):
        ref.Tokenizer({0: b"a"}, [])
    with pytest.raises(ValueError, match=r"merges\[0\]"):
        ref.Tokenizer({i: bytes([i]) for i in range(256)}, [(b"a", b"b")])
    with pytest.raises(TypeError, match="int -> bytes"):
        ref.Tokenizer({0: "a"}, [])  # type: ignore[dict-item]
    import numpy as np

    assert gpt2.decode(np.array([15496, 995])) == "Hello world"
    assert gpt2.vocab_size == 50257 and gpt2.special_tokens == {EOT: 50256}
    assert gpt2.encode_ordinary(EOT) == gpt2.encode(EOT, allowed_special=set())


def test_special_token_bytes_equal_to_a_merged_token_stay_distinct() -> None:
    """A special "ab" beside the merged token "ab": ordinary text never yields the special id."""
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"ab"}
    for impl in (ref, sol):
        tok = impl.Tokenizer(vocab, [(b"a", b"b")], ["ab"])
        assert tok.encode("ab") == [257]
        assert tok.encode("ab", allowed_special=set()) == [256]


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_builder_and_inspector() -> None:
    vocab, merges = ref.train_bpe(f"aaa bc{EOT}aaa bc", 260, [EOT])
    assert ref.build_vocab(merges, [EOT]) == vocab
    lines = list(ref.describe_vocab(vocab, merges, {EOT: 259}))
    assert len(lines) == 260
    assert lines[32] == "   32  [ ]" and lines[10] == "   10  [\\n]"
    assert lines[0] == "    0  [\\u0000]"
    assert lines[258] == "  258  [aaa]  <- [aa] [a]"
    assert lines[259] == f"  259  [{EOT}]  (special)"
    assert lines[200] == "  200  [\\xc8]"
    assert len(list(ref.describe_vocab(vocab, merges, limit=5))) == 5
    assert ref.render_token("é".encode()) == "é" and ref.render_token(b"\\") == "\\\\"
