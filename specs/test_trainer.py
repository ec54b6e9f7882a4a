"""Spec for task `trainer`: batches, the loss, AdamW, the schedule, clipping, accumulation.

Oracles: ``torch.randint`` (batch starts), ``torch.nn.functional.cross_entropy``,
``torch.optim.AdamW``, ``torch.nn.utils.clip_grad_norm_`` and plain autograd on one big batch
(accumulation), plus hand-computed tables for the schedule. Float64 is used wherever a tight
tolerance must separate a correct formula from a subtly wrong one.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

COMPONENT = "trainer"
pytestmark = pytest.mark.trainer


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- get_batch


@given(
    n=st.integers(2, 300),
    block_frac=st.floats(0.0, 1.0),
    batch_size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_get_batch_targets_are_inputs_shifted_by_one(
    impl: Any, n: int, block_frac: float, batch_size: int, seed: int
) -> None:
    block_size = 1 + int(block_frac * (n - 2))  # 1 .. n - 1
    data = np.random.default_rng(seed).permutation(n).astype(np.uint16)  # distinct tokens
    x, y = impl.get_batch(data, block_size, batch_size, generator=_gen(seed))
    assert x.shape == y.shape == (batch_size, block_size), (x.shape, y.shape)
    position = {int(tok): i for i, tok in enumerate(data)}
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        start = position[row_x[0]]
        assert row_x == data[start : start + block_size].tolist(), "x is not a contiguous window"
        assert row_y == data[start + 1 : start + block_size + 1].tolist(), (
            "y must be the same window shifted by one token: y[b, t] == x[b, t + 1]"
        )


def test_get_batch_reaches_every_start_index_and_no_other(impl: Any) -> None:
    n, block_size = 20, 5
    data = np.arange(n, dtype=np.uint16)  # token value == its position
    generator = _gen(0)
    starts: set[int] = set()
    for _ in range(10):
        x, _ = impl.get_batch(data, block_size, 64, generator=generator)
        starts |= set(x[:, 0].tolist())
    expected = set(range(n - block_size))  # 0 .. 14: the last one's target ends at data[-1]
    assert starts == expected, (
        f"missing starts {sorted(expected - starts)}, impossible starts {sorted(starts - expected)}"
    )


def test_get_batch_draws_starts_with_torch_randint_from_the_generator(impl: Any) -> None:
    """Hand-checkable: the starts are ``torch.randint(len(data) - block_size, (B,))``."""
    data = np.arange(1000, 1100, dtype=np.uint16)
    x, y = impl.get_batch(data, 7, 5, generator=_gen(1234))
    starts = torch.randint(100 - 7, (5,), generator=_gen(1234))
    assert x[:, 0].tolist() == (1000 + starts).tolist()
    assert torch.equal(y, x + 1)
    # The docstring's worked example.
    x, y = impl.get_batch(np.arange(10, dtype=np.uint16), 3, 2, generator=_gen(0))
    assert (x.tolist(), y.tolist()) == ([[4, 5, 6], [3, 4, 5]], [[5, 6, 7], [4, 5, 6]])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_get_batch_reads_a_memmap_into_int64_on_the_device(
    impl: Any, tmp_path: Path, dtype: type[np.unsignedinteger[Any]]
) -> None:
    top = np.iinfo(dtype).max
    tokens = np.array([top, 0, 1, top - 1, 2, 3, top, 5], dtype=dtype)
    tokens.tofile(tmp_path / "tokens.bin")
    data = np.memmap(tmp_path / "tokens.bin", dtype=dtype, mode="r")
    x, y = impl.get_batch(data, 4, 16, generator=_gen(3), device="cpu")
    assert x.dtype == y.dtype == torch.int64, (x.dtype, y.dtype)
    assert x.device.type == y.device.type == "cpu"
    assert set(x.flatten().tolist()) <= {int(t) for t in tokens}, "token values were changed"
    assert int(x.max()) == top or int(y.max()) == top
    again = impl.get_batch(data, 4, 16, generator=_gen(3))
    other = impl.get_batch(data, 4, 16, generator=_gen(4))
    assert torch.equal(again[0], x), "the same seed must give the same batch"
    assert not torch.equal(other[0], x), "a different seed should give a different batch"


# ----------------------------------------------------------------------------- cross-entropy


@given(
    shape=st.sampled_from([(1, 2), (3, 5), (2, 3, 7), (2, 4, 65)]),
    scale=st.floats(0.01, 50.0),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_matches_torch_value_and_gradient(
    impl: Any, shape: tuple[int, ...], scale: float, seed: int
) -> None:
    g = _gen(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).requires_grad_()
    targets = torch.randint(shape[-1], shape[:-1], generator=g)
    loss = impl.cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.reshape(-1, shape[-1]), targets.reshape(-1))
    ref.backward()
    assert loss.shape == (), f"the loss must be a scalar (the mean), got shape {loss.shape}"
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)  # float64: same formula
    torch.testing.assert_close(grad, ref_logits.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("magnitude", [1e4, 1e30])
def test_cross_entropy_stays_finite_at_huge_logits(impl: Any, magnitude: float) -> None:
    logits = torch.tensor(
        [[magnitude, 0.0, -magnitude], [magnitude, magnitude, 0.0], [0.0, -magnitude, 1.0]],
        dtype=torch.float32,
        requires_grad=True,
    )
    targets = torch.tensor([0, 2, 2])
    loss = impl.cross_entropy(logits, targets)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(loss), f"loss is {loss.item()} at logits of size {magnitude:g}"
    assert torch.isfinite(logits.grad).all(), "gradient is not finite at huge logits"
    ref = F.cross_entropy(logits.detach(), targets)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0.0)


def test_cross_entropy_hand_worked_values(impl: Any) -> None:
    uniform = impl.cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))
    assert math.isclose(float(uniform), math.log(4), rel_tol=1e-6), float(uniform)
    # softmax([0, ln 3]) = [1/4, 3/4]: losses ln 4 and ln(4/3), mean ln(4)/2 + ln(4/3)/2.
    two = impl.cross_entropy(torch.tensor([[0.0, math.log(3)]] * 2), torch.tensor([0, 1]))
    assert math.isclose(float(two), 0.5 * math.log(4) + 0.5 * math.log(4 / 3), rel_tol=1e-6)
    # (B, T, V) logits and (B, T) targets: the mean over every position.
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3)]]])
    btv = impl.cross_entropy(logits, torch.tensor([[1, 1]]))
    assert math.isclose(float(btv), 0.5 * math.log(2) + 0.5 * math.log(4 / 3), rel_tol=1e-6)


# ----------------------------------------------------------------------------- AdamW


def _regression_problem(seed: int) -> tuple[list[Tensor], Tensor, Tensor]:
    g = _gen(seed)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(1000, 8, 6, generator=g, dtype=torch.float64)
    y = torch.randn(1000, 8, 3, generator=g, dtype=torch.float64)
    return [w, b], x, y


def test_adamw_matches_torch_adamw_over_1000_steps(impl: Any) -> None:
    """A linear regression with one decayed and one undecayed group, 1000 steps, float64."""
    init, xs, ys = _regression_problem(0)
    runs = []
    for make in (impl.AdamW, torch.optim.AdamW):
        w, b = (t.clone().requires_grad_() for t in init)
        groups = [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}]
        opt = make(groups, lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
        for x, y in zip(xs, ys, strict=True):
            opt.zero_grad()
            ((x @ w + b - y) ** 2).mean().backward()
            opt.step()
        runs.append((w.detach(), b.detach()))
    (w, b), (w_ref, b_ref) = runs
    for name, got, want in (("weight (decayed)", w, w_ref), ("bias (no decay)", b, b_ref)):
        err = (got - want).abs().max().item()
        assert err <= 1e-6, f"{name} differs from torch.optim.AdamW by {err:.3g} after 1000 steps"


@given(
    step=st.integers(1, 2000),
    lr=st.floats(1e-5, 1e-1),
    weight_decay=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
    beta1=st.floats(0.5, 0.99),
    beta2=st.floats(0.9, 0.9999),
    seed=st.integers(0, 2**16),
)
def test_adamw_step_matches_torch_from_any_state(
    impl: Any, step: int, lr: float, weight_decay: float, beta1: float, beta2: float, seed: int
) -> None:
    """One step from a random state (m, v, step) equals torch.optim.AdamW's from that state."""
    g = _gen(seed)
    param = torch.randn(4, 5, generator=g, dtype=torch.float64)
    grad = torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.1
    m = torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.05
    v = torch.rand(4, 5, generator=g, dtype=torch.float64) * 0.01
    hyper = {"lr": lr, "betas": (beta1, beta2), "eps": 1e-8, "weight_decay": weight_decay}
    p, mm, vv = param.clone(), m.clone(), v.clone()
    impl.adamw_step(p, grad, mm, vv, step, **hyper)

    ref = param.clone().requires_grad_()
    opt = torch.optim.AdamW([ref], foreach=False, **hyper)
    ref.grad = grad.clone()
    opt.state[ref] = {
        "step": torch.tensor(float(step - 1)),
        "exp_avg": m.clone(),
        "exp_avg_sq": v.clone(),
    }
    opt.step()
    torch.testing.assert_close(mm, opt.state[ref]["exp_avg"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(vv, opt.state[ref]["exp_avg_sq"], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(p, ref.detach(), rtol=1e-10, atol=1e-12)


def test_adamw_step_hand_worked_first_step(impl: Any) -> None:
    p = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g = torch.tensor([0.5, -0.25], dtype=torch.float64)
    m, v = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    impl.adamw_step(p, g, m, v, 1, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    # m = 0.1 g, v = 0.001 g²; bias-corrected m̂ = g, v̂ = g²; step = lr * g / (|g| + eps).
    want = torch.tensor(
        [1.0 * 0.99 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 * 0.99 + 0.1 * 0.25 / (0.25 + 1e-8)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(p, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, 0.1 * g, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(v, 0.001 * g * g, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- schedule

# (step, lr) for max_lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=8, computed by hand:
# warm-up (s + 1) / 4; cosine 0.1 + 0.45 * (1 + cos(pi * (s - 4) / 4)); floor 0.1 after step 8.
SMALL_TABLE = [
    (0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0),  # warm-up: step 0 already learns; step 3 = max
    (4, 1.0),  # the cosine starts at max_lr
    (5, 0.1 + 0.45 * (1 + math.sqrt(0.5))),
    (6, 0.55),  # half-way: the mean of max and min
    (7, 0.1 + 0.45 * (1 - math.sqrt(0.5))),
    (8, 0.1), (9, 0.1), (10_000, 0.1),  # the floor
]
# nanoGPT's GPT-2 (124M) recipe: 6e-4 -> 6e-5, 2000 warm-up steps, decay over 600,000 steps.
GPT2_TABLE = [
    (0, 6e-4 / 2000), (999, 3e-4), (1999, 6e-4), (2000, 6e-4),
    (301_000, 3.3e-4), (600_000, 6e-5), (600_001, 6e-5),
]


@pytest.mark.parametrize(
    ("hyper", "table"),
    [
        ({"max_lr": 1.0, "min_lr": 0.1, "warmup_steps": 4, "decay_steps": 8}, SMALL_TABLE),
        ({"max_lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 2000, "decay_steps": 600_000},
         GPT2_TABLE),
        ({"max_lr": 1.0, "min_lr": 0.0, "warmup_steps": 0, "decay_steps": 2},
         [(0, 1.0), (1, 0.5), (2, 0.0), (3, 0.0)]),
        ({"max_lr": 1.0, "min_lr": 0.5, "warmup_steps": 3, "decay_steps": 3},
         [(0, 1 / 3), (2, 1.0), (3, 1.0), (4, 0.5)]),
    ],
    ids=["small", "gpt2", "no-warmup", "no-decay-phase"],
)
def test_cosine_lr_matches_hand_computed_table_at_boundaries(
    impl: Any, hyper: dict[str, Any], table: list[tuple[int, float]]
) -> None:
    got = [(step, impl.cosine_lr(step, **hyper)) for step, _ in table]
    bad = [(s, lr, want) for (s, lr), (_, want) in zip(got, table, strict=True)
           if not math.isclose(lr, want, rel_tol=1e-9, abs_tol=1e-15)]
    assert not bad, f"(step, got, expected) off the hand-computed table: {bad}"


@given(
    warmup=st.integers(0, 50),
    decay_extra=st.integers(0, 200),
    max_lr=st.floats(1e-5, 1.0),
    floor=st.floats(0.0, 1.0),
)
def test_cosine_lr_rises_then_falls_within_its_bounds(
    impl: Any, warmup: int, decay_extra: int, max_lr: float, floor: float
) -> None:
    min_lr = floor * max_lr
    hyper = {"max_lr": max_lr, "min_lr": min_lr, "warmup_steps": warmup,
             "decay_steps": warmup + decay_extra}
    lrs = [impl.cosine_lr(s, **hyper) for s in range(warmup + decay_extra + 5)]
    tol = 1e-12 * max_lr
    assert all(0 < lr <= max_lr + tol for lr in lrs[:warmup]), "warm-up lr outside (0, max_lr]"
    assert all(min_lr - tol <= lr <= max_lr + tol for lr in lrs[warmup:]), "lr outside bounds"
    assert all(a <= b + tol for a, b in itertools.pairwise(lrs[: warmup + 1])), "warm-up falls"
    assert all(a >= b - tol for a, b in itertools.pairwise(lrs[warmup:])), "decay rises"
    assert math.isclose(lrs[warmup], max_lr, rel_tol=1e-9), "the cosine must start at max_lr"
    assert math.isclose(lrs[-1], min_lr, rel_tol=1e-9, abs_tol=tol), "must end at min_lr"


# ----------------------------------------------------------------------------- clipping


@given(
    shapes=st.lists(st.sampled_from([(3,), (2, 4), (5, 1), (1,)]), min_size=1, max_size=5),
    frozen=st.lists(st.booleans(), min_size=5, max_size=5),
    log_scale=st.floats(-3.0, 3.0),
    max_norm=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**16),
)
def test_clip_grad_norm_matches_torch_including_frozen_parameters(
    impl: Any,
    shapes: list[tuple[int, ...]],
    frozen: list[bool],
    log_scale: float,
    max_norm: float,
    seed: int,
) -> None:
    g = _gen(seed)

    def make() -> list[Tensor]:
        params = []
        for shape, is_frozen in zip(shapes, frozen, strict=False):
            p = torch.zeros(shape, dtype=torch.float64, requires_grad=not is_frozen)
            if not is_frozen:
                p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * 10**log_scale
            params.append(p)
        return params

    state = g.get_state()
    params = make()
    g.set_state(state)
    ref_params = make()
    norm = impl.clip_grad_norm(iter(params), max_norm)  # any iterable, as model.parameters()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
    torch.testing.assert_close(torch.as_tensor(norm, dtype=torch.float64),
                               ref_norm.to(torch.float64), rtol=1e-12, atol=1e-15,
                               msg="the returned pre-clip norm differs")
    for p, ref in zip(params, ref_params, strict=True):
        if ref.grad is None:
            assert p.grad is None, "a frozen parameter (no grad) must stay without one"
        else:
            torch.testing.assert_close(p.grad, ref.grad, rtol=1e-12, atol=1e-15)


def test_clip_grad_norm_hand_worked_example_and_no_scaling_up(impl: Any) -> None:
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    norm = impl.clip_grad_norm([a, b], 1.0)
    assert math.isclose(float(norm), 5.0, rel_tol=1e-6), "the global norm of (3, 4) is 5"
    torch.testing.assert_close(a.grad, torch.tensor([0.6]), rtol=1e-5, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.8]), rtol=1e-5, atol=0)
    small = torch.zeros(2, requires_grad=True)
    small.grad = torch.tensor([0.03, 0.04])
    norm = impl.clip_grad_norm([small], 1.0)
    assert math.isclose(float(norm), 0.05, rel_tol=1e-6)
    assert torch.equal(small.grad, torch.tensor([0.03, 0.04])), "grads under the limit must stay"


# ----------------------------------------------------------------------------- train step


class _TinyLM(nn.Module):
    """A bigram-plus-position language model: enough to make every gradient non-trivial."""

    def __init__(self, vocab: int = 11, block: int = 6, width: int = 8) -> None:
        super().__init__()
        g = _gen(7)
        self.wte = nn.Parameter(torch.randn(vocab, width, generator=g, dtype=torch.float64))
        self.wpe = nn.Parameter(torch.randn(block, width, generator=g, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(width, vocab, generator=g, dtype=torch.float64))

    def forward(self, idx: Tensor) -> Tensor:
        h = torch.tanh(self.wte[idx] + self.wpe[: idx.shape[1]])  # (B, T, C)
        return h @ self.head  # (B, T, V)


def _batches(k: int, batch: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    data = torch.randint(11, (500,), generator=_gen(seed))
    out = []
    g = _gen(seed + 1)
    for _ in range(k):
        starts = torch.randint(len(data) - 6, (batch,), generator=g)
        x = torch.stack([data[i : i + 6] for i in starts])
        y = torch.stack([data[i + 1 : i + 7] for i in starts])
        out.append((x, y))
    return out


@pytest.mark.parametrize("grad_clip", [None, 0.05])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_k_micro_batches_equals_one_batch_k_times_larger(
    impl: Any, k: int, grad_clip: float | None
) -> None:
    micro = _batches(k, 3, seed=k)
    big = [(torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro]))]
    results = []
    for batches in (micro, big):
        model = _TinyLM()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # linear in the gradient
        stats = impl.train_step(model, opt, batches, grad_clip=grad_clip)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (stats, params), (big_stats, big_params) = results
    with torch.no_grad():
        want_loss = F.cross_entropy(_TinyLM()(big[0][0]).reshape(-1, 11), big[0][1].reshape(-1))
    assert math.isclose(stats.loss, float(want_loss), rel_tol=1e-9), (
        f"reported loss {stats.loss} is not the big batch's mean loss {float(want_loss)}"
    )
    assert math.isclose(big_stats.loss, float(want_loss), rel_tol=1e-9)
    for p, q in zip(params, big_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12,
                                   msg=f"{k} accumulated micro-batches moved the weights "
                                   "differently from one batch {k} times larger")
    if grad_clip is not None:
        assert math.isclose(stats.grad_norm, big_stats.grad_norm, rel_tol=1e-9), (
            stats.grad_norm, big_stats.grad_norm)


def test_train_step_starts_each_step_from_fresh_gradients(impl: Any) -> None:
    """Three steps with AdamW and clipping equal a plain autograd loop that zeroes gradients."""
    steps = [_batches(2, 4, seed=s) for s in (10, 20, 30)]
    model, ref = _TinyLM(), _TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    for micro in steps:
        stats = impl.train_step(model, opt, micro, grad_clip=1.0)
        ref_opt.zero_grad()
        losses = [F.cross_entropy(ref(x).reshape(-1, 11), y.reshape(-1)) for x, y in micro]
        torch.stack(losses).mean().backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        assert math.isclose(stats.loss, float(torch.stack(losses).detach().mean()), rel_tol=1e-9)
        assert math.isclose(stats.grad_norm, float(ref_norm), rel_tol=1e-9), (
            "the gradient norm differs: are gradients zeroed once at the start of each step?"
        )
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=1e-12)
