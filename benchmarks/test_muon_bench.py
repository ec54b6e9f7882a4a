"""One Muon step over a small model's block matrices: torch.optim.Muon (the peer, bfloat16
Newton–Schulz) vs the library's float32 Newton–Schulz (``reference.muon.MuonInDtype``, what
``make_muon_optimizer`` uses off CUDA) vs the course's ``muon_step`` (bfloat16, one tensor at a
time).

The matrices are those of 4 Llama blocks of width 128 (q, o: 128 x 128; k, v: 64 x 128; gate,
up: 384 x 128; down: 128 x 384), the study's model. On CPUs without bfloat16 matrix units
the float32 iteration is the faster one.

    pytest benchmarks/test_muon_bench.py --benchmark-min-rounds=3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import solutions.muon
from benchmarks.conftest import device_name
from reference.muon import MuonInDtype

SHAPES = [(128, 128), (64, 128), (64, 128), (128, 128), (384, 128), (384, 128), (128, 384)] * 4
WHO = ["torch.optim.Muon", "reference float32 NS", "solutions muon_step"]


def _params(device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = []
    for shape in SHAPES:
        p = torch.randn(shape, generator=g).to(device).requires_grad_(True)
        p.grad = torch.randn(shape, generator=g).to(device)
        params.append(p)
    return params


def _stepper(who: str, params: list[torch.Tensor]) -> Callable[[], object]:
    kwargs: dict[str, Any] = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95}
    if who == "torch.optim.Muon":
        opt = torch.optim.Muon(params, **kwargs)
        return lambda: opt.step()  # type: ignore[no-untyped-call]
    if who == "reference float32 NS":
        ours = MuonInDtype(params, ns_dtype=torch.float32, **kwargs)
        return lambda: ours.step()
    buffers = [torch.zeros_like(p) for p in params]

    def course() -> None:
        with torch.no_grad():
            for p, buf in zip(params, buffers, strict=True):
                assert p.grad is not None
                solutions.muon.muon_step(p, p.grad, buf, **kwargs)

    return course


def _record(benchmark: Any, group: str, who: str, device: torch.device) -> None:
    benchmark.group = group
    benchmark.extra_info.update({"impl": who, "device": device_name(device),
                                 "matrices": len(SHAPES)})
    if who == "torch.optim.Muon":
        benchmark.extra_info["peer"] = True


@pytest.mark.parametrize("who", WHO)
def test_muon_step_cpu(benchmark: Any, who: str) -> None:
    device = torch.device("cpu")
    step = _stepper(who, _params(device))
    _record(benchmark, "muon step cpu, 4 blocks of width 128", who, device)
    step()  # warm-up
    benchmark(step)


@pytest.mark.parametrize("who", WHO)
def test_muon_step_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    step = _stepper(who, _params(cuda))
    _record(benchmark, "muon step cuda, 4 blocks of width 128", who, cuda)

    def run() -> None:
        step()
        torch.cuda.synchronize()  # time the kernels, not their launch

    run()
    benchmark(run)
