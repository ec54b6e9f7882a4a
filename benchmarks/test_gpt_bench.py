"""Training-step throughput of the reference GPT vs Hugging Face's GPT2LMHeadModel (the peer).

One step is forward + cross-entropy + backward on a (B, T) batch, with the same config and the
same weights for both (Hugging Face with ``attn_implementation="sdpa"``, its fastest built-in
path, so both use torch's fused attention). Figures: ``tokens_per_s`` = B·T / median step time;
on CUDA also ``mfu``, model FLOPs utilisation, as nanoGPT's ``estimate_mfu``::

    flops per token = 6·N + 12·n_layer·n_head·head_size·T     (N: parameters, tied head once)
    mfu = flops per token · tokens_per_s / peak bf16 FLOP/s of the card (dense, no sparsity)

The peak comes from ``benchmarks.gates.PEAK_BF16_FLOPS`` by device name, or
``$LLMFS_PEAK_FLOPS``; MFU is left out for an unknown card. (The parameter is ``who``, not
``impl``: the root conftest parametrizes any ``impl`` argument.)

    pytest benchmarks/test_gpt_bench.py --benchmark-min-rounds=5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import device_name
from benchmarks.gates import PEAK_BF16_FLOPS, flops_per_token, lookup
from reference.hf import config_to_hf, to_hf_state_dict
from reference.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

CPU_CONFIG = GPTConfig(block_size=128, vocab_size=8192, n_layer=4, n_head=8, n_embd=256)
CPU_BATCH = 8
CUDA_CONFIG = GPTConfig()  # GPT-2 small, 124M, T = 1024
CUDA_BATCH = 8

Step = Callable[[], torch.Tensor]


def models(config: GPTConfig, device: torch.device) -> dict[str, torch.nn.Module]:
    """The reference model and a Hugging Face model holding the very same weights."""
    torch.manual_seed(0)
    ours = GPT(config)
    hf_config = transformers.GPT2Config(**config_to_hf(config), attn_implementation="sdpa")
    hf = transformers.GPT2LMHeadModel(hf_config)
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    return {"reference": ours.to(device).train(), "hf transformers": hf.to(device).train()}


def training_step(who: str, model: torch.nn.Module, idx: torch.Tensor, targets: torch.Tensor,
                  autocast: bool) -> Step:  # fmt: skip
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


def label(benchmark: Any, group: str, who: str, device: torch.device) -> None:
    """Before the run: the group and who runs it (pytest-benchmark files them at the start)."""
    benchmark.group = group
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    if who == "hf transformers":
        benchmark.extra_info["peer"] = True


def tokens_per_s(benchmark: Any, tokens: int) -> float:
    """After the run: throughput from the median step time."""
    rate: float = tokens / benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s"] = rate
    return rate


@pytest.mark.parametrize("who", ["reference", "hf transformers"])
def test_training_step_cpu(benchmark: Any, who: str) -> None:
    device, cfg, B = torch.device("cpu"), CPU_CONFIG, CPU_BATCH
    model = models(cfg, device)[who]
    g = torch.Generator().manual_seed(0)
    idx, targets = (
        torch.randint(0, cfg.vocab_size, (B, cfg.block_size), generator=g) for _ in "it"
    )
    step = training_step(who, model, idx, targets, autocast=False)
    group = f"gpt train step cpu float32 L{cfg.n_layer} C{cfg.n_embd} B{B} T{cfg.block_size}"
    label(benchmark, group, who, device)
    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    tokens_per_s(benchmark, B * cfg.block_size)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("who", ["reference", "hf transformers"])
def test_training_step_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    cfg, B = CUDA_CONFIG, CUDA_BATCH
    torch.backends.cuda.matmul.allow_tf32 = True
    model = models(cfg, cuda)[who]
    n_params = sum(p.numel() for p in model.parameters())  # tied head once, both models
    compiled: torch.nn.Module = torch.compile(model)  # type: ignore[assignment]
    g = torch.Generator(device=cuda).manual_seed(0)
    idx, targets = (
        torch.randint(0, cfg.vocab_size, (B, cfg.block_size), generator=g, device=cuda)
        for _ in "it"
    )
    step = training_step(who, compiled, idx, targets, autocast=True)

    def synced() -> torch.Tensor:
        loss = step()
        torch.cuda.synchronize()  # time the kernels, not their launch
        return loss

    for _ in range(3):  # compile and autotune outside the timing
        synced()
    label(benchmark, f"gpt train step cuda bf16 compiled 124M B{B} T{cfg.block_size}", who, cuda)
    loss = benchmark.pedantic(synced, rounds=10, iterations=1, warmup_rounds=1)
    rate = tokens_per_s(benchmark, B * cfg.block_size)
    peak = lookup(PEAK_BF16_FLOPS, torch.cuda.get_device_name(cuda), "LLMFS_PEAK_FLOPS")
    if peak is not None:
        benchmark.extra_info["mfu"] = flops_per_token(cfg, n_params, cfg.block_size) * rate / peak
        benchmark.extra_info["mfu_formula"] = "(6N + 12*L*H*hs*T) * tokens_per_s / peak"
        benchmark.extra_info["peak_flops"] = peak
    assert torch.isfinite(loss)
