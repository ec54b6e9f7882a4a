"""Continuous batching: serve many generation requests as one batch, rebuilt between steps.

One request alone wastes a decode step: it reads every weight of the model to compute one
token. A batch of n requests reads the weights once for n tokens. *Static* batching waits for
the longest request of the batch before starting the next one; *continuous* batching (Orca,
Yu et al. 2022; vLLM) rebuilds the batch after every step: a finished request leaves at once,
and a waiting one takes its row at the next step.

The state, given by the library (``reference.batching``):

* a :class:`Request` is what a client asks: ``prompt`` (token ids), ``max_new_tokens``,
  ``temperature`` / ``top_k`` / ``top_p``, ``eos_id`` and ``seed``;
* a :class:`Sequence` is a request in flight: ``tokens`` drawn so far, its own
  ``generator`` (seeded with the request's seed), ``max_tokens`` (``max_new_tokens``, capped so
  it fits the cache), ``cancelled`` (set between steps), ``finished`` (why it left) and
  ``position``, the position and cache slot of its last token;
* a :class:`Batch` holds the KV cache, ``max_batch`` rows of ``max_len`` slots, and ``active``:
  row i of the cache belongs to ``active[i]``.

One scheduler step is :func:`retire` (finished sequences leave, the others move down to rows
``0..n-1``), :func:`admit` (waiting ones join, first in first out, each prompt prefilled alone
into its row, which draws its first token), then :func:`decode_step` (one token for each of
the n active sequences in one forward pass). :func:`run_batched` loops over steps.

The promise to keep: a request's tokens are exactly its tokens alone, with the same seed,
whatever joins or leaves beside it. That needs every request at its own positions, its own
cache row, its own generator, and no finished request left behind in the batch.
"""

from __future__ import annotations

from collections import deque

import torch

# Given code from the library: the requests and their state, the sampler of the GPT chapter
# (temperature, top-k, top-p) and the model with its KV cache.
from reference.batching import Batch, QueueFullError, Request, Sequence, start
from reference.generate import sample_next_token
from reference.kvcache import KVCache
from reference.model import GPT

__all__ = ["Batch", "QueueFullError", "Request", "Sequence", "admit", "decode_step", "enqueue",
           "finish_reason", "prefill", "retire", "run_batched", "start"]


def enqueue(waiting: deque[Sequence], seq: Sequence, max_waiting: int) -> None:
    """Append ``seq`` to the ``waiting`` queue, unless it is full.

    Contract: a queue that already holds ``max_waiting`` sequences refuses the new one with
    :class:`QueueFullError`, whose message names ``max_waiting=<value>``, and stays unchanged.
    A bounded queue sheds load early: a server answers "busy, retry" at once instead of
    letting requests wait without end.

    Example::

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=4))
        >>> waiting = deque()
        >>> enqueue(waiting, start(Request((1,)), model), max_waiting=1)
        >>> enqueue(waiting, start(Request((2,)), model), max_waiting=1)
        Traceback (most recent call last):
        ...
        reference.batching.QueueFullError: the waiting queue is full (1 requests wait, max_waiting=1): retry later
    """  # noqa: E501
    # BEGIN SOLUTION
    if len(waiting) >= max_waiting:
        raise QueueFullError(f"the waiting queue is full ({len(waiting)} requests wait, "
                             f"max_waiting={max_waiting}): retry later")
    waiting.append(seq)
    # END SOLUTION


def finish_reason(seq: Sequence) -> str | None:
    """Why ``seq`` is finished, or None while it still runs.

    Contract, in this order of precedence:

    * ``"cancelled"`` when ``seq.cancelled`` is set;
    * ``"eos"`` when its last token is *its own* request's ``eos_id`` (another request's eos
      means nothing to it; ``eos_id=None`` never ends a request);
    * ``"length"`` when it has ``seq.max_tokens`` tokens;

    only the drawn ``tokens`` count, never the prompt.

    Example::

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=4))
        >>> seq = start(Request((7,), max_new_tokens=3, eos_id=7), model)
        >>> finish_reason(seq)                  # no token yet (the prompt's 7 does not count)
        >>> seq.tokens = [5, 7]; finish_reason(seq)
        'eos'
        >>> seq.tokens = [5, 6, 5]; finish_reason(seq)
        'length'
    """
    # BEGIN SOLUTION
    if seq.cancelled:
        return "cancelled"
    if seq.tokens and seq.tokens[-1] == seq.request.eos_id:
        return "eos"
    if len(seq.tokens) >= seq.max_tokens:
        return "length"
    return None
    # END SOLUTION


@torch.no_grad()
def prefill(model: GPT, seq: Sequence, cache: KVCache) -> None:
    """Run the prompt through the model in one pass and draw the first token.

    Contract: ``cache`` is the one row of the batch's cache that ``seq`` gets (a view:
    writing to it writes to the batch's cache). One forward pass of the whole prompt, ids
    (1, T), at slots ``input_pos = [[0, 1, ..., T-1]]``, writes the prompt's keys and values
    there; the logits of the *last* position give the first token, drawn with the request's
    ``temperature``, ``top_k``, ``top_p`` and ``seq.generator``, appended to ``seq.tokens``.

    Worked example: the prompt (5, 6, 7) is one call
    ``model(tensor([[5, 6, 7]]), cache=cache, input_pos=tensor([[0, 1, 2]]))``, and the first
    token comes from ``logits[0, 2]``. Afterwards ``seq.position`` is 3: the first token goes to
    slot 3 at the next step.

    Hints: make the tensors on the cache's device (``cache.k[0].device``); set
    ``cache.length = T`` so attention reads only the slots in use (optional: the mask hides the
    others); ``sample_next_token(logits, r.temperature, r.top_k, r.top_p, seq.generator)``
    takes logits (V,) and returns a 0-d tensor: ``int(...)`` it.
    """
    # BEGIN SOLUTION
    prompt = torch.tensor([seq.request.prompt], device=cache.k[0].device)  # (1, T)
    T = prompt.shape[1]
    cache.length = T
    slots = torch.arange(T, device=prompt.device)[None]  # (1, T): slot = position
    logits = model(prompt, cache=cache, input_pos=slots)[0]  # (1, T, V)
    r = seq.request
    token = sample_next_token(logits[0, -1], r.temperature, r.top_k, r.top_p, seq.generator)
    seq.tokens.append(int(token))
    # END SOLUTION


def admit(model: GPT, waiting: deque[Sequence], batch: Batch) -> list[Sequence]:
    """Move waiting sequences into free rows of the batch, first in, first out.

    Contract: while ``waiting`` is not empty and the batch has fewer than
    ``batch.max_batch`` active sequences, take the *oldest* waiting sequence (the left end) and

    * if it is cancelled, it leaves without a forward pass (``finished = "cancelled"``);
    * else prefill it into the next free row, ``row = len(batch.active)`` (the view
      ``batch.cache.rows(row, row + 1)``); if it is then finished (``max_tokens == 1``, or its
      first token is its eos), it leaves at once and takes no row; else it joins
      ``batch.active``.

    ``finished`` is set (with :func:`finish_reason`) on every sequence taken. Returns every
    sequence taken from ``waiting``, in order.

    Worked example: ``max_batch = 2``, nothing active, waiting ``[A, B (cancelled), C
    (max_new_tokens=1), D, E]``: A is prefilled into row 0; B leaves unprefilled; C is
    prefilled into row 1 and leaves with its one token; D is prefilled into row 1 (over C's
    keys, which no one reads any more); E waits. Returns ``[A, B, C, D]``; active ``[A, D]``.

    Hint: ``waiting.popleft()``; the first requests in are the first served.
    """
    # BEGIN SOLUTION
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
    # END SOLUTION


@torch.no_grad()
def decode_step(model: GPT, batch: Batch) -> None:
    """One new token for every active sequence, in one forward pass.

    Contract: with n = ``len(batch.active)`` (at least 1), one call
    ``model(idx, cache=batch.cache.rows(0, n), input_pos=pos)``: ``idx`` (n, 1) holds each
    sequence's last token, ``pos`` (n, 1) its position, ``seq.position`` (each row at its own:
    they joined at different times with prompts of different lengths). Then each row draws its
    token from its logits with *its own* request's settings and generator, appended to its
    ``tokens``.

    Worked example: active ``[A, B]``, A's prompt has 3 tokens and it drew 1, B's has 1 and it
    drew 2: ``pos = [[3], [2]]``, ``idx = [[A's token], [B's last token]]``.

    Hints: ``logits[:, -1]`` is (n, V); one ``sample_next_token`` per row (a shared generator
    would make a request's draws depend on who else runs); set ``cache.length`` to the largest
    position + 1 on the view so attention reads only the slots in use (optional).
    """
    # BEGIN SOLUTION
    active = batch.active
    device = batch.cache.k[0].device
    idx = torch.tensor([[s.tokens[-1]] for s in active], device=device)  # (n, 1)
    pos = torch.tensor([[s.position] for s in active], device=device)  # (n, 1)
    cache = batch.cache.rows(0, len(active))  # rows 0..n-1, a view
    cache.length = max(s.position for s in active) + 1
    logits = model(idx, cache=cache, input_pos=pos)[0][:, -1]  # (n, V)
    for row, seq in enumerate(active):
        r = seq.request
        token = sample_next_token(logits[row], r.temperature, r.top_k, r.top_p, seq.generator)
        seq.tokens.append(int(token))
    # END SOLUTION


def retire(batch: Batch) -> list[Sequence]:
    """Remove the finished sequences from the batch and compact the rest.

    Contract: every active sequence with a :func:`finish_reason` leaves (its ``finished`` set
    to it) at once; the others keep their order and move down to rows ``0..n-1``, each *with
    its cache row* (:meth:`KVCache.copy_row`), so the next step runs on the contiguous rows
    ``0..n-1`` and each sequence still reads its own keys and values. Returns the sequences that
    left, in row order.

    Worked example: active ``[A (finished), B, C (cancelled), D]`` in rows 0-3: B and D stay;
    B's row 1 is copied to row 0 and D's row 3 to row 1; active ``[B, D]``; returns ``[A, C]``.

    Hint: collect the rows that stay, then ``copy_row(old, new)`` for each; going up from row
    0, the row written (``new <= old``) is always free or already copied.
    """
    # BEGIN SOLUTION
    kept: list[int] = []  # rows that stay
    left: list[int] = []
    for row, seq in enumerate(batch.active):
        seq.finished = finish_reason(seq)
        (left if seq.finished else kept).append(row)
    for new, old in enumerate(kept):
        if new != old:
            batch.cache.copy_row(old, new)
    gone = [batch.active[row] for row in left]
    batch.active = [batch.active[row] for row in kept]
    return gone
    # END SOLUTION


def run_batched(model: GPT, requests: list[Request], max_batch: int,
                arrivals: list[int] | None = None) -> list[list[int]]:
    """Generate every request's tokens as one continuous batch of at most ``max_batch``.

    Contract: request i joins the waiting queue at step ``arrivals[i]`` (default: all at step
    0; requests arriving at the same step queue in list order). Each step, counted from 0: the
    arrivals of that step join the waiting queue; :func:`retire`; :func:`admit`; then
    :func:`decode_step` if any sequence is active. Stops when every request has finished;
    returns each request's tokens, in the order of ``requests``.

    Worked example: ``max_batch = 1``, requests A (prompt of 3 tokens, ``max_new_tokens=2``)
    and B (1 token, 2 new), both at step 0. Step 0: A is prefilled (slots 0-2, token 1) and
    decoded at position 3 (token 2). Step 1: A leaves, B is prefilled (slot 0) and decoded at
    position 1. Step 2: B leaves; done. Forward calls: ``[[0, 1, 2]]``, ``[[3]]``, ``[[0]]``,
    ``[[1]]``.

    Example::

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=1, n_embd=4))
        >>> tokens = run_batched(model, [Request((1, 2, 3), 2), Request((4,), 3)], max_batch=1)
        >>> [len(t) for t in tokens]
        [2, 3]

    Hints: a ``deque`` of waiting sequences; the loop ends when nothing is pending, waiting or
    active.
    """
    arrivals = [0] * len(requests) if arrivals is None else list(arrivals)
    if len(arrivals) != len(requests) or any(a < 0 for a in arrivals):
        raise ValueError(f"arrivals must be one step >= 0 per request, got {arrivals!r}")
    seqs = [start(r, model) for r in requests]
    batch = Batch.empty(model, max_batch)
    # given: a bound on the steps, so that a sequence that never leaves fails instead of hanging
    limit = max(arrivals, default=0) + sum(s.max_tokens + 1 for s in seqs) + 1
    # BEGIN SOLUTION
    pending = deque(sorted(range(len(seqs)), key=lambda i: arrivals[i]))  # stable: ties in order
    waiting: deque[Sequence] = deque()
    for step in range(limit):
        if not (pending or waiting or batch.active):
            return [s.tokens for s in seqs]
        while pending and arrivals[pending[0]] <= step:
            waiting.append(seqs[pending.popleft()])
        retire(batch)
        admit(model, waiting, batch)
        if batch.active:
            decode_step(model, batch)
    raise RuntimeError(f"run_batched: requests still running after {limit} steps")
    # END SOLUTION
