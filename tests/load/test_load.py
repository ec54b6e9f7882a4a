"""A bounded load test: 64 concurrent streaming clients for 60 s against a real uvicorn on
127.0.0.1 serving a tiny chat model (``conftest.py``).

Each client, in a loop, streams ``/v1/completions`` (SSE, usage included) with a seed of its
own, then asks the same request without streaming and compares: the streamed pieces, joined,
must be the whole text and the streamed usage the same count (no token lost or duplicated,
whatever else shares the batch). The server's resident memory is sampled every second: its
peak in the last 20 s may exceed its peak in the first 20 s by less than 5%. The figures are
printed (``-s``). ``LLMFS_LOAD_SECONDS`` and ``LLMFS_LOAD_CLIENTS`` shorten it for a trial.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from .conftest import AUTH, KEY, serve

SECONDS = float(os.environ.get("LLMFS_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("LLMFS_LOAD_CLIENTS", "64"))
WINDOW = min(20.0, SECONDS / 3)  # first and last windows of the memory comparison
MAX_TOKENS = 24


@dataclass
class Figures:
    streams: int = 0
    tokens: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)  # no response at all

    def status(self, code: int) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1


async def stream_once(client: httpx.AsyncClient, body: dict[str, object],
                      figures: Figures) -> tuple[str, int] | None:
    pieces: list[str] = []
    usage = None
    async with client.stream("POST", "/v1/completions", headers=AUTH,
                             json={**body, "stream": True,
                                   "stream_options": {"include_usage": True}}) as response:
        figures.status(response.status_code)
        if response.status_code != 200:
            await response.aread()
            return None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                figures.mismatches.append(f"error event: {data}")
                return None
            pieces.extend(c["text"] for c in chunk["choices"])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
        if not done or usage is None:
            figures.mismatches.append(f"stream for {body} ended without [DONE] or usage")
            return None
    return "".join(pieces), usage


async def client_loop(i: int, client: httpx.AsyncClient, until: float,
                      figures: Figures) -> None:
    n = 0
    while time.monotonic() < until:
        body = {"prompt": f"reverse: {'abcdefgh'[: 1 + (i + n) % 8]}", "max_tokens": MAX_TOKENS,
                "temperature": 1.0, "seed": i * 100_000 + n}
        n += 1
        try:
            streamed = await stream_once(client, body, figures)
            whole = await client.post("/v1/completions", headers=AUTH, json=body)
        except httpx.TransportError as e:
            figures.transport_errors.append(f"seed {body['seed']}: {e!r}")
            continue
        figures.status(whole.status_code)
        if streamed is None or whole.status_code != 200:
            continue
        choice, usage = whole.json()["choices"][0], whole.json()["usage"]
        figures.streams += 1
        figures.tokens += streamed[1]
        if (streamed[0], streamed[1]) != (choice["text"], usage["completion_tokens"]):
            figures.mismatches.append(f"seed {body['seed']}: streamed {streamed!r}, whole "
                                      f"{(choice['text'], usage['completion_tokens'])!r}")


async def sample_memory(pid: int, until: float, samples: list[tuple[float, int]]) -> None:
    process = psutil.Process(pid)
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append((time.monotonic() - start, process.memory_info().rss))
        await asyncio.sleep(1.0)


async def drive(url: str, pid: int) -> tuple[Figures, list[tuple[float, int]], float]:
    figures, samples = Figures(), []
    limits = httpx.Limits(max_connections=CLIENTS + 4, max_keepalive_connections=CLIENTS + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.monotonic()
        until = start + SECONDS
        await asyncio.gather(sample_memory(pid, until, samples),
                             *(client_loop(i, client, until, figures) for i in range(CLIENTS)))
        return figures, samples, time.monotonic() - start


def test_64_streaming_clients_for_60_s(chat_run: Path) -> None:
    with serve(chat_run, requests_per_minute=10**9, tokens_per_minute=10**9, max_batch=16,
               max_waiting=4 * CLIENTS) as server:
        figures, samples, elapsed = asyncio.run(drive(server.url, server.process.pid))
        metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
        logged = server.log_lines()
    first = max(rss for t, rss in samples if t <= WINDOW)
    last = max(rss for t, rss in samples if t >= samples[-1][0] - WINDOW)
    growth = last / first - 1
    server_errors = {code: n for code, n in figures.statuses.items() if code >= 500}
    print(f"\nload: {CLIENTS} clients, {elapsed:.0f} s, {figures.streams} streams checked, "
          f"{figures.tokens} streamed tokens ({figures.tokens / elapsed:.0f} tokens/s streamed), "
          f"statuses {figures.statuses}, mismatches {len(figures.mismatches)}, "
          f"transport errors {len(figures.transport_errors)}, "
          f"RSS {first / 2**20:.1f} -> {last / 2**20:.1f} MiB ({growth:+.2%}), "
          f"load average {os.getloadavg()[0]:.1f}")
    assert not server_errors, server_errors
    assert not figures.mismatches, figures.mismatches[:5]
    assert not figures.transport_errors, figures.transport_errors[:5]
    assert figures.streams >= CLIENTS  # every client got through at least once
    assert growth < 0.05
    assert "llmfs_time_to_first_token_seconds_count" in metrics
    requests = [line for line in logged if line["event"] == "request"]
    assert len(requests) >= 2 * figures.streams  # one access-log line per request
    assert not any(KEY in json.dumps(line) for line in logged)
