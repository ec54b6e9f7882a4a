"""Mixture-of-experts layer, forward + backward: reference vs solutions vs Hugging Face's
``MixtralSparseMoeBlock`` (the peer), the same weights.

(The parameter is ``who``, not ``impl``: the root conftest parametrizes any ``impl`` argument.)

Mixtral's routing (8 experts, top-2) at a small width: C=256, hidden=512, B=8, T=128 (1,024
tokens, 2,048 expert slots) on the CPU; C=1024, hidden=2048, B=8, T=512 in bfloat16 on CUDA.
All three loop over the experts. The reference sorts the (token, choice) slots by expert once,
gathers all of them in one ``index_select`` and adds them back in one ``index_add_`` (one host
sync); the solution and HF find each expert's tokens with ``torch.where`` (a sync per expert)
and gather and scatter per expert. In torch's profiler on 2 CPU cores, HF's backward spends
about a third of its time in those per-expert scatters (``scatter_add_``).

    pytest benchmarks/test_moe_bench.py --benchmark-min-rounds=3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

import reference.moe
import solutions.moe
from benchmarks.conftest import device_name

N_EXPERTS, TOP_K, B = 8, 2, 8
WHO = ["reference", "solutions", "hf mixtral"]


def _layers(n_embd: int, hidden: int) -> dict[str, nn.Module]:
    config = MixtralConfig(hidden_size=n_embd, intermediate_size=hidden,
                           num_local_experts=N_EXPERTS, num_experts_per_tok=TOP_K)
    torch.manual_seed(0)
    hf = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, p.size(-1) ** -0.5)
    layers: dict[str, nn.Module] = {"hf mixtral": hf}
    for name, cls in [("reference", reference.moe.MoE), ("solutions", solutions.moe.MoE)]:
        layer = cls(n_embd, hidden, N_EXPERTS, TOP_K)
        with torch.no_grad():
            layer.gate.weight.copy_(hf.gate.weight)
            for e, expert in enumerate(layer.experts):
                gate, up = hf.experts.gate_up_proj[e].chunk(2, dim=0)
                expert.gate_proj.weight.copy_(gate)
                expert.up_proj.weight.copy_(up)
                expert.down_proj.weight.copy_(hf.experts.down_proj[e])
        layers[name] = layer
    return layers


def _step(layer: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        out = layer(x)
        y = out[0] if isinstance(out, tuple) else out
        y.square().mean().backward()
        layer.zero_grad(set_to_none=True)
        return y

    return run


def _record(benchmark: Any, group: str, who: str, device: torch.device, tokens: int) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    benchmark.extra_info["tokens"] = tokens
    if who == "hf mixtral":
        benchmark.extra_info["peer"] = True


@pytest.mark.parametrize("who", WHO)
def test_moe_forward_backward_cpu(benchmark: Any, who: str) -> None:
    n_embd, hidden, t = 256, 512, 128
    layer = _layers(n_embd, hidden)[who]
    x = torch.randn(B, t, n_embd, generator=torch.Generator().manual_seed(1))
    _record(benchmark, f"moe fwd+bwd cpu float32 C={n_embd} E={N_EXPERTS} k={TOP_K}", who,
            torch.device("cpu"), B * t)
    y = benchmark(_step(layer, x))
    benchmark.extra_info["tokens_per_s"] = B * t / benchmark.stats.stats.median
    assert y.shape == x.shape


@pytest.mark.parametrize("who", WHO)
def test_moe_forward_backward_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    n_embd, hidden, t = 1024, 2048, 512
    layer = _layers(n_embd, hidden)[who].to(cuda, torch.bfloat16)
    x = torch.randn(B, t, n_embd, device=cuda, dtype=torch.bfloat16)
    _record(benchmark, f"moe fwd+bwd cuda bf16 C={n_embd} E={N_EXPERTS} k={TOP_K}", who, cuda,
            B * t)
    step = _step(layer, x)

    def run() -> torch.Tensor:
        y = step()
        torch.cuda.synchronize()  # time the kernels, not their launch
        return y

    run()  # warm-up: kernel selection, allocator
    y = benchmark(run)
    benchmark.extra_info["tokens_per_s"] = B * t / benchmark.stats.stats.median
    assert y.shape == x.shape
