"""Continuous batching: 16 concurrent requests through the engine vs the same requests one by one.

A GPT-2 small shape (124M parameters, random weights, float32), 16 requests of 32-token prompts
and 32 new tokens each (temperature 1, top-k 50, a seed each), all submitted at once:

* ``engine``: :class:`reference.batching.Engine` with ``max_batch=16``, read by 16 ``async for``
  consumers on one asyncio loop (how the server will drive it);
* ``one by one`` (the peer): the library's cached generation, :func:`reference.generate.stream`,
  one request after the other, batch 1.

Figures (``extra_info``): ``tokens_per_s`` (all requests' tokens / median wall time), and from
the last round, time to first token (``ttft``, from the submission of all 16, so it includes the
wait behind the others) and inter-token latency (``itl``), p50 and p99 in milliseconds. The
machine's load average is recorded beside them: this runs on shared 2-core machines. Goal:
the engine at >= 4x the peer's throughput (the summary's ratio <= 0.25x the peer's time).

    pytest benchmarks/test_batching_bench.py

The CUDA twin runs the same on a GPU and skips without one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.conftest import device_name
from reference.batching import Engine, Request
from reference.generate import stream
from reference.model import GPT, GPTConfig

CONFIG = GPTConfig()  # GPT-2 small: 124M parameters
N_REQUESTS, PROMPT, NEW = 16, 32, 32

Timeline = tuple[float, list[list[float]]]  # (when all were submitted, each token's arrival)


def make_requests() -> list[Request]:
    g = torch.Generator().manual_seed(0)
    return [Request(tuple(torch.randint(0, CONFIG.vocab_size, (PROMPT,), generator=g).tolist()),
                    NEW, temperature=1.0, top_k=50, seed=i) for i in range(N_REQUESTS)]


def through_the_engine(engine: Engine, requests: list[Request]) -> Callable[[], Timeline]:
    async def run() -> Timeline:
        async def consume(request: Request) -> list[float]:
            return [time.perf_counter() async for _ in engine.submit(request)]

        t0 = time.perf_counter()
        return t0, list(await asyncio.gather(*(consume(r) for r in requests)))

    return lambda: asyncio.run(run())


def one_by_one(model: GPT, requests: list[Request]) -> Callable[[], Timeline]:
    device = model.transformer.wpe.weight.device

    def run() -> Timeline:
        t0, timeline = time.perf_counter(), []
        for r in requests:
            idx = torch.tensor([r.prompt], device=device)
            steps = stream(model, idx, r.max_new_tokens, temperature=r.temperature,
                           top_k=r.top_k, seed=r.seed)
            times = []
            for step in steps:
                step.tolist()  # the token on the host, where a client waits for it
                times.append(time.perf_counter())
            timeline.append(times)
        return t0, timeline

    return run


def report(benchmark: Any, timeline: Timeline) -> None:
    t0, times = timeline
    assert [len(t) for t in times] == [NEW] * N_REQUESTS, "a request ended early"
    ttft = np.array([t[0] - t0 for t in times]) * 1e3
    itl = np.concatenate([np.diff(t) for t in times]) * 1e3
    benchmark.extra_info.update({
        "tokens_per_s": N_REQUESTS * NEW / benchmark.stats.stats.median,
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "itl_p50_ms": float(np.percentile(itl, 50)),
        "itl_p99_ms": float(np.percentile(itl, 99)),
    })  # fmt: skip


def label(benchmark: Any, device: torch.device, who: str) -> None:
    benchmark.group = (f"continuous batching {device.type} 124M float32: {N_REQUESTS} requests "
                       f"x ({PROMPT} prompt + {NEW} new)")
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    benchmark.extra_info["load_avg_1m"] = os.getloadavg()[0]
    if who == "one by one":
        benchmark.extra_info["peer"] = True


def run_case(benchmark: Any, device: torch.device, who: str, rounds: int) -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG).to(device).eval()
    requests = make_requests()
    label(benchmark, device, who)
    if who == "one by one":
        timeline = benchmark.pedantic(one_by_one(model, requests), rounds=rounds, iterations=1,
                                      warmup_rounds=0)
    else:
        with Engine(model, max_batch=N_REQUESTS, max_waiting=N_REQUESTS) as engine:
            run = through_the_engine(engine, requests)
            run()  # warm-up: the engine's cache and the kernels
            timeline = benchmark.pedantic(run, rounds=rounds, iterations=1)
    report(benchmark, timeline)


@pytest.mark.parametrize("who", ["engine", "one by one"])
def test_continuous_batching_cpu(benchmark: Any, who: str) -> None:
    run_case(benchmark, torch.device("cpu"), who, rounds=3 if who == "engine" else 2)


@pytest.mark.parametrize("who", ["engine", "one by one"])
def test_continuous_batching_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    run_case(benchmark, cuda, who, rounds=5)
