# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec for the GPT component: a GPT-2-class model, its parts, and sampling.

Oracles are ones no one here wrote: Hugging Face ``transformers``' GPT2LMHeadModel (random
weights from a GPT2Config, built offline, eager attention, eval mode, float32) for the model, its
block, MLP, gradients, loss and decoding; its Temperature/TopK/TopP logits warpers, chained in
its own order, and its sampler (``torch.multinomial`` of their softmax) for sampling;
``torch.nn.functional``; closed forms and hand-worked examples. Weights are dicts with GPT-2's
names in ``nn.Linear`` layout. Tolerances: float32 whole-model passes 1e-5 vs Hugging Face
(measured ~2e-7), float64 elementwise ops 1e-10; other tolerances are stated where used.

Contract:

| clause | tests | oracle |
|---|---|---|
| LayerNorm over the last dim, biased variance, eps inside the root, weight and bias each optional | `test_layer_norm_matches_torch_layer_norm`, `test_layer_norm_hand_worked_example` | `F.layer_norm`; x = [1, 3] by hand |
| LayerNorm in float32 stays accurate for a mean of 1000 (no one-pass E[x²] - E[x]²) | `test_layer_norm_float32_is_accurate_far_from_zero` | `F.layer_norm` in float64 |
| GELU is GPT-2's tanh approximation, finite from -1e4 to 1e4 in float32 | `test_gelu_matches_torch_tanh_approximation`, `test_gelu_hand_worked_example`, `test_gelu_float32_extremes_match_torch` | `F.gelu(approximate="tanh")`; values at 0, ±1, ±20 by hand |
| sinusoidal table: float32, sin on even and cos on odd columns at 10000^(-2i/d); exact for positions in the thousands | `test_sinusoidal_matches_closed_form`, `test_sinusoidal_hand_worked_example`, `test_sinusoidal_far_positions_keep_float32_precision` | `math.sin`/`math.cos` closed form; PE(2, 4) by hand |
| a shift by k positions is a rotation fixed by k | `test_sinusoidal_shift_is_a_rotation_fixed_by_the_offset` | angle-addition identities |
| odd or empty width, negative length: ValueError naming the value | `test_sinusoidal_rejects_bad_sizes` | the docstring |
| MLP and pre-LN block equal GPT-2's | `test_mlp_matches_hf_gpt2_mlp`, `test_block_matches_hf_gpt2_block` | HF `GPT2MLP`, `GPT2Block` |
| forward: logits (B, T, V) of GPT-2 for any B, 1 <= T <= block_size, two shapes; no targets, no loss | `test_gpt_forward_matches_hf_gpt2` | HF `GPT2LMHeadModel` |
| options combined: bias-free x dropout set (ignored: eval pass) x int32 ids and targets | `test_gpt_forward_options_combined_match_hf` | HF with its biases zeroed; HF's LM loss |
| causal: a token never changes the logits before it | `test_gpt_forward_is_causal` | the logits of the unchanged prefix |
| loss: mean cross-entropy over targets, -1 ignored, targets pre-shifted | `test_gpt_forward_loss_matches_torch_cross_entropy`, `test_gpt_forward_loss_matches_hf_language_modeling_loss` | `F.cross_entropy(ignore_index=-1)`; HF `labels=` loss |
| cross_entropy: any ignore_index (negative, a real id, past V), float32 logits up to 1e3 stay finite; all ignored is NaN | `test_cross_entropy_matches_torch`, `test_cross_entropy_hand_worked_example` | `F.cross_entropy` in float64; ln 2 by hand |
| gradients: every parameter's, the tied embedding's from both uses | `test_gpt_gradients_match_hf_gpt2`, `test_every_parameter_receives_a_gradient` | HF's autograd |
| bad ids: TypeError / ValueError naming the value and the limit (length, range, dtype, shape, empty, not a tensor) | `test_gpt_forward_rejects_bad_input_naming_value_and_limit` | the docstring |
| devices: every result on the inputs' device; no tensor made on the default device | `test_results_stay_on_the_inputs_device_meta`, `test_no_tensor_is_made_on_the_default_device` | the `meta` device; the same call outside `torch.device("meta")` |
| init: GPT-2 names and shapes, float32; N(0, 0.02) per tensor, c_proj N(0, 0.02/sqrt(2·n_layer)), biases 0, LN 1 | `test_init_params_has_hf_gpt2_names_and_shapes`, `test_init_params_follows_gpt2_initialisation` | HF state dict; the normal's std, mean and mass within 1 std, 6 standard errors |
| init: seeded, global RNG untouched | `test_init_params_is_reproducible_from_seed` | the same seed twice; `torch.get_rng_state` |
| parameter count: closed form, tied head once, with and without bias | `test_gpt2_small_has_124439808_parameters`, `test_count_parameters_matches_hf_gpt2`, `test_count_parameters_without_bias_matches_init_params` | HF `num_parameters()`; the sizes of `init_params` |
| top-k: the k largest and every logit tied with the k-th; k >= V keeps all | `test_top_k_keeps_the_k_largest_as_hf_warper`, `test_top_k_keeps_ties_at_the_kth_value_as_hf_warper`, `test_top_k_hand_worked_example` | HF `TopKLogitsWarper`; by hand |
| top-p: the fewest most likely tokens with mass >= p; a token whose preceding mass is exactly p goes | `test_top_p_keeps_exactly_the_nucleus`, `test_top_p_hand_worked_example` | HF `TopPLogitsWarper`; by hand |
| filter and temperature arguments out of range: ValueError naming the value | `test_filters_reject_out_of_range_parameters`, `test_negative_temperature_is_rejected` | the docstring |
| temperature 0 is argmax (filters change nothing), top_k=1 too | `test_greedy_sampling_is_argmax` | `argmax` |
| temperature, top-k, top-p alone and chained (temperature, then top-k, then top-p), ties, float32 logits in the hundreds | `test_sampling_matches_hf_warpers_alone_and_chained`, `test_filters_follow_temperature_in_order_hand_worked`, `test_sampling_frequencies_match_softmax_over_temperature`, `test_samples_never_leave_top_k_or_nucleus` | HF warpers chained in HF's order + `torch.multinomial` with the same generator state; supports worked by hand; softmax(logits / T) frequencies |
| a fixed generator reproduces the draws | `test_fixed_seed_reproduces_the_sample`, `test_generate_with_a_seed_is_reproducible` | the same seed twice, another seed |
| greedy generation equals GPT-2's | `test_greedy_generate_matches_hf_greedy_generate` | HF `generate(do_sample=False)` |
| the context is cropped to the last block_size tokens (prompt longer than the block, or growing past it), greedy and sampled | `test_generate_crops_like_a_loop_over_hf_forward` | a loop over HF's forward on the last block_size tokens, HF's warpers |
| eos: a finished row gets only eos, all finished stops; greedy and sampled with filters | `test_generate_with_eos_matches_hf_generate` | HF `generate(eos_token_id=pad_token_id=eos)` with the same global seed |
| a generator's state saved mid-run continues the run exactly | `test_generate_resumes_from_a_saved_generator_state` | the uninterrupted run |
| the prompt's dtype is kept; zero new tokens returns the prompt | `test_generate_keeps_the_prompt_dtype_and_allows_zero_steps` | the int64 run; the prompt |
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor

from specs.hints import Wrong, likely

COMPONENT = "gpt"
pytestmark = pytest.mark.gpt

FORWARD_ATOL = 1e-5  # float32, whole model vs Hugging Face
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# (n_layer, n_head, n_embd, vocab_size, block_size): tiny, so the spec stays fast.
SMALL = (2, 4, 32, 100, 16)
OTHER = (3, 2, 48, 257, 32)
# Generation needs a model whose choices depend on the context: GPT-2's init std 0.02 on a tiny
# random model gives near-uniform logits and one token greedy forever, whatever the prompt.
GEN_STD = 0.5


# ---------------------------------------------------------------- the Hugging Face oracle


@cache
def hf_model(
    shape: tuple[int, int, int, int, int] = SMALL, seed: int = 0, std: float = 0.02,
    bias: bool = True,
) -> Any:
    """A GPT2LMHeadModel with random weights, biases and LayerNorm affines (none trivial);
    ``bias=False``: every bias zero, the model a bias-free one is."""
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd, vocab_size, block_size = shape
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
        n_positions=block_size, bos_token_id=0, eos_token_id=0, attn_implementation="eager",
        initializer_range=std,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 init has zero biases and LayerNorms at identity: perturb them
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith("bias") and not bias:
                p.zero_()
    return model


def gen_model() -> Any:
    return hf_model(std=GEN_STD)


def ours(state_dict: dict[str, Tensor], bias: bool = True) -> dict[str, Tensor]:
    """HF GPT-2 names, Conv1D (in, out) layout -> ours: nn.Linear (out, in), no lm_head."""
    return {
        k: (v.t().contiguous() if k.endswith(CONV1D) else v).detach().clone()
        for k, v in state_dict.items()
        if k != "lm_head.weight" and (bias or not k.endswith("bias"))
    }


def config_for(
    impl: Any, shape: tuple[int, int, int, int, int] = SMALL, **options: Any
) -> Any:
    n_layer, n_head, n_embd, vocab_size, block_size = shape
    return impl.GPTConfig(**{
        "block_size": block_size, "vocab_size": vocab_size, "n_layer": n_layer,
        "n_head": n_head, "n_embd": n_embd, "dropout": 0.0, "bias": True, **options,
    })  # fmt: skip


def tokens(batch: int, length: int, vocab_size: int, seed: int = 0) -> Tensor:
    return torch.randint(
        0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def assert_close(actual: Tensor, expected: Tensor, atol: float, what: str,
                 wrong: Wrong | None = None, hint: str = "") -> None:
    """Max abs difference within ``atol``; a failure names the classic bug of ``wrong`` (cause ->
    what that bug gives, from torch ops or HF) that ``actual`` matches, else ``hint``."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    diff = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    if not diff <= atol:
        cause = likely(actual, wrong or {}) or (f"likely cause: {hint}" if hint else "")
        raise AssertionError(f"{what}: {cause + '; ' if cause else ''}"
                             f"max abs difference {diff:.3g} > {atol:g}")


# ---------------------------------------------------------------- LayerNorm and GELU

small_floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def float_tensors(draw: st.DrawFn, min_last: int = 1, max_dims: int = 3) -> Tensor:
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=max_dims - 1))
    shape.append(draw(st.integers(min_last, 8)))
    n = math.prod(shape)
    values = draw(st.lists(small_floats, min_size=n, max_size=n))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))  # tiny variance makes eps matter
    return torch.tensor(values, dtype=torch.float64).view(shape) * scale


@given(
    x=float_tensors(min_last=2), eps=st.sampled_from([1e-5, 1e-3, 0.5]),
    scale=st.booleans(), shift=st.booleans(),
)  # fmt: skip
def test_layer_norm_matches_torch_layer_norm(
    impl: Any, x: Tensor, eps: float, scale: bool, shift: bool
) -> None:
    C = x.size(-1)
    g = torch.Generator().manual_seed(C)
    weight = 1 + torch.randn(C, generator=g, dtype=torch.float64) if scale else None
    bias = torch.randn(C, generator=g, dtype=torch.float64) if shift else None
    out = impl.layer_norm(x, weight, bias, eps=eps)
    mean = x.mean(-1, keepdim=True)

    def affine(y: Tensor) -> Tensor:
        return (y if weight is None else y * weight) + (0 if bias is None else bias)

    wrong = {
        "the unbiased variance (divides by C - 1): LayerNorm's is biased, "
        "x.var(-1, unbiased=False)": lambda: affine((x - mean) / (x.var(-1, keepdim=True) + eps)
                                                    .sqrt()),
        "eps added outside the square root: (x - mean) / sqrt(var + eps)": lambda: affine(
            (x - mean) / (x.var(-1, keepdim=True, unbiased=False).sqrt() + eps)),
        "the shift (bias) applied only with a scale (weight): each is optional on its own":
            lambda: F.layer_norm(x, (C,), weight, bias if weight is not None else None, eps),
    }
    assert_close(out, F.layer_norm(x, (C,), weight, bias, eps), 1e-10,
                 "layer_norm vs F.layer_norm", wrong=wrong)


def test_layer_norm_hand_worked_example(impl: Any) -> None:
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)  # mean 2, biased variance 1
    assert_close(
        impl.layer_norm(x, None, None, eps=0.0), torch.tensor([[-1.0, 1.0]]), 1e-12, "eps 0"
    )
    # eps inside the square root: (x - 2) / sqrt(1 + 3)
    assert_close(
        impl.layer_norm(x, None, None, eps=3.0), torch.tensor([[-0.5, 0.5]]), 1e-12, "eps 3"
    )
    w, b = (
        torch.tensor([2.0, 1.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    assert_close(impl.layer_norm(x, w, b, eps=0.0), torch.tensor([[-2.0, 2.0]]), 1e-12, "affine")
    assert_close(impl.layer_norm(x, w, None, eps=0.0), torch.tensor([[-2.0, 1.0]]), 1e-12, "scale")
    assert_close(impl.layer_norm(x, None, b, eps=0.0), torch.tensor([[-1.0, 2.0]]), 1e-12, "shift")


@pytest.mark.parametrize("C", [3, 8, 64])
def test_layer_norm_float32_is_accurate_far_from_zero(impl: Any, C: int) -> None:
    """Values near 1000 with unit spread: E[x²] - E[x]² cancels 1e6 against 1e6 in float32."""
    noise = torch.randn(4, C, generator=torch.Generator().manual_seed(C), dtype=torch.float64)
    noise = (noise - noise.mean(-1, keepdim=True)) / noise.std(-1, correction=0, keepdim=True)
    x = (1000 + noise).float()  # each row: mean 1000, std 1
    out = impl.layer_norm(x, None, None)
    assert out.dtype == torch.float32, f"float32 in, {out.dtype} out"
    expected = F.layer_norm(x.double(), (C,))
    LN_FP32_TOL = 1e-3  # float32 rounding of a mean near 1000 is ~1e-4; the one-pass form is off by > 1
    assert_close(out, expected, LN_FP32_TOL, "float32 layer_norm at mean 1000 vs float64",
                 hint="the one-pass variance E[x^2] - E[x]^2 cancels catastrophically in float32 "
                 "far from zero: use the mean of (x - mean)^2")


@given(x=float_tensors())
def test_gelu_matches_torch_tanh_approximation(impl: Any, x: Tensor) -> None:
    out = impl.gelu(x)
    overflow = not bool(out.isfinite().all())
    assert_close(out, F.gelu(x, approximate="tanh"), 1e-10, "gelu vs F.gelu(tanh)",
                 wrong={"the exact erf GELU instead of GPT-2's tanh approximation":
                        lambda: F.gelu(x)},
                 hint="tanh built from exp overflows (inf / inf = NaN): use torch.tanh"
                 if overflow else "")


def test_gelu_hand_worked_example(impl: Any) -> None:
    x = torch.tensor([0.0, 1.0, -1.0, 20.0, -20.0], dtype=torch.float64)
    # 0.5·(1 + tanh(sqrt(2/π)·1.044715)) = 0.841192; the exact erf GELU would give 0.841345
    expected = torch.tensor([0.0, 0.841192, -0.158808, 20.0, 0.0], dtype=torch.float64)
    assert_close(impl.gelu(x), expected, 1e-6, "gelu at 0, ±1, ±20")


def test_gelu_float32_extremes_match_torch(impl: Any) -> None:
    """tanh of arguments past ~44 overflows exp in float32 if built from exponentials."""
    x = torch.tensor([-1e4, -1e3, -100, -30, -12, -5, -1e-3, 0, 1e-3, 5, 12, 30, 100, 1e3, 1e4])
    out = impl.gelu(x)
    assert out.dtype == torch.float32 and bool(out.isfinite().all()), f"gelu({x.tolist()}) = {out}"
    expected = F.gelu(x.double(), approximate="tanh")
    relative = ((out.double() - expected).abs() / x.double().abs().clamp(min=1)).max().item()
    assert relative <= 1e-6, f"float32 gelu off by {relative:.3g} relative"  # float32: 6e-8/op


# ---------------------------------------------------------------- sinusoidal positions


@given(n_positions=st.integers(0, 64), half=st.integers(1, 32))
def test_sinusoidal_matches_closed_form(impl: Any, n_positions: int, half: int) -> None:
    d = 2 * half
    pe = impl.sinusoidal_positional_encoding(n_positions, d)

    def closed_form(pos: int, j: int) -> float:
        angle = pos * 10000 ** (-(j - j % 2) / d)  # pair i = j // 2 turns at 10000^(-2i/d)
        return math.sin(angle) if j % 2 == 0 else math.cos(angle)

    rows = [[closed_form(pos, j) for j in range(d)] for pos in range(n_positions)]
    expected = torch.tensor(rows, dtype=torch.float64).view(n_positions, d)
    assert pe.dtype == torch.float32, f"expected float32, got {pe.dtype}"

    def table(dtype: torch.dtype, pair_step: int = 2, swap: bool = False) -> Tensor:
        """The table with a classic bug: angles in float32, ω = 10000^(-i/d), sin/cos swapped."""
        omega = 10000 ** (-torch.arange(0, d, 2, dtype=dtype) / 2 * pair_step / d)
        angles = torch.arange(n_positions, dtype=dtype)[:, None] * omega
        first, second = (angles.cos(), angles.sin()) if swap else (angles.sin(), angles.cos())
        return torch.stack([first, second], dim=-1).flatten(-2).float()

    wrong = {
        "sin and cos swapped: even channels 2i hold sin(pos·ω_i), odd ones cos":
            lambda: table(torch.float64, swap=True),
        "the frequencies ω_i = 10000^(-2i/d) for pair i (channel 2i), not 10000^(-i/d)":
            lambda: table(torch.float64, pair_step=1),
        "the angles pos·ω computed in float32: compute them in float64, round the table once":
            lambda: table(torch.float32),
    }
    assert_close(pe, expected, 1e-6, "PE vs sin/cos closed form", wrong=wrong)


def test_sinusoidal_hand_worked_example(impl: Any) -> None:
    pe = impl.sinusoidal_positional_encoding(2, 4)  # ω = [1, 0.01]
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.841471, 0.540302, 0.0099998, 0.99995]])
    assert_close(pe, expected, 1e-6, "PE(2, 4)")


def test_sinusoidal_far_positions_keep_float32_precision(impl: Any) -> None:
    """The docstring's promise: angles pos·ω for pos in the thousands, computed in float32,
    lose ~pos·6e-8 radians (3e-4 at 5000); the table must still be float32-exact there."""
    d, last = 64, 5000
    pe = impl.sinusoidal_positional_encoding(last + 1, d)
    for pos in (1234, 4095, last):
        angles = [pos * 10000 ** (-(j - j % 2) / d) for j in range(d)]
        row = [math.sin(a) if j % 2 == 0 else math.cos(a) for j, a in enumerate(angles)]
        expected = torch.tensor(row, dtype=torch.float64)
        assert_close(pe[pos], expected, 1e-6, f"PE[{pos}] vs the float64 closed form")


@pytest.mark.parametrize(("n_positions", "d_model", "bad"), [(4, 3, 3), (4, 0, 0), (-1, 4, -1)])
def test_sinusoidal_rejects_bad_sizes(impl: Any, n_positions: int, d_model: int, bad: int) -> None:
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        impl.sinusoidal_positional_encoding(n_positions, d_model)


@given(p=st.integers(0, 40), k=st.integers(0, 40), half=st.integers(1, 16))
def test_sinusoidal_shift_is_a_rotation_fixed_by_the_offset(
    impl: Any, p: int, k: int, half: int
) -> None:
    """PE[p + k] is PE[p] with each (sin, cos) pair rotated by the angle PE[k] encodes."""
    pe = impl.sinusoidal_positional_encoding(81, 2 * half).double()
    sin_p, cos_p = pe[p, 0::2], pe[p, 1::2]
    sin_k, cos_k = pe[k, 0::2], pe[k, 1::2]
    rotated = torch.stack([sin_p * cos_k + cos_p * sin_k, cos_p * cos_k - sin_p * sin_k], dim=-1)
    assert_close(
        pe[p + k], rotated.flatten(), 1e-5, f"PE[{p}+{k}] vs rotation of PE[{p}] by PE[{k}]"
    )
    # so the similarity of two positions depends on their distance only
    SIMILARITY_TOL = 1e-4  # a sum of up to 16 float32-rounded products
    assert_close(pe[p] @ pe[p + k], pe[0] @ pe[k], SIMILARITY_TOL, "PE[p]·PE[p+k] vs PE[0]·PE[k]")


# ---------------------------------------------------------------- the block


def block_params(model: Any, layer: int, bias: bool = True) -> dict[str, Tensor]:
    prefix = f"transformer.h.{layer}."
    return {
        k.removeprefix(prefix): v
        for k, v in ours(model.state_dict(), bias).items()
        if k.startswith(prefix)
    }


def torch_mlp(x: Tensor, p: dict[str, Tensor], act: Callable[[Tensor], Tensor]) -> Tensor:
    h = act(F.linear(x, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]))
    return F.linear(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])


def torch_block(x: Tensor, p: dict[str, Tensor], n_head: int, causal: bool = True,
                post_ln: bool = False, attn_residual: bool = True) -> Tensor:
    """GPT-2's block from torch ops, or with one classic bug (the block tests' wrong answers)."""
    def ln(h: Tensor, name: str) -> Tensor:
        return F.layer_norm(h, h.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"])

    def attn(h: Tensor) -> Tensor:
        b, t, c = h.shape
        q, k, v = (z.view(b, t, n_head, c // n_head).transpose(1, 2) for z in F.linear(
            h, p["attn.c_attn.weight"], p["attn.c_attn.bias"]).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return F.linear(y.transpose(1, 2).reshape(b, t, c), p["attn.c_proj.weight"],
                        p["attn.c_proj.bias"])

    def mlp(h: Tensor) -> Tensor:
        return torch_mlp(h, p, lambda z: F.gelu(z, approximate="tanh"))

    if post_ln:
        x = ln(x + attn(x), "ln_1")
        return ln(x + mlp(x), "ln_2")
    h = attn(ln(x, "ln_1"))
    x = x + h if attn_residual else h
    return x + mlp(ln(x, "ln_2"))


def test_mlp_matches_hf_gpt2_mlp(impl: Any) -> None:
    model = hf_model()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.transformer.h[1].mlp(x)
    p = block_params(model, 1)
    assert_close(
        impl.mlp_forward(x, p), expected, FORWARD_ATOL, "MLP vs HF GPT2MLP",
        wrong={"ReLU instead of GELU (GPT-2's tanh approximation)":
               lambda: torch_mlp(x, p, torch.relu),
               "the exact erf GELU instead of GPT-2's tanh approximation":
               lambda: torch_mlp(x, p, F.gelu)},
    )


@pytest.mark.parametrize("shape", [SMALL, OTHER], ids=["small", "other"])
def test_block_matches_hf_gpt2_block(impl: Any, shape: tuple[int, int, int, int, int]) -> None:
    """Block 0 maps HF's hidden state 0 (the embeddings) to its hidden state 1."""
    model = hf_model(shape)
    idx = tokens(2, shape[4], shape[3])
    with torch.no_grad():
        hidden = model(idx, output_hidden_states=True).hidden_states
    p = block_params(model, 0)
    out = impl.block_forward(hidden[0], p, shape[1])
    x, n_head = hidden[0], shape[1]
    wrong = {
        "attention without the causal mask: a position must not see later ones (is_causal=True)":
            lambda: torch_block(x, p, n_head, causal=False),
        "post-LN (normalize after the residual add): GPT-2 is pre-LN, x + attn(ln_1(x))":
            lambda: torch_block(x, p, n_head, post_ln=True),
        "the attention's residual connection is dropped: x = x + attn(ln_1(x))":
            lambda: torch_block(x, p, n_head, attn_residual=False),
    }
    assert_close(out, hidden[1], FORWARD_ATOL, "block 0 vs HF GPT2Block", wrong=wrong)


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("shape", [SMALL, OTHER], ids=["small", "other"])
@pytest.mark.parametrize(
    ("batch", "length"), [(1, 1), (2, 7), (3, None)], ids=["1x1", "2x7", "3xblock"]
)
def test_gpt_forward_matches_hf_gpt2(
    impl: Any, shape: tuple[int, int, int, int, int], batch: int, length: int | None
) -> None:
    model = hf_model(shape)
    idx = tokens(batch, length or shape[4], shape[3])
    try:
        logits, loss = impl.gpt_forward(idx, ours(model.state_dict()), config_for(impl, shape))
    except ValueError as error:
        if length is not None:
            raise
        pytest.fail(f"likely cause: off by one: a sequence of exactly block_size = {shape[4]} "
                    f"tokens is allowed (T <= block_size); {error}")
    assert loss is None, "no targets: the loss must be None"
    with torch.no_grad():
        expected = model(idx).logits
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight[: idx.size(1)]

    def without_final_layer_norm() -> Tensor:
        seen: list[Tensor] = []
        hook = model.transformer.ln_f.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        try:
            with torch.no_grad():
                model(idx)
        finally:
            hook.remove()
        logits: Tensor = seen[0] @ wte.T
        return logits

    def with_embeddings(embeddings: Tensor) -> Tensor:  # HF adds the positions once itself
        with torch.no_grad():
            return model(inputs_embeds=embeddings).logits  # type: ignore[no-any-return]

    wrong = {
        "the position embeddings added twice": lambda: with_embeddings(wte[idx] + wpe),
        "the position embeddings are missing: x = wte[idx] + wpe[:T]":
            lambda: with_embeddings(wte[idx] - wpe),
        "the final LayerNorm (ln_f) is missing before the LM head": without_final_layer_norm,
    }
    assert_close(logits, expected, FORWARD_ATOL, f"logits vs HF GPT2LMHeadModel {shape}",
                 wrong=wrong)


@pytest.mark.parametrize(
    ("bias", "dropout", "dtype"),
    [(False, 0.0, torch.int64), (False, 0.5, torch.int32), (True, 0.5, torch.int64),
     (True, 0.0, torch.int32)],
)  # fmt: skip
def test_gpt_forward_options_combined_match_hf(
    impl: Any, bias: bool, dropout: float, dtype: torch.dtype
) -> None:
    """A bias-free model is GPT-2 with every bias 0; ``dropout`` in the config changes nothing
    (the functional pass is the eval pass); int32 ids and targets work as int64 ones."""
    model, idx = hf_model(bias=bias), tokens(2, 16, 100, seed=9)
    params = ours(model.state_dict(), bias)
    config = config_for(impl, bias=bias, dropout=dropout)
    with torch.no_grad():
        out = model(idx, labels=idx)
    try:
        logits, loss = impl.gpt_forward(idx[:, :-1].to(dtype), params, config,
                                        idx[:, 1:].to(dtype))
    except TypeError as error:
        pytest.fail(f"likely cause: {dtype} ids rejected: int64 and int32 ids both work; {error}")
    assert logits.shape[1] != idx.size(1) - 2, (
        f"likely cause: the targets are shifted again inside gpt_forward: they come shifted "
        f"(targets[:, t] is the token after idx[:, t]); logits shape {tuple(logits.shape)}"
    )
    assert_close(logits, out.logits[:, :-1], FORWARD_ATOL, f"logits, bias={bias}, {dtype}",
                 hint="dropout in the forward pass: the functional pass is the eval pass, no "
                 "dropout whatever config.dropout says" if dropout else "")
    assert loss is not None
    assert_close(loss, out.loss, FORWARD_ATOL, f"loss, bias={bias} dropout={dropout} {dtype}",
                 wrong={"the loss is summed over the tokens instead of averaged":
                        out.loss * idx[:, 1:].numel()})


@given(data=st.data())
def test_gpt_forward_is_causal(impl: Any, data: st.DataObject) -> None:
    """Changing the tokens from position t on leaves the logits before t exactly as they were."""
    params, config = ours(hf_model().state_dict()), config_for(impl)
    T = data.draw(st.integers(2, 16), label="T")
    t = data.draw(st.integers(1, T - 1), label="t")
    idx = torch.tensor(
        data.draw(
            st.lists(st.lists(st.integers(0, 99), min_size=T, max_size=T), min_size=1, max_size=2)
        )
    )
    changed = idx.clone()
    changed[:, t:] = (idx[:, t:] + data.draw(st.integers(1, 99), label="shift")) % 100
    before, _ = impl.gpt_forward(idx, params, config)
    after, _ = impl.gpt_forward(changed, params, config)
    assert_close(
        after[:, :t],
        before[:, :t],
        1e-6,
        f"logits before position {t} after changing tokens from {t} on",
    )
    assert (after[:, t] - before[:, t]).abs().max() > 1e-4, (
        "the changed token does not affect its own logits"
    )


def test_gpt_forward_loss_matches_torch_cross_entropy(impl: Any) -> None:
    idx, targets = tokens(3, 16, 100, seed=1), tokens(3, 16, 100, seed=2)
    targets[0, :5] = -1  # ignored positions
    logits, loss = impl.gpt_forward(idx, ours(hf_model().state_dict()), config_for(impl), targets)
    assert loss is not None and loss.ndim == 0, "with targets the loss is a scalar"
    expected = F.cross_entropy(logits.reshape(-1, 100), targets.reshape(-1), ignore_index=-1)
    assert_close(loss, expected, 1e-6, "loss vs F.cross_entropy(ignore_index=-1)")


def test_gpt_forward_loss_matches_hf_language_modeling_loss(impl: Any) -> None:
    """HF shifts labels itself; ours takes them shifted: idx[:, 1:] predicted from idx[:, :-1]."""
    model, idx = hf_model(), tokens(2, 16, 100, seed=3)
    with torch.no_grad():
        expected = model(idx, labels=idx).loss
    _, loss = impl.gpt_forward(idx[:, :-1], ours(model.state_dict()), config_for(impl), idx[:, 1:])
    assert loss is not None
    assert_close(loss, expected, 1e-5, "loss vs HF GPT2LMHeadModel(labels=idx).loss")


@given(
    n=st.integers(1, 12), v=st.integers(1, 9), seed=st.integers(0, 2**16),
    ignore_index=st.sampled_from([-1, -100, 0, 1, 50]),
    scale=st.sampled_from([1.0, 100.0, 1000.0]), dtype=st.sampled_from(["float64", "float32"]),
)  # fmt: skip
def test_cross_entropy_matches_torch(
    impl: Any, n: int, v: int, seed: int, ignore_index: int, scale: float, dtype: str
) -> None:
    """Any ignore_index (one past the vocabulary too, as torch allows); float32 logits in the
    hundreds, where exp overflows, give the finite loss float64 gives."""
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, v, generator=g, dtype=torch.float64)).to(getattr(torch, dtype))
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.3] = ignore_index
    assume(bool((targets != ignore_index).any()))
    expected = F.cross_entropy(logits.double(), targets, ignore_index=ignore_index)
    loss = impl.cross_entropy(logits, targets, ignore_index=ignore_index)
    assert loss.dtype == logits.dtype and loss.ndim == 0, f"{loss.dtype} {tuple(loss.shape)}"
    relative = abs(loss.item() - expected.item()) / max(1.0, abs(expected.item()))
    bound = 1e-10 if dtype == "float64" else 1e-6  # float32 rounding: ~1e-7 relative
    assert relative <= bound, (
        f"cross_entropy {loss.item()} vs F.cross_entropy {expected.item()} "
        f"(ignore_index={ignore_index}, {dtype}, logits ×{scale})"
    )


def test_cross_entropy_hand_worked_example(impl: Any) -> None:
    loss = impl.cross_entropy(torch.zeros(2, 2), torch.tensor([1, -1]))  # one position ignored
    assert_close(loss, torch.tensor(math.log(2)), 1e-7, "two equally likely tokens: ln 2")
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 0.0]])  # p(1) = 3/4 in row 0
    loss = impl.cross_entropy(logits, torch.tensor([1, 1]), ignore_index=1)
    assert torch.isnan(loss), f"every target ignored: NaN (0/0) as torch, got {loss}"
    loss = impl.cross_entropy(logits, torch.tensor([1, 0]), ignore_index=0)
    assert_close(loss, torch.tensor(math.log(4 / 3)), 1e-7, "ignore_index=0: -ln 3/4 only")
    loss = impl.cross_entropy(torch.zeros(2, 1), torch.tensor([0, -1]))  # a vocabulary of one
    assert_close(loss, torch.tensor(0.0), 1e-7, "V = 1, one target ignored: certain, loss 0")


def test_gpt_gradients_match_hf_gpt2(impl: Any) -> None:
    """Every gradient, including the tied embedding's (it is also the LM head), equals HF's."""
    model, idx = hf_model(), tokens(2, 16, 100, seed=4)
    model.zero_grad()
    model(idx, labels=idx).loss.backward()
    expected = ours({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    model.zero_grad()
    params = {k: v.requires_grad_() for k, v in ours(model.state_dict()).items()}
    _, loss = impl.gpt_forward(idx[:, :-1], params, config_for(impl), idx[:, 1:])
    assert loss is not None
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None, f"{name} received no gradient"
        assert_close(p.grad, expected[name], 1e-6, f"gradient of {name} vs HF",
                     hint="the LM head is not tied to wte: logits = x @ wte.T with the same "
                     "tensor, so the head's gradient reaches wte too"
                     if name == "transformer.wte.weight" else "")


def test_every_parameter_receives_a_gradient(impl: Any) -> None:
    config = config_for(impl, OTHER)
    params = {k: v.requires_grad_() for k, v in ours(hf_model(OTHER).state_dict()).items()}
    _, loss = impl.gpt_forward(tokens(2, 32, 257), params, config, tokens(2, 32, 257, seed=1))
    assert loss is not None
    loss.backward()
    dead = [k for k, p in params.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"parameters with no (or an all-zero) gradient: {dead}"


# case: what check_idx probably misses when it lets that case through
REJECTS = {
    "too long": "the length is not checked against block_size (T <= block_size)",
    "id too large": "ids are not checked against vocab_size (0 <= id < vocab_size)",
    "negative id": "negative ids are not rejected: check idx.min() >= 0 as well as the max",
    "float ids": "the dtype is not checked (int64 or int32 ids only)",
    "no tokens": "an empty input is not rejected",
    "no rows": "an empty input is not rejected",
    "one dimension": "the shape is not checked: idx is (B, T)",
    "not a tensor": "the type is not checked: idx is a tensor",
}


@pytest.mark.parametrize(
    ("case", "error", "words"),
    [
        ("too long", ValueError, ["17", "16"]),  # sequence length, block_size
        ("id too large", ValueError, ["100", "100"]),  # the id, vocab_size
        ("negative id", ValueError, ["-1", "100"]),
        ("float ids", TypeError, ["float32"]),
        ("no tokens", ValueError, ["empty"]),
        ("no rows", ValueError, ["empty"]),
        ("one dimension", ValueError, ["(3,)"]),  # the shape
        ("not a tensor", TypeError, ["list"]),  # the type
    ],
)
def test_gpt_forward_rejects_bad_input_naming_value_and_limit(
    impl: Any, case: str, error: type, words: list[str]
) -> None:
    idx = {
        "too long": tokens(1, 17, 100),
        "id too large": torch.tensor([[1, 100, 2]]),
        "negative id": torch.tensor([[1, -1, 2]]),
        "float ids": torch.tensor([[1.0, 2.0]]),
        "no tokens": torch.zeros(1, 0, dtype=torch.long),
        "no rows": torch.zeros(0, 4, dtype=torch.long),
        "one dimension": torch.tensor([1, 2, 3]),
        "not a tensor": [[1, 2, 3]],
    }[case]
    with pytest.raises(error) as info:
        impl.gpt_forward(idx, ours(hf_model().state_dict()), config_for(impl))
        pytest.fail(f"likely cause: {REJECTS[case]}; {case}: no {error.__name__} raised")
    missing = [w for w in words if w not in str(info.value)]
    assert not missing, f"{case}: the message {str(info.value)!r} should name {missing}"


# ---------------------------------------------------------------- devices


def test_results_stay_on_the_inputs_device_meta(impl: Any) -> None:
    """Every function that does not read the values runs on ``meta`` (shapes only, no memory)
    and returns its tensors there: nothing is made on the CPU and mixed in."""
    meta = torch.device("meta")
    params = {k: v.to(meta) for k, v in block_params(hf_model(), 0).items()}
    bias_free = {k: v for k, v in params.items() if not k.endswith("bias")}
    x, logits = torch.empty(2, 5, 32, device=meta), torch.empty(4, 10, device=meta)
    targets = torch.zeros(4, dtype=torch.long, device=meta)
    results: dict[str, tuple[Tensor, tuple[int, ...], torch.dtype]] = {
        "layer_norm": (impl.layer_norm(x, params["ln_1.weight"], params["ln_1.bias"]),
                       (2, 5, 32), torch.float32),
        "layer_norm without affine": (impl.layer_norm(x, None, None), (2, 5, 32), torch.float32),
        "gelu": (impl.gelu(x), (2, 5, 32), torch.float32),
        "mlp_forward": (impl.mlp_forward(x, params), (2, 5, 32), torch.float32),
        "block_forward": (impl.block_forward(x, params, 4), (2, 5, 32), torch.float32),
        "block_forward, bias-free": (impl.block_forward(x, bias_free, 4), (2, 5, 32),
                                     torch.float32),
        "cross_entropy": (impl.cross_entropy(logits, targets, ignore_index=3), (), torch.float32),
        "top_k_filter": (impl.top_k_filter(logits, 3), (4, 10), torch.float32),
        "top_p_filter": (impl.top_p_filter(logits, 0.9), (4, 10), torch.float32),
        "greedy sample_next_token": (impl.sample_next_token(logits, 0.0), (4,), torch.int64),
        "sample_next_token": (impl.sample_next_token(logits, 0.7, top_k=3, top_p=0.9), (4,),
                              torch.int64),
    }  # fmt: skip
    wrong = {
        name: (str(t.device), tuple(t.shape), t.dtype)
        for name, (t, shape, dtype) in results.items()
        if (t.device, tuple(t.shape), t.dtype) != (meta, shape, dtype)
    }
    assert not wrong, f"results not on meta with the expected shape and dtype: {wrong}"


def test_no_tensor_is_made_on_the_default_device(impl: Any) -> None:
    """With ``meta`` as the default device, a tensor made without ``device=`` lands there and
    cannot mix with the CPU inputs (on a GPU it would be on the CPU): the results must not
    change. Covers what reads the ids' values and so cannot run on ``meta`` itself."""
    params, config = ours(gen_model().state_dict()), config_for(impl)
    bias_free = ours(hf_model(bias=False).state_dict(), bias=False)
    prompt = tokens(2, 20, 100, seed=8)
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 4])
    generators = [torch.Generator().manual_seed(0) for _ in range(2)]

    def run(g: torch.Generator) -> dict[str, Tensor]:
        _, loss = impl.gpt_forward(prompt[:, :16], params, config, prompt[:, 1:17])
        _, loss_bias_free = impl.gpt_forward(
            prompt[:, :16], bias_free, config_for(impl, bias=False), prompt[:, 1:17]
        )
        assert loss is not None and loss_bias_free is not None
        return {
            "generate": impl.generate(prompt, params, config, 6, temperature=0.8, top_k=20,
                                      top_p=0.9, eos_id=int(prompt[0, 0]), generator=g),
            "gpt_forward loss": loss,
            "bias-free gpt_forward loss": loss_bias_free,
            "cross_entropy": impl.cross_entropy(logits, targets, 3),
            "top_p_filter": impl.top_p_filter(logits, 0.5),
            "sample_next_token": impl.sample_next_token(logits, 1.0, top_k=5, top_p=0.8,
                                                        generator=g),
        }  # fmt: skip

    expected = run(generators[0])
    with torch.device("meta"):
        got = run(generators[1])
    for name, t in got.items():
        assert t.device == torch.device("cpu"), f"{name}: on {t.device}, the inputs on cpu"
        assert torch.equal(t, expected[name]), f"{name} changed with meta as the default device"


# ---------------------------------------------------------------- initialisation and size


def test_init_params_has_hf_gpt2_names_and_shapes(impl: Any) -> None:
    expected = {k: tuple(v.shape) for k, v in ours(hf_model(OTHER).state_dict()).items()}
    params = impl.init_params(config_for(impl, OTHER), seed=0)
    assert "lm_head.weight" not in params, (
        "likely cause: an lm_head.weight of its own: GPT-2's LM head is tied to "
        "transformer.wte.weight (the same tensor), so it is no parameter of its own"
    )
    assert {k: tuple(v.shape) for k, v in params.items()} == expected
    assert all(v.dtype == torch.float32 for v in params.values())


NORMAL_WITHIN_ONE_STD = math.erf(1 / math.sqrt(2))  # 0.6827; a uniform law has 0.5774


@pytest.mark.parametrize("n_layer", [1, 6])
def test_init_params_follows_gpt2_initialisation(impl: Any, n_layer: int) -> None:
    """Each weight tensor on its own: N(0, 0.02), the residual projections N(0, 0.02 /
    sqrt(2·n_layer)); zero biases, unit LayerNorm scales. Statistical bounds, each 6 standard
    errors for that tensor's size (the smallest has 4096 entries: std within 6.6%): its std, its
    mean, and the share of entries within one std (the normal's 68.3%, not a uniform's 57.7%)."""
    config = impl.GPTConfig(block_size=64, vocab_size=512, n_layer=n_layer, n_head=4, n_embd=64)
    params = impl.init_params(config, seed=0)
    wrong, causes = [], set()
    for name, v in params.items():
        if ".ln_" in name or name.endswith("bias"):
            value = 1.0 if ".ln_" in name and name.endswith("weight") else 0.0
            if not bool((v == value).all()):
                wrong.append(f"{name}: not all {value}")
            continue
        std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
        n = v.numel()
        got_std, got_mean = v.double().std().item(), v.double().mean().item()
        within = (v.abs() < std).double().mean().item()
        if abs(got_std / std - 1) > 6 / math.sqrt(2 * n):
            wrong.append(f"{name}: std {got_std:.4g}, expected {std:.4g}")
            if name.endswith("c_proj.weight"):
                causes.add("the residual projections (c_proj.weight) are not scaled to std "
                           "0.02/sqrt(2·n_layer), or scaled by 1/sqrt(n_layer): each block adds "
                           "to the residual stream twice")
        if abs(got_mean) > 6 * std / math.sqrt(n):
            wrong.append(f"{name}: mean {got_mean:.3g}, expected 0")
        p = NORMAL_WITHIN_ONE_STD
        if abs(within - p) > 6 * math.sqrt(p * (1 - p) / n):
            wrong.append(f"{name}: {within:.3f} of the entries within one std, normal: {p:.3f}")
            if abs(within - 1 / math.sqrt(3)) <= 6 * math.sqrt(p * (1 - p) / n):
                causes.add("a uniform law: GPT-2 draws its weights from a normal, N(0, std)")
    likely_causes = "".join(f"likely cause: {c}\n" for c in sorted(causes))
    assert not wrong, likely_causes + "not GPT-2's initialisation:\n" + "\n".join(wrong)


def test_init_params_is_reproducible_from_seed(impl: Any) -> None:
    config = config_for(impl)
    state = torch.get_rng_state()
    a, b, c = (impl.init_params(config, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state), "init_params changed the global RNG state"
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed gave different weights"
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"]), (
        "seeds 7 and 8 agree"
    )


def test_gpt2_small_has_124439808_parameters(impl: Any) -> None:
    """GPT-2 small with the head tied to the token embedding (HF's count on the meta device)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = impl.GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    count = impl.count_parameters(config)
    assert impl.count_parameters(impl.GPTConfig()) == count, "the defaults are GPT-2 small"
    with torch.device("meta"):  # shapes only, nothing allocated
        hf_count = GPT2LMHeadModel(GPT2Config()).num_parameters()
    head = (
        "likely cause: the LM head counted on its own: it is tied to wte (the same weights); "
        if count - hf_count == config.vocab_size * config.n_embd else ""
    )
    assert count == hf_count == 124_439_808, f"{head}counted {count:,}; HF {hf_count:,}"


@pytest.mark.parametrize("shape", [SMALL, OTHER], ids=["small", "other"])
def test_count_parameters_matches_hf_gpt2(impl: Any, shape: tuple[int, int, int, int, int]) -> None:
    assert impl.count_parameters(config_for(impl, shape)) == hf_model(shape).num_parameters()


def test_count_parameters_without_bias_matches_init_params(impl: Any) -> None:
    config = impl.GPTConfig(
        block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32, bias=False
    )
    params = impl.init_params(config, seed=0)
    assert not any(k.endswith("bias") for k in params), "bias=False: no *.bias parameters"
    assert impl.count_parameters(config) == sum(v.numel() for v in params.values())


# ---------------------------------------------------------------- sampling


@st.composite
def distinct_logits(draw: st.DrawFn, max_v: int = 12) -> Tensor:
    """(2, V) logits without ties, so "the k largest" and "the nucleus" are unambiguous."""
    v = draw(st.integers(2, max_v))
    rows = [
        draw(st.lists(st.integers(-400, 400), min_size=v, max_size=v, unique=True))
        for _ in range(2)
    ]
    return torch.tensor(rows, dtype=torch.float64) / 40


def hf_warpers(
    temperature: float | None = None, top_k: int | None = None, top_p: float | None = None
) -> Callable[[Tensor], Tensor]:
    """Hugging Face's logits warpers, chained in the order its ``generate`` applies them."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain: list[Any] = []
    if temperature is not None:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        chain.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        chain.append(TopPLogitsWarper(top_p))

    def apply(logits: Tensor) -> Tensor:
        scores = logits.clone()
        for warper in chain:
            scores = warper(None, scores)
        return scores

    return apply


def warp(name: str, param: float, logits: Tensor) -> Tensor:
    if name == "top_k":
        return hf_warpers(top_k=int(param))(logits)
    return hf_warpers(top_p=param)(logits)


@given(logits=distinct_logits(), k=st.integers(1, 14))
def test_top_k_keeps_the_k_largest_as_hf_warper(impl: Any, logits: Tensor, k: int) -> None:
    out = impl.top_k_filter(logits, k)
    kept = torch.isfinite(out)
    extra = {int(n) - min(k, logits.size(-1)) for n in kept.sum(-1)}  # kept minus k, per row
    off_by_one = {
        1: "likely cause: one token too many kept: off by one (the k-th largest is the last)",
        -1: "likely cause: one token too few kept: off by one (the k-th largest stays)",
    }.get(extra.pop() if len(extra) == 1 else 0, "")
    assert torch.equal(kept, torch.isfinite(warp("top_k", k, logits))), (
        f"{off_by_one + '; ' if off_by_one else ''}top-{k} kept {kept.tolist()}"
    )
    assert bool((kept.sum(-1) == min(k, logits.size(-1))).all()), (
        f"top-{k} kept {kept.sum(-1).tolist()}"
    )
    assert torch.equal(out[kept], logits[kept]), "kept logits must be unchanged"


@given(
    rows=st.integers(2, 9).flatmap(
        lambda v: st.lists(st.lists(st.integers(-3, 3), min_size=v, max_size=v), min_size=1,
                           max_size=3)
    ),
    k=st.integers(1, 10),
)  # fmt: skip
def test_top_k_keeps_ties_at_the_kth_value_as_hf_warper(
    impl: Any, rows: list[list[int]], k: int
) -> None:
    """Few distinct values, so ties at the k-th largest are common: all of them stay."""
    logits = torch.tensor(rows, dtype=torch.float32) / 2
    out = impl.top_k_filter(logits, k)
    assert torch.equal(out, warp("top_k", k, logits)), f"top-{k} of {logits.tolist()}: {out}"


def test_top_k_hand_worked_example(impl: Any) -> None:
    out = impl.top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    assert torch.equal(out, torch.tensor([-math.inf, 3.0, 2.0, -math.inf])), out
    out = impl.top_k_filter(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), 2)  # a tie at the 2nd largest
    assert torch.equal(out, torch.tensor([[2.0, 1.0, 1.0, -math.inf]])), out


@given(logits=distinct_logits(), p=st.floats(0.01, 0.99))
def test_top_p_keeps_exactly_the_nucleus(impl: Any, logits: Tensor, p: float) -> None:
    """Kept: the most likely tokens, fewest of them, with total probability >= p."""
    probs = logits.softmax(-1)
    cumulative = probs.sort(-1, descending=True).values.cumsum(-1)
    assume(bool(((cumulative - p).abs() > 1e-6).all()))  # no token right at the threshold
    kept = torch.isfinite(impl.top_p_filter(logits, p))
    for row in range(logits.size(0)):
        mass = probs[row][kept[row]].sum().item()
        assert mass >= p, (
            f"likely cause: the token that crosses p dropped: keep every token whose preceding "
            f"mass is < p; row {row}: kept mass {mass:.4f} < p={p:.4f}"
        )
        least = probs[row][kept[row]].min().item()
        assert mass - least < p, (
            f"likely cause: one token too many kept (the one after the token that crosses p); "
            f"row {row}: dropping the least likely kept token still leaves >= p"
        )
        if (~kept[row]).any():
            assert probs[row][~kept[row]].max() < least, (
                f"row {row}: a dropped token beats a kept one"
            )
    assert torch.equal(kept, torch.isfinite(warp("top_p", p, logits))), (
        "differs from HF's TopPLogitsWarper"
    )


def test_top_p_hand_worked_example(impl: Any) -> None:
    logits = torch.tensor([0.1, 0.5, 0.15, 0.25]).log()  # already probabilities
    for p, expected in [(0.4, [1]), (0.7, [1, 3]), (0.8, [1, 2, 3]), (1.0, [0, 1, 2, 3])]:
        kept = torch.isfinite(impl.top_p_filter(logits, p)).nonzero().flatten().tolist()
        assert kept == expected, f"p={p}: kept {kept}, expected {expected}"
    # Four equal logits: probabilities exactly 1/4, the mass before each exactly 0, 1/4, 1/2,
    # 3/4. A token whose preceding mass is exactly p goes (p is reached without it).
    for p, count in [(0.25, 1), (0.5, 2), (0.75, 3), (0.76, 4)]:
        kept = int(torch.isfinite(impl.top_p_filter(torch.zeros(1, 4), p)).sum())
        assert kept == count, (
            f"likely cause: a token whose preceding mass is exactly p kept: p is reached without "
            f"it (remove where the mass before it >= p); uniform over 4, p={p}: kept {kept} "
            f"tokens, expected {count}"
        )
    # p = 1 keeps everything, even tokens whose float32 probability rounds to nothing
    logits = torch.tensor([[30.0, 0.0, -30.0], [300.0, 200.0, 100.0]])
    kept = torch.isfinite(impl.top_p_filter(logits, 1.0))
    assert bool(kept.all()), (
        f"likely cause: float32 cumulative sums round to 1 before the last tokens: p = 1 keeps "
        f"everything (return the logits as they are); p=1 dropped {(~kept).nonzero().tolist()} "
        f"of {logits.tolist()}"
    )


@pytest.mark.parametrize(
    ("fn", "bad"), [("top_k_filter", 0), ("top_p_filter", 0.0), ("top_p_filter", 1.5)]
)
def test_filters_reject_out_of_range_parameters(impl: Any, fn: str, bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        getattr(impl, fn)(torch.zeros(1, 4), bad)


def test_greedy_sampling_is_argmax(impl: Any) -> None:
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    options: list[dict[str, Any]] = [{}, {"top_k": 5}, {"top_p": 0.5}]
    for kwargs in options:
        ids = impl.sample_next_token(logits, temperature=0.0, **kwargs)
        assert torch.equal(ids, logits.argmax(-1)), f"temperature 0 with {kwargs} is not argmax"
    ids = impl.sample_next_token(
        logits, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(ids, logits.argmax(-1)), "top_k=1 is not argmax"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_frequencies_match_softmax_over_temperature(impl: Any, temperature: float) -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 20_000
    ids = impl.sample_next_token(
        logits.expand(n, -1), temperature, generator=torch.Generator().manual_seed(0)
    )
    assert ids.shape == (n,) and ids.dtype == torch.int64, f"got {tuple(ids.shape)} {ids.dtype}"
    frequencies = torch.bincount(ids, minlength=5).double() / n
    FREQUENCY_TOL = 0.015  # 20,000 draws: more than 4 standard deviations of a frequency
    times = (logits.double() * temperature).softmax(-1)
    assert_close(
        frequencies,
        (logits.double() / temperature).softmax(-1),
        FREQUENCY_TOL,
        f"frequencies at T={temperature}",
        hint="the logits multiplied by the temperature: divide them by it"
        if (frequencies - times).abs().max() <= FREQUENCY_TOL else "",
    )


def test_filters_follow_temperature_in_order_hand_worked(impl: Any) -> None:
    """Which tokens can be drawn at all, worked by hand (200 draws each)."""
    g = torch.Generator().manual_seed(0)

    def drawn(logits: list[float], temperature: float, **filters: Any) -> set[int]:
        rows = torch.tensor(logits).log().repeat(200, 1)
        return set(impl.sample_next_token(rows, temperature, generator=g, **filters).tolist())

    # top-k, then top-p on what is left: p(top 2) renormalized = [4/7, 3/7]; 4/7 >= 0.5 alone.
    # (top-p first would keep [0.4, 0.3], mass 0.4 < 0.5 before the second, then top-2: both.)
    got = drawn([0.4, 0.3, 0.2, 0.1], 1.0, top_k=2, top_p=0.5)
    assert got == {0}, (
        f"likely cause: top-p applied before top-k: top-k first, then top-p on what is left; "
        f"top_k=2 then top_p=0.5: drew {got}, only token 0 can be"
    )
    # temperature first: at T = 0.25 the probabilities [.5, .3, .2] become [.866, .112, .022]:
    # the nucleus of 0.6 is token 0 alone (at T = 1 it would be tokens 0 and 1).
    got = drawn([0.5, 0.3, 0.2], 0.25, top_p=0.6)
    assert got == {0}, (
        f"likely cause: the temperature applied after the filters: divide by it first, then "
        f"top-k, then top-p; T=0.25 then top_p=0.6: drew {got}, only token 0 can be"
    )
    got = drawn([0.5, 0.3, 0.2], 1.0, top_p=0.6)
    assert got == {0, 1}, f"T=1 then top_p=0.6: drew {got}, tokens 0 and 1 can be"
    # a tie at the k-th value stays with top-k, top-p then renormalizes over all three
    # ([.5, .25, .25]: mass .75 < .8 before the last); with one of the tied dropped, top-p
    # would keep the two others ([.67, .33])
    got = drawn([0.4, 0.2, 0.2, 0.1, 0.1], 1.0, top_k=2, top_p=0.8)
    assert got == {0, 1, 2}, f"top_k=2 with a tie at the 2nd: drew {got}, expected 0, 1, 2"


def nucleus_is_ambiguous(scores: Tensor, p: float) -> bool:
    """Whether top-p of these (already top-k'd) scores depends on rounding or tie order: a
    cumulative mass within 1e-5 of p, or equal logits on both sides of the cut."""
    if p >= 1.0:  # keeps everything: nothing to decide
        return False
    probs = scores.double().softmax(-1)
    cumulative = probs.sort(descending=True).values.cumsum(-1)
    near = bool(((cumulative - p).abs() < 1e-5).any())
    kept = hf_warpers(top_p=p)(scores[None])[0].isfinite()
    dropped = scores.isfinite() & ~kept
    straddles = bool(torch.isin(scores[dropped], scores[kept]).any())
    return near or straddles


@given(
    v=st.integers(4, 10),
    grid=st.sampled_from([0.5, 0.25, 1.0]),
    offset=st.sampled_from([0.0, 500.0]),
    temperature=st.sampled_from([0.7, 0.3, 1.0, 1.8]),
    filters=st.sampled_from(["k+p", "k", "p", "k+p", "none", "k+p"]),
    k=st.integers(2, 4) | st.integers(1, 11),  # mostly a cut that top-p then renormalizes
    p=st.floats(0.3, 0.9) | st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_sampling_matches_hf_warpers_alone_and_chained(
    impl: Any, v: int, grid: float, offset: float, temperature: float, filters: str, k: int,
    p: float, seed: int,
) -> None:
    """Temperature, then top-k, then top-p, each optional, on float32 logits with ties (values
    on a grid), some in the hundreds (offset 500: exp overflows float32): the same draws as
    Hugging Face's warpers chained in its order, then ``torch.multinomial`` of the softmax,
    with the same generator state. 32 random rows from flat to peaked, 16 draws each; rows
    whose nucleus depends on rounding or on the order of ties are left out."""
    top_k = k if "k" in filters else None
    top_p = p if "p" in filters else None
    g = torch.Generator().manual_seed(seed)
    spread = torch.logspace(-1, 0.5, 32)[:, None]  # flat rows to peaked ones: 0.1 to 3.2
    logits = (torch.randn(32, v, generator=g) / grid).round() * grid * spread + offset
    if top_p is not None:
        before_p = hf_warpers(temperature, top_k)(logits)
        clear = [not nucleus_is_ambiguous(row, top_p) for row in before_p]
        logits = logits[torch.tensor(clear)]
        assume(len(logits) > 0)
    logits = logits.repeat_interleave(16, dim=0)
    scores = hf_warpers(temperature, top_k, top_p)(logits)
    expected = torch.multinomial(scores.softmax(-1), 1, generator=g.manual_seed(seed))
    ids = impl.sample_next_token(logits, temperature, top_k=top_k, top_p=top_p,
                                 generator=g.manual_seed(seed))  # fmt: skip
    wrong = (ids != expected.squeeze(-1)).nonzero().flatten().tolist()
    assert not wrong, (
        f"T={temperature} top_k={top_k} top_p={top_p}: row {wrong[0]} {logits[wrong[0]].tolist()} "
        f"drew {ids[wrong[0]].item()}; HF's warpers allow "
        f"{scores[wrong[0]].isfinite().nonzero().flatten().tolist()}"
    )


@given(
    logits=distinct_logits(max_v=8),
    k=st.integers(1, 4),
    p=st.floats(0.05, 0.95),
    seed=st.integers(0, 99),
)
def test_samples_never_leave_top_k_or_nucleus(
    impl: Any, logits: Tensor, k: int, p: float, seed: int
) -> None:
    rows = logits.float().repeat(100, 1)  # 200 draws
    allowed_k = torch.isfinite(warp("top_k", k, rows))
    allowed_p = torch.isfinite(warp("top_p", p, rows.double()))
    g = torch.Generator().manual_seed(seed)
    ids = impl.sample_next_token(rows, 1.0, top_k=k, generator=g)
    assert bool(allowed_k.gather(1, ids[:, None]).all()), f"a sample outside the top {k}"
    ids = impl.sample_next_token(rows, 1.0, top_p=p, generator=g)
    assert bool(allowed_p.gather(1, ids[:, None]).all()), (
        f"a sample outside the top-{p:.3f} nucleus"
    )


def test_fixed_seed_reproduces_the_sample(impl: Any) -> None:
    logits = torch.zeros(64, 100)  # uniform: two different seeds almost surely differ somewhere
    draw = [
        impl.sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(draw[0], draw[1]), "the same seed gave different tokens"
    assert not torch.equal(draw[0], draw[2]), "seeds 1 and 2 gave the same 64 tokens"


def test_negative_temperature_is_rejected(impl: Any) -> None:
    with pytest.raises(ValueError, match=r"-0\.5"):
        impl.sample_next_token(torch.zeros(1, 4), temperature=-0.5)


# ---------------------------------------------------------------- generation


def test_greedy_generate_matches_hf_greedy_generate(impl: Any) -> None:
    model, idx = gen_model(), tokens(3, 5, 100, seed=5)
    with torch.no_grad():
        expected = model.generate(
            idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=11,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    assert len(set(expected[:, 5:].flatten().tolist())) > 5, "test setup: a varied continuation"
    out = impl.generate(idx, ours(model.state_dict()), config_for(impl), 11, temperature=0.0)
    assert torch.equal(out, expected), f"greedy tokens {out.tolist()}, HF {expected.tolist()}"


SAMPLED = {"temperature": 0.9, "top_k": 20, "top_p": 0.9}


@pytest.mark.parametrize("prompt_length", [21, 9], ids=["longer-than-block", "grows-past-it"])
@pytest.mark.parametrize("options", [{"temperature": 0.0}, SAMPLED], ids=["greedy", "sampled"])
def test_generate_crops_like_a_loop_over_hf_forward(
    impl: Any, prompt_length: int, options: dict[str, Any]
) -> None:
    """Each step sees only the last block_size (16) tokens: an explicit loop over HF's forward
    on ``idx[:, -16:]``, then argmax, or HF's warpers and ``torch.multinomial`` with the same
    generator state."""
    model, n = gen_model(), 12
    prompt = tokens(2, prompt_length, 100, seed=6)
    g = torch.Generator().manual_seed(1)
    expected = prompt
    with torch.no_grad():
        for _ in range(n):
            logits = model(expected[:, -16:]).logits[:, -1]
            if options["temperature"] == 0.0:
                nxt = logits.argmax(-1)
            else:
                scores = hf_warpers(**options)(logits)
                nxt = torch.multinomial(scores.softmax(-1), 1, generator=g).squeeze(-1)
            expected = torch.cat([expected, nxt[:, None]], dim=1)
    out = impl.generate(prompt, ours(model.state_dict()), config_for(impl), n, **options,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(out, expected), (
        f"{options}, prompt of {prompt_length}: {out[:, prompt_length:].tolist()}, "
        f"the loop over HF's last 16 tokens: {expected[:, prompt_length:].tolist()}"
    )


def hf_generate(model: Any, idx: Tensor, n: int, seed: int, eos: int | None,
                temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """Hugging Face's generate, its global RNG seeded with ``seed``; a finished row is padded
    with eos. ``top_k=0``, ``top_p=1`` switch its warpers off."""
    sampled = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0,
               "top_p": top_p or 1.0}  # fmt: skip
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out: Tensor = model.generate(
            idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, eos_token_id=eos,
            pad_token_id=0 if eos is None else eos,
            **(sampled if temperature > 0 else {"do_sample": False}),
        )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0.0, "top_k": None, "top_p": None},
     {"temperature": 0.8, "top_k": 10, "top_p": None},
     {"temperature": 1.3, "top_k": None, "top_p": 0.9},
     {"temperature": 0.7, "top_k": 25, "top_p": 0.8}],
    ids=["greedy", "temperature-top-k", "temperature-top-p", "all-three"],
)  # fmt: skip
def test_generate_with_eos_matches_hf_generate(impl: Any, options: dict[str, Any]) -> None:
    """A row that drew ``eos_id`` gets only eos after it; once every row has, generation
    stops. Oracle: HF's generate with eos as end and pad token, with the global RNG seeded the
    same (``generator=None`` draws from it, as HF does). The eos is one that row 0 draws early
    and the other rows never do, so padding shows; row 0 alone stops early."""
    model, n, seed = gen_model(), 10, 3
    prompt = tokens(3, 4, 100, seed=20)
    params, config = ours(model.state_dict()), config_for(impl)
    for rows in (prompt, prompt[:1]):  # (one row draws other tokens: its own eos)
        free = hf_generate(model, rows, n, seed, None, **options)[:, 4:].tolist()
        candidates = [
            t for j, t in enumerate(free[0][: n - 2])
            if t not in free[0][:j] + [u for row in free[1:] for u in row] and set(free[0][j + 1 :]) - {t}
        ]  # fmt: skip
        assert candidates, f"test setup: no usable eos in the continuations {free}"
        eos = candidates[0]
        expected = hf_generate(model, rows, n, seed, eos, **options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = impl.generate(rows, params, config, n, eos_id=eos, **options)
        assert torch.equal(out, expected), (
            f"{options}, eos_id={eos}: {out[:, 4:].tolist()}, HF {expected[:, 4:].tolist()}"
        )
    assert expected.shape[1] < 4 + n, "test setup: row 0 alone should stop early"


def test_generate_resumes_from_a_saved_generator_state(impl: Any) -> None:
    """Generating 4 tokens, saving the generator's state, restoring it into a new generator and
    generating 8 more continues exactly as the uninterrupted 12-token run."""
    params, config = ours(gen_model().state_dict()), config_for(impl)
    prompt = tokens(2, 3, 100, seed=7)
    whole = impl.generate(prompt, params, config, 12, **SAMPLED,
                          generator=torch.Generator().manual_seed(5))  # fmt: skip
    g = torch.Generator().manual_seed(5)
    first = impl.generate(prompt, params, config, 4, **SAMPLED, generator=g)
    restored = torch.Generator()
    restored.set_state(g.get_state())
    rest = impl.generate(first, params, config, 8, **SAMPLED, generator=restored)
    assert torch.equal(rest, whole), f"resumed {rest.tolist()}, uninterrupted {whole.tolist()}"


def test_generate_with_a_seed_is_reproducible(impl: Any) -> None:
    params, config, prompt = ours(hf_model().state_dict()), config_for(impl), tokens(2, 3, 100)
    runs = [
        impl.generate(prompt, params, config, 10, temperature=1.5, top_k=50, top_p=0.95,
                      generator=torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    ]  # fmt: skip
    assert runs[0].shape == (2, 13), f"shape {tuple(runs[0].shape)}"
    assert torch.equal(runs[0], runs[1]), "the same seed gave different tokens"
    assert not torch.equal(runs[0], runs[2]), "seeds 3 and 4 gave the same 20 tokens"


def test_generate_keeps_the_prompt_dtype_and_allows_zero_steps(impl: Any) -> None:
    params, config = ours(gen_model().state_dict()), config_for(impl)
    prompt = tokens(2, 3, 100, seed=8)
    wide = impl.generate(prompt, params, config, 5, temperature=0.0)
    narrow = impl.generate(prompt.int(), params, config, 5, temperature=0.0)
    assert narrow.dtype == torch.int32, (
        f"likely cause: the new tokens appended in int64 (torch.cat promotes): cast them to the "
        f"prompt's dtype; an int32 prompt came back as {narrow.dtype}"
    )
    assert torch.equal(narrow.long(), wide), "int32 and int64 prompts generate differently"
    same = impl.generate(prompt, params, config, 0)
    assert torch.equal(same, prompt), f"max_new_tokens=0 should return the prompt: {same}"
