# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec for continuous batching: the waiting queue, admission, prefill, the batched decode step,
retirement with compaction of the cache rows, and the step loop.

Oracles: Hugging Face ``transformers``' GPT2LMHeadModel (random weights from a config, built
offline, eager attention) with the same weights as the library's model: its greedy
``generate``, and for sampled requests its own ``past_key_values`` path with its logits warpers
(temperature, top-k, top-p, chained in its order) and ``torch.multinomial`` drawing from the
request's own seeded generator (float32 probabilities, as the library's sampler draws), one
request at a time; hand-worked schedules (the forward calls recorded with a forward pre-hook).

Tokens are compared exactly, so the models are float64: a batch of another shape sums in
another order, and in float32 that may flip a near-tie between two tokens. The model is the
library's ``reference.model.GPT`` (the course's solutions run on it as given code); ``impl``
provides the scheduler.

Contract:

| clause | tests | oracle |
|---|---|---|
| a request's tokens under continuous batching are its tokens alone with the same seed, whatever joins or leaves beside it: arrival steps, prompt lengths, max_new_tokens, sampling settings, seeds, eos, max_batch | `test_tokens_under_continuous_batching_equal_each_request_alone` | HF's past_key_values path + HF's warpers + `torch.multinomial` with the request's seed, each request alone |
| greedy: each request's tokens are HF's greedy generate of its prompt | `test_greedy_tokens_equal_hf_greedy_generate` | HF `generate(do_sample=False)` |
| each request draws from its own generator: the same request side by side draws the same tokens, another seed others | `test_requests_with_the_same_seed_draw_the_same_tokens_side_by_side` | HF loop with the request's seed |
| eos is per request: a request ends at its own eos (included), another drawing the same id goes on; cancelled, eos, length in that precedence; the prompt never counts | `test_each_request_stops_at_its_own_eos`, `test_finish_reason_hand_worked_example` | HF `generate(eos_token_id=...)`; by hand |
| the length policy: a sequence ends ("length") when it fills block_size, block_size - T + 1 tokens for a prompt of T | `test_a_request_stops_at_block_size` | HF `generate` of that many tokens |
| prefill: one forward of the prompt (1, T) at slots 0..T-1 on its own cache row; the first token from the last position's logits | `test_prefill_hand_worked_example` | hand-worked call; HF's logits |
| decode_step: one forward of the n last tokens (n, 1) at each row's own position over cache rows 0..n-1; one draw per row | `test_decode_step_hand_worked_example` | hand-worked call; HF loop |
| admit: first in first out, up to max_batch, into row len(active); a cancelled waiting one leaves without a forward; one done at its first token takes no row | `test_admit_hand_worked_example`, `test_admission_is_first_in_first_out` | hand-worked |
| retire: a finished or cancelled sequence leaves at once; the others keep their order and move down with their cache rows | `test_retire_hand_worked_example`, `test_a_finished_sequence_leaves_the_batch_at_once` | hand-marked cache rows; a hand-worked schedule, HF's tokens |
| cancellation between steps: no token after it, its tokens a prefix of its tokens alone, the others exact | `test_cancelling_between_steps_leaves_the_others_exact` | HF loop, each request alone |
| run_batched: arrivals by step (a request arriving at step s is admitted at step s), retire then admit then decode each step, tokens in the order of the requests | `test_run_batched_hand_worked_schedule`, `test_run_batched_admits_an_arrival_at_its_own_step` | hand-worked |
| the waiting queue is bounded: past max_waiting, QueueFullError naming the limit, the queue unchanged | `test_enqueue_rejects_beyond_the_bound` | the docstring |
"""

from __future__ import annotations

import re
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from reference.model import GPT, GPTConfig

COMPONENT = "batching"
pytestmark = pytest.mark.batching

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SHAPE = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=100, block_size=16)
BLOCK, VOCAB = SHAPE["block_size"], SHAPE["vocab_size"]
SETTINGS: list[dict[str, Any]] = [
    {"temperature": 0.0},
    {"temperature": 1.0},
    {"temperature": 0.8, "top_k": 10},
    {"temperature": 1.3, "top_p": 0.9},
    {"temperature": 0.7, "top_k": 25, "top_p": 0.8},
]
SAMPLED = SETTINGS[4]


# ---------------------------------------------------------------- the Hugging Face oracle


@cache
def hf_model() -> Any:
    """A float64 GPT2LMHeadModel with random weights (std 0.5: its choices depend on the
    context) and non-trivial biases and LayerNorm affines."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"],
        vocab_size=VOCAB, n_positions=BLOCK, attn_implementation="eager",
        initializer_range=0.5, bos_token_id=None, eos_token_id=None,  # no eos of its own
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval().double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@cache
def our_model() -> GPT:
    """The library's model with HF's weights (Conv1D (in, out) transposed to nn.Linear's)."""
    weights = {k: (v.t().contiguous() if k.endswith(CONV1D) else v).detach().clone()
               for k, v in hf_model().state_dict().items() if k != "lm_head.weight"}
    model = GPT(GPTConfig(**SHAPE)).double().eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    return model


def hf_warpers(temperature: float, top_k: int | None, top_p: float | None) -> Any:
    """Hugging Face's logits warpers, chained in the order its ``generate`` applies them."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain: list[Any] = [TemperatureLogitsWarper(temperature)]
    if top_k is not None:
        chain.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        chain.append(TopPLogitsWarper(top_p))

    def apply(logits: Tensor) -> Tensor:
        for warper in chain:
            logits = warper(None, logits)
        return logits

    return apply


@cache
def alone(prompt: tuple[int, ...], max_new_tokens: int, seed: int, eos_id: int | None = None,
          temperature: float = 1.0, top_k: int | None = None,
          top_p: float | None = None) -> tuple[int, ...]:
    """The request's tokens alone: HF's past_key_values path, one token per step; greedy is
    argmax, else HF's warpers and ``torch.multinomial`` of the float32 softmax with a generator
    seeded with ``seed``. At most ``block_size - T + 1`` tokens (the length policy)."""
    hf, g = hf_model(), torch.Generator().manual_seed(seed)
    n = min(max_new_tokens, BLOCK - len(prompt) + 1)
    out: list[int] = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # newer HF renames past_key_values
        step = hf(torch.tensor([prompt]), use_cache=True)
        while True:
            logits = step.logits[:, -1]  # (1, V) float64
            if temperature == 0:
                token = logits.argmax(-1)
            else:
                scores = hf_warpers(temperature, top_k, top_p)(logits)
                token = torch.multinomial(scores.float().softmax(-1), 1, generator=g)[:, 0]
            out.append(int(token))
            if len(out) == n or out[-1] == eos_id:
                return tuple(out)
            step = hf(token[:, None], past_key_values=step.past_key_values, use_cache=True)


def hf_greedy(prompt: tuple[int, ...], n: int, eos_id: int | None = None) -> list[int]:
    """HF's own greedy ``generate``: the new tokens, ending at eos when it is drawn."""
    idx = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model().generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                  max_new_tokens=n, eos_token_id=eos_id,
                                  pad_token_id=0 if eos_id is None else eos_id)
    tokens: list[int] = out[0, len(prompt):].tolist()
    return tokens


def expected(r: Any) -> tuple[int, ...]:
    """The tokens of the request ``r`` alone (a greedy one may have no seed)."""
    seed = 0 if r.seed is None else r.seed
    return alone(r.prompt, r.max_new_tokens, seed, r.eos_id, r.temperature, r.top_k, r.top_p)


def prompt_of(length: int, seed: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, VOCAB, (length,), generator=g).tolist())


def tokens_cause(got: Any, alone_: tuple[int, ...]) -> str:
    """A general hint for a request whose tokens differ from its tokens alone."""
    if len(got) > len(alone_) and tuple(got[:len(alone_)]) == alone_:
        return ("likely cause: a request drew past its end: a finished sequence left in the "
                "batch, or finish_reason (eos, length) wrong")
    if len(got) < len(alone_) and tuple(got) == alone_[:len(got)]:
        return "likely cause: a request ended too early (finish_reason, or its result cut short)"
    return ("likely cause: rows mixed up: each row at its own position, on its own cache row, "
            "drawing with its own generator")


# ---------------------------------------------------------------- recording the forward calls


Call = tuple[list[list[int]], list[list[int]] | None, int | None]


@contextmanager
def recording(model: GPT) -> Iterator[list[Call]]:
    """Every forward call of ``model`` as (idx, input_pos, rows of the cache it was given)."""
    calls: list[Call] = []

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        idx = kwargs.get("idx", args[0] if args else None)
        pos, cache_ = kwargs.get("input_pos"), kwargs.get("cache")
        calls.append((idx.tolist(), None if pos is None else pos.tolist(),
                      None if cache_ is None else cache_.batch_size))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def positions(calls: list[Call]) -> list[tuple[list[list[int]] | None, int | None]]:
    return [(pos, rows) for _, pos, rows in calls]


def drive(impl: Any, model: GPT, requests: list[Any], max_batch: int, arrivals: list[int],
          cancels: dict[int, int]) -> tuple[list[Any], dict[int, int]]:
    """The documented step loop written out, with request i cancelled between steps at step
    ``cancels[i]``; returns the sequences and how many tokens each had when cancelled."""
    seqs = [impl.start(r, model) for r in requests]
    batch, waiting = impl.Batch.empty(model, max_batch), deque()
    had: dict[int, int] = {}
    for step in range(200):
        if all(s.finished is not None for s in seqs):
            return seqs, had
        for i, seq in enumerate(seqs):  # between two steps
            if cancels.get(i) == step and seq.finished is None:
                seq.cancelled, had[i] = True, len(seq.tokens)
        impl.retire(batch)  # (before the arrivals join: retire never looks at them)
        for i, seq in enumerate(seqs):
            if arrivals[i] == step:
                impl.enqueue(waiting, seq, len(seqs))
        impl.admit(model, waiting, batch)
        if batch.active:
            impl.decode_step(model, batch)
    raise AssertionError(f"requests still unfinished after 200 steps: "
                         f"{[(s.request.prompt, s.tokens, s.finished) for s in seqs]}")


@st.composite
def workloads(draw: Any, n_max: int = 5) -> tuple[list[Any], list[int], int]:
    """Requests (prompts of 1-12 tokens, 1-10 new, any settings, seeds, sometimes an eos the
    request draws), the step each arrives at (0-6) and max_batch (1-4)."""
    from reference.batching import Request

    requests, arrivals = [], []
    for _ in range(draw(st.integers(1, n_max), label="requests")):
        prompt = prompt_of(draw(st.integers(1, 12)), draw(st.integers(0, 2**16)))
        settings = draw(st.sampled_from(SETTINGS))
        n, seed = draw(st.integers(1, 10)), draw(st.integers(0, 2**16))
        free = alone(prompt, n, seed, None, **settings)
        eos = draw(st.one_of(st.none(), st.sampled_from(free)), label="eos")  # one it draws
        requests.append(Request(prompt, n, eos_id=eos, seed=seed, **settings))
        arrivals.append(draw(st.integers(0, 6), label="arrival"))
    return requests, arrivals, draw(st.integers(1, 4), label="max_batch")


# ---------------------------------------------------------------- one exercise at a time
# Hand-worked first: with a classic bug, the run stops here with its likely cause.


def test_enqueue_rejects_beyond_the_bound(impl: Any) -> None:
    from reference.batching import Request

    seqs = [impl.start(Request((i,), 2), our_model()) for i in range(3)]
    waiting: deque[Any] = deque()
    impl.enqueue(waiting, seqs[0], 2)
    impl.enqueue(waiting, seqs[1], 2)
    try:
        impl.enqueue(waiting, seqs[2], 2)
    except impl.QueueFullError as error:
        assert re.search("max_waiting=2", str(error)), (
            f"likely cause: the QueueFullError does not name the limit: {str(error)!r}, want "
            "a message with 'max_waiting=2'")
    else:
        pytest.fail("likely cause: the bound is off by one: a queue of max_waiting=2 took a "
                    "third; refuse when len(waiting) >= max_waiting")
    assert list(waiting) == seqs[:2], (
        "likely cause: refused yet queued: check the bound before appending"
        if len(waiting) > 2 else "likely cause: the queue is not first in (append on the right)"
    ) + f": the queue holds {[s.request.prompt for s in waiting]}, want [(0,), (1,)]"


def test_finish_reason_hand_worked_example(impl: Any) -> None:
    from reference.batching import Request

    seq = impl.start(Request((5, 7), max_new_tokens=3, eos_id=7), our_model())
    cases: list[tuple[list[int], bool, str | None, str]] = [
        ([], False, None, "the prompt's eos counts: only the drawn tokens (seq.tokens) end a "
                          "request"),  # the prompt's 7 is not a drawn token
        ([5], False, None, "a request ended before any reason to"),
        ([5, 7], False, "eos", "eos ignored: a last token equal to the request's eos_id ends it"),
        ([7, 5], False, None, "eos anywhere in the tokens: only the last token ends it"),
        ([5, 6, 5], False, "length", "off by one: 'length' once len(tokens) >= seq.max_tokens"),
        ([5, 6, 7], False, "eos", "eos comes before length"),  # eos at the last allowed token
        ([5], True, "cancelled", "cancellation ignored: a cancelled sequence is finished "
                                 "('cancelled')"),
        ([5, 7], True, "cancelled", "the precedence: cancelled, then eos, then length"),
    ]
    for tokens, cancelled, want, cause in cases:
        seq.tokens, seq.cancelled = tokens, cancelled
        got = impl.finish_reason(seq)
        assert got == want, (f"likely cause: {cause}; tokens {tokens}, cancelled={cancelled}: "
                             f"{got!r}, want {want!r}")
    no_eos = impl.start(Request((1,), max_new_tokens=2), our_model())
    no_eos.tokens = [0]
    assert impl.finish_reason(no_eos) is None, "likely cause: eos_id=None ended a request"
    capped = impl.start(Request(prompt_of(15, seed=2), max_new_tokens=5), our_model())
    capped.tokens = [1, 2]  # 15 + 2 = block_size + 1: full
    assert impl.finish_reason(capped) == "length", (
        "likely cause: block_size ignored: compare with seq.max_tokens (max_new_tokens capped to "
        "fit the cache), not the request's max_new_tokens; a sequence that fills block_size runs on")


def test_prefill_hand_worked_example(impl: Any) -> None:
    """The prompt (5, 6, 7) into row 1 of a 2-row cache: one call, slots 0-2 written there and
    nowhere else; the first token is HF's argmax at the last position."""
    from reference.batching import Request

    seq = impl.start(Request((5, 6, 7), 4, temperature=0.0), our_model())
    batch = impl.Batch.empty(our_model(), 2)
    with recording(our_model()) as calls:
        impl.prefill(our_model(), seq, batch.cache.rows(1, 2))
    assert calls == [([[5, 6, 7]], [[0, 1, 2]], 1)], (
        "likely cause: only the last prompt token is run (the rest never cached): prefill the "
        "whole prompt (1, T) at slots 0..T-1" if [idx for idx, _, _ in calls] == [[[7]]] else
        "likely cause: prefill is not one forward of the whole prompt (1, T) at slots 0..T-1 "
        "on the cache it is given"
    ) + f": forward calls {calls}"
    with torch.no_grad():
        greedy_at = hf_model()(torch.tensor([[5, 6, 7]])).logits[0].argmax(-1).tolist()
    assert seq.tokens == list(alone((5, 6, 7), 1, 0, None, 0.0)), (
        "likely cause: the first token drawn from the first position's logits: it comes from "
        "the last position's, logits[:, -1]" if seq.tokens == greedy_at[:1] else
        "likely cause: the first token is not drawn from the last position's logits with the "
        "request's settings and generator"
    ) + f": first token {seq.tokens}, want {greedy_at[-1:]}"
    assert seq.position == 3, f"likely cause: seq.position is not T after the prefill: {seq.position}"
    for layer in (*batch.cache.k, *batch.cache.v):
        written = layer.abs().sum(dim=(1, 3)) > 0  # (rows, slots)
        assert written.tolist() == [[False] * BLOCK, [True] * 3 + [False] * (BLOCK - 3)], (
            "likely cause: prefill writes outside the cache row it is given (slots 0..T-1 of "
            f"that row only); slots written (rows x slots): {written.int().tolist()}"
        )


def test_decode_step_hand_worked_example(impl: Any) -> None:
    """A (3-token prompt, sampled) and B (1 token, greedy) after their prefills: one call with
    their first tokens at positions [[3], [1]] over rows 0-1; each draws its own next token."""
    from reference.batching import Request

    a = impl.start(Request((5, 6, 7), 4, seed=3, **SAMPLED), our_model())
    b = impl.start(Request((9,), 4, temperature=0.0), our_model())
    batch = impl.Batch.empty(our_model(), 3)
    impl.prefill(our_model(), a, batch.cache.rows(0, 1))
    impl.prefill(our_model(), b, batch.cache.rows(1, 2))
    batch.active = [a, b]
    with recording(our_model()) as calls:
        impl.decode_step(our_model(), batch)
    first = [a.tokens[0], b.tokens[0]]
    wrong_positions = {
        "[[0], [0]]": "positions restart at 0: each row is at its own seq.position, the slot of "
                      "its last token",
        "[[3], [3]]": "one position for the whole batch: each row is at its own seq.position",
        "[[4], [2]]": "a position one too far: the last token sits at seq.position, not "
                      "seq.position + 1",
    }
    pos = str(calls[0][1]) if len(calls) == 1 else ""
    cause = wrong_positions.get(pos, "decode_step is not one forward of each row's last token "
                                     "(n, 1) at its own position over cache rows 0..n-1")
    assert calls == [([[first[0]], [first[1]]], [[3], [1]], 2)], (
        f"likely cause: {cause}: forward calls {calls}, want one of ids {[[t] for t in first]} "
        "at [[3], [1]] on 2 rows"
    )
    for seq in (a, b):
        assert tuple(seq.tokens) == expected(seq.request)[:2], (
            "likely cause: a row does not draw with its own request's settings and its own "
            f"generator (seq.generator): {seq.request}: {seq.tokens}, alone "
            f"{list(expected(seq.request))}"
        )


def test_retire_hand_worked_example(impl: Any) -> None:
    """Rows 0-4: A (eos), B, C (cancelled), D, E (length): B and D move down to rows 0 and 1
    with their cache rows (marked 2 and 4 here); returns [A, C, E] with their reasons."""
    from reference.batching import Request

    seqs = [impl.start(Request((1,), 3, eos_id=9), our_model()) for _ in range(5)]
    for seq, tokens in zip(seqs, ([4, 9], [4], [4], [4, 5], [4, 5, 6]), strict=True):
        seq.tokens = tokens
    seqs[2].cancelled = True
    batch = impl.Batch.empty(our_model(), 5)
    for layer in (*batch.cache.k, *batch.cache.v):
        for row in range(5):
            layer[row] = row + 1.0  # row i holds the value i + 1 everywhere
    batch.active = list(seqs)
    a, b, c, d, e = seqs
    left = impl.retire(batch)
    assert left == [a, c, e], (
        "likely cause: retire removes nothing: every sequence with a finish_reason leaves at once"
        if not left else
        "likely cause: a finished sequence (eos or length) is left in the batch: every sequence "
        "whose finish_reason is not None leaves, not only the cancelled" if left == [c] else
        "likely cause: retire does not return the sequences whose finish_reason is not None, "
        "in row order"
    ) + f": left {[seqs.index(s) for s in left]}, want rows [0, 2, 4]"
    assert [s.finished for s in (a, c, e)] == ["eos", "cancelled", "length"], (
        "likely cause: seq.finished is not set to its finish_reason: "
        f"{[s.finished for s in (a, c, e)]}")
    assert batch.active == [b, d] and b.finished is None and d.finished is None, (
        "likely cause: rows out of order: the kept sequences keep their order, each moving down"
        if batch.active == [d, b] else "likely cause: batch.active is not the kept sequences"
    ) + f": active rows {[seqs.index(s) for s in batch.active]}, want [1, 3]"
    for layer in (*batch.cache.k, *batch.cache.v):
        marks = [layer[row].unique().tolist() for row in range(2)]
        assert marks == [[2.0], [4.0]], (
            "likely cause: rows not compacted: copy each kept sequence's cache row down with it "
            "(cache.copy_row(old, new))" if marks == [[1.0], [2.0]] else
            "likely cause: the cache rows did not move with their sequences"
        ) + f": rows 0-1 hold the cache rows {marks}, want B's and D's"


def test_admit_hand_worked_example(impl: Any) -> None:
    """max_batch 2, waiting [A, B (cancelled), C (max_new_tokens=1), D, E]: A to row 0, B out
    unprefilled, C prefilled and out with its one token, D to row 1 (over C's keys), E waits."""
    from reference.batching import Request

    prompts = [(1, 2), (3,), (4, 5, 6), (7,), (8, 9)]
    requests = [Request(p, 1 if i == 2 else 5, temperature=0.0) for i, p in enumerate(prompts)]
    seqs = [impl.start(r, our_model()) for r in requests]
    seqs[1].cancelled = True
    batch, waiting = impl.Batch.empty(our_model(), 2), deque(seqs)
    with recording(our_model()) as calls:
        try:
            taken = impl.admit(our_model(), waiting, batch)
        except (IndexError, ValueError) as error:  # a row past the cache's max_batch rows
            pytest.fail(f"likely cause: admitted past max_batch: admit only while "
                        f"len(batch.active) < max_batch (admit raised {error!r})")
    a, b, c, d, e = seqs
    prefills = [idx for idx, _, _ in calls]
    wrong = {
        "last in first out: take the oldest waiting sequence first (the left end, popleft)":
            [[[8, 9]], [[7]]],
        "a cancelled waiting sequence is prefilled: it leaves without a forward pass":
            [[[1, 2]], [[3]], [[4, 5, 6]], [[7]]],
        "a sequence done at its first token takes a row: only an unfinished one joins "
        "batch.active": [[[1, 2]], [[4, 5, 6]]],
        "admitted past max_batch: admit only while len(batch.active) < max_batch":
            [[[1, 2]], [[4, 5, 6]], [[7]], [[8, 9]]],
    }
    cause = next((c_ for c_, v in wrong.items() if v == prefills),
                 "admit is not: oldest first, a cancelled one out without a forward, the rest "
                 "prefilled into row len(active) while len(active) < max_batch")
    assert prefills == [[[1, 2]], [[4, 5, 6]], [[7]]], f"likely cause: {cause}: prefills {calls}"
    assert taken == [a, b, c, d], (
        f"likely cause: admit returns every sequence it took from the queue, in order: taken "
        f"{[s.request.prompt for s in taken]}")
    assert batch.active == [a, d], (
        "likely cause: a sequence done at its first token takes a row: only an unfinished one "
        f"joins batch.active: active {[s.request.prompt for s in batch.active]}")
    assert list(waiting) == [e], "likely cause: admitted past max_batch, or took too few"
    assert [s.finished for s in seqs] == [None, "cancelled", "length", None, None], (
        "likely cause: seq.finished is not set to its finish_reason after the prefill: "
        f"{[s.finished for s in seqs]}")
    assert b.tokens == [] and len(c.tokens) == 1
    impl.decode_step(our_model(), batch)  # D reads its own keys in row 1, not C's
    for seq in (a, d):
        assert tuple(seq.tokens) == expected(seq.request)[:2], (
            "likely cause: a sequence prefilled into a row other than len(batch.active): "
            f"{seq.request.prompt}: {seq.tokens}, alone {list(expected(seq.request))}"
        )


def test_admission_is_first_in_first_out(impl: Any) -> None:
    """Five requests queued in order fill three rows with the first three; when the first
    leaves, the fourth joins. In run_batched, arrivals at steps [2, 0, 1] are served in that
    order of arrival."""
    from reference.batching import Request

    seqs = [impl.start(Request((i,), 5, temperature=0.0), our_model()) for i in range(5)]
    batch, waiting = impl.Batch.empty(our_model(), 3), deque()
    for seq in seqs:
        impl.enqueue(waiting, seq, 5)
    impl.admit(our_model(), waiting, batch)
    assert batch.active == seqs[:3], (
        "likely cause: not first in first out: admit the oldest waiting first: admitted "
        f"{[s.request.prompt for s in batch.active]}")
    seqs[0].cancelled = True
    impl.retire(batch)
    impl.admit(our_model(), waiting, batch)
    assert batch.active == [seqs[1], seqs[2], seqs[3]], (
        "likely cause: retire keeps the others in order and admit appends the oldest waiting: "
        f"after one left: {[s.request.prompt for s in batch.active]}"
    )
    requests = [Request((i,), 2, temperature=0.0) for i in (10, 11, 12)]
    with recording(our_model()) as calls:
        impl.run_batched(our_model(), requests, 1, [2, 0, 1])
    prefills = [idx for idx, pos, _ in calls if pos is not None and pos[0][0] == 0]
    assert prefills == [[[11]], [[12]], [[10]]], (
        "likely cause: arrivals ignored: a request joins the waiting queue at its arrival step"
        if prefills == [[[10]], [[11]], [[12]]] else
        "likely cause: requests not served in their order of arrival"
    ) + f": prefill order {prefills}, want [[[11]], [[12]], [[10]]] (arrivals [2, 0, 1])"


def test_a_finished_sequence_leaves_the_batch_at_once(impl: Any) -> None:
    """max_batch 2: A (3-token prompt, 2 new), B (2, 5 new), C (4, 3 new). A finishes in step
    0; in step 1 it is gone, B has moved to row 0 and C is prefilled into row 1 at once."""
    from reference.batching import Request

    requests = [Request(prompt_of(t, seed=40 + t), n, temperature=0.0)
                for t, n in ((3, 2), (2, 5), (4, 3))]
    with recording(our_model()) as calls:
        got = impl.run_batched(our_model(), requests, 2)
    decode_first = [([[0, 1, 2]], 1), ([[0, 1]], 1), ([[3], [2]], 2), ([[3]], 1),
                    ([[0, 1, 2, 3]], 1), ([[4], [4]], 2), ([[5], [5]], 2)]
    assert positions(calls) == [
        ([[0, 1, 2]], 1), ([[0, 1]], 1), ([[3], [2]], 2),  # step 0: prefill A, B; decode both
        ([[0, 1, 2, 3]], 1), ([[3], [4]], 2),  # step 1: A gone; C prefilled; decode B, C
        ([[4], [5]], 2),  # step 2: C done
        ([[5]], 1),  # step 3: C gone, B alone
    ], (
        "likely cause: decode before admit: each step is retire, then admit, then decode"
        if positions(calls) == decode_first else
        "likely cause: the step is not retire, then admit, then decode"
    ) + f": (input_pos, cache rows) of each forward call: {positions(calls)}"
    alone_ = [expected(r) for r in requests]
    if [tuple(t) for t in got] != alone_ and sorted(map(tuple, got)) == sorted(alone_):
        pytest.fail("likely cause: results in finishing order: return each request's tokens in "
                    f"the order of the requests: {got}, alone {alone_}")
    for r, tokens in zip(requests, got, strict=True):
        assert tuple(tokens) == expected(r), f"{r.prompt}: {tokens}, alone {expected(r)}"


def test_run_batched_hand_worked_schedule(impl: Any) -> None:
    """max_batch 1, A (prompt (1, 2, 3), 2 new) and B (prompt (4,), 2 new): prefill A at
    slots 0-2, decode at 3; A leaves, prefill B at 0, decode at 1. Tokens in request order."""
    from reference.batching import Request

    a, b = Request((1, 2, 3), 2, temperature=0.0), Request((4,), 2, temperature=0.0)
    with recording(our_model()) as calls:
        got = impl.run_batched(our_model(), [a, b], 1)
    assert positions(calls) == [([[0, 1, 2]], 1), ([[3]], 1), ([[0]], 1), ([[1]], 1)], (
        f"(input_pos, cache rows) of each forward call: {positions(calls)}"
    )
    assert [calls[0][0], calls[2][0]] == [[[1, 2, 3]], [[4]]]
    assert got == [list(expected(a)), list(expected(b))], f"tokens {got}"


def test_run_batched_admits_an_arrival_at_its_own_step(impl: Any) -> None:
    """max_batch 2, A (prompt (1, 2, 3), 3 new) at step 0 and B (prompt (4,), 2 new) at step 1:
    B is prefilled at step 1 (not 2) and decoded beside A in the same step."""
    from reference.batching import Request

    a, b = Request((1, 2, 3), 3, temperature=0.0), Request((4,), 2, temperature=0.0)
    with recording(our_model()) as calls:
        got = impl.run_batched(our_model(), [a, b], 2, arrivals=[0, 1])
    assert positions(calls) == [([[0, 1, 2]], 1), ([[3]], 1), ([[0]], 1), ([[4], [1]], 2)], (
        "likely cause: a request that arrives at step s joins the queue at step s, before that "
        f"step's admit: (input_pos, cache rows) of each forward call: {positions(calls)}"
    )
    assert got == [list(expected(a)), list(expected(b))], f"tokens {got}"


# ---------------------------------------------------------------- the whole scheduler


def test_greedy_tokens_equal_hf_greedy_generate(impl: Any) -> None:
    """Five greedy requests, prompts of 1 to 7 tokens, arriving at steps 0-5 into a batch of
    two: each one's tokens are HF's greedy generate of its prompt."""
    from reference.batching import Request

    specs = [(7, 9), (1, 6), (4, 8), (2, 3), (5, 7)]  # (prompt length, new tokens)
    requests = [Request(prompt_of(t, seed=10 + i), n, temperature=0.0)
                for i, (t, n) in enumerate(specs)]
    got = impl.run_batched(our_model(), requests, 2, [0, 0, 1, 2, 5])
    for r, tokens in zip(requests, got, strict=True):
        want = hf_greedy(r.prompt, r.max_new_tokens)
        assert tokens == want, f"prompt {r.prompt}: got {tokens}, HF generate {want}"
    assert len({t for ts in got for t in ts}) > 5, "test setup: varied continuations"


def test_requests_with_the_same_seed_draw_the_same_tokens_side_by_side(impl: Any) -> None:
    """Three copies of one sampled request in one batch draw identical tokens, its tokens
    alone; a fourth with another seed draws others (a generator shared by the batch would
    interleave their draws)."""
    from reference.batching import Request

    same = Request(prompt_of(3, seed=1), 10, seed=7, **SAMPLED)
    other = Request(same.prompt, 10, seed=8, **SAMPLED)
    got = impl.run_batched(our_model(), [same, same, same, other], 4)
    for tokens in got[:3]:
        assert tuple(tokens) == expected(same), (
            "likely cause: one generator for the batch (or the global one): each row draws with "
            f"its own seq.generator: the same request side by side: {got[:3]}, alone "
            f"{list(expected(same))}"
        )
    assert tuple(got[3]) == expected(other) != expected(same), (
        f"seed 8: got {got[3]}, alone {list(expected(other))}"
    )


def test_each_request_stops_at_its_own_eos(impl: Any) -> None:
    """Request A's eos is a token that B draws too: A stops there (eos included); B, without
    an eos, draws that id and goes on."""
    from reference.batching import Request

    a_prompt, b_prompt = prompt_of(3, seed=21), prompt_of(2, seed=22)
    a_free, b_free = hf_greedy(a_prompt, 10), hf_greedy(b_prompt, 10)
    shared = [t for t in a_free[:6] if t in b_free[:-1]]
    assert shared, f"test setup: no token both draw: {a_free}, {b_free}"
    eos = shared[0]
    a = Request(a_prompt, 10, temperature=0.0, eos_id=eos)
    b = Request(b_prompt, 10, temperature=0.0)
    got = impl.run_batched(our_model(), [a, b], 2)
    want = hf_greedy(a_prompt, 10, eos_id=eos)
    assert want[-1] == eos and len(want) < 10, f"test setup: HF did not stop at {eos}: {want}"
    assert got[0] == want, f"A with eos {eos}: got {got[0]}, HF generate {want}"
    assert got[1] == b_free, f"B (no eos) drew {got[1]}, HF generate {b_free}"


def test_a_request_stops_at_block_size(impl: Any) -> None:
    """block_size 16: a prompt of 12 gets 5 tokens of its 10, a prompt of 16 one; each is
    HF's generate of that many tokens, beside a request that is not capped."""
    from reference.batching import Request

    long_, full, short = (Request(prompt_of(t, seed=30 + t), 10, temperature=0.0)
                          for t in (12, 16, 2))
    got = impl.run_batched(our_model(), [long_, full, short], 3)
    assert [len(t) for t in got] == [5, 1, 10], f"token counts {[len(t) for t in got]}"
    for r, tokens in zip((long_, full, short), got, strict=True):
        want = hf_greedy(r.prompt, len(tokens))
        assert tokens == want, f"prompt of {len(r.prompt)}: got {tokens}, HF {want}"


@given(workload=workloads())
def test_tokens_under_continuous_batching_equal_each_request_alone(
    impl: Any, workload: tuple[list[Any], list[int], int]
) -> None:
    """Requests join at their arrival steps and leave as they finish; each one's tokens are
    the ones it draws alone with the same seed."""
    requests, arrivals, max_batch = workload
    got = impl.run_batched(our_model(), requests, max_batch, arrivals)
    assert len(got) == len(requests), f"{len(got)} results for {len(requests)} requests"
    for i, (r, tokens) in enumerate(zip(requests, got, strict=True)):
        assert tuple(tokens) == expected(r), (
            f"{tokens_cause(tokens, expected(r))}: request {i} of {len(requests)} (arrivals "
            f"{arrivals}, max_batch {max_batch}): {r}: got {tokens}, alone {list(expected(r))}"
        )


@given(workload=workloads(n_max=4), data=st.data())
def test_cancelling_between_steps_leaves_the_others_exact(
    impl: Any, workload: tuple[list[Any], list[int], int], data: Any
) -> None:
    """Some requests are cancelled between two steps (waiting or running): each ends with the
    tokens it had then (a prefix of its tokens alone) and 'cancelled'; the others are exact."""
    requests, arrivals, max_batch = workload
    cancels = {i: data.draw(st.integers(arrivals[i], arrivals[i] + 6), label=f"cancel {i}")
               for i in range(len(requests)) if data.draw(st.booleans(), label=f"cancel {i}?")}
    seqs, had = drive(impl, our_model(), requests, max_batch, arrivals, cancels)
    for i, (r, seq) in enumerate(zip(requests, seqs, strict=True)):
        whole = expected(r)
        if i in had:
            assert seq.finished == "cancelled", f"request {i}: finished {seq.finished!r}"
            assert len(seq.tokens) == had[i], (
                "likely cause: a cancelled sequence stayed in the batch: cancelled comes first "
                f"in finish_reason; request {i} drew {len(seq.tokens) - had[i]} tokens after its "
                "cancellation"
            )
            assert tuple(seq.tokens) == whole[: len(seq.tokens)], (
                f"cancelled request {i}: {seq.tokens}, alone {list(whole)}"
            )
        else:
            assert tuple(seq.tokens) == whole, \
                f"{tokens_cause(seq.tokens, whole)}: request {i}: {seq.tokens}, alone {list(whole)}"
            assert seq.finished in ("eos", "length"), f"request {i}: {seq.finished!r}"
