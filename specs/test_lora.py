# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: LoRA (issue 12): the low-rank layer, merging, trainable parameters, applied to GPT-2.

Conventions: ``LoRALinear(base, r, alpha, dropout, rslora)`` wraps an ``nn.Linear`` (frozen) as
``base(x) + s · (dropout(x) @ Aᵀ) @ Bᵀ`` with ``lora_A`` (r, in), ``lora_B`` (out, r),
``s = alpha / r`` (rsLoRA: ``alpha / sqrt(r)``); A Kaiming-uniform, B zero at init; dropout on
the LoRA path's input in training mode only. ``merge`` adds ``ΔW = s · B A`` into
``base.weight`` (``merged`` True, the forward pass is then the base layer's), ``unmerge`` takes
it out; both are no-ops when repeated. ``apply_lora(model, r=, alpha=, dropout=, targets=,
rslora=)`` wraps the linear layers whose names end with a target, in place, leaves only A and B
trainable and returns the wrapped names. The attribute names above are the contract (peft's
oracle needs its A and B copied in).

Contract:

| clause | tests | oracle |
|---|---|---|
| hand-worked layer: forward, ΔW = s·B A, merge, unmerge | `test_lora_linear_hand_worked_example` | hand-worked (in = out = 2, r = 1, s = 2) |
| scaling is alpha / r, or alpha / sqrt(r) with rsLoRA | `test_scaling_is_alpha_over_r_or_over_sqrt_r_as_peft` | peft's `LoraLayer.scaling`; hand-worked |
| init: A Kaiming-uniform (bound 1/sqrt(in)), B zero, shapes (r, in) and (out, r) | `test_init_a_is_kaiming_uniform_and_b_is_zero` | `nn.init.kaiming_uniform_(a=sqrt(5))`'s bound and variance |
| B = 0 leaves the output unchanged: a layer (also in training mode with dropout) and a whole GPT | `test_b_zero_leaves_the_output_unchanged` | the base layer and the base model, bit for bit |
| the forward pass equals peft's LoRA layer: leading dims, bias or not, in ≠ out, float32 and float64, rsLoRA | `test_lora_linear_matches_peft` | `peft.tuners.lora.Linear` with the same A and B |
| only A and B get gradients (base weights frozen, no grad), equal to peft's | `test_only_lora_parameters_get_gradients`, `test_lora_gradients_match_peft` | `torch.autograd` through peft's layer |
| mark_only_lora_trainable: A and B trainable, everything else frozen | `test_mark_only_lora_trainable_freezes_everything_else` | the parameters listed by hand |
| merge adds peft's ΔW, keeps the output, is idempotent; unmerge restores W within two roundings | `test_merge_matches_peft_and_unmerge_restores_the_weights` | peft's `get_delta_weight`; the float32 rounding bound eps·(abs(W) + abs(W + ΔW)) |
| merge then unmerge is bit for bit where W + ΔW is exact | `test_merge_and_unmerge_are_exact_on_a_binary_grid` | values on a binary grid (exact in float32) |
| dropout only on the LoRA path, only in training mode; apply_lora passes it to every layer | `test_dropout_acts_on_the_lora_path_in_training_mode_only` | property: A = I and an orthogonal B recover the dropped input (each entry 0 or x/(1-p)); two draws of a GPT in training mode differ |
| apply_lora wraps GPT-2's four projections by name, in order, keeps the mode, takes other patterns | `test_apply_lora_wraps_the_gpt2_projections_by_name` | the names listed by hand |
| a whole GPT with LoRA equals peft on Hugging Face GPT-2 (Conv1D, fan_in_fan_out), with rsLoRA; and after merging both | `test_gpt_with_lora_matches_peft_gpt2`, `test_merged_gpt_matches_peft_merged_gpt2` | `peft.get_peft_model` on `transformers.GPT2LMHeadModel` (random weights, offline) |
| A and B on the base layer's device, in its dtype (meta, float64, bfloat16); nothing made on the default device | `test_lora_keeps_the_base_layers_device_and_dtype`, `test_nothing_is_made_on_the_default_device` | the meta device |
| bad settings and targets raise, naming the value (r < 1, alpha <= 0, dropout >= 1, not a Linear, a pattern matching nothing) | `test_lora_validates_its_settings_and_targets` | the documented errors |

Tolerances: float32 1e-6 against peft (the issue's bar; the two differ by ~1e-7 here), 1e-5
where a merged weight is compared with an unmerged forward pass (W + ΔW is rounded once more);
float64 1e-12. Merge/unmerge: the rounding bound above, or exact.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from reference.checkpoint import load_weights
from reference.hf import config_from_hf, from_hf_state_dict
from reference.model import GPT, GPTConfig
from specs.hints import Wrong, likely
from specs.hints import assert_close as hinted_close

COMPONENT = "lora"
pytestmark = pytest.mark.lora

TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
MERGED_TOL = 1e-5  # float32: W + ΔW is rounded once more than the unmerged sum
TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
SMALL = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16)


def peft_linear(base: nn.Linear, r: int, alpha: float, rslora: bool = False,
                dropout: float = 0.0) -> Any:
    """peft's LoRA layer around a copy of ``base``, A and B random (init_lora_weights=False)."""
    import peft
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                             init_lora_weights=False, use_rslora=rslora)
    return peft.tuners.lora.layer.Linear(copy.deepcopy(base), "default", config, r=r,
                                         lora_alpha=alpha)


def ours_like(impl: Any, peft_layer: Any, base: nn.Linear, r: int, alpha: float,
              rslora: bool = False, dropout: float = 0.0) -> Any:
    """Our layer around another copy of ``base``, with peft's A and B copied in."""
    layer = impl.LoRALinear(copy.deepcopy(base), r=r, alpha=alpha, dropout=dropout, rslora=rslora)
    with torch.no_grad():
        layer.lora_A.copy_(peft_layer.lora_A["default"].weight)
        layer.lora_B.copy_(peft_layer.lora_B["default"].weight)
    return layer


def random_linear(n_in: int, n_out: int, bias: bool, dtype: torch.dtype, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias, dtype=dtype)


def assert_close(actual: Tensor, expected: Tensor, what: str, tol: float | None = None, *,
                 wrong: Wrong | None = None, hint: str = "") -> None:
    """Close within ``tol`` (the dtype's by default); on failure the message names the classic
    bug in ``wrong`` that the answer matches, else ``hint`` (see specs/hints.py)."""
    tol = TOL[expected.dtype] if tol is None else tol
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"{what}: {tuple(actual.shape)} {actual.dtype}, expected {tuple(expected.shape)} "
        f"{expected.dtype}")
    hinted_close(actual, expected, what=f"{what} (tolerance {tol})", wrong=wrong, hint=hint,
                 atol=tol, rtol=tol)


def scaling_cause(got: float, r: int, alpha: float, rslora: bool) -> str:
    """The likely cause of a wrong scaling: the classic wrong formula that gives ``got``."""
    wrong = [
        (rslora, alpha / r, "rslora ignored: with rslora=True, s = alpha / sqrt(r)"),
        (not rslora, alpha / math.sqrt(r), "alpha / sqrt(r) without rslora: plain LoRA is "
                                           "alpha / r"),
        (True, alpha, "alpha alone: divide it by r (s = alpha / r)"),
        (True, r / alpha, "r and alpha swapped: s = alpha / r, not r / alpha"),
        (rslora, r / math.sqrt(alpha), "r and alpha swapped: s = alpha / sqrt(r)"),
        (rslora, math.sqrt(r) / alpha, "upside down: s = alpha / sqrt(r), not sqrt(r) / alpha"),
    ]
    for applies, value, cause in wrong:
        if applies and math.isclose(got, value, rel_tol=1e-12):
            return f"likely cause: {cause}"
    return "likely cause: the scaling is not alpha / r (alpha / sqrt(r) with rslora)"


def trainable_cause(trainable: set[str], lora: set[str], when: str) -> str:
    """Why the trainable parameters are not exactly the LoRA ones, cause first."""
    extra, missing = sorted(trainable - lora), sorted(lora - trainable)
    if extra:
        return ("likely cause: the other parameters are not frozen: requires_grad_(False) on "
                "every parameter but lora_A and lora_B (apply_lora calls "
                f"mark_only_lora_trainable); {when}, trainable beyond A and B: {extra}")
    return (f"likely cause: not every lora_A and lora_B is left trainable; {when}, frozen: "
            f"{missing}")


def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(SMALL)


def lora_names(n_layer: int, targets: tuple[str, ...] = TARGETS) -> list[str]:
    return [f"transformer.h.{i}.{t}" for i in range(n_layer) for t in targets]


def hand_worked(impl: Any) -> Any:
    base = nn.Linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.eye(2))
        base.bias.copy_(torch.tensor([1.0, 0.0]))
    layer = impl.LoRALinear(base, r=1, alpha=2)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 2.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0], [0.0]]))
    return layer


# --- exact: hand-worked numbers first (with -x most bugs stop here) ---------------------------


def test_lora_linear_hand_worked_example(impl: Any) -> None:
    layer = hand_worked(impl)
    x = torch.tensor([[1.0, 1.0]])
    assert layer.scaling == 2.0, (
        f"{scaling_cause(layer.scaling, 1, 2, False)}: scaling {layer.scaling}, want alpha / r = 2")
    base = torch.tensor([[2.0, 1.0]])  # x Wᵀ + b
    y = layer(x)
    assert torch.equal(y, torch.tensor([[8.0, 1.0]])), (
        likely(y, {"the LoRA term is not multiplied by the scaling s = alpha / r":
                   base + torch.tensor([[3.0, 0.0]]),
                   "A and B in the wrong order: the LoRA path is (x @ A.T) @ B.T, (..., in) -> "
                   "(..., r) -> (..., out)": base + 2 * torch.tensor([[1.0, 2.0]])})
        or "likely cause: the forward pass is not base(x) + s · (x Aᵀ) Bᵀ"
    ) + f": forward {y}, want [[8, 1]]"
    delta = layer.delta_weight()
    assert torch.equal(delta, torch.tensor([[2.0, 4.0], [0.0, 0.0]])), (
        likely(delta, {"ΔW is not multiplied by the scaling s": torch.tensor([[1.0, 2.0], [0.0, 0.0]]),
                       "ΔW transposed: s · B @ A is (out, in), the base weight's layout":
                       torch.tensor([[2.0, 0.0], [4.0, 0.0]])})
        or "likely cause: ΔW is not s · B @ A"
    ) + f": delta_weight {delta}, want s·B A = [[2, 4], [0, 0]]"
    layer.merge()
    assert layer.merged, "likely cause: merge does not set merged = True (the forward pass would " \
        "add ΔW a second time)"
    w = layer.base.weight.detach()
    assert torch.equal(w, torch.tensor([[3.0, 4.0], [0.0, 1.0]])), (
        likely(w, {"merge subtracts ΔW instead of adding it": torch.tensor([[-1.0, -4.0], [0.0, 1.0]]),
                   "merge adds ΔW transposed (Aᵀ Bᵀ)": torch.tensor([[3.0, 0.0], [4.0, 1.0]]),
                   "merge adds ΔW without the scaling s": torch.tensor([[2.0, 2.0], [0.0, 1.0]])})
        or "likely cause: merge does not add ΔW = s · B A into base.weight"
    ) + f": merged weight {w}, want W + ΔW = [[3, 4], [0, 1]]"
    y = layer(x)
    assert torch.equal(y, torch.tensor([[8.0, 1.0]])), (
        likely(y, {"the forward pass adds the LoRA term while merged: ΔW is already in "
                   "base.weight, return base(x) alone": torch.tensor([[14.0, 1.0]])})
        or "likely cause: the merged forward pass is not base(x) with W + ΔW"
    ) + f": merged forward {y}, want [[8, 1]]"
    layer.unmerge()
    assert not layer.merged, "likely cause: unmerge does not set merged = False (the forward " \
        "pass would then leave out the LoRA term)"
    w = layer.base.weight.detach()
    assert torch.equal(w, torch.eye(2)), (
        likely(w, {"unmerge adds ΔW instead of subtracting it": torch.tensor([[5.0, 8.0], [0.0, 1.0]]),
                   "unmerge left base.weight as it was (W + ΔW)": torch.tensor([[3.0, 4.0], [0.0, 1.0]])})
        or "likely cause: unmerge does not subtract ΔW = s · B A from base.weight"
    ) + f": unmerged weight {w}, want W = [[1, 0], [0, 1]]"
    assert torch.equal(layer(x), torch.tensor([[8.0, 1.0]])), f"unmerged forward: {layer(x)}"


@pytest.mark.parametrize("rslora", [False, True])
def test_scaling_is_alpha_over_r_or_over_sqrt_r_as_peft(impl: Any, rslora: bool) -> None:
    got = impl.lora_scaling(8, 16)  # rslora's default: False
    assert got == 2.0, f"{scaling_cause(got, 8, 16, False)}: lora_scaling(8, 16) = {got}, want 2"
    got = impl.lora_scaling(16, 16, rslora=True)
    assert got == 4.0, (f"{scaling_cause(got, 16, 16, True)}: lora_scaling(16, 16, rslora=True) "
                        f"= {got}, want 4")
    for r, alpha in [(1, 1), (4, 16), (8, 8), (16, 32), (3, 5)]:
        layer = impl.LoRALinear(nn.Linear(4, 4), r=r, alpha=alpha, rslora=rslora)
        want = peft_linear(nn.Linear(4, 4), r, alpha, rslora).scaling["default"]
        assert layer.scaling == pytest.approx(want, rel=1e-15), (
            f"{scaling_cause(layer.scaling, r, alpha, rslora)}: r={r}, alpha={alpha}, "
            f"rslora={rslora}: scaling {layer.scaling}, peft's {want}")
        got = impl.lora_scaling(r, alpha, rslora)
        assert got == pytest.approx(want, rel=1e-15), (
            f"{scaling_cause(got, r, alpha, rslora)}: lora_scaling({r}, {alpha}, {rslora}) = "
            f"{got}, peft's {want}")


def test_init_a_is_kaiming_uniform_and_b_is_zero(impl: Any) -> None:
    torch.manual_seed(0)
    n_in, n_out, r = 256, 96, 64
    layer = impl.LoRALinear(nn.Linear(n_in, n_out), r=r, alpha=16)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    assert a.shape == (r, n_in) and b.shape == (n_out, r), f"A {a.shape}, B {b.shape}"
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert not b.any(), (
        "likely cause: A and B swapped: A random (Kaiming-uniform), B zero" if not a.any() else
        "likely cause: B initialised at random: B must start at zero (ΔW = 0), so the wrapped "
        "layer starts as the base layer")
    bound = 1 / math.sqrt(n_in)  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3), bound sqrt(3)·gain/sqrt(in)
    assert a.abs().max() <= bound, (
        ("likely cause: A drawn from a standard normal (std 1); use nn.init.kaiming_uniform_(A, "
         "a=math.sqrt(5))" if abs(a.std().item() - 1) < 0.05 else
         "likely cause: A is not kaiming_uniform_(A, a=math.sqrt(5)) (bound 1/sqrt(in))")
        + f": A beyond Kaiming-uniform's bound {bound}: {a.abs().max()}")
    assert a.abs().max() > 0.99 * bound, (
        "likely cause: A and B both zero: then neither ever gets a gradient; A must be random "
        "(Kaiming-uniform)" if not a.any() else
        "likely cause: A does not fill [-1/sqrt(in), 1/sqrt(in)]: kaiming_uniform_(a=sqrt(5))")
    std = bound / math.sqrt(3)  # of uniform(-bound, bound)
    assert abs(a.std().item() / std - 1) < 0.03, f"A's std {a.std()}, uniform's {std}"  # 16,384 draws: ~0.6% noise
    assert abs(a.mean().item()) < 0.05 * std, f"A's mean {a.mean()} is off 0"  # ~0.8% noise


def test_b_zero_leaves_the_output_unchanged(impl: Any) -> None:
    base = random_linear(12, 7, True, torch.float32, seed=1)
    x = torch.randn(3, 5, 12)
    for training in (False, True):
        layer = impl.LoRALinear(copy.deepcopy(base), r=4, alpha=32, dropout=0.5)
        layer.train(training)
        assert torch.equal(layer(x), base(x)), (
            "likely cause: dropout on the base path: only the LoRA path's input is dropped"
            if training else "likely cause: the LoRA term is not 0 when B = 0"
        ) + f": B = 0 changed the output (training={training})"
    model = small_gpt().eval()
    idx = torch.randint(0, SMALL.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    before, _ = model(idx)
    impl.apply_lora(model, r=4, alpha=8)
    after, _ = model(idx)
    assert torch.equal(after, before), "likely cause: B not zero at init, or a wrapped layer " \
        "in training mode: a freshly wrapped GPT must compute what the base did"


@given(
    n_in=st.integers(1, 12), n_out=st.integers(1, 12), r=st.integers(1, 8),
    alpha=st.sampled_from([1, 2, 8, 16]), rslora=st.booleans(), bias=st.booleans(),
    lead=st.lists(st.integers(1, 3), max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1),
)
def test_lora_linear_matches_peft(impl: Any, n_in: int, n_out: int, r: int, alpha: int,
                                  rslora: bool, bias: bool, lead: list[int], dtype: torch.dtype,
                                  seed: int) -> None:
    base = random_linear(n_in, n_out, bias, dtype, seed)
    theirs = peft_linear(base, r, alpha, rslora).to(dtype)
    ours = ours_like(impl, theirs, base, r, alpha, rslora)
    x = torch.randn(*lead, n_in, dtype=dtype)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), f"LoRALinear(in={n_in}, out={n_out}, r={r}, alpha={alpha}, "
                     f"rslora={rslora}, bias={bias}, lead={lead}, {dtype}) vs peft")


@given(n_in=st.integers(1, 10), n_out=st.integers(1, 10), r=st.integers(1, 6),
       rslora=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_lora_gradients_match_peft(impl: Any, n_in: int, n_out: int, r: int, rslora: bool,
                                   seed: int) -> None:
    base = random_linear(n_in, n_out, True, torch.float64, seed)
    theirs = peft_linear(base, r, 4, rslora).double()
    ours = ours_like(impl, theirs, base, r, 4, rslora)
    x = torch.randn(3, 2, n_in, dtype=torch.float64)
    target = torch.randn(3, 2, n_out, dtype=torch.float64)
    ((ours(x) - target) ** 2).sum().backward()
    ((theirs(x) - target) ** 2).sum().backward()
    for ab in ("lora_A", "lora_B"):
        grad = getattr(ours, ab).grad
        assert grad is not None, f"{ab} got no gradient"
        assert_close(grad, getattr(theirs, ab)["default"].weight.grad, f"{ab}'s gradient vs peft")


def test_only_lora_parameters_get_gradients(impl: Any) -> None:
    layer = impl.LoRALinear(random_linear(6, 5, True, torch.float32, 2), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()  # with B = 0 the gradient of A would be 0
    layer(torch.randn(4, 6)).square().sum().backward()
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad, \
        "likely cause: the base layer is not frozen: requires_grad_(False) on it in LoRALinear"
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.lora_A.grad is not None and layer.lora_A.grad.any()
    assert layer.lora_B.grad is not None and layer.lora_B.grad.any()

    model = small_gpt()
    names = impl.apply_lora(model, r=2, alpha=4)
    with torch.no_grad():
        for name in names:
            model.get_parameter(f"{name}.lora_B").normal_()
    idx = torch.randint(0, SMALL.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    _, loss = model(idx, idx)
    assert loss is not None
    loss.backward()
    lora = {f"{n}.lora_{ab}" for n in names for ab in "AB"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trainable == lora, trainable_cause(trainable, lora, "after apply_lora")
    assert with_grad == lora, f"gradients outside A and B: {sorted(with_grad - lora)}"


def test_mark_only_lora_trainable_freezes_everything_else(impl: Any) -> None:
    wrapped = impl.LoRALinear(nn.Linear(8, 8), r=2, alpha=4)
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), wrapped, nn.Linear(8, 3))
    model.requires_grad_(True)  # e.g. a model trained fully before: everything trainable
    impl.mark_only_lora_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"2.lora_A", "2.lora_B"}, trainable_cause(
        trainable, {"2.lora_A", "2.lora_B"}, "after mark_only_lora_trainable")
    impl.mark_only_lora_trainable(model)  # again: the same
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), r=st.integers(1, 6),
       rslora=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_merge_matches_peft_and_unmerge_restores_the_weights(
    impl: Any, n_in: int, n_out: int, r: int, rslora: bool, seed: int
) -> None:
    base = random_linear(n_in, n_out, True, torch.float32, seed)
    theirs = peft_linear(base, r, 8, rslora)
    layer = ours_like(impl, theirs, base, r, 8, rslora)
    w = base.weight.detach().clone()
    x = torch.randn(4, n_in)
    with torch.no_grad():
        before = layer(x)
        delta = theirs.get_delta_weight("default")
        assert_close(layer.delta_weight(), delta, "delta_weight vs peft's get_delta_weight")
        layer.merge()
        assert layer.merged, "likely cause: merge does not set merged = True"
        merged = layer.base.weight.detach().clone()
        assert_close(merged, w + delta, "merged weight vs W + peft's ΔW")
        assert_close(layer(x), before, "the merged layer's output", MERGED_TOL)
        layer.merge()  # a second merge must not add ΔW again
        assert torch.equal(layer.base.weight, merged), \
            "likely cause: merge does not check merged: merging twice added ΔW twice"
        layer.unmerge()
        assert not layer.merged, "likely cause: unmerge does not set merged = False"
        bound = torch.finfo(torch.float32).eps * (w.abs() + merged.abs())  # two roundings
        error = (layer.base.weight - w).abs()
        assert (error <= bound).all(), f"unmerge left W off by {(error - bound).max()} past the bound"
        restored = layer.base.weight.detach().clone()
        layer.unmerge()  # a second unmerge changes nothing
        assert torch.equal(layer.base.weight, restored), \
            "likely cause: unmerge does not check merged: unmerging twice subtracted ΔW twice"
        assert_close(layer(x), before, "the unmerged layer's output", MERGED_TOL)


def test_merge_and_unmerge_are_exact_on_a_binary_grid(impl: Any) -> None:
    """W, A, B on a grid of 1/16 with small integers: every sum and product is exact in
    float32, so merge and unmerge must be bit for bit."""
    g = torch.Generator().manual_seed(3)
    base = nn.Linear(6, 5)
    layer = impl.LoRALinear(base, r=3, alpha=6)  # s = 2
    with torch.no_grad():
        base.weight.copy_(torch.randint(-64, 64, (5, 6), generator=g) / 16)
        layer.lora_A.copy_(torch.randint(-8, 8, (3, 6), generator=g) / 4)
        layer.lora_B.copy_(torch.randint(-8, 8, (5, 3), generator=g) / 4)
    w = base.weight.detach().clone()
    want = w + 2 * (layer.lora_B @ layer.lora_A).detach()
    layer.merge()
    assert torch.equal(base.weight, want), "merged weight is not W + s·B A exactly"
    layer.unmerge()
    assert torch.equal(base.weight, w), "unmerge did not give W back bit for bit"


def test_dropout_acts_on_the_lora_path_in_training_mode_only(impl: Any) -> None:
    """A = I and B orthogonal: (y - base(x)) / s @ B = dropout(x), whose entries are each 0 or
    x / (1 - p). A dropout on the base path, or after B, or in eval mode, breaks this."""
    n, p = 16, 0.5
    base = random_linear(n, n, True, torch.float64, 4)
    layer = impl.LoRALinear(base, r=n, alpha=n, dropout=p)  # s = 1
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    with torch.no_grad():
        layer.lora_A.copy_(torch.eye(n, dtype=torch.float64))
        layer.lora_B.copy_(q)
    x = torch.randn(8, n, dtype=torch.float64) + 3  # away from 0: a dropped entry is clear
    with torch.no_grad():
        layer.eval()
        assert_close(layer(x), base(x) + x @ q.T, "eval mode: no dropout at all",
                     hint="dropout in eval mode: use the nn.Dropout module (self.dropout), which "
                     "drops only in training mode, not F.dropout(..., training=True)")
        layer.train()
        torch.manual_seed(5)
        lora = layer(x) - base(x)  # s = 1
        dropped = lora @ q
    kept = (dropped - x / (1 - p)).abs() < 1e-9
    zero = dropped.abs() < 1e-9
    after_b = x @ q.T  # the LoRA output without dropout: dropped there, each entry 0 or /(1-p)
    if not (kept | zero).all() and (((lora - after_b / (1 - p)).abs() < 1e-9)
                                    | (lora.abs() < 1e-9)).all():
        pytest.fail("likely cause: dropout after B (on the LoRA output): drop the LoRA path's "
                    "input x, before A")
    assert (kept | zero).all(), "likely cause: the LoRA path's input is not dropout(x) in " \
        "training mode: base(x) + s · (dropout(x) @ Aᵀ) @ Bᵀ"
    assert kept.any() and zero.any(), f"p={p}: some entries must be dropped and some kept"

    model = small_gpt().train()  # apply_lora passes dropout on: training mode draws, eval does not
    names = impl.apply_lora(model, r=2, alpha=4, dropout=0.5)
    with torch.no_grad():
        for name in names:
            model.get_parameter(f"{name}.lora_B").normal_()
        idx = torch.randint(0, SMALL.vocab_size, (2, 8), generator=torch.Generator().manual_seed(4))
        torch.manual_seed(0)
        first = model(idx)[0]
        assert not torch.equal(model(idx)[0], first), \
            "likely cause: apply_lora does not pass dropout on: apply_lora(dropout=0.5) drops nothing"
        model.eval()
        assert torch.equal(model(idx)[0], model(idx)[0])


def test_apply_lora_wraps_the_gpt2_projections_by_name(impl: Any) -> None:
    model = small_gpt().eval()
    names = impl.apply_lora(model, r=2, alpha=4)
    assert names == lora_names(SMALL.n_layer), f"wrapped {names}"
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, impl.LoRALinear), f"{name} is a {type(layer).__name__}"
        assert not layer.training, (
            f"likely cause: a new module starts in training mode: LoRALinear takes its base "
            f"layer's mode (self.train(base.training)); {name}: a layer put into an eval model "
            "must be in eval mode")
        assert isinstance(layer.base, nn.Linear)
    other = small_gpt()
    assert impl.apply_lora(other, targets=["mlp.c_fc"]) == lora_names(2, ("mlp.c_fc",))
    assert isinstance(other.transformer.h[1].attn.c_attn, nn.Linear), "an untargeted layer changed"
    assert impl.apply_lora(small_gpt(), targets=["transformer.h.1.attn.c_proj"]) == \
        ["transformer.h.1.attn.c_proj"]


def hf_and_ours(seed: int) -> tuple[Any, GPT]:
    """Hugging Face GPT-2 with random weights (biases and LayerNorms perturbed too), and our
    GPT with the same weights."""
    import transformers
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=16, bos_token_id=0,
        eos_token_id=0, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours = load_weights(GPT(config_from_hf(hf.config.to_dict())), from_hf_state_dict(hf.state_dict()))
    return hf, ours.eval()


def peft_gpt_and_ours(impl: Any, rslora: bool, seed: int) -> tuple[Any, GPT]:
    import peft
    hf, ours = hf_and_ours(seed)
    config = peft.LoraConfig(target_modules=["c_attn", "c_proj", "c_fc"], r=4, lora_alpha=8,
                             init_lora_weights=False, fan_in_fan_out=True, use_rslora=rslora)
    theirs = peft.get_peft_model(hf, config).eval()  # A and B random (not B = 0)
    names = impl.apply_lora(ours, r=4, alpha=8, rslora=rslora)
    copied = set()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if ".lora_" in name:  # Conv1D or not, peft's A is (r, in) and B (out, r), as ours
                key = name.removeprefix("base_model.model.").removesuffix(".default.weight")
                ours.get_parameter(key).copy_(p)
                copied.add(key)
    assert copied == {f"{n}.lora_{ab}" for n in names for ab in "AB"}, "layers differ from peft's"
    return theirs, ours


@pytest.mark.parametrize("rslora", [False, True])
def test_gpt_with_lora_matches_peft_gpt2(impl: Any, rslora: bool) -> None:
    theirs, ours = peft_gpt_and_ours(impl, rslora, seed=10)
    base = hf_and_ours(seed=10)[1]
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = ours(idx)[0]
        assert_close(logits, theirs(idx).logits, f"GPT + LoRA vs peft GPT-2 (rslora={rslora})")
        assert (logits - base(idx)[0]).abs().max() > 1e-2, "the adapter did not change the logits"


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_gpt_matches_peft_merged_gpt2(impl: Any, rslora: bool) -> None:
    theirs, ours = peft_gpt_and_ours(impl, rslora, seed=11)
    idx = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = ours(idx)[0]
        impl.merge_lora(ours)
        merged_hf = theirs.merge_and_unload()
        unmerged_layers = [n for n in lora_names(2) if not ours.get_submodule(n).merged]
        assert not unmerged_layers, (
            "likely cause: merge_lora misses nested layers: walk model.modules() (every "
            f"descendant), not model.children(); not merged: {unmerged_layers}")
        assert_close(ours(idx)[0], merged_hf(idx).logits, f"merged GPT vs peft merge_and_unload (rslora={rslora})")
        assert_close(ours(idx)[0], unmerged, "merged vs unmerged logits", MERGED_TOL)
        impl.unmerge_lora(ours)
        still = [n for n in lora_names(2) if ours.get_submodule(n).merged]
        assert not still, (
            "likely cause: unmerge_lora misses nested layers: walk model.modules(), not "
            f"model.children(); still merged: {still}")
        assert_close(ours(idx)[0], unmerged, "logits after unmerge_lora", MERGED_TOL)


def test_lora_keeps_the_base_layers_device_and_dtype(impl: Any) -> None:
    layer = impl.LoRALinear(nn.Linear(8, 6, device="meta"), r=2, alpha=4)
    for p in (layer.lora_A, layer.lora_B):
        assert p.is_meta, f"A/B on {p.device}, the base layer is on meta"
    y = layer(torch.randn(3, 8, device="meta"))
    assert y.is_meta and y.shape == (3, 6)
    layer.merge()
    layer.unmerge()
    with torch.device("meta"):
        model = GPT(SMALL)
    impl.apply_lora(model, r=2, alpha=4)
    assert all(p.is_meta for p in model.parameters())
    for dtype in (torch.float64, torch.bfloat16):
        layer = impl.LoRALinear(random_linear(8, 6, True, dtype, 0), r=2, alpha=4)
        assert layer.lora_A.dtype == dtype and layer.lora_B.dtype == dtype
        x = torch.randn(3, 8, dtype=dtype)
        assert layer(x).dtype == dtype
        layer.merge()
        assert layer.base.weight.dtype == dtype and layer(x).dtype == dtype


def test_nothing_is_made_on_the_default_device(impl: Any) -> None:
    """With meta as the default device, a tensor made without ``device=`` lands on meta: A, B
    and every result must stay on the CPU, where the base layer and the input are."""
    base = random_linear(8, 6, True, torch.float32, 0)
    x = torch.randn(3, 8)
    with torch.device("meta"):
        layer = impl.LoRALinear(base, r=2, alpha=4, dropout=0.1)
        assert layer.lora_A.device.type == "cpu" and layer.lora_B.device.type == "cpu"
        assert layer(x).device.type == "cpu"
        layer.merge()
        layer.unmerge()
        assert layer.base.weight.device.type == "cpu"


def test_lora_validates_its_settings_and_targets(impl: Any) -> None:
    impl.LoRALinear(nn.Linear(4, 3), r=2, alpha=4)  # valid
    for bad, match in [({"r": 0}, "r must"), ({"r": -1}, "r must"), ({"r": 2.0}, "r must"),
                       ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
                       ({"dropout": -0.1}, "dropout")]:
        with pytest.raises(ValueError, match=match):
            impl.LoRALinear(nn.Linear(4, 3), **{"r": 2, "alpha": 4, **bad})
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        impl.LoRALinear(nn.Conv1d(4, 3, 1), r=2, alpha=4)
    with pytest.raises(ValueError, match=r"'attn\.q_proj'.*transformer\.h\.\*\.attn\.c_attn"):
        impl.apply_lora(small_gpt(), targets=["attn.q_proj"])  # a pattern that matches nothing
    with pytest.raises(ValueError, match="r must"):
        impl.apply_lora(small_gpt(), r=0)
