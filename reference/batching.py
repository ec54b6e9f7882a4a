"""Continuous batching: many generation requests share one batch, one decode step at a time.

Generating for one request at a time leaves the hardware idle: a decode step of one token reads
all the weights to do very little arithmetic. Running many requests as one batch reads the
weights once per step for all of them. *Continuous* batching (Orca, Yu et al. 2022; vLLM) goes
further: the batch is rebuilt between steps, so a finished request leaves at once and a waiting
one takes its place at the next step, instead of every request waiting for the longest one.

One step of the scheduler, in this order:

1. :func:`retire`: every finished sequence (its eos drawn, its ``max_new_tokens`` reached, or
   cancelled) leaves the batch; the others move down so rows ``0..n-1`` of the KV cache hold
   the ``n`` active ones, in the order they joined (:meth:`KVCache.copy_row`);
2. :func:`admit`: waiting requests join in arrival order (first in, first out) while a row is
   free; each prompt is *prefilled alone* into its row (:func:`prefill`), which draws its first
   token; a request done at its first token never takes a row;
3. :func:`decode_step`: one forward pass of the ``n`` last tokens over the cache's rows
   ``0..n-1``, each row at its own position, then one token per row with that request's own
   settings and its own ``torch.Generator``.

So a request's tokens are the ones it gets alone with the same seed, whatever joins or leaves
beside it (exactly so up to floating-point rounding: batch shapes change the order of sums).

Positions: a request's token at index i of prompt + tokens sits at cache slot i, which is also
its position: GPT-2's learned position, a Llama's rotary angle (each row of a decode step at its
own, from ``input_pos``). Nothing slides: a request ends (reason ``"length"``) when its sequence
fills the cache (``max_len``, at most ``block_size``); a prompt longer than that is refused.

Either architecture (``reference.arch``) runs here: a GPT-2, or a Llama-style model (dense or a
mixture of experts; grouped-query attention keeps ``n_kv_head`` heads per row in the cache),
int8-quantized or not: the engine uses only the model's forward pass and ``new_cache``.

:class:`Engine` runs this loop in its own thread, which owns the model: callers (an asyncio
server, other threads) only :meth:`Engine.submit` requests, read each one's :class:`Stream`
(blocking or ``async for``) and may cancel it; no model call happens on their threads. The
waiting queue is bounded: a request past ``max_waiting`` is refused with :class:`QueueFullError`.

Example::

    >>> from reference.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=8)).eval()
    >>> requests = [Request((1, 2, 3), max_new_tokens=4, seed=0),
    ...             Request((4,), max_new_tokens=2, temperature=0.0)]
    >>> [len(t) for t in run_batched(model, requests, max_batch=2)]
    [4, 2]
    >>> with Engine(model, max_batch=2) as engine:
    ...     stream = engine.submit(Request((1, 2, 3), max_new_tokens=4, seed=0))
    ...     len(list(stream)), stream.finish_reason
    (4, 'length')
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .generate import sample_next_token
from .kvcache import KVCache
from .llama import Llama
from .model import GPT

Model = GPT | Llama  # either architecture (reference.arch): the same forward and new_cache

__all__ = ["Batch", "Engine", "EngineStopped", "QueueFullError", "Request", "Sequence", "Stream",
           "admit", "decode_step", "enqueue", "finish_reason", "prefill", "retire", "run_batched",
           "start"]


class QueueFullError(RuntimeError):
    """The waiting queue holds ``max_waiting`` requests: this one is refused (retry later)."""


class EngineStopped(RuntimeError):
    """The engine is stopped (or failed): it takes no request, and a failed one's streams raise
    this with the cause attached."""


# ---------------------------------------------------------------- requests and their state


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Request:
    """What a client asks for: a prompt of token ids and how to sample its continuation.

    ``temperature == 0`` is greedy; ``top_k``/``top_p`` as in :func:`reference.generate.stream`.
    The request ends at ``max_new_tokens`` tokens, or at ``eos_id`` (included in its tokens).
    ``seed`` seeds the request's own generator (None: a random seed). ``logprobs``: record each
    drawn token's log-probability under the model (before temperature and truncation) in
    :attr:`Stream.logprobs`. Checked on construction: a bad value is a ValueError naming it.
    """

    prompt: tuple[int, ...]
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_id: int | None = None
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self) -> None:
        prompt = tuple(self.prompt)
        object.__setattr__(self, "prompt", prompt)
        t, k, p = self.temperature, self.top_k, self.top_p
        problems = [
            (not prompt or not all(_int(i) and i >= 0 for i in prompt), "prompt",
             "a non-empty sequence of token ids >= 0"),
            (not _int(self.max_new_tokens) or self.max_new_tokens < 1, "max_new_tokens",
             "an int >= 1"),
            (not isinstance(t, int | float) or isinstance(t, bool) or not 0 <= t < math.inf,
             "temperature", "a finite number >= 0"),
            (k is not None and (not _int(k) or k < 1), "top_k", "None or an int >= 1"),
            (p is not None and (not isinstance(p, int | float) or isinstance(p, bool)
                                or not 0 < p <= 1), "top_p", "None or a number in (0, 1]"),
            (self.eos_id is not None and (not _int(self.eos_id) or self.eos_id < 0), "eos_id",
             "None or a token id >= 0"),
            (self.seed is not None and (not _int(self.seed) or self.seed < 0), "seed",
             "None or an int >= 0"),
        ]
        for bad, name, expected in problems:
            if bad:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")


@dataclass(eq=False)
class Sequence:
    """A request in flight: its tokens so far and its own generator (made by :func:`start`).

    ``max_tokens``: ``max_new_tokens``, or fewer when the sequence would not fit the cache.
    ``cancelled``: set between steps; the sequence leaves at the next :func:`retire` (or is
    never prefilled, if it is still waiting). ``finished``: why it left, once it has.
    """

    request: Request
    generator: torch.Generator
    max_tokens: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # one per token, if the request asks
    cancelled: bool = False
    finished: str | None = None

    @property
    def position(self) -> int:
        """The position, and cache slot, of the last token (the one the next step feeds)."""
        return len(self.request.prompt) + len(self.tokens) - 1


def start(request: Request, model: Model, max_len: int | None = None) -> Sequence:
    """A :class:`Sequence` for ``request`` on ``model``'s device, for a cache of ``max_len``
    slots (default and at most ``block_size``): its prompt is checked against the model (ids in
    the vocabulary, length within ``max_len``: ValueError naming both), ``max_tokens`` is capped
    so the sequence fits (the last token drawn is never fed, so prompt + tokens <= max_len + 1),
    and its generator is seeded with the request's seed."""
    cfg = model.config
    limit = min(max_len or cfg.block_size, cfg.block_size)
    prompt = request.prompt
    if len(prompt) > limit:
        raise ValueError(f"the prompt has {len(prompt)} tokens, more than the {limit} positions "
                         f"the cache holds (max_len {max_len}, block_size {cfg.block_size})")
    if max(prompt) >= cfg.vocab_size:
        raise ValueError(f"token id {max(prompt)} in the prompt is outside the vocabulary "
                         f"[0, {cfg.vocab_size})")
    generator = torch.Generator(device=next(model.parameters()).device)
    if request.seed is None:
        generator.seed()
    else:
        generator.manual_seed(request.seed)
    return Sequence(request, generator, min(request.max_new_tokens, limit - len(prompt) + 1))


@dataclass
class Batch:
    """The running batch: a KV cache of ``max_batch`` rows, row i holding ``active[i]``."""

    cache: KVCache
    active: list[Sequence] = field(default_factory=list)

    @classmethod
    def empty(cls, model: Model, max_batch: int, max_len: int | None = None) -> Batch:
        if not _int(max_batch) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        limit = min(max_len or model.config.block_size, model.config.block_size)
        return cls(model.new_cache(max_batch, limit))

    @property
    def max_batch(self) -> int:
        return self.cache.batch_size


# ---------------------------------------------------------------- one scheduler step


def enqueue(waiting: deque[Sequence], seq: Sequence, max_waiting: int) -> None:
    """Append ``seq`` to the ``waiting`` queue, or raise :class:`QueueFullError` naming
    ``max_waiting`` when it already holds that many (and leave it unchanged)."""
    if len(waiting) >= max_waiting:
        raise QueueFullError(f"the waiting queue is full ({len(waiting)} requests wait, "
                             f"max_waiting={max_waiting}): retry later")
    waiting.append(seq)


def finish_reason(seq: Sequence) -> str | None:
    """Why ``seq`` is finished: ``"cancelled"``, ``"eos"`` (its last token is its own eos),
    ``"length"`` (``max_tokens`` tokens), in that order of precedence; None while it runs."""
    if seq.cancelled:
        return "cancelled"
    if seq.tokens and seq.tokens[-1] == seq.request.eos_id:
        return "eos"
    if len(seq.tokens) >= seq.max_tokens:
        return "length"
    return None


def _draw(seq: Sequence, logits: torch.Tensor) -> torch.Tensor:
    """One token from ``logits`` (V,) with the request's settings and generator -> () int64."""
    r = seq.request
    return sample_next_token(logits, r.temperature, r.top_k, r.top_p, seq.generator)


@torch.no_grad()
def prefill(model: Model, seq: Sequence, cache: KVCache) -> None:
    """Run ``seq``'s prompt through ``model`` in one pass into ``cache`` (one row: slots
    ``0..T-1``) and append its first token, drawn from the last position's logits."""
    prompt = torch.tensor([seq.request.prompt], device=cache.k[0].device)  # (1, T)
    T = prompt.shape[1]
    cache.length = T  # attention reads only the slots in use
    slots = torch.arange(T, device=prompt.device)[None]  # (1, T): slot = position
    logits = model(prompt, cache=cache, input_pos=slots)[0]  # (1, T, V)
    token = _draw(seq, logits[0, -1])
    if seq.request.logprobs:
        seq.logprobs.append(float(torch.log_softmax(logits[0, -1].float(), -1)[token]))
    seq.tokens.append(int(token))


def admit(model: Model, waiting: deque[Sequence], batch: Batch) -> list[Sequence]:
    """Move waiting sequences into the batch, first in first out, while a row is free: each is
    prefilled into row ``len(batch.active)``. A cancelled one leaves without a forward pass; one
    finished at its first token takes no row. Returns every sequence taken from ``waiting``;
    those that left have ``finished`` set."""
    taken = []
    while waiting and len(batch.active) < batch.max_batch:
        seq = waiting.popleft()
        taken.append(seq)
        if not seq.cancelled:
            row = len(batch.active)
            prefill(model, seq, batch.cache.rows(row, row + 1))
        seq.finished = finish_reason(seq)
        if seq.finished is None:
            batch.active.append(seq)
    return taken


@torch.no_grad()
def decode_step(model: Model, batch: Batch) -> None:
    """One token for every active sequence: a single forward pass of their last tokens (n, 1)
    at their own positions over the cache's rows ``0..n-1``, then a draw per row with that
    request's settings and generator."""
    active = batch.active
    device = batch.cache.k[0].device
    idx = torch.tensor([[s.tokens[-1]] for s in active], device=device)  # (n, 1)
    pos = torch.tensor([[s.position] for s in active], device=device)  # (n, 1)
    cache = batch.cache.rows(0, len(active))
    cache.length = max(s.position for s in active) + 1
    logits = model(idx, cache=cache, input_pos=pos)[0][:, -1]  # (n, V)
    drawn = torch.stack([_draw(s, logits[row]) for row, s in enumerate(active)])  # (n,)
    if any(s.request.logprobs for s in active):
        logp = torch.log_softmax(logits.float(), -1).gather(1, drawn[:, None])[:, 0]  # (n,)
        for seq, lp in zip(active, logp.tolist(), strict=True):
            if seq.request.logprobs:
                seq.logprobs.append(lp)
    for seq, token in zip(active, drawn.tolist(), strict=True):  # one device sync per step
        seq.tokens.append(token)


def retire(batch: Batch) -> list[Sequence]:
    """Remove every finished sequence from the batch (``finished`` set to its reason) and
    compact the rest into rows ``0..n-1`` in their order, copying their cache rows down.
    Returns the sequences that left."""
    kept: list[int] = []  # rows that stay
    left: list[int] = []
    for row, seq in enumerate(batch.active):
        seq.finished = finish_reason(seq)
        (left if seq.finished else kept).append(row)
    for new, old in enumerate(kept):
        if new != old:  # new < old: row `new` is free or already copied down
            batch.cache.copy_row(old, new)
    gone = [batch.active[row] for row in left]
    batch.active = [batch.active[row] for row in kept]
    return gone


def run_batched(model: Model, requests: list[Request], max_batch: int,
                arrivals: list[int] | None = None) -> list[list[int]]:
    """Every request's tokens, generated as one continuous batch of at most ``max_batch``:
    request i joins the waiting queue at step ``arrivals[i]`` (default 0); each step retires,
    admits, then decodes (see the module's docstring)."""
    arrivals = [0] * len(requests) if arrivals is None else list(arrivals)
    if len(arrivals) != len(requests) or not all(_int(a) and a >= 0 for a in arrivals):
        raise ValueError(f"arrivals must be one step >= 0 per request, got {arrivals!r}")
    seqs = [start(r, model) for r in requests]
    batch = Batch.empty(model, max_batch)
    pending = deque(sorted(range(len(seqs)), key=lambda i: arrivals[i]))  # stable: ties in order
    waiting: deque[Sequence] = deque()
    step = 0
    while pending or waiting or batch.active:
        while pending and arrivals[pending[0]] <= step:
            waiting.append(seqs[pending.popleft()])
        retire(batch)
        admit(model, waiting, batch)
        if batch.active:
            decode_step(model, batch)
        step += 1
    return [s.tokens for s in seqs]


# ---------------------------------------------------------------- the threaded engine


@dataclass(frozen=True)
class _End:
    reason: str
    error: BaseException | None = None


class Stream:
    """One request's tokens, delivered by the engine's thread as they are drawn.

    Iterate it (``for token in stream``, blocking) or ``async for token in stream`` on an
    asyncio loop (delivered with ``loop.call_soon_threadsafe``; never blocks the loop), once.
    After the end, ``finish_reason`` says why: ``"eos"``, ``"length"``, ``"cancelled"``,
    ``"shutdown"`` (the engine stopped first), or ``"error"``: the engine failed, and the
    iteration raises :class:`EngineStopped` from the cause. Leaving the iteration early (a
    ``break``, a client gone) cancels the request.
    """

    def __init__(self, request: Request) -> None:
        self.request = request
        self.tokens: list[int] = []  # what the consumer has received
        self.logprobs: list[float] = []  # with ``request.logprobs``: set before each token
        self.finish_reason: str | None = None
        self._cancel = threading.Event()
        self._events: queue.Queue[int | _End] = queue.Queue()
        self._lock = threading.Lock()  # guards the switch to asyncio delivery
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_events: asyncio.Queue[int | _End] | None = None
        self._sent = 0  # engine side: tokens handed over so far

    def cancel(self) -> None:
        """Ask the engine to end this request; it does so between two steps."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _put(self, event: int | _End) -> None:  # the engine's thread
        with self._lock:
            if self._loop is None:
                self._events.put(event)
                return
            assert self._async_events is not None
            try:
                self._loop.call_soon_threadsafe(self._async_events.put_nowait, event)
            except RuntimeError:  # the loop is closed: no one is listening any more
                self._cancel.set()

    def _receive(self, event: int | _End) -> bool:
        """Record ``event``; True at the end (raises if the engine failed)."""
        if isinstance(event, _End):
            self.finish_reason = event.reason
            if event.error is not None:
                raise EngineStopped(f"the engine failed: {event.error!r}") from event.error
            return True
        self.tokens.append(event)
        return False

    def __iter__(self) -> Iterator[int]:
        try:
            while not self._receive(event := self._events.get()):
                assert isinstance(event, int)
                yield event
        finally:
            if self.finish_reason is None:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[int]:
        events: asyncio.Queue[int | _End] = asyncio.Queue()
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("this stream is already read by an async iterator")
            while not self._events.empty():  # what arrived before: in order, first
                events.put_nowait(self._events.get_nowait())
            self._loop, self._async_events = asyncio.get_running_loop(), events
        try:
            while not self._receive(event := await events.get()):
                assert isinstance(event, int)
                yield event
        finally:
            if self.finish_reason is None:
                self.cancel()


class Engine:
    """Serve generation requests as one continuous batch, in a thread that owns ``model``.

    ``max_batch`` rows run at once (a KV cache of ``max_batch`` x ``max_len`` slots, default
    ``block_size``); up to ``max_waiting`` more wait, first in first out, and one more is refused
    with :class:`QueueFullError`. :meth:`submit` is thread-safe, fast (no model call) and may be
    called from an asyncio loop; requests submitted before :meth:`start` wait for it.
    :meth:`stop` ends every pending request with ``"shutdown"`` and joins the thread. Use it as a
    context manager to start and stop it. Put the model in eval mode first.
    """

    def __init__(self, model: Model, *, max_batch: int = 8, max_waiting: int = 64,
                 max_len: int | None = None) -> None:
        for name, value in (("max_batch", max_batch), ("max_waiting", max_waiting)):
            if not _int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if max_len is not None and (not _int(max_len) or max_len < 1):
            raise ValueError(f"max_len must be None or an int >= 1, got {max_len!r}")
        self.model, self.max_batch, self.max_waiting = model, max_batch, max_waiting
        self.max_len = max_len
        self._lock = threading.Condition()  # guards _waiting, _streams and _state
        self._waiting: deque[Sequence] = deque()
        self._streams: dict[Sequence, Stream] = {}
        self._state = "new"  # new -> running -> stopped
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._active = 0  # sequences in the running batch (written by the engine's thread)

    @property
    def active(self) -> int:
        """How many requests the running batch holds now (read-only; for metrics and tests)."""
        return self._active

    @property
    def waiting(self) -> int:
        """How many requests wait for a row now (read-only)."""
        with self._lock:
            return len(self._waiting)

    def __enter__(self) -> Engine:
        return self.start() if self._state == "new" else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that runs the model, once started."""
        return self._thread

    def start(self) -> Engine:
        with self._lock:
            if self._state != "new":
                raise EngineStopped(f"the engine is {self._state}: start it once")
            self._state = "running"
            self._thread = threading.Thread(target=self._run, name="batching-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: Request) -> Stream:
        """Queue ``request``; returns its :class:`Stream`. Raises ValueError for a request the
        model cannot run, :class:`QueueFullError` when ``max_waiting`` requests wait,
        :class:`EngineStopped` after :meth:`stop` or a failure."""
        seq = start(request, self.model, self.max_len)
        stream = Stream(request)
        with self._lock:
            if self._state == "stopped":
                why = f"it failed: {self._error!r}" if self._error else "it was stopped"
                raise EngineStopped(f"the engine takes no more requests: {why}")
            enqueue(self._waiting, seq, self.max_waiting)
            self._streams[seq] = stream
            self._lock.notify()
        return stream

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current step; every unfinished request ends with ``"shutdown"``."""
        with self._lock:
            never_started = self._state == "new"
            self._state = "stopped"
            self._lock.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if never_started:
            self._end_all(_End("shutdown"))

    # -- the engine's thread

    def _publish(self, seq: Sequence) -> None:
        with self._lock:
            stream = self._streams[seq] if seq.finished is None else self._streams.pop(seq)
        stream.logprobs.extend(seq.logprobs[len(stream.logprobs):])  # before their tokens
        for token in seq.tokens[stream._sent:]:
            stream._put(token)
        stream._sent = len(seq.tokens)
        if seq.finished is not None:
            stream._put(_End(seq.finished))

    def _end_all(self, end: _End) -> None:
        with self._lock:
            self._waiting.clear()
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream._put(end)

    def _run(self) -> None:
        batch = Batch.empty(self.model, self.max_batch, self.max_len)
        try:
            while True:
                with self._lock:  # cancellations take effect here, between two steps
                    streams = dict(self._streams)
                    gone = [s for s in self._waiting if streams[s].cancelled]
                    for seq in gone:  # a cancelled waiting request ends at once
                        self._waiting.remove(seq)
                        seq.cancelled, seq.finished = True, "cancelled"
                for seq in batch.active:
                    seq.cancelled = seq.cancelled or streams[seq].cancelled
                for seq in [*gone, *retire(batch)]:
                    self._publish(seq)
                self._active = len(batch.active)
                with self._lock:
                    while self._state == "running" and not (self._waiting or batch.active):
                        self._lock.wait()  # idle: sleep until a request or stop()
                    if self._state != "running":
                        break
                    free = self.max_batch - len(batch.active)
                    joining = deque(self._waiting.popleft()
                                    for _ in range(min(free, len(self._waiting))))
                while joining:  # one prefill at a time: each first token goes out at once
                    for seq in admit(self.model, deque([joining.popleft()]), batch):
                        self._publish(seq)
                self._active = len(batch.active)
                if batch.active:
                    decode_step(self.model, batch)
                    for seq in batch.active:
                        self._publish(seq)
        except BaseException as error:  # every stream hears of it, and submit() says so
            with self._lock:
                self._state, self._error = "stopped", error
            self._active = 0
            self._end_all(_End("error", error))
            return
        self._active = 0
        self._end_all(_End("shutdown"))
