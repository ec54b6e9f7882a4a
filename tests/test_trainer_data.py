"""The data pipeline and the corpora: token files, splits, batches, the synthetic source.

Oracles: plain Python (``sorted(set(text))``, ``str.encode``), ``hashlib``, the solution's
``get_batch`` for the reference's vectorised one, and the law of large numbers for the Markov
source's entropy rate.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reference.tokenizers import CharTokenizer
from reference.trainer import corpora
from reference.trainer.corpora import Corpus, MarkovSource
from reference.trainer.data import (
    get_batch,
    load_token_data,
    load_tokenizer,
    prepare_markov,
    prepare_text,
    write_token_file,
)
from solutions.trainer import get_batch as solution_get_batch

pytestmark = pytest.mark.trainer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def _corpus(text: str, piece: int = 37) -> Corpus:
    return Corpus("t", lambda: iter([text[i : i + piece] for i in range(0, len(text), piece)]),
                  size=len(text), fingerprint=hashlib.sha256(text.encode()).hexdigest())


# ----------------------------------------------------------------------------- tokens on disk


def test_char_tokenizer_round_trips_and_names_unknown_characters() -> None:
    tok = CharTokenizer.from_text(TEXT)
    assert tok.chars == "".join(sorted(set(TEXT)))
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert CharTokenizer.from_dict(tok.to_dict()).chars == tok.chars
    with pytest.raises(ValueError, match="'Z' is not in this tokenizer's alphabet"):
        tok.encode("Zebra")


def test_prepare_text_streams_into_a_uint16_memmap_with_its_split(tmp_path: Path) -> None:
    data = prepare_text(_corpus(TEXT), tmp_path / "d", val_fraction=0.1, progress=False)
    tok = CharTokenizer.from_text(TEXT)
    expected = np.array(tok.encode(TEXT), dtype=np.uint16)  # tokenized whole, not streamed
    tokens = data.tokens()
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    assert np.array_equal(tokens, expected), "streamed tokenization differs from the whole text's"
    n_val = round(len(TEXT) * 0.1)
    assert data.meta["n_train"] == len(TEXT) - n_val
    assert np.array_equal(np.concatenate([data.split("train"), data.split("val")]), expected)
    assert data.vocab_size == tok.vocab_size
    assert load_tokenizer(tmp_path / "d").decode(data.split("val").tolist()) == TEXT[-n_val:]
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["n_tokens"] == len(TEXT)


def test_a_prepared_dataset_is_reused_only_for_the_same_request(tmp_path: Path) -> None:
    first = prepare_text(_corpus(TEXT), tmp_path, progress=False)
    stamp = (tmp_path / "tokens.bin").stat().st_mtime_ns
    again = prepare_text(_corpus(TEXT), tmp_path, progress=False)
    assert again.meta == first.meta and (tmp_path / "tokens.bin").stat().st_mtime_ns == stamp
    other = prepare_text(_corpus(TEXT.upper()), tmp_path, progress=False)
    assert other.meta["fingerprint"] != first.meta["fingerprint"]
    assert load_tokenizer(tmp_path).decode(other.tokens()[:5].tolist()) == TEXT.upper()[:5]


def test_token_files_use_uint32_when_the_vocabulary_needs_it(tmp_path: Path) -> None:
    ids = [0, 65_535, 65_536, 99_999]
    data = write_token_file([ids], tmp_path, vocab_size=100_000, tokenizer={"kind": "x"},
                            fingerprint={}, val_fraction=0.25)
    assert data.tokens().dtype == np.uint32 and data.tokens().tolist() == ids
    small = write_token_file([[1, 2, 3, 4]], tmp_path / "s", vocab_size=65_536,
                             tokenizer={"kind": "x"}, fingerprint={}, val_fraction=0.25)
    assert small.tokens().dtype == np.uint16


def test_token_ids_outside_the_vocabulary_are_rejected_and_nothing_is_left(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token id 7 outside the vocabulary"):
        write_token_file([[1, 2], [7]], tmp_path, vocab_size=5, tokenizer={}, fingerprint={})
    assert list(tmp_path.iterdir()) == [], "a failed write must leave no partial file"
    with pytest.raises(FileNotFoundError, match="run `prepare` first"):
        load_token_data(tmp_path)


# ----------------------------------------------------------------------------- batches


def test_reference_get_batch_equals_the_solution_for_the_same_generator(tmp_path: Path) -> None:
    data = prepare_text(_corpus(TEXT), tmp_path, progress=False).split("train")
    x, y = get_batch(data, 16, 8, generator=torch.Generator().manual_seed(5))
    sx, sy = solution_get_batch(data, 16, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, sx) and torch.equal(y, sy)
    assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()


def test_ranks_split_the_global_batch_of_one_process(tmp_path: Path) -> None:
    """N ranks with batch B see exactly the rows one process with batch N * B sees."""
    data = np.arange(500, dtype=np.uint16)
    whole, _ = get_batch(data, 8, 6, generator=torch.Generator().manual_seed(1))
    parts = [get_batch(data, 8, 2, generator=torch.Generator().manual_seed(1), rank=r,
                       world_size=3)[0] for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)


def test_get_batch_rejects_data_shorter_than_a_window() -> None:
    with pytest.raises(ValueError, match="too few"):
        get_batch(np.arange(8, dtype=np.uint16), 8, 1)


# ----------------------------------------------------------------------------- corpora


def test_builtin_corpus_needs_no_network_and_is_deterministic() -> None:
    a, b = corpora.builtin_corpus(), corpora.builtin_corpus()
    text = a.text()
    assert len(text) > 100_000 and a.fingerprint == b.fingerprint
    assert "assert" in text and a.size == len(text)


def test_text_and_jsonl_files(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    assert corpora.text_file(path, chunk_chars=100).text() == TEXT
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert corpora.jsonl_file(jsonl).text() == "one\n\ntwo\n\n"
    jsonl.write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: expected an object with a string 'text'"):
        corpora.jsonl_file(jsonl).text()


def test_tiny_shakespeare_from_a_local_file_is_checked(shared_data: Path, tmp_path: Path) -> None:
    corpus = corpora.tiny_shakespeare(shared_data / "tinyshakespeare" / "input.txt")
    text = corpus.text()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    wrong = tmp_path / "input.txt"
    wrong.write_text("not Shakespeare")
    with pytest.raises(ValueError, match="is not Tiny Shakespeare: SHA-256"):
        corpora.tiny_shakespeare(wrong)


def test_download_checks_sha256_caches_and_never_leaves_a_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "remote.txt"
    source.write_bytes(b"hello corpus\n")
    digest = hashlib.sha256(b"hello corpus\n").hexdigest()
    dest = tmp_path / "cache" / "c.txt"
    assert corpora.download(source.as_uri(), dest, digest) == dest
    assert dest.read_bytes() == b"hello corpus\n"
    source.write_bytes(b"changed")  # the cached, verified copy is used: no second fetch
    assert corpora.download(source.as_uri(), dest, digest).read_bytes() == b"hello corpus\n"
    other = tmp_path / "cache" / "d.txt"
    with pytest.raises(ValueError, match="does not match the expected"):
        corpora.download(source.as_uri(), other, digest)
    assert sorted(p.name for p in other.parent.iterdir()) == ["c.txt"]


def test_download_without_network_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="no network\\? Give a local copy"):
        corpora.download("http://127.0.0.1:9/input.txt", tmp_path / "x.txt", "0" * 64,
                         timeout=5)


def test_hf_streaming_without_the_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_datasets(name: str, *args: object, **kwargs: object) -> object:
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ImportError, match="pip install datasets"):
        corpora.hf_dataset("openwebtext")


# ----------------------------------------------------------------------------- Markov source


def test_markov_entropy_rate_of_known_chains() -> None:
    uniform = MarkovSource(vocab_size=5, order=2, concentration=1e9)  # rows ~ uniform
    assert math.isclose(uniform.entropy_rate(), math.log(5), rel_tol=1e-6)
    assert math.isclose(uniform.loss_floor(10), math.log(5), rel_tol=1e-6)
    peaked = MarkovSource(vocab_size=8, order=1, concentration=0.01)
    assert peaked.entropy_rate() < 0.5 * math.log(8)


@pytest.mark.parametrize(("order", "vocab"), [(1, 16), (2, 8), (3, 4)])
def test_markov_entropy_rate_matches_the_empirical_log_loss(order: int, vocab: int) -> None:
    """The mean -log P(x_t | context) over a long sample converges to the entropy rate."""
    src = MarkovSource(vocab_size=vocab, order=order, concentration=0.5, seed=order)
    x = src.sample(400_000, seed=9).astype(np.int64)
    ctx = np.zeros(len(x) - order, dtype=np.int64)
    for i in range(order):
        ctx = ctx * vocab + x[i : len(x) - order + i]
    nll = -np.log(src.transition[ctx, x[order:]])
    tolerance = 5 * nll.std() / math.sqrt(len(nll))  # 5 standard errors (samples are mixing)
    assert abs(nll.mean() - src.entropy_rate()) < tolerance, (nll.mean(), src.entropy_rate())
    # The stationary distribution is the long-run frequency of contexts.
    freq = np.bincount(ctx, minlength=src.n_contexts) / len(ctx)
    assert np.abs(freq - src.stationary).max() < 0.01


def test_markov_loss_floor_counts_the_short_contexts_at_a_window_start() -> None:
    src = MarkovSource(vocab_size=6, order=3, concentration=0.4, seed=1)
    h = src.entropy_rate()
    floor_1 = src.loss_floor(1)  # predicts x_2 from x_1 alone: H(X2 | X1) >= rate
    assert floor_1 >= h and src.loss_floor(3) >= src.loss_floor(100) >= h
    # Position 0 and 1 lack a full context, the rest have it: the mean of the three terms.
    per_2 = 2 * src.loss_floor(2) - floor_1
    assert math.isclose(src.loss_floor(3), (floor_1 + per_2 + h) / 3, rel_tol=1e-12)
    assert math.isclose(src.loss_floor(100), (floor_1 + per_2 + 98 * h) / 100, rel_tol=1e-12)


def test_markov_samples_are_seeded_and_prepared_with_their_floor(tmp_path: Path) -> None:
    src = MarkovSource()
    assert np.array_equal(src.sample(1000, seed=3), src.sample(1000, seed=3))
    assert not np.array_equal(src.sample(1000, seed=3), src.sample(1000, seed=4))
    data = prepare_markov(src, tmp_path, n_tokens=5000, seed=3)
    assert np.array_equal(data.tokens(), src.sample(5000, seed=3))
    assert data.meta["entropy_rate"] == src.entropy_rate() and data.vocab_size == 8
    assert load_tokenizer(tmp_path).decode([0, 1, 7]) == "abh"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"vocab_size": 1}, "vocab_size"), ({"order": 0}, "order"),
     ({"vocab_size": 256, "order": 3}, "too many"), ({"concentration": 0.0}, "concentration")],
)
def test_markov_source_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarkovSource(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- BPE


def test_prepare_with_a_trained_bpe_tokenizer_round_trips(tmp_path: Path) -> None:
    from reference.trainer.data import train_bpe_tokenizer

    tok = train_bpe_tokenizer(TEXT, 300)
    data = prepare_text(_corpus(TEXT, piece=50), tmp_path, tokenizer=tok,
                        tokenizer_spec="bpe:300", progress=False)
    assert data.vocab_size == 300  # 256 bytes + 43 merges + <|endoftext|>
    assert len(data.tokens()) < len(TEXT) / 2, "BPE should compress this repetitive text"
    assert np.array_equal(data.tokens(), tok.encode(TEXT)), "streamed != whole-text encoding"
    again = load_tokenizer(tmp_path)
    assert again.decode(data.tokens().tolist()) == TEXT


def test_gpt2_token_file_equals_tiktoken(shared_data: Path, tmp_path: Path) -> None:
    tiktoken_load = pytest.importorskip("tiktoken.load")
    import tiktoken

    from reference.tokenizers import gpt2_tokenizer

    ranks_path = shared_data / "gpt2" / "gpt2.tiktoken"
    oracle = tiktoken.Encoding(
        "gpt2-local",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=tiktoken_load.load_tiktoken_bpe(str(ranks_path)),
        special_tokens={"<|endoftext|>": 50256},
    )
    text = TEXT[:2000] + "Ünïcödé, numbers 12345 and  spaces.\n"
    data = prepare_text(_corpus(text, piece=61), tmp_path, tokenizer=gpt2_tokenizer(ranks_path),
                        tokenizer_spec="gpt2", progress=False)
    assert data.vocab_size == 50257 and data.tokens().dtype == np.uint16
    assert data.tokens().tolist() == oracle.encode(text)
