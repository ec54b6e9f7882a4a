"""The server under 16 clients: HTTP + SSE with continuous batching vs one request at a time, and
vs the raw engine on the same requests.

A GPT-2 small shape (124M parameters, random weights, float32, a 50,257-character tokenizer so
one token is one character), written to a tmp dir and served by ``create_app`` on a real
uvicorn on 127.0.0.1 (a thread of this process; the clients are ``httpx.AsyncClient`` streams on
the main thread's loop, so both share the GIL, as a sidecar client would not). 16 requests of
32-token prompts and 32 new tokens each (temperature 1, top-k 50, a seed each) to
``/v1/completions`` with ``stream: true``:

* group *batching* (goal: 16 concurrent >= 4x the tokens/s of one at a time, i.e. the summary's
  ratio <= 0.25x the peer's time): ``http+sse 16 concurrent`` vs ``http+sse one at a time``
  (the peer: each request waits for the previous one's ``[DONE]``);
* group *overhead* (goal: HTTP + SSE <= 10% over the engine, ratio <= 1.10x):
  ``http+sse 16 concurrent`` vs ``engine`` (the peer: the same 16 requests submitted to
  :class:`reference.batching.Engine` directly and read with ``async for``).

Figures (``extra_info``): ``tokens_per_s``, time to first token (``ttft``, from the start of the
round: it includes the wait behind the others) and inter-token latency (``itl``), p50 and p99
in milliseconds, and the machine's 1-minute load average (shared 2-core machines).

    pytest benchmarks/test_server_bench.py

The CUDA twin serves the model on a GPU and skips without one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from benchmarks.conftest import device_name
from reference.batching import Engine, Request
from reference.checkpoint import save_checkpoint
from reference.inference import load
from reference.model import GPT, GPTConfig
from reference.server.app import create_app
from reference.server.background import serve_in_thread
from reference.server.settings import ServerSettings
from reference.tokenizers import META_NAME, CharTokenizer

CONFIG = GPTConfig()  # GPT-2 small: 124M parameters
N_REQUESTS, PROMPT, NEW = 16, 32, 32
CHARS = "".join(chr(0x100 + i) for i in range(CONFIG.vocab_size))  # below the surrogates
Timeline = tuple[float, list[list[float]]]  # (the round's start, each token's arrival)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("server-bench") / "gpt2-random"
    torch.manual_seed(0)
    save_checkpoint(GPT(CONFIG).eval(), directory)
    (directory / META_NAME).write_text(json.dumps({"tokenizer": CharTokenizer(CHARS).to_dict()}))
    return directory


def prompts() -> list[str]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG.vocab_size, (N_REQUESTS, PROMPT), generator=g).tolist()
    return ["".join(CHARS[i] for i in row) for row in ids]


@contextmanager
def serving(run: Path, device: str) -> Iterator[tuple[str, Engine]]:
    settings = ServerSettings(model=str(run), device=device, allow_anonymous=True,
                              max_batch=N_REQUESTS, max_waiting=N_REQUESTS,
                              requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield url, app.state.served.engine


async def one_request(client: httpx.AsyncClient, i: int, prompt: str) -> list[float]:
    """Stream request ``i``; the arrival time of each token's chunk."""
    times: list[float] = []
    ask = {"prompt": prompt, "max_tokens": NEW, "temperature": 1.0, "top_k": 50, "seed": i,
           "stream": True}
    async with client.stream("POST", "/v1/completions", json=ask) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                text = json.loads(line[6:])["choices"][0]["text"]
                times += [time.perf_counter()] * len(text)  # one character per token
    return times


def over_http(url: str, concurrent: bool) -> Callable[[], Timeline]:
    async def run() -> Timeline:
        limits = httpx.Limits(max_connections=N_REQUESTS)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            t0 = time.perf_counter()
            if concurrent:
                times = await asyncio.gather(*(one_request(client, i, p)
                                               for i, p in enumerate(prompts())))
                return t0, list(times)
            return t0, [await one_request(client, i, p) for i, p in enumerate(prompts())]

    return lambda: asyncio.run(run())


def through_the_engine(run: Path, device: str) -> tuple[Engine, Callable[[], Timeline]]:
    loaded = load(run, device=device)
    engine = Engine(loaded.model, max_batch=N_REQUESTS, max_waiting=N_REQUESTS).start()
    requests = [Request(tuple(loaded.tokenizer.encode(p)), NEW, 1.0, 50, None, None, i)
                for i, p in enumerate(prompts())]

    async def go() -> Timeline:
        async def consume(request: Request) -> list[float]:
            return [time.perf_counter() async for _ in engine.submit(request)]

        t0 = time.perf_counter()
        return t0, list(await asyncio.gather(*(consume(r) for r in requests)))

    return engine, lambda: asyncio.run(go())


def report(benchmark: Any, timeline: Timeline) -> None:
    t0, times = timeline
    assert [len(t) for t in times] == [NEW] * N_REQUESTS, "a request lost or gained tokens"
    ttft = np.array([t[0] - t0 for t in times]) * 1e3
    itl = np.concatenate([np.diff(t) for t in times]) * 1e3
    benchmark.extra_info.update({
        "tokens_per_s": N_REQUESTS * NEW / benchmark.stats.stats.median,
        "best_s": benchmark.stats.stats.min,  # the least disturbed round, on a shared machine
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "itl_p50_ms": float(np.percentile(itl, 50)),
        "itl_p99_ms": float(np.percentile(itl, 99)),
        "load_avg_1m": os.getloadavg()[0],
    })  # fmt: skip


def run_case(benchmark: Any, run: Path, device: torch.device, group: str, who: str,
             rounds: int) -> None:
    benchmark.group = (f"server {group} {device.type} 124M float32: {N_REQUESTS} clients x "
                       f"({PROMPT} prompt + {NEW} new)")
    benchmark.extra_info.update({"impl": who, "device": device_name(device)})
    if who in ("engine", "http+sse one at a time"):
        benchmark.extra_info["peer"] = True
    if who == "engine":
        engine, go = through_the_engine(run, device.type)
        with engine:
            go()  # warm-up
            timeline = benchmark.pedantic(go, rounds=rounds, iterations=1)
    else:
        with serving(run, device.type) as (url, _):
            go = over_http(url, concurrent=who == "http+sse 16 concurrent")
            if who == "http+sse 16 concurrent":
                go()  # warm-up (the one at a time case is long enough to need none)
            timeline = benchmark.pedantic(go, rounds=rounds, iterations=1)
    report(benchmark, timeline)


CASES = [("batching", "http+sse 16 concurrent"), ("batching", "http+sse one at a time"),
         ("overhead", "http+sse 16 concurrent"), ("overhead", "engine")]


@pytest.mark.parametrize(("group", "who"), CASES)
def test_server_cpu(benchmark: Any, run_dir: Path, group: str, who: str) -> None:
    run_case(benchmark, run_dir, torch.device("cpu"), group, who,
             rounds=1 if who == "http+sse one at a time" else 3)


@pytest.mark.parametrize(("group", "who"), CASES)
def test_server_cuda(benchmark: Any, cuda: torch.device, run_dir: Path, group: str,
                     who: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    run_case(benchmark, run_dir, cuda, group, who, rounds=5)
