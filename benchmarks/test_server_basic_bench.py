"""The course's ``/generate`` app: what HTTP, SSE and the worker thread cost over the inference
path alone.

A small GPT (4 layers, 128 channels, block 128, random weights, float32, a character
tokenizer), one request at a time: a 16-character prompt, 64 new tokens, temperature 1, a seed.
The peer is :func:`reference.inference.stream_text` called directly (no app, no thread); the
others send the same request to ``basic_app`` through httpx's ``ASGITransport`` (no socket:
the app's own cost), whole (``json``) or streamed (``sse``), on the reference and on the worked
solutions. Every one draws the same 64 tokens.

``iterate_in_threadpool`` hops to a worker thread for every token: the ratio to the peer is
that hop plus the framing, per request. Figures: ``tokens_per_s`` and the machine's 1-minute
load average (shared 2-core machines).

    pytest benchmarks/test_server_basic_bench.py

The CUDA twin runs the model on a GPU and skips without one.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from benchmarks.conftest import device_name
from reference.inference import Loaded, SampleSettings, stream_text
from reference.model import GPT, GPTConfig
from reference.server import basic_app as reference_app
from reference.tokenizers import CharTokenizer
from solutions.server import basic_app as solutions_app

PROMPT, NEW = "the quick brown ", 64
KEY = "bench-key"
BODY = {"prompt": PROMPT, "max_tokens": NEW, "temperature": 1.0, "seed": 1}
CASES = [("inference path", None), ("reference json", False), ("reference sse", True),
         ("solutions json", False), ("solutions sse", True)]


def make_run(device: torch.device) -> Loaded:
    torch.manual_seed(0)
    tokenizer = CharTokenizer("abcdefghijklmnopqrstuvwxyz .,\n")
    config = GPTConfig(block_size=128, vocab_size=tokenizer.vocab_size, n_layer=4, n_head=4,
                       n_embd=128)
    return Loaded(GPT(config).to(device).eval(), tokenizer, Path("."), SampleSettings(), device)


def raw(run: Loaded) -> str:
    settings = SampleSettings(prompt=PROMPT, max_new_tokens=NEW, temperature=1.0, top_p=None,
                              seed=1)
    return "".join(stream_text(run.model, run.tokenizer, settings))


def over_http(app: Any, stream: bool) -> str:
    async def go() -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            answer = await client.post("/generate", json={**BODY, "stream": stream},
                                       headers={"Authorization": f"Bearer {KEY}"})
            answer.raise_for_status()
            return answer.text

    return asyncio.run(go())


def bench(benchmark: Any, device: torch.device, who: str, stream: bool | None) -> None:
    run = make_run(device)
    benchmark.group = f"basic /generate {device.type} {NEW} tokens"
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    benchmark.extra_info["load_1min"] = os.getloadavg()[0]
    if stream is None:
        benchmark.extra_info["peer"] = True
        result = benchmark.pedantic(raw, args=(run,), rounds=15, warmup_rounds=2)
        assert len(result) == NEW  # a char tokenizer without an end token: one char a token
    else:
        app = (reference_app if who.startswith("reference") else solutions_app)(run, [KEY])
        benchmark.pedantic(over_http, args=(app, stream), rounds=15, warmup_rounds=2)
    benchmark.extra_info["tokens_per_s"] = NEW / benchmark.stats.stats.median


@pytest.mark.parametrize(("who", "stream"), CASES, ids=[c[0] for c in CASES])
def test_basic_generate_cpu(benchmark: Any, who: str, stream: bool | None) -> None:
    bench(benchmark, torch.device("cpu"), who, stream)


@pytest.mark.parametrize(("who", "stream"), CASES, ids=[c[0] for c in CASES])
def test_basic_generate_cuda(benchmark: Any, cuda: torch.device, who: str,
                             stream: bool | None) -> None:
    bench(benchmark, cuda, who, stream)
