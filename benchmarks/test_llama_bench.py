"""The Llama-style model vs Hugging Face's ``LlamaForCausalLM`` (the peer), same config and weights.

* Training step: forward + cross-entropy + backward on a (B, T) batch, float32 on the CPU (HF
  with ``attn_implementation="sdpa"``, its fastest built-in path); ``tokens_per_s`` = B·T /
  median step time. Goal (issue 16): at least HF's speed.
* Decode: batch 1, greedy, 64 new tokens after a 32-token prompt, with our KV cache
  (``reference.generate.generate``, grouped-query heads cached) vs HF ``generate`` with its
  own cache; ``tokens_per_s`` of the whole call, prefill included.

The CUDA twins (bf16 autocast training, bf16 decode) skip without a GPU. (The parameter is
``who``, not ``impl``: the root conftest parametrizes any ``impl`` argument.)

    pytest benchmarks/test_llama_bench.py --benchmark-min-rounds=5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import device_name
from reference.generate import generate
from reference.llama import Llama, LlamaConfig

transformers = pytest.importorskip("transformers")

TRAIN_CONFIG = LlamaConfig(block_size=128, vocab_size=8192, n_layer=4, n_head=8, n_kv_head=4,
                           n_embd=256)
TRAIN_BATCH = 8
DECODE_CONFIG = LlamaConfig(block_size=1024, vocab_size=32000, n_layer=12, n_head=12,
                            n_kv_head=4, n_embd=768)  # about GPT-2 small's size, GQA 3:1
PROMPT, NEW = 32, 64
HF = "hf transformers"


def models(config: LlamaConfig, device: torch.device) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = Llama(config)
    hf = ours.to_hf()  # type: ignore[operator]
    return {"reference": ours.to(device), HF: hf.to(device)}


def label(benchmark: Any, group: str, who: str, device: torch.device) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    if who.startswith(HF):
        benchmark.extra_info["peer"] = True


def training_step(who: str, model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor,
                  autocast: bool) -> Callable[[], torch.Tensor]:
    """forward + loss + backward; the loss is computed the same way for both."""
    forward = (lambda: model(idx)[0]) if who == "reference" else (lambda: model(idx).logits)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward()
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
        loss.backward()
        return loss.detach()

    return step


def _train(benchmark: Any, who: str, device: torch.device, autocast: bool, rounds: int) -> None:
    cfg, B = TRAIN_CONFIG, TRAIN_BATCH
    model = models(cfg, device)[who].train()
    g = torch.Generator(device=device).manual_seed(0)
    idx, targets = (torch.randint(0, cfg.vocab_size, (B, cfg.block_size), generator=g,
                                  device=device) for _ in "it")
    step = training_step(who, model, idx, targets, autocast)

    def run() -> torch.Tensor:
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    precision = "bf16 autocast" if autocast else "float32"
    label(benchmark, f"llama train step {device.type} {precision} L{cfg.n_layer} C{cfg.n_embd} "
          f"kv{cfg.n_kv_head}/{cfg.n_head} B{B} T{cfg.block_size}", who, device)
    loss = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = B * cfg.block_size / benchmark.stats.stats.median
    assert torch.isfinite(loss)


@pytest.mark.parametrize("who", ["reference", HF])
def test_training_step_cpu(benchmark: Any, who: str) -> None:
    _train(benchmark, who, torch.device("cpu"), autocast=False, rounds=5)


@pytest.mark.parametrize("who", ["reference", HF])
def test_training_step_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    _train(benchmark, who, cuda, autocast=True, rounds=10)


def _decode(benchmark: Any, who: str, device: torch.device, dtype: torch.dtype) -> None:
    model = models(DECODE_CONFIG, device)[who].to(dtype).eval()
    prompt = torch.randint(0, DECODE_CONFIG.vocab_size, (1, PROMPT), device=device,
                           generator=torch.Generator(device=device).manual_seed(1))

    def run() -> torch.Tensor:
        if who == HF:
            out: torch.Tensor = model.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW,
                                               do_sample=False, pad_token_id=0,
                                               attention_mask=torch.ones_like(prompt))
        else:
            out = generate(model, prompt, NEW, temperature=0.0)  # type: ignore[arg-type]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    label(benchmark, f"llama decode {device.type} {dtype} {DECODE_CONFIG.n_layer}L"
          f"x{DECODE_CONFIG.n_embd} kv{DECODE_CONFIG.n_kv_head}/{DECODE_CONFIG.n_head} batch 1, "
          f"{NEW} new after {PROMPT}", f"{HF} generate" if who == HF else "reference, kv cache",
          device)
    with torch.no_grad():
        out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = NEW / benchmark.stats.stats.median
    assert out.shape[1] == PROMPT + NEW


@pytest.mark.parametrize("who", ["reference", HF])
def test_decode_batch1_cpu(benchmark: Any, who: str) -> None:
    _decode(benchmark, who, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("who", ["reference", HF])
def test_decode_batch1_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    _decode(benchmark, who, cuda, torch.bfloat16)
