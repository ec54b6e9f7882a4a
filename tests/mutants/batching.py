"""Classic learner bugs in continuous batching; specs/test_batching.py must catch every one.

Each mutant replaces a function of ``solutions.batching`` (the harness patches every other
reference to it too). Named for the bug, the issue's first: a finished sequence left in the
batch, positions restarting at 0 each step, one generator shared by the batch, admitting past
``max_batch``, last in first out, rows not compacted. ``EQUIVALENT`` lists the mutation tool's
survivors that no test can tell from the solution (``scripts/mutation.py``), with the reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from reference.generate import sample_next_token
from solutions import batching as sol
from solutions.batching import Batch, QueueFullError, Request, Sequence

# The originals, kept before any mutant replaces them.
finish_reason, prefill, admit = sol.finish_reason, sol.prefill, sol.admit
decode_step, retire, run_batched = sol.decode_step, sol.retire, sol.run_batched


# ---------------------------------------------------------------- a finished one left behind
# (test_a_finished_sequence_leaves_the_batch_at_once, test_retire_hand_worked_example, and every
# token count: the sequence left in the batch draws past its end)


def _retire(leaves: Callable[[str], bool] = lambda why: True, compact: bool = True,
            keep_order: bool = True) -> Callable[[Batch], list[Sequence]]:
    """retire with one knob turned the wrong way."""

    def retire(batch: Batch) -> list[Sequence]:
        kept, left = [], []
        for row, seq in enumerate(batch.active):
            why = sol.finish_reason(seq)
            if why is not None and leaves(why):
                seq.finished = why
                left.append(row)
            else:
                kept.append(row)
        if not keep_order:  # fill each hole with the last row: rows in another order
            kept = sorted(kept, reverse=True)
        for new, old in enumerate(kept):
            if compact and new != old:
                batch.cache.copy_row(old, new)
        gone = [batch.active[row] for row in left]
        batch.active = [batch.active[row] for row in kept]
        return gone

    return retire


def _admit(fifo: bool = True, room: Callable[[int, int], bool] = lambda n, cap: n < cap,
           prefill_cancelled: bool = False, finished_takes_a_row: bool = False) -> Any:
    """admit with one knob turned the wrong way."""

    def admit(model: Any, waiting: deque[Sequence], batch: Batch) -> list[Sequence]:
        taken = []
        while waiting and room(len(batch.active), batch.max_batch):
            seq = waiting.popleft() if fifo else waiting.pop()
            taken.append(seq)
            if prefill_cancelled or not seq.cancelled:
                row = len(batch.active)
                sol.prefill(model, seq, batch.cache.rows(row, row + 1))
            seq.finished = sol.finish_reason(seq)
            if seq.finished is None or (finished_takes_a_row and not seq.cancelled):
                batch.active.append(seq)
        return taken

    return admit


# ---------------------------------------------------------------- positions, rows, generators


def _decode(position: Callable[[Sequence, list[Sequence]], int] = lambda s, a: s.position,
            generator: Callable[[Sequence, list[Sequence]], torch.Generator | None] =
            lambda s, a: s.generator) -> Callable[[Any, Batch], None]:
    """decode_step with one knob turned the wrong way."""

    @torch.no_grad()
    def decode_step(model: Any, batch: Batch) -> None:
        active = batch.active
        device = batch.cache.k[0].device
        idx = torch.tensor([[s.tokens[-1]] for s in active], device=device)
        pos = torch.tensor([[position(s, active)] for s in active], device=device)
        cache = batch.cache.rows(0, len(active))
        logits = model(idx, cache=cache, input_pos=pos)[0][:, -1]
        for row, seq in enumerate(active):
            r = seq.request
            token = sample_next_token(logits[row], r.temperature, r.top_k, r.top_p,
                                      generator(seq, active))
            seq.tokens.append(int(token))

    return decode_step


@torch.no_grad()
def _prefill_first_position(model: Any, seq: Sequence, cache: Any) -> None:
    prompt = torch.tensor([seq.request.prompt], device=cache.k[0].device)
    slots = torch.arange(prompt.shape[1])[None]
    logits = model(prompt, cache=cache, input_pos=slots)[0]
    r = seq.request  # the first position's logits: the prompt's second token, not the next one
    seq.tokens.append(int(sample_next_token(logits[0, 0], r.temperature, r.top_k, r.top_p,
                                            seq.generator)))


@torch.no_grad()
def _prefill_last_token_only(model: Any, seq: Sequence, cache: Any) -> None:
    prompt = torch.tensor([seq.request.prompt[-1:]], device=cache.k[0].device)
    at = torch.tensor([[len(seq.request.prompt) - 1]])  # the rest of the prompt never cached
    logits = model(prompt, cache=cache, input_pos=at)[0]
    r = seq.request
    seq.tokens.append(int(sample_next_token(logits[0, -1], r.temperature, r.top_k, r.top_p,
                                            seq.generator)))


# ---------------------------------------------------------------- when a sequence ends


def _finish(cancelled: bool = True, eos: Callable[[Sequence], bool] | None = None,
            limit: Callable[[Sequence], int] = lambda s: s.max_tokens,
            at_least: bool = True) -> Callable[[Sequence], str | None]:
    """finish_reason with one knob turned the wrong way."""

    def ends_at_eos(s: Sequence) -> bool:
        return bool(s.tokens) and s.tokens[-1] == s.request.eos_id

    def finish_reason(seq: Sequence) -> str | None:
        if cancelled and seq.cancelled:
            return "cancelled"
        if (eos or ends_at_eos)(seq):
            return "eos"
        n, cap = len(seq.tokens), limit(seq)
        if (n >= cap) if at_least else (n > cap):
            return "length"
        return None

    return finish_reason


def _enqueue_off_by_one(waiting: deque[Sequence], seq: Sequence, max_waiting: int) -> None:
    if len(waiting) > max_waiting:  # lets max_waiting + 1 in
        raise QueueFullError(f"the waiting queue is full (max_waiting={max_waiting})")
    waiting.append(seq)


def _enqueue_then_refuse(waiting: deque[Sequence], seq: Sequence, max_waiting: int) -> None:
    waiting.append(seq)  # refused, yet queued
    if len(waiting) > max_waiting:
        raise QueueFullError(f"the waiting queue is full (max_waiting={max_waiting})")


def _enqueue_unnamed_limit(waiting: deque[Sequence], seq: Sequence, max_waiting: int) -> None:
    if len(waiting) >= max_waiting:
        raise QueueFullError("queue full")  # which limit?
    waiting.append(seq)


# ---------------------------------------------------------------- the step loop


def _run(order: str = "retire admit decode", arrivals_ignored: bool = False,
         results_by_finish: bool = False) -> Any:
    """run_batched with one knob turned the wrong way."""

    def run_batched(model: Any, requests: list[Request], max_batch: int,
                    arrivals: list[int] | None = None) -> list[list[int]]:
        arrivals = [0] * len(requests) if arrivals is None or arrivals_ignored else arrivals
        seqs = [sol.start(r, model) for r in requests]
        batch = sol.Batch.empty(model, max_batch)
        pending = deque(sorted(range(len(seqs)), key=lambda i: arrivals[i]))
        waiting: deque[Sequence] = deque()
        done: list[Sequence] = []
        for step in range(1000):
            if not (pending or waiting or batch.active):
                break
            while pending and arrivals[pending[0]] <= step:
                waiting.append(seqs[pending.popleft()])
            for phase in order.split():
                if phase == "retire":
                    done += sol.retire(batch)
                elif phase == "admit":
                    done += [s for s in sol.admit(model, waiting, batch) if s.finished]
                elif batch.active:
                    sol.decode_step(model, batch)
        return [s.tokens for s in (done if results_by_finish else seqs)]

    return run_batched


MUTANTS: dict[str, dict[str, Any]] = {
    # the classic bugs first
    "finished_left_in_batch": {"retire": _retire(leaves=lambda why: why == "cancelled")},
    "finished_never_retired": {"retire": lambda batch: []},
    "positions_restart_at_zero": {"decode_step": _decode(position=lambda s, a: 0)},
    "one_shared_generator": {"decode_step": _decode(generator=lambda s, a: a[0].generator)},
    "admits_beyond_max_batch": {"admit": _admit(room=lambda n, cap: n <= cap)},
    "lifo_admission": {"admit": _admit(fifo=False)},
    "rows_not_compacted": {"retire": _retire(compact=False)},
    # positions, rows and generators
    "one_position_for_the_batch": {
        "decode_step": _decode(position=lambda s, a: max(x.position for x in a))},
    "position_one_too_far": {"decode_step": _decode(position=lambda s, a: s.position + 1)},
    "global_generator": {"decode_step": _decode(generator=lambda s, a: None)},
    "rows_compacted_out_of_order": {"retire": _retire(keep_order=False)},
    "prefill_samples_the_first_position": {"prefill": _prefill_first_position},
    "prefill_caches_only_the_last_token": {"prefill": _prefill_last_token_only},
    # admission
    "cancelled_waiting_still_prefilled": {"admit": _admit(prefill_cancelled=True)},
    "done_at_first_token_takes_a_row": {"admit": _admit(finished_takes_a_row=True)},
    # when a sequence ends
    "eos_ignored": {"finish_reason": _finish(eos=lambda s: False)},
    "eos_anywhere_in_the_tokens": {
        "finish_reason": _finish(eos=lambda s: s.request.eos_id in s.tokens)},
    "eos_in_the_prompt_counts": {
        "finish_reason": _finish(eos=lambda s: (s.request.prompt + tuple(s.tokens))[-1]
                                 == s.request.eos_id)},
    "one_token_too_many": {"finish_reason": _finish(at_least=False)},
    "block_size_ignored": {"finish_reason": _finish(limit=lambda s: s.request.max_new_tokens)},
    "cancellation_ignored": {"finish_reason": _finish(cancelled=False)},
    # the waiting queue
    "queue_bound_off_by_one": {"enqueue": _enqueue_off_by_one},
    "refused_yet_queued": {"enqueue": _enqueue_then_refuse},
    "queue_full_without_the_limit": {"enqueue": _enqueue_unnamed_limit},
    # the step loop
    "decode_before_admit": {"run_batched": _run(order="retire decode admit")},
    "arrivals_ignored": {"run_batched": _run(arrivals_ignored=True)},
    "results_in_finishing_order": {"run_batched": _run(results_by_finish=True)},
}

# Hints that teach: for each classic bug, a regex of the cause the first spec test that catches
# it must name in its failure message (tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "finished_left_in_batch": r"finished sequence .*is left in the batch",
    "finished_never_retired": r"retire removes nothing",
    "positions_restart_at_zero": r"positions restart at 0",
    "one_shared_generator": r"one generator for the batch",
    "admits_beyond_max_batch": r"admitted past max_batch",
    "lifo_admission": r"last in first out",
    "rows_not_compacted": r"rows not compacted",
    "one_position_for_the_batch": r"one position for the whole batch",
    "position_one_too_far": r"position one too far",
    "global_generator": r"own seq\.generator",
    "rows_compacted_out_of_order": r"rows out of order",
    "prefill_samples_the_first_position": r"first position's logits",
    "prefill_caches_only_the_last_token": r"only the last prompt token",
    "cancelled_waiting_still_prefilled": r"cancelled waiting sequence is prefilled",
    "done_at_first_token_takes_a_row": r"done at its first token takes a row",
    "eos_ignored": r"eos ignored",
    "eos_anywhere_in_the_tokens": r"eos anywhere",
    "eos_in_the_prompt_counts": r"prompt's eos counts",
    "one_token_too_many": r"off by one",
    "block_size_ignored": r"block_size ignored",
    "cancellation_ignored": r"cancellation ignored",
    "queue_bound_off_by_one": r"off by one",
    "refused_yet_queued": r"refused yet queued",
    "queue_full_without_the_limit": r"does not name the limit",
    "decode_before_admit": r"decode before admit",
    "arrivals_ignored": r"arrivals ignored",
    "results_in_finishing_order": r"results in finishing order",
}

EQUIVALENT: dict[tuple[str, str], str] = {
    ("run_batched", "while pending and arrivals[pending[0]] < step:"):
        "every arrival joins exactly one step later, so the whole schedule shifts by one step: "
        "the order of the forward calls and the tokens are the same, and step numbers are not "
        "observable (the step limit has room for the extra idle step)",
    ("run_batched", "raise RuntimeError(None)"):
        "the step limit's guard: a correct schedule finishes every request within the limit, so "
        "the guard never runs; its message is not part of the contract",
}
