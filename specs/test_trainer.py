# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec for task `trainer`: batches, the loss, AdamW, the schedule, clipping, accumulation.

Float64 wherever a tight tolerance must separate a correct formula from a subtly wrong one;
float32 where its range is the point (logits in the hundreds), against torch in float64.

Contract:

| clause | tests | oracle |
|---|---|---|
| get_batch: x is a contiguous window of `block_size` tokens, y the same window shifted by one; shape (B, T) | `test_get_batch_targets_are_inputs_shifted_by_one` | distinct tokens located by value |
| get_batch: every start 0 .. len - block_size - 1 is reachable, no other | `test_get_batch_reaches_every_start_index_and_no_other` | the set of starts worked by hand |
| get_batch: starts are one `torch.randint(len - T, (B,))` from `generator` (the docstring's example too) | `test_get_batch_draws_starts_with_torch_randint_from_the_generator` | `torch.randint` with the same seed; hand-worked example |
| get_batch: a uint16/uint32 memmap gives int64 with the values unchanged; seeded, repeatable | `test_get_batch_reads_a_memmap_into_int64_on_the_device` | the file's values, `np.iinfo` extremes |
| get_batch: both tensors on the requested device (str or `torch.device`), from NumPy or tensor data | `test_get_batch_puts_both_tensors_on_the_requested_device` | the `meta` device |
| get_batch: tensor data (int32, int64) gives NumPy's batches; only `generator` is drawn from (global RNG untouched); a generator state saved mid-run and restored repeats the next batches | `test_get_batch_takes_a_tensor_and_draws_only_from_its_generator` | `torch.randint` + NumPy indexing; `torch.random.get_rng_state` |
| cross_entropy: value and gradient for (V,), (N, V), (B, T, V) logits; a scalar | `test_cross_entropy_matches_torch_value_and_gradient` | `F.cross_entropy` (float64) |
| cross_entropy: finite value and gradient at logits of 1e4 and 1e30; -inf (masked) scores beside the target | `test_cross_entropy_stays_finite_at_huge_logits` | `F.cross_entropy`; ln(4/3) by hand |
| cross_entropy: float32 logits in the hundreds, rows far apart, unlikely targets: float32 result, finite, accurate | `test_cross_entropy_of_float32_logits_in_the_hundreds_matches_float64_torch` | `F.cross_entropy` in float64 |
| cross_entropy: any `ignore_index` (-1, -100, a real id, one past V) is left out of sum and mean; all ignored is nan | `test_cross_entropy_leaves_out_any_ignore_index_like_torch` | `F.cross_entropy(ignore_index=...)` |
| cross_entropy: uniform is ln V; worked values; the default ignore_index is -1 | `test_cross_entropy_hand_worked_values` | hand-worked examples |
| the loss, the clip norm, AdamW's moments and `adamw_step` stay on their inputs' device | `test_every_returned_tensor_stays_on_its_inputs_device` | the `meta` device |
| AdamW: 1000 steps with a decayed and an undecayed group | `test_adamw_matches_torch_adamw_over_1000_steps` | `torch.optim.AdamW` |
| adamw_step: one step from any (m, v, step) and any lr, betas, weight decay | `test_adamw_step_matches_torch_from_any_state` | `torch.optim.AdamW` with its state set |
| AdamW: groups with their own lr/betas/eps/decay; params without grad (frozen, unused, sometimes used) skipped, not decayed, step count not advanced; a zero grad still counts; lr changed through `param_groups` every step; `state_dict` (moments and step counts) through `torch.save`/`torch.load` mid-run into a fresh optimizer continues exactly | `test_adamw_matches_torch_across_groups_gradless_params_lr_changes_and_a_reload` | `torch.optim.AdamW` run uninterrupted, incl. its state |
| adamw_step: the first step, bias-corrected, decoupled decay | `test_adamw_step_hand_worked_first_step` | hand-worked example |
| cosine_lr: warm-up from step + 1, cosine from max_lr at warmup to min_lr at decay_steps, the floor after; no warm-up, no decay phase, a one-step decay | `test_cosine_lr_matches_hand_computed_table_at_boundaries` | tables computed by hand; nanoGPT's GPT-2 recipe |
| cosine_lr: rises then falls within [min_lr, max_lr], reaches min_lr at decay_steps | `test_cosine_lr_rises_then_falls_within_its_bounds` | monotonicity and bounds |
| clip_grad_norm: global L2 norm before clipping, grads scaled together, frozen params keep no grad, any iterable | `test_clip_grad_norm_matches_torch_including_frozen_parameters` | `torch.nn.utils.clip_grad_norm_` |
| clip_grad_norm: (3, 4) -> 5 and (0.6, 0.8); never scales up; a 0-dim tensor; no grads or zero grads give 0, no nan | `test_clip_grad_norm_hand_worked_example_and_no_scaling_up` | hand-worked example |
| train_step: k accumulated micro-batches equal one batch k times larger (loss, weights, norm); nan norm without clipping | `test_accumulating_k_micro_batches_equals_one_batch_k_times_larger` | one big batch with `torch.optim.SGD` |
| train_step: every step starts from fresh gradients | `test_train_step_starts_each_step_from_fresh_gradients` | autograd loop with `torch.optim.AdamW`, `clip_grad_norm_` |
| train_step combined: impl's AdamW with scheduled group lrs, k micro-batches, clip default/none/tight/loose, frozen/unused/sometimes-used params (unreached: grad None, not moved), a `(logits, loss)` model, a checkpoint round trip between steps | `test_train_step_with_options_combined_equals_a_plain_autograd_loop` | autograd loop with `torch.optim.AdamW`, `clip_grad_norm_`, `F.cross_entropy` |
"""

from __future__ import annotations

import functools
import io
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from specs.hints import assert_close, likely

COMPONENT = "trainer"
pytestmark = pytest.mark.trainer


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Tests whose classic bugs fail in more than one way report the first failure alone, so that a
# learner reads one message and its likely cause (not "Hypothesis found 2 distinct failures").
one_failure = settings(report_multiple_bugs=False)


# ----------------------------------------------------------------------------- get_batch


STARTS = ("the range of starts is off by one: torch.randint(len(data) - block_size, (B,)) "
          "draws 0 .. len - block_size - 1, the last start whose target window still ends at "
          "data[-1]")


@one_failure
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
    try:
        x, y = impl.get_batch(data, block_size, batch_size, generator=_gen(seed))
    except NotImplementedError:
        raise
    except (RuntimeError, ValueError, IndexError) as error:  # randint(0), a window cut short
        raise AssertionError(f"likely cause: {STARTS} (len {n}, block_size {block_size})\n"
                             f"{type(error).__name__}: {error}") from None
    assert x.shape == y.shape == (batch_size, block_size), (
        (f"likely cause: {STARTS}; " if min(x.shape[-1], y.shape[-1]) < block_size else "")
        + f"x {tuple(x.shape)}, y {tuple(y.shape)}, want {(batch_size, block_size)}")
    position = {int(tok): i for i, tok in enumerate(data)}
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        start = position[row_x[0]]
        assert row_x == data[start : start + block_size].tolist(), "x is not a contiguous window"
        shift = next((k for k in (0, 2) if row_y == data[start + k : start + k + block_size]
                      .tolist()), None)
        assert row_y == data[start + 1 : start + block_size + 1].tolist(), (
            ("likely cause: y is x itself (the targets are not shifted)" if shift == 0 else
             f"likely cause: y is shifted by {shift}, not by one" if shift is not None else
             "y must be the same window shifted by one token")
            + ": y[b, t] == x[b, t + 1], the token that follows x[b, t] in data"
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
    assert x[:, 0].tolist() == (1000 + starts).tolist(), (
        "likely cause: the starts are not one torch.randint(len(data) - block_size, "
        f"(batch_size,), generator=generator); got starts {(x[:, 0] - 1000).tolist()}, want "
        f"{starts.tolist()}")
    assert x.dtype == y.dtype == torch.int64, (
        f"likely cause: the file's dtype is kept ({x.dtype}); convert the windows to int64 "
        "(token ids index the embedding)")
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


def test_get_batch_puts_both_tensors_on_the_requested_device(impl: Any) -> None:
    """The ``meta`` device checks placement without a GPU (and without reading any data)."""
    data = np.arange(40, dtype=np.uint16)
    for source, device in ((data, "meta"), (torch.from_numpy(data.astype(np.int32)),
                                            torch.device("meta"))):
        x, y = impl.get_batch(source, 5, 3, generator=_gen(0), device=device)
        for name, t in (("x", x), ("y", y)):
            assert t.device.type == "meta", (
                f"likely cause: the batch is not moved to the device (x.to(device)); {name} is "
                f"on {t.device}, not the requested device")
            assert t.dtype == torch.int64 and t.shape == (3, 5), (name, t.dtype, t.shape)


def _expected_batch(data: Any, block_size: int, batch_size: int,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The oracle: starts from one ``torch.randint`` call, windows by NumPy indexing."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    rows = np.asarray(data)[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)
    return torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])


def test_get_batch_takes_a_tensor_and_draws_only_from_its_generator(impl: Any) -> None:
    """A tensor gives the batches a NumPy array does; the global RNG is left alone; and a
    generator's state saved mid-run (as a checkpoint does) and restored repeats the batches."""
    data = np.random.default_rng(0).integers(0, 60_000, 300).astype(np.uint16)
    oracle = _gen(5)
    want = [_expected_batch(data, 8, 4, oracle) for _ in range(3)]
    torch.manual_seed(123)
    global_rng = torch.random.get_rng_state()
    g = _gen(5)
    got = [impl.get_batch(data, 8, 4, generator=g)]
    saved = g.get_state()
    for dtype in (np.int32, np.int64):
        g.set_state(saved)  # resume after the first step
        tensor = torch.from_numpy(data.astype(dtype))
        got[1:] = [impl.get_batch(tensor, 8, 4, generator=g) for _ in range(2)]
        for i, ((x, y), (wx, wy)) in enumerate(zip(got, want, strict=True)):
            assert x.dtype == y.dtype == torch.int64, (dtype, x.dtype, y.dtype)
            assert torch.equal(x, wx) and torch.equal(y, wy), (
                f"batch {i} from {dtype.__name__} data differs from torch.randint's windows "
                "(the generator must advance by one randint of batch_size per call, no more)"
            )
    assert torch.equal(torch.random.get_rng_state(), global_rng), (
        "get_batch drew from the global RNG: draw from `generator` only"
    )


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
    flat, t = logits.detach().reshape(-1, shape[-1]), targets.reshape(-1)
    nll = F.cross_entropy(flat, t, reduction="none")
    assert_close(loss, ref, rtol=1e-10, atol=1e-12, what="cross_entropy", wrong={  # float64
        "the loss is summed over the positions, not averaged (the mean over all B*T)": nll.sum(),
        "the loss is summed over time and averaged over the batch; average over every "
        "position": lambda: nll.reshape(shape[:-1]).sum(-1).mean(),
        "the loss reads the wrong logit: -log_softmax(logits)[target], the target's own "
        "column": lambda: F.cross_entropy(flat, (t + 1) % shape[-1]),
    }, hint="the mean over positions of logsumexp(logits) - logits[target]")
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
    assert torch.isfinite(loss), (
        "likely cause: " + (
            "exp overflowed (inf / inf = nan): subtract each row's max before exp"
            if torch.isnan(loss) else
            "a probability underflowed to 0 and its log is -inf: log(softmax) where a "
            "log-softmax is meant ((z - max) - log(sum(exp(z - max)))), or one max for the "
            "whole batch where each row's own max is meant")
        + f"; loss is {loss.item()} at logits of size {magnitude:g}")
    assert torch.isfinite(logits.grad).all(), "gradient is not finite at huge logits"
    ref = F.cross_entropy(logits.detach(), targets)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0.0)
    # A masked vocabulary: -inf scores (probability 0) beside the target stay harmless.
    masked = torch.tensor([[-math.inf, 0.0, math.log(3)], [magnitude, -math.inf, 0.0]],
                          requires_grad=True)
    loss = impl.cross_entropy(masked, torch.tensor([2, 0]))
    loss.backward()
    assert masked.grad is not None and torch.isfinite(masked.grad).all(), masked.grad
    assert math.isclose(float(loss.detach()), 0.5 * math.log(4 / 3), rel_tol=1e-6), float(loss)


@given(
    shape=st.sampled_from([(4, 3), (2, 3, 11), (8, 65)]),
    scale=st.floats(50.0, 1000.0),
    spread=st.floats(0.0, 1000.0),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_of_float32_logits_in_the_hundreds_matches_float64_torch(
    impl: Any, shape: tuple[int, ...], scale: float, spread: float, seed: int
) -> None:
    """exp() overflows float32 past 88 and underflows below -103: rows far apart (``spread``)
    and targets far below their row's maximum (``scale``) must not turn into inf or nan."""
    g = _gen(seed)
    rows = torch.randn((*shape[:-1], 1), generator=g, dtype=torch.float64) * spread
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + rows).float()
    logits.requires_grad_()
    targets = torch.randint(shape[-1], shape[:-1], generator=g)
    loss = impl.cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    wide = logits.detach().double().requires_grad_()
    ref = F.cross_entropy(wide.reshape(-1, shape[-1]), targets.reshape(-1))
    (ref_grad,) = torch.autograd.grad(ref, wide)
    assert loss.dtype == torch.float32, f"float32 logits give a float32 loss, not {loss.dtype}"
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), (float(loss), grad)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)  # float32 arithmetic
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-6)


@one_failure
@given(
    shape=st.sampled_from([(5,), (1, 2), (3, 5), (2, 3, 7), (2, 4, 65)]),
    ignore_index=st.sampled_from([-1, -100, 0, 1, 4, 65]),
    ignored=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_leaves_out_any_ignore_index_like_torch(
    impl: Any, shape: tuple[int, ...], ignore_index: int, ignored: float, seed: int
) -> None:
    """Targets equal to ``ignore_index`` (negative, a real id such as a padding token's, or past
    the vocabulary) count neither in the sum nor in the mean; all ignored gives nan (0 / 0)."""
    g = _gen(seed)
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(shape[-1], shape[:-1], generator=g)
    targets[torch.rand(shape[:-1], generator=g) < ignored] = ignore_index
    not_read = ("likely cause: the ignore_index argument is not read (the default -1 is used "
                f"whatever it says, here {ignore_index})")
    try:
        loss = impl.cross_entropy(logits, targets, ignore_index=ignore_index)
    except NotImplementedError:
        raise
    except (IndexError, RuntimeError) as error:  # an ignored id past the vocabulary was read
        raise AssertionError(f"{not_read}, or its targets are gathered before they are left "
                             f"out\n{type(error).__name__}: {error}") from None
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.reshape(-1, shape[-1]), targets.reshape(-1),
                          ignore_index=ignore_index)
    assert loss.shape == (), f"the loss must be a scalar, got shape {loss.shape}"
    counted = ("likely cause: the ignored positions are counted in the mean: divide the sum by "
               "the number of targets kept")
    if bool((targets == ignore_index).all()):
        assert torch.isnan(loss), (counted + "; " if float(loss) == 0 else "") + (
            f"every target ignored: the mean is 0 / 0 = nan, not {loss}")
        return
    (grad,) = torch.autograd.grad(loss, logits)
    ref.backward()
    flat, t = logits.detach().reshape(-1, shape[-1]), targets.reshape(-1)
    assert_close(loss, ref, rtol=1e-10, atol=1e-12, what="cross_entropy", wrong={  # float64
        counted[len("likely cause: "):]: lambda: F.cross_entropy(
            flat, t, ignore_index=ignore_index, reduction="sum") / len(t),
        not_read[len("likely cause: "):]: lambda: F.cross_entropy(flat, t, ignore_index=-1),
    }, hint="targets equal to ignore_index count neither in the sum nor in the mean")
    torch.testing.assert_close(grad, ref_logits.grad, rtol=1e-8, atol=1e-12)


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
    # Target -1 (the default ignore_index) is left out: the mean of the other row alone, ln 4.
    rows = torch.tensor([[0.0, math.log(3)], [50.0, 0.0]])
    skip = impl.cross_entropy(rows, torch.tensor([0, -1]))
    assert math.isclose(float(skip), math.log(4), rel_tol=1e-6), float(skip)
    pad = impl.cross_entropy(rows, torch.tensor([0, 1]), ignore_index=1)  # id 1 pads
    assert math.isclose(float(pad), math.log(4), rel_tol=1e-6), float(pad)


def test_every_returned_tensor_stays_on_its_inputs_device(impl: Any) -> None:
    """On the ``meta`` device (placement without data or a GPU): the loss, the gradient norm,
    and the optimizer's state all live where the inputs and the parameters do."""
    logits = torch.zeros(2, 3, 5, device="meta", requires_grad=True)
    loss = impl.cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long, device="meta"))
    assert loss.device.type == "meta" and loss.shape == (), (loss.device, loss.shape)
    params = [torch.zeros(shape, device="meta", requires_grad=True) for shape in [(3,), (2, 2)]]
    for p in params:
        p.grad = torch.ones_like(p)
    try:
        norm = impl.clip_grad_norm(params, 1.0)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        if "meta" not in str(error):
            raise
        raise AssertionError(
            "likely cause: the norm is turned into a Python number (float(), .item()); return "
            f"the 0-dim tensor where the gradients are, with no host-device sync\n{error}"
        ) from None
    assert norm.device.type == "meta" and norm.shape == (), (norm.device, norm.shape)
    opt = impl.AdamW(params, lr=0.1)
    opt.step()
    opt.step()
    for p in params:
        assert p.device.type == "meta" and p.grad is not None and p.grad.device.type == "meta"
        moments = {k: v for k, v in opt.state[p].items() if isinstance(v, Tensor) and v.ndim}
        assert moments, "AdamW keeps its moments in the optimizer's state"
        assert all(v.device.type == "meta" for v in moments.values()), {
            k: v.device for k, v in moments.items()}
    m, v = torch.zeros(3, device="meta"), torch.zeros(3, device="meta")
    impl.adamw_step(params[0], torch.ones(3, device="meta"), m, v, 1, lr=0.1)
    assert params[0].device.type == m.device.type == v.device.type == "meta"


# ----------------------------------------------------------------------------- AdamW


def _regression_problem(seed: int) -> tuple[list[Tensor], Tensor, Tensor]:
    g = _gen(seed)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(1000, 8, 6, generator=g, dtype=torch.float64)
    y = torch.randn(1000, 8, 3, generator=g, dtype=torch.float64)
    return [w, b], x, y


ADAMW_BUGS = {  # cause -> the bug's name in _adamw_with
    "no bias correction: divide m by 1 - beta1**step and v by 1 - beta2**step":
        "no_bias_correction",
    "eps inside the square root: sqrt(v_hat) + eps, not sqrt(v_hat + eps)": "eps_inside_sqrt",
    "weight decay added to the gradient (Adam + L2); AdamW decouples it: "
    "param *= 1 - lr * weight_decay, apart from the moments": "l2_in_gradient",
    "weight decay without the learning rate: param *= 1 - lr * weight_decay":
        "decay_without_lr",
    "weight decay applied after the Adam update; AdamW decays the parameter before it":
        "decay_after_update",
    "betas swapped: m uses beta1 (0.9), v uses beta2 (0.999)": "swapped_betas",
}


@torch.no_grad()
def _adamw_with(bug: str, param: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: int, *,
                lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> Tensor:
    """What one AdamW step with the classic bug ``bug`` makes of ``param`` (updated in place
    with ``m`` and ``v``): the formulas of torch's documentation, each with one thing wrong."""
    b1, b2 = betas[::-1] if bug == "swapped_betas" else betas
    if bug == "l2_in_gradient":
        grad = grad + weight_decay * param
    elif bug != "decay_after_update":
        param.mul_(1 - (1 if bug == "decay_without_lr" else lr) * weight_decay)
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    bc1, bc2 = (1.0, 1.0) if bug == "no_bias_correction" else (1 - b1**step, 1 - b2**step)
    denom = (v / bc2 + eps).sqrt() if bug == "eps_inside_sqrt" else (v / bc2).sqrt() + eps
    param.addcdiv_(m, denom, value=-lr / bc1)
    if bug == "decay_after_update":
        param.mul_(1 - lr * weight_decay)
    return param


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

    def run_with(bug: str) -> Tensor:  # the same run with a classic bug: the decayed weight
        w, b = (t.clone().requires_grad_() for t in init)
        state = [(torch.zeros_like(t), torch.zeros_like(t), wd) for t, wd in ((w, 0.1), (b, 0.0))]
        for step, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
            grads = torch.autograd.grad(((x @ w + b - y) ** 2).mean(), [w, b])
            for p, grad, (m, v, wd) in zip((w, b), grads, state, strict=True):
                _adamw_with(bug, p, grad, m, v, step, lr=3e-2, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=wd)
        return w.detach()

    for name, got, want in (("weight (decayed)", w, w_ref), ("bias (no decay)", b, b_ref)):
        err = (got - want).abs().max().item()
        hint = "" if err <= 1e-6 else likely(w, {
            cause: functools.partial(run_with, bug) for cause, bug in ADAMW_BUGS.items()},
            atol=1e-9, rtol=1e-9)
        assert err <= 1e-6, (f"{hint}: " if hint else "") + (
            f"{name} differs from torch.optim.AdamW by {err:.3g} after 1000 steps")


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
    assert_close(p, ref.detach(), rtol=1e-10, atol=1e-12, what=f"AdamW step {step}", wrong={
        cause: functools.partial(_adamw_with, bug, param.clone(), grad, m.clone(), v.clone(),
                                 step, lr=lr, betas=(beta1, beta2), eps=1e-8,
                                 weight_decay=weight_decay)
        for cause, bug in ADAMW_BUGS.items()},
        hint="param = param * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps)")


_SHAPES = [(3,), (2, 2), (4,), (1,), (2, 3)]
_KINDS = ["trained", "frozen", "unused", "sometimes", "zero_grad"]


@given(
    kinds=st.lists(st.sampled_from(_KINDS), min_size=4, max_size=4),
    group_of=st.lists(st.integers(0, 1), min_size=4, max_size=4),
    hyper=st.lists(
        st.tuples(st.floats(1e-4, 0.1), st.sampled_from([0.0, 0.01, 0.1, 0.5]),
                  st.floats(0.5, 0.99), st.floats(0.9, 0.9999), st.sampled_from([1e-8, 1e-3])),
        min_size=2, max_size=2,
    ),
    lr_scale=st.lists(st.floats(0.05, 1.0), min_size=6, max_size=6),
    n_steps=st.integers(2, 6),
    reload=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_adamw_matches_torch_across_groups_gradless_params_lr_changes_and_a_reload(
    impl: Any,
    kinds: list[str],
    group_of: list[int],
    hyper: list[tuple[float, float, float, float, float]],
    lr_scale: list[float],
    n_steps: int,
    reload: int,
    seed: int,
) -> None:
    """Everything that is not the default at once, against ``torch.optim.AdamW`` doing the same:

    * two param groups, each with its own lr, weight decay, betas and eps;
    * parameters without a gradient (frozen; unused; used on some steps only) are skipped: not
      moved, not decayed, their step count not advanced; a zero gradient is still a gradient;
    * the learning rates change every step through ``param_groups`` (as a schedule does);
    * mid-run, the optimizer's whole ``state_dict`` (moments and step counts) and the weights go
      through ``torch.save``/``torch.load`` into a fresh optimizer built with wrong
      hyperparameters; the run must continue exactly as the uninterrupted one.
    """
    kinds = ["trained", *kinds]  # one parameter always trains: every stub must be reached
    group_of = [0, *group_of]
    reload_after = 1 + reload % (n_steps - 1)
    g = _gen(seed)
    init = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in _SHAPES]
    grads: list[list[Tensor | None]] = []  # the gradient each parameter has at each step
    for _ in range(n_steps):
        row: list[Tensor | None] = []
        for shape, kind in zip(_SHAPES, kinds, strict=True):
            grad = torch.randn(shape, generator=g, dtype=torch.float64)
            used = kind in ("trained", "zero_grad") or (
                kind == "sometimes" and bool(torch.rand((), generator=g) < 0.5))
            row.append((torch.zeros_like(grad) if kind == "zero_grad" else grad) if used else None)
        grads.append(row)

    def fresh(values: list[Tensor]) -> list[Tensor]:
        return [t.clone().requires_grad_(kind != "frozen") for t, kind in zip(values, kinds,
                                                                               strict=True)]

    def groups(params: list[Tensor], right: bool = True) -> list[dict[str, Any]]:
        out = []
        for i, (lr, wd, b1, b2, eps) in enumerate(hyper):
            members = [p for p, j in zip(params, group_of, strict=True) if j == i]
            if members:
                out.append({"params": members, **({"lr": lr, "weight_decay": wd, "betas": (b1, b2),
                                                   "eps": eps} if right else {})})
        return out

    bases = [lr for i, (lr, *_) in enumerate(hyper) if i in group_of]

    def run(make: Any, reload_after: int | None) -> tuple[list[Tensor], Any]:
        params = fresh(init)
        opt = make(groups(params))
        for step in range(n_steps):
            if step == reload_after:
                buffer = io.BytesIO()
                torch.save({"params": [p.detach() for p in params],
                            "optimizer": opt.state_dict()}, buffer)
                buffer.seek(0)
                saved = torch.load(buffer, weights_only=True)
                params = fresh(saved["params"])
                opt = make(groups(params, right=False), lr=1.0, betas=(0.1, 0.2), eps=1.0,
                           weight_decay=0.9)  # all wrong: load_state_dict restores them
                opt.load_state_dict(saved["optimizer"])
            for group, base in zip(opt.param_groups, bases, strict=True):
                group["lr"] = base * lr_scale[step]  # the schedule, through the param groups
            for p, grad in zip(params, grads[step], strict=True):
                p.grad = None if grad is None else grad.clone()
            opt.step()
        return params, opt

    params, opt = run(impl.AdamW, reload_after)
    ref_params, ref_opt = run(lambda gs, **kw: torch.optim.AdamW(gs, foreach=False, **kw), None)
    for i, (p, ref, kind) in enumerate(zip(params, ref_params, kinds, strict=True)):
        torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-10, atol=1e-12,
                                   msg=f"parameter {i} ({kind}) differs from torch.optim.AdamW "
                                   f"(reloaded after step {reload_after})")
        if all(row[i] is None for row in grads):
            assert torch.equal(p.detach(), init[i]), (
                f"parameter {i} ({kind}) never had a gradient: it must not move nor decay")
        state, ref_state = opt.state.get(p, {}), ref_opt.state.get(ref, {})
        assert bool(state) == bool(ref_state), f"parameter {i} ({kind}): state {set(state)}"
        if ref_state:
            assert float(state["step"]) == float(ref_state["step"]), (
                f"parameter {i} ({kind}): step count {state['step']}, torch's "
                f"{ref_state['step']}")
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key], ref_state[key], rtol=1e-10, atol=1e-15)


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
        ({"max_lr": 1.0, "min_lr": 0.2, "warmup_steps": 2, "decay_steps": 3},
         [(0, 0.5), (1, 1.0), (2, 1.0), (3, 0.2), (4, 0.2)]),
    ],
    ids=["small", "gpt2", "no-warmup", "no-decay-phase", "one-step-decay"],
)
def test_cosine_lr_matches_hand_computed_table_at_boundaries(
    impl: Any, hyper: dict[str, Any], table: list[tuple[int, float]]
) -> None:
    got = [(step, impl.cosine_lr(step, **hyper)) for step, _ in table]
    bad = [(s, lr, want) for (s, lr), (_, want) in zip(got, table, strict=True)
           if not math.isclose(lr, want, rel_tol=1e-9, abs_tol=1e-15)]
    causes = [cause for cause, bug in COSINE_BUGS.items()
              if all(math.isclose(lr, _lr_with(bug, s, **hyper), rel_tol=1e-9, abs_tol=1e-15)
                     for s, lr in got)]
    hint = f"likely cause: {causes[0]}; " if bad and causes else ""
    assert not bad, f"{hint}(step, got, expected) off the hand-computed table: {bad}"


COSINE_BUGS = {  # cause -> the bug's name in _lr_with
    "the warm-up starts at 0: lr = max_lr * (step + 1) / warmup_steps (step 0 already learns)":
        "warmup_from_zero",
    "the warm-up divides by warmup_steps + 1: max_lr * (step + 1) / warmup_steps reaches "
    "max_lr at step warmup_steps - 1": "warmup_denominator",
    "the cosine's progress ignores the warm-up: (step - warmup_steps) / (decay_steps - "
    "warmup_steps)": "ratio_over_all_steps",
    "no floor after decay_steps: lr = min_lr there": "no_floor",
    "the cosine decays to 0, not to min_lr: min_lr + coeff * (max_lr - min_lr)":
        "decays_to_zero",
    "the cosine coefficient lacks its half: coeff = 0.5 * (1 + cos(pi * ratio))": "no_half",
}


def _lr_with(bug: str, step: int, *, max_lr: float, min_lr: float, warmup_steps: int,
             decay_steps: int) -> float:
    """The schedule with the classic bug ``bug``: the docstring's formula, one thing wrong."""
    if step < warmup_steps:
        if bug == "warmup_from_zero":
            return max_lr * step / warmup_steps
        if bug == "warmup_denominator":
            return max_lr * (step + 1) / (warmup_steps + 1)
        return max_lr * (step + 1) / warmup_steps
    if step > decay_steps and bug != "no_floor":
        return min_lr
    span = decay_steps - warmup_steps
    if bug == "ratio_over_all_steps":
        ratio = step / decay_steps if decay_steps else 0.0
    else:
        ratio = (step - warmup_steps) / span if span > 0 else 0.0
    coeff = (1.0 if bug == "no_half" else 0.5) * (1.0 + math.cos(math.pi * ratio))
    return coeff * max_lr if bug == "decays_to_zero" else min_lr + coeff * (max_lr - min_lr)


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
    if decay_extra:
        assert math.isclose(lrs[warmup + decay_extra], min_lr, rel_tol=1e-9, abs_tol=tol), (
            "the cosine must reach min_lr at step == decay_steps")
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
    grads = [p.grad.clone() for p in ref_params if p.grad is not None]  # before clipping
    norm = impl.clip_grad_norm(iter(params), max_norm)  # any iterable, as model.parameters()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
    assert_close(torch.as_tensor(norm, dtype=torch.float64), ref_norm.to(torch.float64),
                 rtol=1e-12, atol=1e-15, what="the returned pre-clip norm", wrong={
        "the norm is the sum of the tensors' norms; the global norm is the L2 norm of all "
        "gradients together: sqrt(sum of squared norms)":
            lambda: torch.stack([g.norm() for g in grads]).sum(),
        "the L1 norm (sum of |g|); clip by the L2 norm":
            lambda: torch.stack([g.abs().sum() for g in grads]).sum(),
        "the norm returned is the one after clipping; return the total norm from before":
            lambda: torch.stack([g.norm() for g in grads]).norm().clamp(max=max_norm),
    }, hint="the global L2 norm of every gradient, from before clipping")
    kept = iter(grads)
    for p, ref in zip(params, ref_params, strict=True):
        if ref.grad is None:
            assert p.grad is None, "a frozen parameter (no grad) must stay without one"
        else:
            before = next(kept)
            assert_close(p.grad, ref.grad, rtol=1e-12, atol=1e-15, what="a clipped gradient",
                         wrong={
                "each tensor is clipped alone; one coefficient max_norm / total_norm scales "
                "them all": before * (max_norm / (before.norm() + 1e-6)).clamp(max=1.0),
                "small gradients are scaled up: the coefficient max_norm / (norm + 1e-6) is "
                "clamped at 1": before * max_norm / (ref_norm + 1e-6),
            }, hint="every gradient times min(1, max_norm / (total_norm + 1e-6))")


def test_clip_grad_norm_hand_worked_example_and_no_scaling_up(impl: Any) -> None:
    a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    norm = impl.clip_grad_norm([a, b], 1.0)
    assert isinstance(norm, Tensor) and norm.shape == (), "the norm is a 0-dim tensor"
    assert math.isclose(float(norm), 5.0, rel_tol=1e-6), "the global norm of (3, 4) is 5"
    torch.testing.assert_close(a.grad, torch.tensor([0.6]), rtol=1e-5, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.8]), rtol=1e-5, atol=0)
    small = torch.zeros(2, requires_grad=True)
    small.grad = torch.tensor([0.03, 0.04])
    norm = impl.clip_grad_norm([small], 1.0)
    assert math.isclose(float(norm), 0.05, rel_tol=1e-6)
    assert torch.equal(small.grad, torch.tensor([0.03, 0.04])), "grads under the limit must stay"
    # Nothing to clip: no gradient at all (a frozen model), or gradients that are all zero.
    none = impl.clip_grad_norm([torch.zeros(3), torch.zeros(2, requires_grad=True)], 1.0)
    assert isinstance(none, Tensor) and none.shape == () and float(none) == 0.0, none
    zero = torch.zeros(2, requires_grad=True)
    zero.grad = torch.zeros(2)
    assert float(impl.clip_grad_norm([zero], 1e-3)) == 0.0
    assert torch.equal(zero.grad, torch.zeros(2)), "zero gradients stay zero (no 0/0 = nan)"


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
        ("likely cause: the micro-batch losses are summed, not averaged: divide each one by "
         f"k = {k} before backward (accumulated gradients add up), and report their sum; "
         if math.isclose(stats.loss, k * float(want_loss), rel_tol=1e-9) else "")
        + f"reported loss {stats.loss} is not the big batch's mean loss {float(want_loss)}"
    )
    assert math.isclose(big_stats.loss, float(want_loss), rel_tol=1e-9)
    for p, q in zip(params, big_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12,
                                   msg=f"likely cause: zero_grad inside the micro-batch loop "
                                   "(only the last micro-batch's gradient is left: zero once, "
                                   f"before the loop), or a loss not divided by k = {k}; {k} "
                                   "accumulated micro-batches moved the weights differently "
                                   f"from one batch {k} times larger")
    if grad_clip is not None:
        assert math.isclose(stats.grad_norm, big_stats.grad_norm, rel_tol=1e-9), (
            stats.grad_norm, big_stats.grad_norm)
    else:
        assert isinstance(stats.grad_norm, float) and math.isnan(stats.grad_norm), (
            "likely cause: a norm reported without clipping; without clipping the norm is not "
            f"computed: nan, not {stats.grad_norm!r}")


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
            "likely cause: gradients are not zeroed at the start of each step (they add up "
            "across steps): optimizer.zero_grad(set_to_none=True) once per step; the gradient "
            "norm differs"
        )
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=1e-12)


class _GatedLM(nn.Module):
    """``_TinyLM`` plus what real models have: a bias, a frozen parameter, one the loss never
    reaches, one it reaches only on some steps (a gate), and GPT's ``(logits, loss)`` output."""

    def __init__(self) -> None:
        super().__init__()
        g = _gen(8)
        self.wte = nn.Parameter(torch.randn(11, 8, generator=g, dtype=torch.float64))
        self.wpe = nn.Parameter(torch.randn(6, 8, generator=g, dtype=torch.float64),
                                requires_grad=False)  # frozen
        self.head = nn.Parameter(torch.randn(8, 11, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(11, generator=g, dtype=torch.float64) * 0.1)
        self.gate = nn.Parameter(torch.randn(8, 11, generator=g, dtype=torch.float64) * 0.1)
        self.unused = nn.Parameter(torch.randn(4, generator=g, dtype=torch.float64))
        self.use_gate = True

    def forward(self, idx: Tensor) -> tuple[Tensor, None]:
        h = torch.tanh(self.wte[idx] + self.wpe[: idx.shape[1]])  # (B, T, C)
        logits = h @ self.head + self.bias  # (B, T, V)
        if self.use_gate:
            logits = logits + h @ self.gate
        return logits, None

    def groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Matrices decayed (with the frozen and the unused one, which must still not decay)."""
        return [{"params": [self.head, self.gate, self.wpe, self.unused],
                 "weight_decay": weight_decay},
                {"params": [self.wte, self.bias], "weight_decay": 0.0}]


def _reloaded(model: _GatedLM, opt: Any, make: Any) -> tuple[_GatedLM, Any]:
    """A checkpoint's round trip: weights and optimizer state through torch.save/torch.load."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = _GatedLM()
    fresh.load_state_dict(saved["model"])
    new_opt = make(fresh.groups(0.9), lr=1.0)  # wrong hyperparameters: the state restores them
    new_opt.load_state_dict(saved["optimizer"])
    return fresh, new_opt


@given(
    k=st.integers(1, 3),
    grad_clip=st.sampled_from(["default", None, 0.05, 1e3]),
    weight_decay=st.sampled_from([0.0, 0.1, 0.5]),
    lrs=st.lists(st.floats(1e-3, 5e-2), min_size=3, max_size=3),
    gate_on=st.lists(st.booleans(), min_size=2, max_size=2),
    reload_after=st.integers(0, 2),
    seed=st.integers(0, 2**10),
)
def test_train_step_with_options_combined_equals_a_plain_autograd_loop(
    impl: Any,
    k: int,
    grad_clip: str | float | None,
    weight_decay: float,
    lrs: list[float],
    gate_on: list[bool],
    reload_after: int,
    seed: int,
) -> None:
    """Three steps of ``impl.train_step`` with ``impl.AdamW`` (two groups whose learning rates a
    schedule sets every step), k micro-batches, clipping (the default 1.0, none, tight, loose),
    a model with frozen, unused and sometimes-used parameters that returns a tuple, and a
    checkpoint round trip between steps (none at 0), against the loop written out with torch's
    AdamW, ``clip_grad_norm_`` and ``F.cross_entropy``."""
    gate_on = [True, *gate_on]  # the gate trains first: a later step without it must skip it
    kwargs = {} if grad_clip == "default" else {"grad_clip": grad_clip}
    clip = 1.0 if grad_clip == "default" else grad_clip
    assert clip is None or isinstance(clip, float)
    model, ref = _GatedLM(), _GatedLM()
    opt = impl.AdamW(model.groups(weight_decay), lr=lrs[0], betas=(0.9, 0.95))
    ref_opt = torch.optim.AdamW(ref.groups(weight_decay), lr=lrs[0], betas=(0.9, 0.95),
                                foreach=False)
    for step in range(3):
        if step == reload_after and step > 0:
            model, opt = _reloaded(model, opt, impl.AdamW)
        micro = _batches(k, 2, seed=seed + step)
        for m, o in ((model, opt), (ref, ref_opt)):
            m.use_gate = gate_on[step]
            o.param_groups[0]["lr"], o.param_groups[1]["lr"] = lrs[step], lrs[step] / 2
        stats = impl.train_step(model, opt, micro, **kwargs)

        ref_opt.zero_grad(set_to_none=True)
        losses = torch.stack([F.cross_entropy(ref(x)[0].reshape(-1, 11), y.reshape(-1))
                              for x, y in micro])
        losses.mean().backward()
        ref_norm = float("nan") if clip is None else float(
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip))
        ref_opt.step()

        assert math.isclose(stats.loss, float(losses.detach().mean()), rel_tol=1e-9), (
            step, stats.loss, float(losses.detach().mean()))
        if clip is None:
            assert math.isnan(stats.grad_norm), f"not clipping: nan, not {stats.grad_norm!r}"
        else:
            assert math.isclose(stats.grad_norm, ref_norm, rel_tol=1e-9), (
                step, stats.grad_norm, ref_norm)
        assert model.wpe.grad is None and model.unused.grad is None
        assert (model.gate.grad is None) == (not gate_on[step]), (
            f"step {step}: a parameter the loss did not reach must end the step without a "
            f"gradient (None, not zeros), got {model.gate.grad}")
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=1e-12,
                                       msg=f"step {step}: {name} differs from the plain loop")
    fresh = _GatedLM()
    assert torch.equal(model.wpe, fresh.wpe), "the frozen parameter moved"
    assert torch.equal(model.unused, fresh.unused), "the unused parameter moved or decayed"
