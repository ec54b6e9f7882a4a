"""Decoding with the KV cache vs without vs Hugging Face ``generate`` (with its own cache).

GPT-2 small's shape (124M parameters, random weights), batch 1, greedy, 64 new tokens after a
32-token prompt, float32, the same weights in both models. Each figure is tokens/s of the whole
call (prefill included). A decode step reads every weight once, so its speed is bound by memory:
``ceiling_tokens_per_s`` is this machine's read bandwidth (a 1 GiB tensor summed, measured in
the same run) over the bytes of float32 weights, and ``of_ceiling`` the fraction reached.

The CUDA case (the static cache under ``torch.compile(mode="reduce-overhead")``, CUDA graphs)
skips without a GPU; its CPU twin is the first case.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import pytest
import torch

from benchmarks.conftest import device_name
from reference.generate import generate
from reference.hf import config_to_hf, to_hf_state_dict
from reference.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

PROMPT, NEW = 32, 64


@cache
def models(device: str) -> tuple[GPT, Any]:
    torch.manual_seed(0)
    ours = GPT(GPTConfig()).eval()
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**config_to_hf(ours.config), attn_implementation="sdpa")).eval()
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    return ours.to(device), hf.to(device)


@cache
def read_bandwidth() -> float:
    """Bytes per second this machine reads from memory (a 1 GiB float32 tensor, summed)."""
    big = torch.ones(256 * 2**20)
    big.sum()
    best = min(_timed(big.sum) for _ in range(3))
    return big.numel() * 4 / best


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _label(benchmark: Any, group: str, who: str, device: torch.device) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    if who == "hf transformers generate":
        benchmark.extra_info["peer"] = True


@pytest.mark.parametrize("who", ["reference, kv cache", "reference, no cache",
                                 "hf transformers generate"])
def test_decode_batch1_cpu(benchmark: Any, who: str) -> None:
    ours, hf = models("cpu")
    prompt = torch.randint(0, ours.config.vocab_size, (1, PROMPT),
                           generator=torch.Generator().manual_seed(1))
    if who == "hf transformers generate":
        def run() -> torch.Tensor:
            out: torch.Tensor = hf.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW,
                                            do_sample=False, pad_token_id=0,
                                            attention_mask=torch.ones_like(prompt))
            return out
    else:
        use_cache = who == "reference, kv cache"

        def run() -> torch.Tensor:
            return generate(ours, prompt, NEW, temperature=0.0, use_cache=use_cache)
    _label(benchmark, f"decode cpu float32 124M batch 1, {NEW} new after {PROMPT}", who,
           torch.device("cpu"))
    with torch.no_grad():
        out = benchmark.pedantic(run, rounds=2 if "no cache" in who else 3, iterations=1,
                                 warmup_rounds=1)
    rate = NEW / benchmark.stats.stats.median
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    ceiling = read_bandwidth() / weight_bytes
    benchmark.extra_info.update({"tokens_per_s": rate, "ceiling_tokens_per_s": ceiling,
                                 "of_ceiling": rate / ceiling,
                                 "read_GB_per_s": read_bandwidth() / 1e9})
    assert out.shape[1] == PROMPT + NEW


@pytest.mark.parametrize("who", ["reference, kv cache, compiled", "hf transformers generate"])
def test_decode_batch1_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    ours, hf = models("cuda")
    ours, hf = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
    prompt = torch.randint(0, ours.config.vocab_size, (1, PROMPT), device=cuda,
                           generator=torch.Generator(device=cuda).manual_seed(1))
    if who.startswith("hf"):
        def run() -> torch.Tensor:
            out: torch.Tensor = hf.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW,
                                            do_sample=False, pad_token_id=0,
                                            attention_mask=torch.ones_like(prompt))
            torch.cuda.synchronize()
            return out
    else:
        compiled: Any = torch.compile(ours, mode="reduce-overhead")

        def run() -> torch.Tensor:
            out = generate(compiled, prompt, NEW, temperature=0.0)
            torch.cuda.synchronize()
            return out
        for _ in range(2):
            run()  # compile and capture the graphs outside the timing
    _label(benchmark, f"decode cuda bf16 124M batch 1, {NEW} new after {PROMPT}", who, cuda)
    with torch.no_grad():
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = NEW / benchmark.stats.stats.median
