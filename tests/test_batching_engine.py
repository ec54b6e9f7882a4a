"""reference.batching's Engine beyond the spec: real threads, asyncio consumers, the bounded
queue, cancellation, shutdown, failures, and the checks on requests.

Models are float64 (tokens are compared exactly across batch shapes). A forward pre-hook records
the thread of every model call, or holds the engine at a forward call until the test lets it
go (``Gate``), so that what happens between two steps is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from reference.batching import (
    Engine,
    EngineStopped,
    QueueFullError,
    Request,
    Stream,
    run_batched,
    start,
)
from reference.model import GPT, GPTConfig

pytestmark = pytest.mark.batching

CONFIG = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)
WAIT = 60.0  # seconds: only a guard against a hang, never a timing assertion


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG).double().eval()
    with torch.no_grad():  # std 0.5: the choices depend on the context
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def requests(n: int, max_new_tokens: int = 6) -> list[Request]:
    settings: list[dict[str, Any]] = [
        {"temperature": 0.0}, {"temperature": 0.9, "top_k": 10}, {"temperature": 1.2, "top_p": 0.8}]
    return [Request(tuple(range(1 + i % 4, 3 + i % 4 + i % 5)), max_new_tokens + i % 3, seed=i,
                    **settings[i % 3]) for i in range(n)]


def alone(model: GPT, request: Request) -> list[int]:
    return run_batched(model, [request], 1)[0]


class Gate:
    """A forward pre-hook that holds every model call until :meth:`allow` lets it through."""

    def __init__(self, model: GPT) -> None:
        self.permits = threading.Semaphore(0)
        self.entered = 0  # forward calls that reached the gate (the last one may wait there)
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, module: Any, args: Any) -> None:
        self.entered += 1
        if not self.permits.acquire(timeout=WAIT):
            raise TimeoutError("the test never let this forward call through")

    def allow(self, n: int = 1) -> None:
        self.permits.release(n)


@pytest.fixture
def gate(model: GPT) -> Iterator[Gate]:
    g = Gate(model)
    yield g
    g.handle.remove()
    g.allow(1000)


def wait_until(condition: Any) -> None:
    for _ in range(int(WAIT * 100)):
        if condition():
            return
        threading.Event().wait(0.01)
    raise TimeoutError("the engine never got there")


def take(stream: Stream, n: int) -> list[int]:
    """The next ``n`` tokens of a stream, without ending its iteration."""
    tokens = []
    for _ in range(n):
        event = stream._events.get(timeout=WAIT)
        assert isinstance(event, int), f"the stream ended early: {event}"
        stream.tokens.append(event)
        tokens.append(event)
    return tokens


def test_threads_submitting_at_once_each_get_their_tokens_alone(model: GPT) -> None:
    reqs = requests(10)
    got: dict[int, list[int]] = {}
    reasons: dict[int, str | None] = {}
    with Engine(model, max_batch=3, max_waiting=10) as engine:

        def client(i: int) -> None:
            stream = engine.submit(reqs[i])
            got[i] = list(stream)
            reasons[i] = stream.finish_reason

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    for i, r in enumerate(reqs):
        assert got[i] == alone(model, r), f"request {i}: {got[i]} != alone {alone(model, r)}"
        assert reasons[i] == "length"


def test_asyncio_consumers_stream_and_no_forward_runs_on_the_event_loop(model: GPT) -> None:
    """Requests submitted and read with ``async for`` on one event loop: each gets its tokens
    alone, and every forward call runs on the engine's thread."""
    reqs = requests(6)
    threads: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, a: threads.append(threading.get_ident()))

    async def consume(engine: Engine, request: Request) -> list[int]:
        return [token async for token in engine.submit(request)]

    async def main() -> tuple[list[list[int]], int]:
        with Engine(model, max_batch=2) as engine:
            got = await asyncio.gather(*(consume(engine, r) for r in reqs))
            assert engine.thread is not None
            return list(got), engine.thread.ident or 0

    try:
        got, engine_thread = asyncio.run(main())
    finally:
        handle.remove()
    assert got == [alone(model, r) for r in reqs]
    assert threads and set(threads) == {engine_thread}, "a forward call ran off the engine thread"
    assert engine_thread != threading.get_ident()


def test_an_async_stream_gets_what_arrived_before_it_was_read(model: GPT, gate: Gate) -> None:
    request = requests(1)[0]
    with Engine(model) as engine:
        stream = engine.submit(request)
        gate.allow(2)  # prefill + one decode step: two tokens wait in the blocking queue
        wait_until(lambda: stream._events.qsize() >= 2)
        gate.allow(100)

        async def rest() -> list[int]:
            return [t async for t in stream]

        assert asyncio.run(rest()) == alone(model, request)
        assert stream.finish_reason == "length"


def test_a_full_waiting_queue_refuses_naming_the_limit(model: GPT) -> None:
    engine = Engine(model, max_batch=1, max_waiting=2)  # not started: every request waits
    reqs = requests(3)
    streams = [engine.submit(r) for r in reqs[:2]]
    with pytest.raises(QueueFullError, match="max_waiting=2"):
        engine.submit(reqs[2])
    with engine.start():
        assert [list(s) for s in streams] == [alone(model, r) for r in reqs[:2]]
        assert list(engine.submit(reqs[2])) == alone(model, reqs[2])  # room again


def test_a_request_cancelled_while_waiting_ends_without_a_forward(model: GPT) -> None:
    seen: list[list[list[int]]] = []
    handle = model.register_forward_pre_hook(lambda m, a: seen.append(a[0].tolist()))
    try:
        engine = Engine(model, max_batch=1)
        a, b = (Request(p, 3, temperature=0.0) for p in ((1, 2), (7, 8, 9)))
        first, second = engine.submit(a), engine.submit(b)
        second.cancel()
        with engine.start():
            assert list(second) == [] and second.finish_reason == "cancelled"
            assert list(first) == alone(model, a) and first.finish_reason == "length"
    finally:
        handle.remove()
    assert [[7, 8, 9]] not in seen, "the cancelled request was prefilled"


def test_a_running_request_cancelled_ends_after_the_step_in_flight(model: GPT, gate: Gate) -> None:
    """Three steps let through, then cancel: the step in flight completes (a fourth token),
    the request leaves between two steps with 'cancelled'; its neighbour is untouched."""
    doomed, neighbour = Request((3, 4), 12, seed=1, temperature=0.9), Request((5,), 12, seed=2)
    with Engine(model, max_batch=2) as engine:
        stream, other = engine.submit(doomed), engine.submit(neighbour)
        gate.allow(4)  # two prefills, two decode steps
        tokens = take(stream, 3)
        wait_until(lambda: gate.entered == 5)  # the next step is in flight
        stream.cancel()
        gate.allow(100)
        rest = list(stream)
        assert stream.finish_reason == "cancelled"
        assert tokens + rest == alone(model, doomed)[:4], "a token after the step in flight"
        assert list(other) == alone(model, neighbour)


def test_leaving_the_iteration_early_cancels_the_request(model: GPT) -> None:
    with Engine(model, max_batch=1) as engine:
        stream = engine.submit(Request((1,), 15, temperature=0.0))
        for _ in stream:
            break
        assert stream.cancelled
        assert len(list(stream)) <= 15 and stream.finish_reason in ("cancelled", "length")
        assert list(engine.submit(Request((2,), 2, seed=0))) != []  # its row is free again


def test_stop_ends_running_and_waiting_requests_with_shutdown(model: GPT, gate: Gate) -> None:
    engine = Engine(model, max_batch=1).start()
    running, waiting = engine.submit(Request((1,), 12, seed=0)), engine.submit(Request((2,), 4))
    gate.allow(2)
    take(running, 2)
    wait_until(lambda: gate.entered == 3)  # the next step is in flight
    stopper = threading.Thread(target=engine.stop)
    stopper.start()  # stop() waits for the step in flight, held at the gate
    wait_until(lambda: engine._state == "stopped")
    gate.allow(100)
    stopper.join(WAIT)
    assert engine.thread is not None and not engine.thread.is_alive()
    assert len(list(running)) == 1 and running.finish_reason == "shutdown"  # the step in flight
    assert list(waiting) == [] and waiting.finish_reason == "shutdown"
    with pytest.raises(EngineStopped, match="stopped"):
        engine.submit(Request((1,), 2))
    engine.stop()  # twice: nothing more to do


def test_stop_before_start_ends_the_queued_requests(model: GPT) -> None:
    engine = Engine(model)
    stream = engine.submit(Request((1,), 2))
    engine.stop()
    assert list(stream) == [] and stream.finish_reason == "shutdown"
    with pytest.raises(EngineStopped, match="start it once"):
        engine.start()


def test_an_engine_failure_reaches_every_stream_and_submit(model: GPT) -> None:
    calls = []

    def fail_on_the_third_call(module: Any, args: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory (simulated)")

    handle = model.register_forward_pre_hook(fail_on_the_third_call)
    try:
        with Engine(model, max_batch=2) as engine:
            streams = [engine.submit(r) for r in requests(3, max_new_tokens=8)]
            for stream in streams:
                with pytest.raises(EngineStopped, match="simulated") as info:
                    list(stream)
                assert isinstance(info.value.__cause__, RuntimeError)
                assert stream.finish_reason == "error"
            with pytest.raises(EngineStopped, match="simulated"):
                engine.submit(requests(1)[0])
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"prompt": ()}, "prompt"),
        ({"prompt": (1, -2)}, "prompt"),
        ({"prompt": (1.0,)}, "prompt"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"eos_id": -1}, "eos_id"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_requests_are_refused_naming_the_value(kwargs: dict[str, Any], name: str) -> None:
    args = {"prompt": (1, 2), **kwargs}
    with pytest.raises(ValueError, match=name):
        Request(**args)


def test_requests_the_model_cannot_run_are_refused_at_submit(model: GPT) -> None:
    engine = Engine(model, max_len=8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit(Request((1, 50)))
    with pytest.raises(ValueError, match="9 tokens, more than the 8 positions"):
        engine.submit(Request(tuple(range(9))))
    for bad in ({"max_batch": 0}, {"max_waiting": 0}, {"max_len": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Engine(model, **bad)
    engine.stop()


def test_max_len_caps_each_sequence_to_the_cache(model: GPT) -> None:
    """A cache of 8 slots: a prompt of 6 gets 3 tokens (8 - 6 + 1), those it gets alone."""
    request = Request(tuple(range(6)), 10, temperature=0.0)
    assert start(request, model, max_len=8).max_tokens == 3
    with Engine(model, max_len=8) as engine:
        tokens = list(engine.submit(request))
    assert tokens == alone(model, request)[:3]
