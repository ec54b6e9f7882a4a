"""BPE benchmarks: encode throughput, training time and compression, training peak memory.

* encode, cold: a new tokenizer object per round (built outside the timing), then one
  ``encode`` of the whole of Tiny Shakespeare (1.1 MB, 338,025 GPT-2 tokens), single thread:
  reference and solutions (pure Python), tiktoken (the peer) and Hugging Face ``tokenizers``,
  all from the same ranks file. ``MB_per_s`` in extra_info. Warm: the same object again.
* training to a 10,000-token vocabulary on a generated ~5 MB corpus (Tiny Shakespeare's lines
  shuffled into documents separated by ``<|endoftext|>``, a quarter of the words replaced by
  made-up blends so the vocabulary is open), against ``tokenizers``' BpeTrainer
  (the peer, same pre-tokenizer, all of its threads); ``bytes_per_token`` of each trained
  tokenizer on that corpus (compression: higher is better).
* peak memory of training on a generated ~100 MB file (``train_bpe_from_file``, 2 processes),
  measured in a subprocess: ``peak_rss_MB`` (the main process) and ``worker_peak_rss_MB`` (the
  largest worker). Set ``BPE_BENCH_CORPUS_MB`` to change the size.

Run: ``pytest benchmarks/test_bpe_bench.py --benchmark-columns=min,median,rounds``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from benchmarks.conftest import device_name
from reference import bpe as ref
from solutions import bpe as sol

ROOT = Path(__file__).resolve().parent.parent
EOT = "<|endoftext|>"
VOCAB_SIZE = 10_000
TRAIN_MB = 5
BIG_MB = int(os.environ.get("BPE_BENCH_CORPUS_MB", "100"))


@pytest.fixture(scope="module")
def shakespeare(shared_data: Path) -> str:
    return (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2_ranks(shared_data: Path) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    return ref.load_tiktoken_ranks(shared_data / "gpt2" / "gpt2.tiktoken")


def generated_documents(shakespeare: str, n_bytes: int, seed: int = 0) -> list[str]:
    """Documents of 5-40 random lines of Tiny Shakespeare, about ``n_bytes`` in all, where a
    quarter of the words are replaced by new ones (the first half of a word + the second half of
    another, from a pool of 50,000), so that the vocabulary keeps growing like real text's and
    10,000 merges do not exhaust it."""
    rng = random.Random(seed)
    lines = [line for line in shakespeare.splitlines() if line.strip()]
    words = shakespeare.split()
    pool = [a[: len(a) // 2] + b[len(b) // 2 :]
            for a, b in zip(rng.choices(words, k=50_000), rng.choices(words, k=50_000),
                            strict=True)]
    docs: list[str] = []
    total = 0
    while total < n_bytes:
        doc = "".join(
            " ".join(w if rng.random() > 0.25 else rng.choice(pool) for w in line.split(" ")) + "\n"
            for line in rng.choices(lines, k=rng.randint(5, 40))
        )
        docs.append(doc)
        total += len(doc) + len(EOT)
    return docs


def hf_gpt2(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]]) -> Any:
    """Hugging Face ``tokenizers``' GPT-2 from the same ranks: BPE over GPT-2's byte alphabet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    to_str = ref.token_to_string
    model = models.BPE(vocab={to_str(t): i for i, t in vocab.items()},
                       merges=[(to_str(a), to_str(b)) for a, b in merges])
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


# ----------------------------------------------------------------------------- encode

ENCODERS = ["tiktoken", "reference", "solutions", "hf tokenizers"]


@pytest.mark.parametrize("who", ENCODERS)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_encode_tiny_shakespeare(
    benchmark: Any, who: str, warm: bool, shakespeare: str,
    gpt2_ranks: tuple[dict[int, bytes], list[tuple[bytes, bytes]]],
) -> None:
    vocab, merges = gpt2_ranks
    if who == "tiktoken":
        ranks = {token: i for i, token in vocab.items()}

        def make() -> Any:
            enc = tiktoken.Encoding(name="gpt2-offline", pat_str=ref.GPT2_SPLIT_PATTERN,
                                    mergeable_ranks=ranks, special_tokens={EOT: 50256})
            return enc.encode_ordinary
    elif who == "hf tokenizers":

        def make() -> Any:
            tok = hf_gpt2(vocab, merges)
            return lambda text: tok.encode(text).ids
    else:
        impl = ref if who == "reference" else sol

        def make() -> Any:
            return impl.Tokenizer(vocab, merges, [EOT]).encode

    expected = make()(shakespeare)
    assert len(expected) == 338_025
    warmed = make()
    warmed(shakespeare)

    def setup() -> tuple[tuple[Any], dict[str, Any]]:
        return (warmed if warm else make(),), {}

    benchmark.group = f"bpe encode tiny shakespeare, {'warm' if warm else 'cold'}, 1 thread"
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["peer"] = who == "tiktoken"
    benchmark.extra_info["device"] = device_name("cpu")
    ids = benchmark.pedantic(lambda encode: encode(shakespeare), setup=setup,
                             rounds=3 if who == "solutions" else 7, iterations=1)
    assert ids == expected
    megabytes = len(shakespeare.encode()) / 1e6
    benchmark.extra_info["MB_per_s"] = round(megabytes / benchmark.stats.stats.median, 3)


# ----------------------------------------------------------------------------- training

TRAINERS = ["hf tokenizers", "reference 1 process", "reference 2 processes"]


@pytest.fixture(scope="module")
def train_docs(shakespeare: str) -> list[str]:
    return generated_documents(shakespeare, TRAIN_MB * 1_000_000)


@pytest.mark.parametrize("who", TRAINERS)
def test_train_10k_vocab(benchmark: Any, who: str, train_docs: list[str]) -> None:
    corpus = EOT.join(train_docs)
    n_bytes = sum(len(d.encode()) for d in train_docs)
    benchmark.group = f"bpe train to {VOCAB_SIZE} tokens on {n_bytes / 1e6:.1f} MB"
    if who == "hf tokenizers":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        def train() -> Any:
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            trainer = trainers.BpeTrainer(
                vocab_size=VOCAB_SIZE, special_tokens=[EOT], show_progress=False,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            )
            tok.train_from_iterator(train_docs, trainer)  # documents: no special token inside
            return tok

        tok = benchmark.pedantic(train, rounds=2, iterations=1)
        n_tokens = sum(len(e.ids) for e in tok.encode_batch(train_docs))
        size = tok.get_vocab_size()
    else:
        processes = 1 if who.endswith("1 process") else 2

        def train() -> Any:
            return ref.train_bpe(corpus, VOCAB_SIZE, [EOT], processes=processes, progress=False)

        vocab, merges = benchmark.pedantic(train, rounds=2, iterations=1)
        tok = ref.Tokenizer(vocab, merges, [EOT])
        n_tokens = sum(len(tok.encode_ordinary(d)) for d in train_docs)
        size = len(vocab)
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["peer"] = who == "hf tokenizers"
    benchmark.extra_info["device"] = device_name("cpu")
    benchmark.extra_info["vocab_size"] = size
    benchmark.extra_info["bytes_per_token"] = round(n_bytes / n_tokens, 5)


# ----------------------------------------------------------------------------- peak memory

_MEASURE = textwrap.dedent("""
    import json, resource, sys, time
    from reference.bpe import train_bpe_from_file
    t = time.perf_counter()
    vocab, merges = train_bpe_from_file(sys.argv[1], 10_000, ["<|endoftext|>"], processes=2,
                                        progress=False)
    seconds = time.perf_counter() - t
    # VmHWM: this process's peak RSS since exec (ru_maxrss would include the parent's at exec)
    status = open("/proc/self/status").read()
    own = int(status.split("VmHWM:")[1].split()[0]) / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "main_mb": own, "worker_mb": children,
                      "merges": len(merges)}))
""")


def test_train_peak_memory_on_a_large_file(
    benchmark: Any, shakespeare: str, tmp_path: Path
) -> None:
    path = tmp_path / "corpus.txt"
    with path.open("w", encoding="utf-8") as f:
        rng_docs = generated_documents(shakespeare, 10_000_000, seed=1)
        written = 0
        seed = 1
        while written < BIG_MB * 1_000_000:
            for doc in rng_docs:
                f.write(doc)
                f.write(EOT)
                written += len(doc) + len(EOT)
            seed += 1
            rng_docs = generated_documents(shakespeare, 10_000_000, seed=seed)
    result: dict[str, Any] = {}
    benchmark.group = f"bpe train peak memory, {written / 1e6:.0f} MB file, 2 processes"

    def run() -> None:
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], cwd=ROOT,
                              capture_output=True, text=True, check=True, timeout=3600)
        import json

        result.update(json.loads(proc.stdout.splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["impl"] = "reference"
    benchmark.extra_info["peer"] = True
    benchmark.extra_info["device"] = device_name("cpu")
    benchmark.extra_info["peak_rss_MB"] = result["main_mb"]
    benchmark.extra_info["worker_peak_rss_MB"] = result["worker_mb"]
    assert result["merges"] == VOCAB_SIZE - 257
