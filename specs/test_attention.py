# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: attention (issue 2): softmax, scaled dot-product, multi-head and causal self-attention.

Conventions: mask ``True`` = may attend (torch SDPA's), broadcastable to (..., Tq, Tk);
``is_causal`` lets query i see key j iff j <= i (top-left aligned, as torch's), combined with a
mask by logical and. A query that may see no key gets all-zero weights and output 0, and passes
no gradient back (older torch versions give NaN there).

Contract:

| clause | tests | oracle |
|---|---|---|
| softmax along any dim equals torch's; -inf entries weigh 0; an all -inf slice gives zeros | `test_softmax_matches_torch_softmax`, `test_softmax_of_all_minus_inf_is_zeros` | `torch.softmax` (NaN slices read as 0), hand-worked |
| no overflow at logits of ±1e4, and float32 logits in the hundreds are exact | `test_softmax_large_logits_do_not_overflow`, `test_attention_large_logits_do_not_overflow`, `test_float32_logits_in_the_hundreds_match_a_float64_softmax` | hand-worked; `torch.softmax` in float64 on exact integer logits |
| the scale is 1/sqrt(d), the mask is True = may attend | `test_attention_hand_worked_example` | hand-worked (d = 4) |
| SDPA and its weights: 0–3 batch dims, Tq != Tk, masks broadcast over any dims, combined with is_causal | `test_sdpa_matches_torch_sdpa`, `test_attention_weights_match_torch_sdpa_with_identity_values` | `F.scaled_dot_product_attention` (with v = I for the weights) |
| gradients of q, k, v, with every mask/causal combination | `test_sdpa_gradients_match_torch_autograd` | `torch.autograd` through torch's SDPA |
| rows that see no key: weights and output exactly 0, gradients finite and 0 | `test_fully_masked_rows_give_zero_output_and_finite_gradients` | the documented result; torch SDPA on the other rows |
| is_causal is top-left aligned and never reads later keys | `test_sdpa_is_causal_later_keys_never_change_earlier_outputs`, `test_causal_self_attention_is_causal`, `test_attention_hand_worked_example` | property: perturb the future; hand-worked (Tq = 1 < Tk = 2) |
| dtypes: float32, float64 (1e-5, 1e-10) and bfloat16 in, the same dtype out | `test_bfloat16_in_bfloat16_out_within_its_rounding`, `test_sdpa_matches_torch_sdpa` | float64 oracle within bfloat16's rounding |
| every output on its inputs' device (meta, and CUDA when present) | `test_every_output_is_on_the_inputs_device_with_their_dtype` | the meta device |
| bad inputs raise, naming the shapes | `test_attention_validates_its_inputs`, `test_split_heads_rejects_indivisible_channels` | the documented errors |
| split_heads/merge_heads layout: head h holds channels h*hs:(h+1)*hs | `test_split_and_merge_heads_hand_made_layout`, `test_merge_heads_inverts_split_heads` | hand-made layout; round trip |
| multi-head attention with nn.MultiheadAttention's weights: self/cross, masks (none, (Tq, Tk), padding, per head) each with and without is_causal | `test_multi_head_attention_matches_torch_on_fixed_cases`, `test_multi_head_attention_matches_torch_multiheadattention` | `torch.nn.MultiheadAttention` (biases random) |
| GPT-2's causal self-attention sub-block | `test_causal_self_attention_matches_torch_on_a_fixed_case`, `test_causal_self_attention_matches_torch` | `F.linear` + torch's causal SDPA |

Tolerances (absolute, rtol 0): 1e-5 in float32, 1e-10 in float64. Inputs are O(1), so this is
about a hundred float32 ulps and far above float64 rounding: an honest implementation passes, any
real mistake (a missing scale, a wrong axis) misses by 1e-2 or more. bfloat16: ``BF16_TOL``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from specs.hints import Wrong, likely

COMPONENT = "attention"
pytestmark = pytest.mark.attention

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = st.sampled_from([torch.float32, torch.float64])
SIGMA_2 = math.exp(2) / (math.exp(2) + 1)  # softmax([2, 0])[0] = 0.8807970779778823


def assert_close(actual: Tensor, expected: Tensor, what: str, wrong: Wrong | None = None,
                 hint: str = "") -> None:
    """Shape, dtype, then values within ``TOL``; a failure names the classic bug in ``wrong``
    (cause -> what that bug would give, from torch ops) that ``actual`` matches, else ``hint``."""
    tol = TOL[expected.dtype]
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    assert actual.dtype == expected.dtype, (
        f"{what}: likely cause: the dtype changed (a .float() upcast, or a tensor made in the "
        f"default dtype): keep the inputs' dtype; got {actual.dtype}, expected {expected.dtype}"
    )
    try:
        torch.testing.assert_close(actual, expected, atol=tol, rtol=0, equal_nan=False)
    except AssertionError as error:
        cause = likely(actual, wrong or {}) or (f"likely cause: {hint}" if hint else "")
        raise AssertionError(f"{what}: {cause + '; ' if cause else ''}differs from the oracle "
                             f"beyond atol={tol}:\n{error}") from None


def visible_keys(
    t_q: int, t_k: int, mask: Tensor | None, is_causal: bool, batch: tuple[int, ...]
) -> Tensor:
    """(*batch, Tq, Tk) bool: which keys each query may see (True = may attend)."""
    visible = torch.ones(*batch, t_q, t_k, dtype=torch.bool)
    if is_causal:
        visible &= torch.ones(t_q, t_k, dtype=torch.bool).tril()  # j <= i
    if mask is not None:
        visible &= mask
    return visible


def torch_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """torch's SDPA; a row that sees no key gets the documented 0. Such a row is shown every key
    first, then zeroed: older torch gives NaN there, forward and backward."""
    if mask is None:
        # torch's own is_causal: checks our top-left alignment, not a mask written here.
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    batch = tuple(q.shape[:-2])
    visible = visible_keys(q.size(-2), k.size(-2), mask, is_causal, batch)
    sees_some = visible.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~sees_some)
    return out.masked_fill(~sees_some, 0.0)


def softmax64(logits: Tensor, visible: Tensor) -> Tensor:
    """The oracle in float64: torch.softmax over the visible keys, 0 for a row that sees none."""
    return torch.softmax(logits.double().masked_fill(~visible, -math.inf), -1).nan_to_num(0.0)


@dataclass
class SdpaCase:
    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None
    is_causal: bool

    def __repr__(self) -> str:
        mask = None if self.mask is None else tuple(self.mask.shape)
        return (f"SdpaCase(q={tuple(self.q.shape)}, k={tuple(self.k.shape)}, "
                f"v={tuple(self.v.shape)}, mask={mask}, is_causal={self.is_causal}, "
                f"dtype={self.q.dtype})")


def draw_mask(draw: Any, full: tuple[int, ...], g: torch.Generator) -> Tensor | None:
    """None, or a bool mask that broadcasts to ``full`` = (*batch, Tq, Tk): a suffix of its
    dims, each one either kept or 1 (e.g. (Tk,), (Tq, 1), (B, 1, 1, Tk), (1, nh, Tq, Tk))."""
    if not draw(st.integers(0, 3), label="has mask"):
        return None
    n_dims = draw(st.integers(1, len(full)), label="mask dims")
    shape = tuple(n if draw(st.booleans()) else 1 for n in full[len(full) - n_dims:])
    return torch.rand(shape, generator=g) < draw(st.sampled_from([0.5, 0.8]), label="keep")


@st.composite
def sdpa_cases(draw: Any, dtypes: st.SearchStrategy[torch.dtype] = DTYPES) -> SdpaCase:
    """q, k, v with 0–3 leading batch dims, Tq ≠ Tk allowed, an optional (broadcast) mask."""
    dtype = draw(dtypes)
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    t_q, t_k = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, d_v = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    scale = draw(st.sampled_from([0.3, 1.0, 2.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = (torch.randn(*batch, t_q, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    k = (torch.randn(*batch, t_k, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    v = torch.randn(*batch, t_k, d_v, generator=g, dtype=torch.float64).to(dtype)
    mask = draw_mask(draw, (*batch, t_q, t_k), g)
    return SdpaCase(q, k, v, mask, draw(st.booleans()))


@st.composite
def exact_large_logit_cases(draw: Any) -> SdpaCase:
    """float32 q, k of small integers with d in {1, 16}: 1/sqrt(d) and its square root are
    powers of two, so the logits (up to ±900) are exact in any kernel, whatever it scales first."""
    d = draw(st.sampled_from([1, 16]))
    top = 30 if d == 1 else 12  # |logit| <= 900 (d = 1) or 576 (d = 16)
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    t_q, t_k = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q = torch.randint(-top, top + 1, (*batch, t_q, d), generator=g).float()
    k = torch.randint(-top, top + 1, (*batch, t_k, d), generator=g).float()
    v = torch.randn(*batch, t_k, draw(st.integers(1, 4)), generator=g)
    return SdpaCase(q, k, v, draw_mask(draw, (*batch, t_q, t_k), g), draw(st.booleans()))


def _random_mha(e: int, n_head: int, dtype: torch.dtype, g: torch.Generator) -> Any:
    mha = torch.nn.MultiheadAttention(e, n_head, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():  # random biases too: the default zero init would hide a missing bias
        for p in mha.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    return mha


MASK_KINDS = ("none", "attn", "padding", "per_head")


def check_mha_against_torch(
    impl: Any, dtype: torch.dtype, b: int, t_q: int, t_k: int, n_head: int, hs: int,
    self_attention: bool, mask_kind: str, is_causal: bool, seed: int,
) -> None:
    """Same weights as nn.MultiheadAttention(batch_first=True); its masks are True = NOT allowed.

    ``mask_kind``: none; attn (Tq, Tk), one for all; padding (B, 1, 1, Tk), torch's
    key_padding_mask; per_head (B, nh, Tq, Tk), torch's 3-D attn_mask (B * nh, Tq, Tk). Each
    combined with ``is_causal`` (torch: folded into its attn_mask).
    """
    e = n_head * hs
    g = torch.Generator().manual_seed(seed)
    mha = _random_mha(e, n_head, dtype, g)
    query = torch.randn(b, t_q, e, generator=g, dtype=dtype)
    if self_attention:  # the same tensor three times (the reference fuses the projections)
        t_k, key, value = t_q, query, query
    else:
        key, value = (torch.randn(b, t_k, e, generator=g, dtype=dtype) for _ in range(2))
    causal = torch.ones(t_q, t_k, dtype=torch.bool)
    if is_causal:
        causal = causal.tril()
    mask: Tensor | None = None  # ours: True = may attend; torch's: True = masked out
    torch_kwargs: dict[str, Tensor] = {}
    if mask_kind == "attn":
        mask = torch.rand(t_q, t_k, generator=g) < 0.7
        torch_kwargs = {"attn_mask": ~(mask & causal)}
    elif mask_kind == "padding":
        keep = torch.rand(b, t_k, generator=g) < 0.7
        mask = keep[:, None, None, :]  # (B, 1, 1, Tk): broadcast over heads and queries
        torch_kwargs = {"key_padding_mask": ~keep, "attn_mask": ~causal}
    elif mask_kind == "per_head":
        mask = torch.rand(b, n_head, t_q, t_k, generator=g) < 0.5
        mask[..., 0] = True  # every head of every query sees a key (torch: NaN otherwise)
        torch_kwargs = {"attn_mask": ~(mask & causal).reshape(b * n_head, t_q, t_k)}
    else:
        torch_kwargs = {"attn_mask": ~causal}

    actual = impl.multi_head_attention(
        query, key, value, mha.in_proj_weight.detach(), mha.in_proj_bias.detach(),
        mha.out_proj.weight.detach(), mha.out_proj.bias.detach(), n_head,
        mask=mask, is_causal=is_causal,
    )
    with torch.no_grad():
        expected, _ = mha(query, key, value, need_weights=False, **torch_kwargs)

    def torch_mha(qkv_order: tuple[int, int, int] = (0, 1, 2), value_input: Tensor = value,
                  out_bias: bool = True) -> Tensor:
        """nn.MultiheadAttention with one classic bug: chunks reordered, another value input,
        no output bias."""
        bug = copy.deepcopy(mha)
        with torch.no_grad():
            for p in (bug.in_proj_weight, bug.in_proj_bias):
                p.copy_(torch.cat([p.chunk(3)[i] for i in qkv_order]))
            if not out_bias:
                bug.out_proj.bias.zero_()
            out: Tensor = bug(query, key, value_input, need_weights=False, **torch_kwargs)[0]
        return out

    what = (f"multi_head_attention(B={b}, Tq={t_q}, Tk={t_k}, nh={n_head}, hs={hs}, "
            f"self={self_attention}, mask={mask_kind}, is_causal={is_causal}, {dtype})")
    rows = torch.ones(b, n_head, t_q, t_k, dtype=torch.bool) & causal  # which queries see a key
    if mask is not None:
        rows = rows & mask
    live = rows.any(-1)[:, 0]  # (B, Tq); a mask shared by the heads, or every head sees a key
    wrong = {  # what the classic bugs give here, from torch's module
        "the output projection's bias is missing": lambda: torch_mha(out_bias=False)[live],
        "the q and k chunks of in_proj_weight are swapped: its rows are q, then k, then v":
            lambda: torch_mha((1, 0, 2))[live],
        "the values are projected from the key input instead of the value input":
            lambda: torch_mha(value_input=key)[live],
    }
    assert_close(actual[live], expected[live], what, wrong=wrong)
    # A query that sees no key attends to nothing: its output is the output projection's bias.
    bias = mha.out_proj.bias.detach().expand(int((~live).sum()), e)
    assert_close(actual[~live], bias, f"{what}, fully masked queries")


def gpt2_weights(c: int, dtype: torch.dtype, g: torch.Generator) -> tuple[Tensor, ...]:
    """c_attn (3C, C), its bias, c_proj (C, C), its bias: nn.Linear layout, random."""
    shapes = [(3 * c, c), (3 * c,), (c, c), (c,)]
    return tuple(torch.randn(s, generator=g, dtype=dtype) * 0.5 for s in shapes)


def torch_causal_self_attention(x: Tensor, weights: tuple[Tensor, ...], n_head: int) -> Tensor:
    """The oracle from torch ops: F.linear, torch's causal SDPA, F.linear."""
    c_attn_w, c_attn_b, c_proj_w, c_proj_b = weights
    b, t, c = x.shape
    q, k, v = (p.view(b, t, n_head, c // n_head).transpose(1, 2)  # (B, nh, T, hs)
               for p in F.linear(x, c_attn_w, c_attn_b).chunk(3, dim=-1))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(-2)
    return F.linear(y, c_proj_w, c_proj_b)


def check_causal_self_attention_against_torch(
    impl: Any, dtype: torch.dtype, b: int, t: int, n_head: int, hs: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    c = n_head * hs
    x = torch.randn(b, t, c, generator=g, dtype=dtype)
    weights = gpt2_weights(c, dtype, g)
    c_attn_w, c_attn_b, c_proj_w, c_proj_b = weights

    def heads_split_before_qkv() -> Tensor:
        qkv = F.linear(x, c_attn_w, c_attn_b).view(b, t, n_head, 3 * hs).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)  # each head's slice cut in three: wrong
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.linear(y.transpose(1, 2).flatten(-2), c_proj_w, c_proj_b)

    def not_causal() -> Tensor:
        q, k, v = (p.view(b, t, n_head, hs).transpose(1, 2)
                   for p in F.linear(x, c_attn_w, c_attn_b).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        return F.linear(y, c_proj_w, c_proj_b)

    assert_close(impl.causal_self_attention(x, *weights, n_head),
                 torch_causal_self_attention(x, weights, n_head),
                 f"causal_self_attention(B={b}, T={t}, nh={n_head}, hs={hs}, {dtype})",
                 wrong={"not causal: GPT-2's self-attention passes is_causal=True": not_causal,
                        "heads split before q, k, v: chunk the (B, T, 3C) projection into q, k, "
                        "v (C channels each) first, then split each into heads":
                            heads_split_before_qkv})


# --- exact: hand-worked numbers and fixed cases ----------------------------------------------
# These come first: with -x (as tests/test_mutants.py runs) most bugs stop the run here, in
# a second, before any hypothesis search and shrinking.


def test_softmax_large_logits_do_not_overflow(impl: Any) -> None:
    """exp(1e4) overflows float32: a stable softmax subtracts the max first."""
    x = torch.tensor([[1e4, 1e4 - 1, 1e4 - 2], [-1e4, -1e4 + 1, -1e4 + 2]], dtype=torch.float32)
    out = impl.softmax(x)
    assert torch.isfinite(out).all(), (
        f"likely cause: exp overflowed: subtract the max of the slice before exp (softmax does "
        f"not change); softmax at logits ±1e4 gave {out}"
    )
    z = 1 + math.exp(-1) + math.exp(-2)  # by hand: softmax([0, -1, -2])
    by_hand = torch.tensor([[1 / z, math.exp(-1) / z, math.exp(-2) / z],
                            [math.exp(-2) / z, math.exp(-1) / z, 1 / z]])
    assert_close(out, by_hand, "softmax at logits ±1e4 vs hand-worked values")
    assert_close(out, torch.softmax(x, dim=-1), "softmax at logits ±1e4 vs torch.softmax")


def test_softmax_of_all_minus_inf_is_zeros(impl: Any) -> None:
    """The defined result for a fully masked row: zeros, not NaN; -inf entries weigh 0."""
    inf = math.inf
    x = torch.tensor([[-inf, -inf, -inf], [0.0, -inf, 0.0]])
    out = impl.softmax(x)
    assert not out.isnan().any(), (
        f"likely cause: an all -inf row gives exp(-inf - (-inf)) = NaN or 0/0: give such a row "
        f"zeros (subtract 0 where the max is -inf, never divide by a zero sum); got {out}"
    )
    want = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    assert torch.equal(out, want), f"softmax(x) = {out}, want {want}"
    out = impl.softmax(x, dim=0)  # columns: [-inf, 0] -> [0, 1]; [-inf, -inf] -> [0, 0]
    want = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(out, want), f"softmax(x, dim=0) = {out}, want {want}"


def test_attention_hand_worked_example(impl: Any) -> None:
    """d = 4 (scale 1/2): q = [1,1,1,1] twice, k = [1,1,1,1], [0,0,0,0] -> logits [2, 0].

    Without a mask both queries weigh the keys softmax([2, 0]) = [σ, 1-σ], σ = e²/(e²+1)
    = 0.880797...; causal, query 0 sees key 0 only: [1, 0]. With v = [[1, 0], [0, 1]] the
    output equals the weights. (No scale: softmax([4, 0]) = [0.982, 0.018]; 1/d: [0.731, 0.269].)
    One query and both keys, causal: [1, 0] (top-left aligned; bottom-right would give [σ, 1-σ]).
    """
    f64 = torch.float64
    q = torch.ones(2, 4, dtype=f64)
    k = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=f64)
    v = torch.eye(2, dtype=f64)
    full = torch.tensor([[SIGMA_2, 1 - SIGMA_2], [SIGMA_2, 1 - SIGMA_2]], dtype=f64)
    causal = torch.tensor([[1.0, 0.0], [SIGMA_2, 1 - SIGMA_2]], dtype=f64)

    def both_rows(logits: list[float]) -> Tensor:  # the weights from these logits, both queries
        return torch.softmax(torch.tensor([logits, logits], dtype=f64), -1)

    wrong_scale = {  # what the classic bugs give here
        "no 1/sqrt(d) scale: the logits are q·k / sqrt(d)": both_rows([4.0, 0.0]),
        "scaled by 1/d instead of 1/sqrt(d)": both_rows([1.0, 0.0]),
        "softmax over the queries (dim=-2) instead of over the keys (dim=-1)": both_rows([0, 0]),
    }
    assert_close(impl.attention_weights(q, k), full, "weights of the hand-worked example",
                 wrong=wrong_scale)
    wrong_causal = {
        "the causal mask is not applied when is_causal=True": full,
        "the causal mask hides the diagonal: query i sees keys j <= i (tril(), diagonal kept)":
            torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=f64),
    }
    assert_close(impl.attention_weights(q, k, is_causal=True), causal,
                 "causal weights of the hand-worked example", wrong=wrong_causal)
    assert_close(impl.scaled_dot_product_attention(q, k, v, is_causal=True), causal,
                 "causal output of the hand-worked example (v = I)", wrong=wrong_causal)
    # One query, two keys: top-left aligned (as torch's is_causal), query 0 sees key 0 only.
    assert_close(impl.attention_weights(q[:1], k, is_causal=True),
                 torch.tensor([[1.0, 0.0]], dtype=f64),
                 "causal weights of the hand-worked example with Tq=1 < Tk=2",
                 wrong={"is_causal aligned bottom-right (tril(Tk - Tq)): it is top-left aligned, "
                        "query i sees keys j <= i counted from the first key, as torch's":
                        full[:1]})
    only_key_1 = torch.tensor([[False, True], [False, True]])
    assert_close(impl.scaled_dot_product_attention(q, k, v, mask=only_key_1),
                 torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=f64),
                 "hand-worked example with mask True = may attend (only key 1)",
                 wrong={"the mask is inverted: True means MAY attend (torch's SDPA convention), "
                        "so hide the keys where the mask is False (~mask)":
                        torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=f64)})


def test_attention_large_logits_do_not_overflow(impl: Any) -> None:
    """d = 1, logits exactly ±1e4, ±9999, ±9998 in float32: finite, as by hand and as torch."""
    q = torch.tensor([[1.0], [-1.0]])
    k = torch.tensor([[1e4], [9999.0], [9998.0]])
    v = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    weights = impl.attention_weights(q, k)
    assert torch.isfinite(weights).all(), f"attention overflowed at logits 1e4: {weights}"
    z = 1 + math.exp(-1) + math.exp(-2)
    by_hand = torch.tensor([[1 / z, math.exp(-1) / z, math.exp(-2) / z],
                            [math.exp(-2) / z, math.exp(-1) / z, 1 / z]])
    assert_close(weights, by_hand, "attention weights at logits ±1e4")
    assert_close(impl.scaled_dot_product_attention(q, k, v),
                 F.scaled_dot_product_attention(q, k, v), "attention output at logits ±1e4")


@pytest.mark.parametrize("is_causal", [False, True])
def test_fully_masked_rows_give_zero_output_and_finite_gradients(
    impl: Any, is_causal: bool
) -> None:
    """A query that may see no key: weights 0, output 0, gradients finite (no NaN poisoning)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 3, generator=g, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    mask = torch.tensor([[False, True, True, True],  # causal: query 0 sees nothing
                         [False, False, False, False],  # sees nothing at all
                         [True, False, True, False],
                         [True, True, True, True]])
    dead = torch.tensor([is_causal, True, False, False])  # rows with no visible key
    out = impl.scaled_dot_product_attention(q, k, v, mask, is_causal)
    weights = impl.attention_weights(q, k, mask, is_causal)
    assert not out.isnan().any(), (
        f"likely cause: a row that sees no key gives 0/0 = NaN in softmax: give it zeros; "
        f"fully masked rows must give 0, got {out}"
    )
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    wrong: dict[str, Any] = {  # what the classic bugs give here
        "hidden logits filled with a finite number (-1e9) instead of -inf: a row that sees no key "
        "becomes a uniform average instead of 0": lambda: torch_sdpa(qd, kd, vd, mask, is_causal)
        .masked_fill(dead[:, None], 0.0) + dead[:, None] * vd.mean(-2, keepdim=True),
    }
    if is_causal:
        wrong["the mask is ignored when is_causal=True: a key must pass both the mask and the "
              "causal rule"] = lambda: torch_sdpa(qd, kd, vd, None, True)
        wrong["mask | causal instead of mask & causal: a key must pass both"] = (
            lambda: torch_sdpa(qd, kd, vd, mask | causal, False))
    assert torch.equal(out[:, dead], torch.zeros_like(out[:, dead])), (
        f"{likely(out, wrong) or 'likely cause: a row that sees no key must give exactly 0'}; "
        f"rows with no visible key must be exactly 0 (the documented result), got {out[:, dead]}"
    )
    assert torch.equal(weights[:, dead], torch.zeros_like(weights[:, dead])), weights[:, dead]
    expected = torch_sdpa(q.detach(), k.detach(), v.detach(), mask, is_causal)
    assert_close(out.detach()[:, ~dead], expected[:, ~dead], "rows with a visible key")
    out.backward(torch.randn(out.shape, generator=g, dtype=out.dtype))
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert t.grad is not None, (
            f"likely cause: no gradient reaches {name}: something is detached (.detach(), .data, "
            f"torch.no_grad, a NumPy round trip) between {name} and the output"
        )
        assert torch.isfinite(t.grad).all(), \
            f"gradient of {name} is not finite with fully masked rows: {t.grad}"
    assert q.grad is not None and torch.equal(q.grad[:, dead], torch.zeros_like(q.grad[:, dead]))


def test_attention_validates_its_inputs(impl: Any) -> None:
    q, k = torch.randn(3, 4), torch.randn(5, 4)
    impl.attention_weights(q, k, mask=torch.ones(3, 5, dtype=torch.bool))  # valid: bool mask
    with pytest.raises(TypeError, match="bool"):
        impl.attention_weights(q, k, mask=torch.ones(3, 5))  # a float mask is ambiguous
    with pytest.raises(ValueError, match="last dim"):
        impl.attention_weights(q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="number of keys"):
        impl.scaled_dot_product_attention(q, k, torch.randn(4, 2))


DEVICES = ["meta", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_on_the_inputs_device_with_their_dtype(impl: Any, device: str) -> None:
    """Every function returns on its inputs' device. The meta device checks placement without a
    GPU: a tensor made without ``device=`` (a causal mask, a constant) lands on the CPU, and
    combining it with a meta tensor fails. float64 inputs give float64 outputs."""
    f64 = torch.float64

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, device=device, dtype=f64)

    def mask(*shape: int) -> Tensor:
        return torch.ones(*shape, device=device, dtype=torch.bool)

    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 7, 4), randn(2, 3, 7, 6)
    x, kv = randn(2, 5, 12), randn(2, 7, 12)
    w_in, b_in, w_out, b_out = randn(36, 12), randn(36), randn(12, 12), randn(12)
    calls: list[tuple[str, Any, tuple[int, ...]]] = [
        ("softmax(x)", lambda: impl.softmax(q), (2, 3, 5, 4)),
        ("softmax(x, dim=0)", lambda: impl.softmax(q, dim=0), (2, 3, 5, 4)),
        ("attention_weights(q, k, is_causal=True), Tq < Tk",
         lambda: impl.attention_weights(q, k, is_causal=True), (2, 3, 5, 7)),
        ("attention_weights(q, k, mask, is_causal=True)",
         lambda: impl.attention_weights(q, k, mask(5, 7), True), (2, 3, 5, 7)),
        ("scaled_dot_product_attention(q, k, v)",
         lambda: impl.scaled_dot_product_attention(q, k, v), (2, 3, 5, 6)),
        ("scaled_dot_product_attention(q, k, v, is_causal=True)",
         lambda: impl.scaled_dot_product_attention(q, k, v, is_causal=True), (2, 3, 5, 6)),
        ("scaled_dot_product_attention(q, k, v, mask (B, 1, 1, Tk), is_causal=True)",
         lambda: impl.scaled_dot_product_attention(q, k, v, mask(2, 1, 1, 7), True),
         (2, 3, 5, 6)),
        ("split_heads", lambda: impl.split_heads(x, 3), (2, 3, 5, 4)),
        ("merge_heads", lambda: impl.merge_heads(q), (2, 5, 12)),
        ("multi_head_attention(self, mask (Tq, Tk), is_causal=True)",
         lambda: impl.multi_head_attention(x, x, x, w_in, b_in, w_out, b_out, 3,
                                           mask=mask(5, 5), is_causal=True), (2, 5, 12)),
        ("multi_head_attention(cross, padding mask, is_causal=True)",
         lambda: impl.multi_head_attention(x, kv, kv, w_in, b_in, w_out, b_out, 3,
                                           mask=mask(2, 1, 1, 7), is_causal=True), (2, 5, 12)),
        ("causal_self_attention",
         lambda: impl.causal_self_attention(x, w_in, b_in, w_out, b_out, 3), (2, 5, 12)),
    ]
    for name, call, shape in calls:
        try:
            out = call()
        except NotImplementedError:  # a stub (a RuntimeError too): not a device problem
            raise
        except RuntimeError as e:  # e.g. "Tensor on device meta is not on the expected device"
            pytest.fail(f"likely cause: a tensor made without device= (a causal mask, a "
                        f"constant) lands on the CPU: {name} on {device} inputs: {e}")
        assert out.device.type == device, f"{name}: output on {out.device}, inputs on {device}"
        assert out.dtype == f64, f"{name}: output {out.dtype} from float64 inputs"
        assert tuple(out.shape) == shape, f"{name}: shape {tuple(out.shape)}, want {shape}"


def test_split_and_merge_heads_hand_made_layout(impl: Any) -> None:
    """Head h holds channels h*hs:(h+1)*hs of every position, heads before time."""
    x = torch.arange(8.0).reshape(1, 2, 4)  # (B=1, T=2, C=4)
    heads = torch.tensor([[[[0.0, 1.0], [4.0, 5.0]],  # head 0: channels 0:2 of t=0, t=1
                           [[2.0, 3.0], [6.0, 7.0]]]])  # head 1: channels 2:4
    split = impl.split_heads(x, 2)
    assert split.shape == (1, 2, 2, 2), (
        f"split_heads shape {tuple(split.shape)}, want (B, nh, T, hs) = (1, 2, 2, 2)"
    )
    wrong_split = {
        "a plain reshape to (B, nh, T, hs) mixes positions into heads: view as (B, T, nh, hs), "
        "then transpose(1, 2)": x.reshape(1, 2, 2, 2),
        "heads interleaved: head h holds the contiguous channels h*hs:(h+1)*hs, so view as "
        "(B, T, nh, hs), not (B, T, hs, nh)": x.reshape(1, 2, 2, 2).permute(0, 3, 1, 2),
    }
    assert torch.equal(split, heads), (
        f"{likely(split, wrong_split) or 'likely cause: the layout (B, nh, T, hs) is wrong'}; "
        f"split_heads layout is wrong: got {split}, want {heads}"
    )
    merged = impl.merge_heads(heads)
    wrong_merge = {"a plain reshape without the transpose back: transpose(1, 2) to "
                   "(B, T, nh, hs) first, then reshape to (B, T, C)": heads.reshape(1, 2, 4)}
    assert torch.equal(merged, x), (
        f"{likely(merged, wrong_merge) or 'likely cause: the layout (B, T, C) is wrong'}; "
        f"merge_heads layout is wrong: got {merged}, want {x}"
    )


def test_split_heads_rejects_indivisible_channels(impl: Any) -> None:
    impl.split_heads(torch.randn(1, 2, 6), 3)
    with pytest.raises(ValueError, match="n_head"):
        impl.split_heads(torch.randn(1, 2, 6), 4)


@pytest.mark.parametrize(
    ("dtype", "b", "t_q", "t_k", "n_head", "hs", "self_attention", "mask_kind", "is_causal"),
    [
        (torch.float64, 2, 3, 5, 2, 3, False, "padding", False),  # cross-attention, Tq != Tk
        (torch.float32, 2, 4, 4, 3, 2, True, "none", True),
        (torch.float64, 2, 5, 3, 2, 2, False, "per_head", True),  # a mask per head, and causal
    ],
)
def test_multi_head_attention_matches_torch_on_fixed_cases(
    impl: Any, dtype: torch.dtype, b: int, t_q: int, t_k: int, n_head: int, hs: int,
    self_attention: bool, mask_kind: str, is_causal: bool,
) -> None:
    check_mha_against_torch(
        impl, dtype, b, t_q, t_k, n_head, hs, self_attention, mask_kind, is_causal, 0
    )


def test_causal_self_attention_matches_torch_on_a_fixed_case(impl: Any) -> None:
    check_causal_self_attention_against_torch(impl, torch.float64, 2, 5, 3, 2, seed=0)


# --- properties over hypothesis-drawn inputs -------------------------------------------------


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dtype=DTYPES,
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    masked=st.sampled_from([0.0, 0.3, 0.7]),
    data=st.data(),
)
def test_softmax_matches_torch_softmax(
    impl: Any, shape: list[int], dtype: torch.dtype, seed: int, scale: float, masked: float,
    data: Any,
) -> None:
    """Any dim; some entries -inf (weight 0), whole slices of -inf give 0 (torch.softmax: NaN)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=dtype) * scale
    x = x.masked_fill(torch.rand(*shape, generator=g) < masked, -math.inf)
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    expected = torch.softmax(x, dim=dim).nan_to_num(0.0)
    assert_close(impl.softmax(x, dim=dim), expected, f"softmax(x, dim={dim}) of {x}")


@given(case=sdpa_cases())
def test_sdpa_matches_torch_sdpa(impl: Any, case: SdpaCase) -> None:
    """Any leading batch dims, Tq ≠ Tk, masks (full or broadcast), causal flag, both dtypes."""
    actual = impl.scaled_dot_product_attention(case.q, case.k, case.v, case.mask, case.is_causal)
    expected = torch_sdpa(case.q, case.k, case.v, case.mask, case.is_causal)
    assert_close(actual, expected, f"scaled_dot_product_attention on {case}")


@given(case=sdpa_cases(), seed=st.integers(0, 2**31 - 1))
def test_sdpa_gradients_match_torch_autograd(impl: Any, case: SdpaCase, seed: int) -> None:
    """dL/dq, dL/dk, dL/dv for L = sum(out * G) equal torch's through its own SDPA: masks,
    is_causal, broadcasting and rows that see no key (they pass no gradient) included."""
    grad_out = torch.randn(*case.q.shape[:-1], case.v.size(-1),
                           generator=torch.Generator().manual_seed(seed), dtype=case.q.dtype)

    def grads(f: Any) -> tuple[Tensor, ...]:
        leaves = [t.clone().requires_grad_() for t in (case.q, case.k, case.v)]
        out = f(*leaves, case.mask, case.is_causal)
        found = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
        return tuple(torch.zeros_like(t) if d is None else d for t, d in zip(leaves, found,
                                                                              strict=True))

    ours, theirs = grads(impl.scaled_dot_product_attention), grads(torch_sdpa)
    for name, a, e in zip("qkv", ours, theirs, strict=True):
        assert_close(a, e, f"d{name} of scaled_dot_product_attention on {case}")


@given(case=exact_large_logit_cases())
def test_float32_logits_in_the_hundreds_match_a_float64_softmax(impl: Any, case: SdpaCase) -> None:
    """exp overflows float32 past 88: logits up to ±900, exact by construction, give the
    weights and outputs of torch.softmax in float64 (with masks, causal, broadcast)."""
    logits = case.q.double() @ case.k.double().transpose(-2, -1) / math.sqrt(case.q.size(-1))
    visible = visible_keys(case.q.size(-2), case.k.size(-2), case.mask, case.is_causal,
                           tuple(case.q.shape[:-2]))
    weights = softmax64(logits, visible)
    assert_close(impl.attention_weights(case.q, case.k, case.mask, case.is_causal),
                 weights.float(), f"attention_weights at logits up to {logits.abs().max():g}")
    assert_close(impl.scaled_dot_product_attention(case.q, case.k, case.v, case.mask,
                                                   case.is_causal),
                 (weights @ case.v.double()).float(),
                 f"scaled_dot_product_attention at logits up to {logits.abs().max():g} on {case}")


# bfloat16 keeps 8 significant bits (eps 2**-8 = 3.9e-3): logits of up to ~10, the weights and
# the output are each rounded, so results are off by several eps even in torch's own kernel.
BF16_TOL = 5e-2  # bf16 rounding; measured on 600 cases: torch's SDPA 8e-3, softmax-matmul 2.7e-2


@given(case=sdpa_cases(dtypes=st.just(torch.bfloat16)))
def test_bfloat16_in_bfloat16_out_within_its_rounding(impl: Any, case: SdpaCase) -> None:
    """bfloat16 inputs give bfloat16 outputs (no silent upcast), as a float64 oracle to within
    bfloat16's rounding; masks, causal and fully masked rows (exactly 0) included."""
    q, k, v = (t.double() for t in (case.q, case.k, case.v))
    batch = tuple(q.shape[:-2])
    visible = visible_keys(q.size(-2), k.size(-2), case.mask, case.is_causal, batch)
    weights = softmax64(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), visible)
    for what, actual, expected in (
        ("attention_weights", impl.attention_weights(case.q, case.k, case.mask, case.is_causal),
         weights),
        ("scaled_dot_product_attention",
         impl.scaled_dot_product_attention(case.q, case.k, case.v, case.mask, case.is_causal),
         weights @ v),
    ):
        assert actual.dtype == torch.bfloat16, f"{what}: {actual.dtype} from bfloat16 inputs"
        torch.testing.assert_close(
            actual.double(), expected, atol=BF16_TOL, rtol=0,
            msg=lambda m, what=what: f"{what} in bfloat16 on {case}:\n{m}",
        )
        dead = ~visible.any(-1)
        assert not actual[dead.expand(actual.shape[:-1])].any(), \
            f"{what}: rows that see no key must be exactly 0 in bfloat16 too"


@given(case=sdpa_cases())
def test_attention_weights_match_torch_sdpa_with_identity_values(impl: Any, case: SdpaCase) -> None:
    """SDPA with v = I (Tk × Tk) returns the attention weights themselves."""
    actual = impl.attention_weights(case.q, case.k, case.mask, case.is_causal)
    t_k = case.k.size(-2)
    eye = torch.eye(t_k, dtype=case.q.dtype).expand(*case.k.shape[:-1], t_k)
    expected = torch_sdpa(case.q, case.k, eye, case.mask, case.is_causal)
    assert_close(actual, expected, f"attention_weights on {case}")


@given(
    dtype=DTYPES,
    t_q=st.integers(3, 7),
    extra_keys=st.integers(-1, 2),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_sdpa_is_causal_later_keys_never_change_earlier_outputs(
    impl: Any, dtype: torch.dtype, t_q: int, extra_keys: int, seed: int, data: Any
) -> None:
    """is_causal: perturbing keys/values after position t leaves outputs at queries ≤ t alone."""
    t_k = t_q + extra_keys
    t = data.draw(st.integers(0, min(t_q, t_k) - 2), label="t")
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, n, 4, generator=g, dtype=dtype) for n in (t_q, t_k))
    v = torch.randn(2, t_k, 3, generator=g, dtype=dtype)
    k2, v2 = k.clone(), v.clone()
    k2[:, t + 1:] += 5 * torch.randn(k2[:, t + 1:].shape, generator=g, dtype=dtype)
    v2[:, t + 1:] += 5 * torch.randn(v2[:, t + 1:].shape, generator=g, dtype=dtype)
    before = impl.scaled_dot_product_attention(q, k, v, is_causal=True)
    after = impl.scaled_dot_product_attention(q, k2, v2, is_causal=True)
    torch.testing.assert_close(
        after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0,
        msg=lambda m: f"is_causal leaks: changing keys after position {t} changed outputs at "
        f"positions <= {t}:\n{m}",
    )


@given(
    b=st.integers(1, 3), t=st.integers(1, 5), n_head=st.integers(1, 4), hs=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_merge_heads_inverts_split_heads(
    impl: Any, b: int, t: int, n_head: int, hs: int, seed: int
) -> None:
    x = torch.randn(b, t, n_head * hs, generator=torch.Generator().manual_seed(seed))
    heads = impl.split_heads(x, n_head)
    assert heads.shape == (b, n_head, t, hs)
    assert torch.equal(impl.merge_heads(heads), x), "merge_heads(split_heads(x)) != x"
    assert torch.equal(heads[:, -1, :, :], x[:, :, -hs:]), "the last head is not the last channels"


@given(
    dtype=DTYPES,
    b=st.integers(1, 3),
    t_q=st.integers(1, 5),
    t_k=st.integers(1, 5),
    n_head=st.integers(1, 3),
    hs=st.integers(1, 4),
    self_attention=st.booleans(),
    mask_kind=st.sampled_from(MASK_KINDS),
    is_causal=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_multi_head_attention_matches_torch_multiheadattention(
    impl: Any, dtype: torch.dtype, b: int, t_q: int, t_k: int, n_head: int, hs: int,
    self_attention: bool, mask_kind: str, is_causal: bool, seed: int,
) -> None:
    """Every mask kind combined with is_causal, self- and cross-attention, both dtypes."""
    check_mha_against_torch(
        impl, dtype, b, t_q, t_k, n_head, hs, self_attention, mask_kind, is_causal, seed
    )


@given(
    dtype=DTYPES, b=st.integers(1, 3), t=st.integers(1, 6), n_head=st.integers(1, 3),
    hs=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
)
def test_causal_self_attention_matches_torch(
    impl: Any, dtype: torch.dtype, b: int, t: int, n_head: int, hs: int, seed: int
) -> None:
    check_causal_self_attention_against_torch(impl, dtype, b, t, n_head, hs, seed)


@given(
    b=st.integers(1, 2), t_total=st.integers(2, 8), n_head=st.integers(1, 3),
    hs=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), data=st.data(),
)
def test_causal_self_attention_is_causal(
    impl: Any, b: int, t_total: int, n_head: int, hs: int, seed: int, data: Any
) -> None:
    """Perturbing the tokens after position t never changes the outputs at positions ≤ t."""
    t = data.draw(st.integers(0, t_total - 2), label="t")
    g = torch.Generator().manual_seed(seed)
    c = n_head * hs
    x = torch.randn(b, t_total, c, generator=g)
    weights = gpt2_weights(c, torch.float32, g)
    x2 = x.clone()
    x2[:, t + 1:] += 3 * torch.randn(x2[:, t + 1:].shape, generator=g)
    before = impl.causal_self_attention(x, *weights, n_head)
    after = impl.causal_self_attention(x2, *weights, n_head)
    torch.testing.assert_close(
        after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0,
        msg=lambda m: f"causal_self_attention leaks the future: changing tokens after position "
        f"{t} changed outputs at positions <= {t}:\n{m}",
    )
