"""Causal scaled dot-product attention: reference vs solutions vs torch's SDPA (the peer).

(The parameter is ``who``, not ``impl``: the root conftest parametrizes any ``impl`` argument.)

Shapes are a GPT-2-small head layout (B=8, nh=8, hs=64) at a few sequence lengths. The solution
materializes the (T, T) weights; the reference dispatches to torch's fused kernel, so it should
track the peer, and the gap to the solution grows with T.

    pytest benchmarks/test_attention_bench.py --benchmark-min-rounds=3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import reference.attention
import solutions.attention
from benchmarks.conftest import device_name

B, N_HEAD, HEAD_SIZE = 8, 8, 64

Sdpa = Callable[..., torch.Tensor]
IMPLS: dict[str, Sdpa] = {
    "reference": reference.attention.scaled_dot_product_attention,
    "solutions": solutions.attention.scaled_dot_product_attention,
    "torch sdpa": lambda q, k, v, is_causal: F.scaled_dot_product_attention(
        q, k, v, is_causal=is_causal
    ),
}


def _qkv(t: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    return [torch.randn(B, N_HEAD, t, HEAD_SIZE, generator=g, device=device, dtype=dtype)
            for _ in range(3)]


def _record(benchmark: Any, group: str, impl: str, device: torch.device, t: int) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["device"] = device_name(device)
    # Causal attention FLOPs: two (T, T, hs) matmuls, half of them masked: 2 * 2 * B*nh*T²*hs / 2.
    benchmark.extra_info["gflop"] = 2 * B * N_HEAD * t * t * HEAD_SIZE / 1e9
    if impl == "torch sdpa":
        benchmark.extra_info["peer"] = True


@pytest.mark.parametrize("who", list(IMPLS))
@pytest.mark.parametrize("t", [64, 256, 1024])
def test_causal_sdpa_cpu(benchmark: Any, who: str, t: int) -> None:
    device = torch.device("cpu")
    q, k, v = _qkv(t, device, torch.float32)
    _record(benchmark, f"attention cpu float32 T={t}", who, device, t)
    fn = IMPLS[who]
    with torch.inference_mode():
        out = benchmark(fn, q, k, v, is_causal=True)
    assert out.shape == q.shape


@pytest.mark.parametrize("who", list(IMPLS))
@pytest.mark.parametrize("t", [256, 1024, 4096])
def test_causal_sdpa_cuda(benchmark: Any, cuda: torch.device, who: str, t: int) -> None:
    q, k, v = _qkv(t, cuda, torch.bfloat16)
    _record(benchmark, f"attention cuda bf16 T={t}", who, cuda, t)
    fn = IMPLS[who]

    def run() -> torch.Tensor:
        out = fn(q, k, v, is_causal=True)
        torch.cuda.synchronize()  # time the kernels, not their launch
        return out

    with torch.inference_mode():
        run()  # warm-up: kernel selection, allocator
        out = benchmark(run)
    assert out.shape == q.shape
