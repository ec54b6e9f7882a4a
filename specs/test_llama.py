# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: llama (issue 16): RMSNorm, rotary embeddings, SwiGLU, grouped-query attention, the block.

Conventions: weights in ``nn.Linear``'s (out, in) layout, no biases; rotary pairs are channels
(i, i + hs/2), Hugging Face's half-split layout; ``cos``/``sin`` tables are (T, hs/2), or
(B, T, hs/2) for rows at their own positions; kv head j serves query heads
``j*n_rep .. (j+1)*n_rep - 1``; attention is causal (top-left aligned).

Contract:

| clause | tests | oracle |
|---|---|---|
| RMSNorm: x / sqrt(mean(x²) + eps) * weight, eps inside the root, no mean subtracted | `test_rms_norm_hand_worked_example`, `test_rms_norm_matches_hf_llama_rmsnorm` | hand-worked ([3, 4] / sqrt(12.5)); HF `LlamaRMSNorm` |
| RMSNorm runs in float32 and returns the input's dtype (bfloat16 in, bfloat16 out) | `test_rms_norm_bfloat16_matches_hf_within_its_rounding` | HF `LlamaRMSNorm` in bfloat16 |
| rotary frequencies ω_i = θ^(-2i/hs), float32; odd head sizes refused | `test_rope_frequencies_hand_worked_example`, `test_rope_frequencies_match_hf_llama`, `test_rope_frequencies_reject_odd_head_sizes` | hand-worked (hs 4, θ 100); HF `LlamaRotaryEmbedding.inv_freq` |
| rotary tables cos/sin(p·ω_i) for positions 0 .. max_len-1 | `test_rope_cache_hand_worked_example`, `test_rope_cache_matches_hf_rotary_embedding` | hand-worked (one pair, 3 positions); HF `LlamaRotaryEmbedding` (each half of its cos, sin) |
| apply_rotary: pair (i, i + hs/2) turned by its angle, shared (T, hs/2) or per-row (B, T, hs/2) tables | `test_apply_rotary_hand_worked_example`, `test_apply_rotary_matches_hf_apply_rotary_pos_emb` | hand-worked ([1, 0] and [1, 2, 3, 4]); HF `apply_rotary_pos_emb` / `rotate_half` |
| apply_rotary in bfloat16: the tables cast to x's dtype, bfloat16 out | `test_apply_rotary_bfloat16_matches_hf_and_keeps_its_dtype` | HF `apply_rotary_pos_emb` on its bfloat16 tables |
| rotation keeps norms, and q·k depends only on the relative position | `test_rotary_scores_depend_only_on_relative_position` | property: shift both positions |
| SwiGLU: down(silu(gate(x)) * up(x)) | `test_swiglu_hand_worked_example`, `test_swiglu_matches_hf_llama_mlp` | hand-worked (silu(1)·2); HF `LlamaMLP` |
| repeat_kv: each kv head repeated for its consecutive query heads; n_rep 1 is the identity | `test_repeat_kv_hand_worked_example`, `test_repeat_kv_matches_hf_repeat_kv` | hand-worked ([10, 20] -> [10, 10, 20, 20]); HF `repeat_kv` |
| grouped-query attention: causal, MHA (n_kv = nh) to MQA (n_kv = 1), odd T | `test_grouped_query_attention_hand_worked_example`, `test_grouped_query_attention_matches_torch_sdpa_enable_gqa`, `test_grouped_query_attention_is_causal` | hand-worked (uniform scores); `F.scaled_dot_product_attention(enable_gqa=True)`; property: perturb the future |
| bad head counts and missing block weights raise, naming them | `test_bad_inputs_raise_naming_them` | the documented errors |
| the attention sub-block: q, k rotated (v not), GQA, output projection | `test_llama_attention_hand_worked_example`, `test_llama_attention_matches_hf_llama_attention` | hand-worked (one token: x·w_vᵀ·w_oᵀ); HF `LlamaAttention` (eager, causal mask) |
| the pre-norm block, forward and gradients | `test_llama_block_hand_worked_example`, `test_llama_block_matches_hf_decoder_layer`, `test_llama_block_gradients_match_hf_autograd` | hand-worked (zero output projections: identity); HF `LlamaDecoderLayer`, autograd through it |

Tolerances: 1e-5 absolute in float32 on O(1) values (about a hundred ulps); gradients 1e-5
relative to each gradient's largest entry; bfloat16: ``BF16_TOL``.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from transformers.models.llama import modeling_llama as hf

from specs import hints

COMPONENT = "llama"
pytestmark = pytest.mark.llama

TOL = 1e-5
BF16_TOL = 2 ** -7  # two bfloat16 ulps at 1 (8 significant bits): the float32 rounding of the two sides may differ
SEEDS = st.integers(0, 2**31 - 1)


def assert_close(actual: Tensor, expected: Tensor, what: str, tol: float = TOL, *,
                 wrong: hints.Wrong | None = None, hint: str = "") -> None:
    """Shape, dtype, then values; a mismatch names the classic bug in ``wrong`` whose answer
    ``actual`` matches (see specs/hints.py), else ``hint``."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    hints.assert_close(actual, expected, what=f"{what} differs from the oracle", wrong=wrong,
                       hint=hint, atol=tol, rtol=0)


def hf_config(nh: int = 4, n_kv: int = 2, hs: int = 4, hidden: int = 24, theta: float = 100.0,
              eps: float = 1e-5) -> Any:
    config = transformers.LlamaConfig(
        hidden_size=nh * hs, intermediate_size=hidden, num_attention_heads=nh,
        num_key_value_heads=n_kv, head_dim=hs, num_hidden_layers=1, rms_norm_eps=eps,
        vocab_size=8, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    config._attn_implementation = "eager"  # the plain matmul-softmax path: the clearest oracle
    return config


def randomize(module: torch.nn.Module, g: torch.Generator) -> dict[str, Tensor]:
    """Random weights in place, returned by name, detached: matrices with std 1/sqrt(fan_in)
    (O(1) outputs), norm weights 1 ± 0.3 (a norm that ignores its weight shows)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return {name: p.detach() for name, p in module.named_parameters()}


def hf_rotary(config: Any, positions: Tensor) -> tuple[Tensor, Tensor]:
    """HF's (B, T, hs) cos and sin for (B, T) positions."""
    x = torch.zeros(1, dtype=torch.float32)
    cos, sin = hf.LlamaRotaryEmbedding(config)(x, positions)
    return cos, sin


def half(t: Tensor) -> Tensor:
    """HF's (..., hs) table repeats the (..., hs/2) angles twice; ours is one copy."""
    return t[..., : t.shape[-1] // 2]


def causal_additive_mask(t: int) -> Tensor:
    return torch.full((t, t), -math.inf).triu(1)[None, None]  # (1, 1, T, T): 0 or -inf


# --- exact: hand-worked numbers (first: with -x most bugs stop here, in a second) ------------


def test_rms_norm_hand_worked_example(impl: Any) -> None:
    x = torch.tensor([[3.0, 4.0]])
    by_hand = torch.tensor([[3 / math.sqrt(12.5), 4 / math.sqrt(12.5)]])  # mean(x²) = 12.5
    assert_close(impl.rms_norm(x, torch.ones(2), 0.0), by_hand, "rms_norm([3, 4], eps=0)", wrong={
        # [3, 4] - 3.5 = [-0.5, 0.5], whose root mean square is 0.5
        "the mean is subtracted (that is LayerNorm): RMSNorm divides x itself by "
        "sqrt(mean(x²) + eps)": torch.tensor([[-1.0, 1.0]]),
        "the sum of squares instead of their mean: sqrt(mean(x²)), not sqrt(sum(x²))": x / 5,
    })
    eps_inside = torch.tensor([[3 / math.sqrt(13.0), 4 / math.sqrt(13.0)]])  # 12.5 + 0.5
    assert_close(impl.rms_norm(x, torch.ones(2), 0.5), eps_inside, "rms_norm([3, 4], eps=0.5)",
                 wrong={"eps outside the square root: x / sqrt(mean(x²) + eps), not "
                        "x / (sqrt(mean(x²)) + eps)": x / (math.sqrt(12.5) + 0.5),
                        "eps is ignored: it goes inside the root, x / sqrt(mean(x²) + eps)":
                        by_hand})
    scaled = impl.rms_norm(x, torch.tensor([2.0, -1.0]), 0.0)
    assert_close(scaled, by_hand * torch.tensor([2.0, -1.0]), "rms_norm with a weight",
                 wrong={"the weight is ignored: multiply the normalised x by weight": by_hand})


def test_rope_frequencies_hand_worked_example(impl: Any) -> None:
    got = impl.rope_frequencies(4, 100.0)  # 100^-(0/4), 100^-(2/4)
    assert_close(got, torch.tensor([1.0, 0.1]), "rope_frequencies(4, theta=100)", wrong={
        "the exponent is i/hs, not 2i/hs (torch.arange(0, head_size, 2) gives the 2i)":
            torch.tensor([1.0, 100 ** -0.25]),
        "the exponent's sign is flipped: ω_i = θ^(-2i/hs), 1 for pair 0, then smaller":
            torch.tensor([1.0, 10.0]),
        "the exponent's sign is flipped and offset (θ^(2i/hs - 1)): ω_i = θ^(-2i/hs), "
        "1 for pair 0": torch.tensor([0.01, 0.1]),
    })
    assert_close(impl.rope_frequencies(6, 10000.0),
                 torch.tensor([1.0, 10000 ** (-2 / 6), 10000 ** (-4 / 6)]), "rope_frequencies(6)")


def test_rope_cache_hand_worked_example(impl: Any) -> None:
    cos, sin = impl.rope_cache(2, 3, 10000.0)  # one pair, ω = 1: angles 0, 1, 2 radians
    angles, from_1 = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[1.0], [2.0], [3.0]])
    for name, table, fn, other in (("cos", cos, torch.cos, torch.sin),
                                   ("sin", sin, torch.sin, torch.cos)):
        assert_close(table, fn(angles), f"{name} table", wrong={
            "positions start at 1: they are 0 .. max_len-1 (position 0 is not turned)":
                fn(from_1),
            "cos and sin swapped": other(angles),
        })


def test_apply_rotary_hand_worked_example(impl: Any) -> None:
    cos, sin = torch.tensor([[1.0], [math.cos(1)], [math.cos(2)]]), \
        torch.tensor([[0.0], [math.sin(1)], [math.sin(2)]])
    x = torch.tensor([1.0, 0.0]).expand(1, 1, 3, 2)  # [1, 0] at positions 0, 1, 2
    want = torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)], [math.cos(2), math.sin(2)]])
    c, s = want[:, 0:1], want[:, 1:2]  # cos p, sin p
    sign_flipped = "the rotation turns the wrong way (a sign flipped): the pair (a, b) becomes " \
        "(a cos - b sin, b cos + a sin), rotate_half(x) = [-b, a]"
    wrong_half = "the wrong half is rotated into place: a = x[..., :hs/2] (first half), " \
        "b = x[..., hs/2:]; the pair becomes (a cos - b sin, b cos + a sin)"
    assert_close(impl.apply_rotary(x, cos, sin)[0, 0], want, "[1, 0] turned by 0, 1, 2 radians",
                 wrong={sign_flipped: torch.cat((c, -s), 1), wrong_half: torch.cat((-s, c), 1)})
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)  # pairs (1, 3) and (2, 4)
    quarter = impl.apply_rotary(x, torch.zeros(1, 2), torch.ones(1, 2))
    assert_close(quarter.flatten(), torch.tensor([-3.0, -4.0, 1.0, 2.0]), "a quarter turn", wrong={
        "pairs (2i, 2i + 1) interleaved (Meta's layout): here pair i is channels (i, i + hs/2), "
        "Hugging Face's rotate_half": torch.tensor([-2.0, 1.0, -4.0, 3.0]),
        sign_flipped: torch.tensor([3.0, 4.0, -1.0, -2.0]),
        wrong_half: torch.tensor([-1.0, -2.0, 3.0, 4.0]),
    })


def test_swiglu_hand_worked_example(impl: Any) -> None:
    one = torch.ones(1, 1)
    got = impl.swiglu(torch.ones(1, 1), one, 2 * one, one)
    silu_1 = 1 / (1 + math.exp(-1))  # 1 * sigmoid(1) = 0.7311
    assert_close(got, torch.tensor([[2 * silu_1]]), "swiglu(1), w_gate 1, w_up 2, w_down 1", wrong={
        "another activation than silu (gelu): SwiGLU gates with silu(z) = z·sigmoid(z)":
            2 * F.gelu(torch.ones(1, 1)),
        "gate and up swapped: silu goes on x @ w_gateᵀ, which multiplies x @ w_upᵀ":
            F.silu(2 * one),
    })
    got = impl.swiglu(torch.ones(1, 1), one, 2 * one, 3 * one)  # down scales the result
    assert_close(got, torch.tensor([[6 * silu_1]]), "swiglu(1), w_down 3")
    got = impl.swiglu(torch.ones(1, 1), 2 * one, one, one)  # gate and up are not symmetric
    assert_close(got, torch.tensor([[2 / (1 + math.exp(-2))]]), "swiglu(1), w_gate 2, w_up 1")


def test_repeat_kv_hand_worked_example(impl: Any) -> None:
    kv = torch.tensor([10.0, 20.0]).view(1, 2, 1, 1)
    got = impl.repeat_kv(kv, 2).flatten().tolist()
    tiled = ("likely cause: the kv heads are tiled (x.repeat): each must be repeated for its "
             "consecutive query heads, expand on a new dim after the heads or repeat_interleave; "
             if got == [10.0, 20.0, 10.0, 20.0] else "")
    assert got == [10.0, 10.0, 20.0, 20.0], f"{tiled}repeat_kv([10, 20], 2) = {got}"
    assert torch.equal(impl.repeat_kv(kv, 1), kv), "n_rep = 1 must return the heads unchanged"


def test_grouped_query_attention_hand_worked_example(impl: Any) -> None:
    """q = 0: every visible key scores the same, so each position averages the values it sees."""
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]).view(1, 1, 3, 2)  # one kv head
    q = torch.zeros(1, 2, 3, 2)  # two query heads share it
    got = impl.grouped_query_attention(q, torch.randn(1, 1, 3, 2), v)
    row = torch.tensor([[1.0, 0.0], [0.5, 0.5], [4 / 3, 4 / 3]])  # mean of v[:t+1]
    assert_close(got, row.expand(1, 2, 3, 2), "causal uniform attention", wrong={
        "no causal mask: position t sees only the keys 0 .. t (is_causal=True)":
            torch.full((1, 2, 3, 2), 4 / 3),  # every position averages all three values
    })


def test_llama_attention_hand_worked_example(impl: Any) -> None:
    """One token sees only itself and sits at position 0 (no rotation): out = x·w_vᵀ·w_oᵀ."""
    g = torch.Generator().manual_seed(0)
    nh, n_kv, hs, c = 4, 2, 2, 6
    x = torch.randn(2, 1, c, generator=g)
    w_q, w_k = torch.randn(nh * hs, c, generator=g), torch.randn(n_kv * hs, c, generator=g)
    w_v, w_o = torch.randn(n_kv * hs, c, generator=g), torch.randn(c, nh * hs, generator=g)
    cos, sin = torch.ones(1, hs // 2), torch.zeros(1, hs // 2)
    v = (x @ w_v.T).view(2, 1, n_kv, hs)
    heads = v.repeat_interleave(nh // n_kv, dim=2).reshape(2, 1, nh * hs)  # kv j -> heads 2j, 2j+1
    got = impl.llama_attention(x, cos, sin, w_q, w_k, w_v, w_o, nh, n_kv)
    assert_close(got, heads @ w_o.T, "one-token attention")


def test_llama_block_hand_worked_example(impl: Any) -> None:
    """Zero output projections: both sub-blocks add 0, so the block is the identity."""
    g = torch.Generator().manual_seed(0)
    layer = hf.LlamaDecoderLayer(hf_config(), 0)
    weights = randomize(layer, g)
    weights["self_attn.o_proj.weight"] = torch.zeros_like(weights["self_attn.o_proj.weight"])
    weights["mlp.down_proj.weight"] = torch.zeros_like(weights["mlp.down_proj.weight"])
    x = torch.randn(2, 3, 16, generator=g)
    cos, sin = (half(t)[0] for t in hf_rotary(layer.self_attn.config, torch.arange(3)[None]))
    got = impl.llama_block(x, weights, cos, sin, 4, 2, 1e-5)
    with torch.no_grad():
        post_norm = layer.post_attention_layernorm(layer.input_layernorm(x))
    assert_close(got, x, "a block whose sub-blocks write nothing", wrong={
        "post-norm: the sum x + attn(x) is normalised; Llama normalises each sub-block's input "
        "and adds its output to the residual stream": post_norm,
        "the feed-forward's output replaces the residual stream: add it, x + swiglu(...)":
            torch.zeros_like(x),
    })


def test_rope_frequencies_reject_odd_head_sizes(impl: Any) -> None:
    assert impl.rope_frequencies(2, 10000.0).shape == (1,), "head_size 2: one pair"
    with pytest.raises(ValueError, match="even head_size"):
        impl.rope_frequencies(5, 10000.0)


def test_bad_inputs_raise_naming_them(impl: Any) -> None:
    q, kv = torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, 2)  # 2 kv heads divide 4: fine
    assert impl.grouped_query_attention(q, kv, kv).shape == q.shape
    with pytest.raises(ValueError, match="3 key/value heads must divide the 4 query heads"):
        impl.grouped_query_attention(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2),
                                     torch.zeros(1, 3, 2, 2))
    with pytest.raises(KeyError, match=r"mlp\.down_proj\.weight"):
        weights = {k: torch.zeros(1) for k in impl.BLOCK_WEIGHTS if k != "mlp.down_proj.weight"}
        impl.llama_block(torch.zeros(1, 1, 4), weights, torch.ones(1, 1), torch.zeros(1, 1),
                         1, 1, 1e-5)


# --- against Hugging Face, over shapes ----------------------------------------------------


@given(batch=st.lists(st.integers(1, 3), max_size=2), c=st.integers(1, 24),
       eps=st.sampled_from([1e-6, 1e-5, 0.1]), shift=st.sampled_from([0.0, 3.0]), seed=SEEDS)
def test_rms_norm_matches_hf_llama_rmsnorm(impl: Any, batch: list[int], c: int, eps: float,
                                           shift: float, seed: int) -> None:
    """Inputs with a non-zero mean (shift) tell RMSNorm from LayerNorm."""
    g = torch.Generator().manual_seed(seed)
    norm = hf.LlamaRMSNorm(c, eps=eps)
    weight = randomize(norm, g)["weight"]
    x = torch.randn(*batch, 3, c, generator=g) + shift
    with torch.no_grad():
        want = norm(x)
    assert_close(impl.rms_norm(x, weight, eps), want, f"rms_norm(C={c}, eps={eps})")


@given(c=st.integers(1, 64), seed=SEEDS)
def test_rms_norm_bfloat16_matches_hf_within_its_rounding(impl: Any, c: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    norm = hf.LlamaRMSNorm(c, eps=1e-5)
    weight = randomize(norm, g)["weight"].bfloat16()
    norm = norm.bfloat16()
    x = (torch.randn(2, 3, c, generator=g) * 4).bfloat16()
    with torch.no_grad():
        want = norm(x)
    got = impl.rms_norm(x, weight, 1e-5)
    assert got.dtype == torch.bfloat16, (
        f"rms_norm of bfloat16 returned {got.dtype}: likely cause: the float32 result is not "
        "cast back to x's dtype (.to(x.dtype), before the weight multiplies it)")
    torch.testing.assert_close(got.float(), want.float(), atol=BF16_TOL * 4, rtol=BF16_TOL,
                               msg=lambda m: f"rms_norm in bfloat16 (C={c}):\n{m}")


@given(half_hs=st.integers(1, 64), theta=st.sampled_from([10.0, 100.0, 10000.0, 500000.0]))
def test_rope_frequencies_match_hf_llama(impl: Any, half_hs: int, theta: float) -> None:
    config = hf_config(nh=1, n_kv=1, hs=2 * half_hs, theta=theta)
    want = hf.LlamaRotaryEmbedding(config).inv_freq
    got = impl.rope_frequencies(2 * half_hs, theta)
    assert got.dtype == torch.float32, f"rope_frequencies returned {got.dtype}"
    torch.testing.assert_close(got, want, atol=0, rtol=1e-6,  # float32 powers: a few ulps
                               msg=lambda m: f"rope_frequencies(hs={2 * half_hs}, θ={theta}):\n{m}")


@given(half_hs=st.integers(1, 8), max_len=st.integers(1, 64),
       theta=st.sampled_from([100.0, 10000.0]))
def test_rope_cache_matches_hf_rotary_embedding(impl: Any, half_hs: int, max_len: int,
                                                theta: float) -> None:
    hs = 2 * half_hs
    cos_hf, sin_hf = hf_rotary(hf_config(nh=1, n_kv=1, hs=hs, theta=theta),
                               torch.arange(max_len)[None])
    cos, sin = impl.rope_cache(hs, max_len, theta)
    what = f"rope_cache(hs={hs}, max_len={max_len}, θ={theta})"
    for name, ours, theirs in (("cos", cos, cos_hf[0]), ("sin", sin, sin_hf[0])):
        assert_close(ours, theirs[:, :half_hs], f"{what} {name}, first half")
        assert_close(ours, theirs[:, half_hs:], f"{what} {name}, second half")


@given(b=st.integers(1, 3), nh=st.integers(1, 4), t=st.integers(1, 9), half_hs=st.integers(1, 6),
       per_row=st.booleans(), seed=SEEDS)
def test_apply_rotary_matches_hf_apply_rotary_pos_emb(impl: Any, b: int, nh: int, t: int,
                                                      half_hs: int, per_row: bool,
                                                      seed: int) -> None:
    hs = 2 * half_hs
    g = torch.Generator().manual_seed(seed)
    positions = (torch.randint(0, 60, (b, t), generator=g) if per_row
                 else torch.arange(t).expand(b, t))
    cos, sin = hf_rotary(hf_config(nh=1, n_kv=1, hs=hs), positions)  # (B, T, hs)
    q, k = torch.randn(b, nh, t, hs, generator=g), torch.randn(b, 1, t, hs, generator=g)
    want_q, want_k = hf.apply_rotary_pos_emb(q, k, cos, sin)
    ours_cos, ours_sin = (half(c) if per_row else half(c)[0] for c in (cos, sin))
    what = f"apply_rotary(B={b}, nh={nh}, T={t}, hs={hs}, per_row={per_row})"
    # row 0's positions for every row: what ignoring a (B, T, hs/2) table's rows gives
    row_0 = hf.apply_rotary_pos_emb(q, k, cos[:1].expand_as(cos), sin[:1].expand_as(sin))
    ignored = "the rows of a (B, T, hs/2) table are ignored: each row of x turns by its own " \
        "positions (cos[:, None] puts the head axis in place)"
    assert_close(impl.apply_rotary(q, ours_cos, ours_sin), want_q, f"{what} on q",
                 wrong={ignored: row_0[0]} if per_row else None)
    assert_close(impl.apply_rotary(k, ours_cos, ours_sin), want_k, f"{what} on k",
                 wrong={ignored: row_0[1]} if per_row else None)


@given(half_hs=st.integers(1, 6), t=st.integers(1, 9), seed=SEEDS)
def test_apply_rotary_bfloat16_matches_hf_and_keeps_its_dtype(impl: Any, half_hs: int, t: int,
                                                              seed: int) -> None:
    """HF's rotary embedding returns its tables in x's dtype; ours come in float32 and must be
    cast the same way (a float32 table would silently upcast the queries)."""
    hs = 2 * half_hs
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, t, hs, generator=g).bfloat16()
    cos, sin = hf_rotary(hf_config(nh=1, n_kv=1, hs=hs), torch.arange(t).expand(2, t))
    want, _ = hf.apply_rotary_pos_emb(q, q, cos.bfloat16(), sin.bfloat16())
    got = impl.apply_rotary(q, half(cos)[0], half(sin)[0])
    assert got.dtype == torch.bfloat16, (
        f"apply_rotary of bfloat16 returned {got.dtype}: likely cause: the float32 cos/sin "
        "tables are not cast to x's dtype (cos.to(x.dtype))")
    torch.testing.assert_close(got.float(), want.float(), atol=BF16_TOL * 4, rtol=BF16_TOL,
                               msg=lambda m: f"apply_rotary in bfloat16 (hs={hs}, T={t}):\n{m}")


@given(half_hs=st.integers(1, 4), p=st.integers(0, 20), r=st.integers(0, 20),
       shift=st.integers(1, 20), seed=SEEDS)
def test_rotary_scores_depend_only_on_relative_position(impl: Any, half_hs: int, p: int, r: int,
                                                        shift: int, seed: int) -> None:
    hs = 2 * half_hs
    g = torch.Generator().manual_seed(seed)
    cos, sin = impl.rope_cache(hs, 64, 100.0)
    q, k = torch.randn(1, 1, 1, hs, generator=g), torch.randn(1, 1, 1, hs, generator=g)

    def score(pq: int, pk: int) -> Tensor:
        rq = impl.apply_rotary(q, cos[pq:pq + 1], sin[pq:pq + 1])
        rk = impl.apply_rotary(k, cos[pk:pk + 1], sin[pk:pk + 1])
        assert_close(rq.norm(), q.norm(), "a rotation keeps the norm", tol=1e-4)
        return (rq * rk).sum()

    # 1e-4: float32 angles of positions up to 40 carry ~4e-6 radians of rounding each
    assert_close(score(p + shift, r + shift), score(p, r),
                 f"q·k at positions ({p}+{shift}, {r}+{shift}) vs ({p}, {r})", tol=1e-4)


@given(batch=st.lists(st.integers(1, 3), min_size=1, max_size=2), c=st.integers(1, 12),
       hidden=st.integers(1, 16), seed=SEEDS)
def test_swiglu_matches_hf_llama_mlp(impl: Any, batch: list[int], c: int, hidden: int,
                                     seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # LlamaMLP reads only these four (a full LlamaConfig would also validate heads and RoPE)
    config = SimpleNamespace(hidden_size=c, intermediate_size=hidden, hidden_act="silu",
                             mlp_bias=False)
    mlp = hf.LlamaMLP(config)
    w = randomize(mlp, g)
    x = torch.randn(*batch, c, generator=g)
    with torch.no_grad():
        want = mlp(x)
    got = impl.swiglu(x, w["gate_proj.weight"], w["up_proj.weight"], w["down_proj.weight"])
    assert_close(got, want, f"swiglu(C={c}, H={hidden})")


@given(b=st.integers(1, 2), n_kv=st.integers(1, 3), n_rep=st.integers(1, 4), t=st.integers(1, 5),
       hs=st.integers(1, 4), seed=SEEDS)
def test_repeat_kv_matches_hf_repeat_kv(impl: Any, b: int, n_kv: int, n_rep: int, t: int,
                                        hs: int, seed: int) -> None:
    x = torch.randn(b, n_kv, t, hs, generator=torch.Generator().manual_seed(seed))
    got, want = impl.repeat_kv(x, n_rep), hf.repeat_kv(x, n_rep)
    assert torch.equal(got, want), f"repeat_kv(n_kv={n_kv}, n_rep={n_rep}) != HF's"


@st.composite
def gqa_shapes(draw: Any) -> tuple[int, int, int, int, int]:
    """(B, nh, n_kv, T, hs), n_kv dividing nh: MHA, GQA and MQA; T odd or even."""
    n_kv, n_rep = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (draw(st.integers(1, 2)), n_kv * n_rep, n_kv, draw(st.integers(1, 7)),
            draw(st.integers(1, 5)))


@given(shape=gqa_shapes(), seed=SEEDS)
def test_grouped_query_attention_matches_torch_sdpa_enable_gqa(
    impl: Any, shape: tuple[int, int, int, int, int], seed: int
) -> None:
    b, nh, n_kv, t, hs = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nh, t, hs, generator=g)
    k, v = (torch.randn(b, n_kv, t, hs, generator=g) for _ in range(2))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    n_rep = nh // n_kv
    assert_close(impl.grouped_query_attention(q, k, v), want,
                 f"grouped_query_attention(B={b}, nh={nh}, n_kv={n_kv}, T={t}, hs={hs})", wrong={
        "the scores are scaled by 1/hs: attention's scale is 1/sqrt(hs)":
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                   scale=1 / hs),
        "no causal mask (is_causal=True)":
            lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "the kv heads are tiled (x.repeat): kv head j serves the consecutive query heads "
        "j*n_rep .. (j+1)*n_rep - 1":
            lambda: F.scaled_dot_product_attention(q, k.repeat(1, n_rep, 1, 1),
                                                   v.repeat(1, n_rep, 1, 1), is_causal=True),
    })


@given(shape=gqa_shapes(), seed=SEEDS, data=st.data())
def test_grouped_query_attention_is_causal(impl: Any, shape: tuple[int, int, int, int, int],
                                           seed: int, data: Any) -> None:
    b, nh, n_kv, t, hs = shape
    if t < 2:
        return
    cut = data.draw(st.integers(0, t - 2), label="cut")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, nh, t, hs, generator=g)
    k, v = (torch.randn(b, n_kv, t, hs, generator=g) for _ in range(2))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, cut + 1:] += 3.0
    v2[:, :, cut + 1:] -= 3.0
    before = impl.grouped_query_attention(q, k, v)[:, :, : cut + 1]
    after = impl.grouped_query_attention(q, k2, v2)[:, :, : cut + 1]
    assert_close(after, before, f"outputs up to {cut} after changing later keys and values")


def attention_with_bug(x: Tensor, w: dict[str, Tensor], cos: Tensor, sin: Tensor, nh: int,
                       n_kv: int, *, rotate_k: bool = True, rotate_v: bool = False,
                       plain_split: bool = False) -> Tensor:
    """What llama_attention gives with a classic bug, built from Hugging Face's pieces
    (``apply_rotary_pos_emb`` on its (B, T, hs) tables, ``repeat_kv``) and torch's SDPA."""
    B, T, _ = x.shape
    hs = w["q_proj.weight"].shape[0] // nh

    def split(t: Tensor, heads: int) -> Tensor:  # (B, T, heads·hs) -> (B, heads, T, hs)
        return t.reshape(B, heads, T, hs) if plain_split else t.view(B, T, heads, hs).transpose(1, 2)

    q, k, v = (split(x @ w[f"{n}_proj.weight"].T, heads)
               for n, heads in (("q", nh), ("k", n_kv), ("v", n_kv)))
    q, k_turned = hf.apply_rotary_pos_emb(q, k, cos, sin)
    k = k_turned if rotate_k else k
    if rotate_v:
        v, _ = hf.apply_rotary_pos_emb(v, v, cos, sin)
    k, v = hf.repeat_kv(k, nh // n_kv), hf.repeat_kv(v, nh // n_kv)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return y.transpose(1, 2).reshape(B, T, nh * hs) @ w["o_proj.weight"].T


def _attention_case(nh: int, n_kv: int, hs: int, t: int, seed: int) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    config = hf_config(nh=nh, n_kv=n_kv, hs=hs)
    x = torch.randn(2, t, nh * hs, generator=g)
    cos, sin = hf_rotary(config, torch.arange(t).expand(2, t))
    return config, g, x, cos, sin


@given(shape=gqa_shapes(), seed=SEEDS)
def test_llama_attention_matches_hf_llama_attention(impl: Any,
                                                    shape: tuple[int, int, int, int, int],
                                                    seed: int) -> None:
    _, nh, n_kv, t, half_hs = shape
    hs = 2 * half_hs
    config, g, x, cos, sin = _attention_case(nh, n_kv, hs, t + 1, seed)
    attention = hf.LlamaAttention(config, 0)
    w = randomize(attention, g)
    with torch.no_grad():
        want, _ = attention(x, position_embeddings=(cos, sin),
                            attention_mask=causal_additive_mask(t + 1))
    got = impl.llama_attention(x, half(cos)[0], half(sin)[0], w["q_proj.weight"],
                               w["k_proj.weight"], w["v_proj.weight"], w["o_proj.weight"], nh, n_kv)

    def bug(**kwargs: bool) -> Any:
        return lambda: attention_with_bug(x, w, cos, sin, nh, n_kv, **kwargs)

    assert_close(got, want, f"llama_attention(nh={nh}, n_kv={n_kv}, T={t + 1}, hs={hs})", wrong={
        "rotary applied to v: only q and k are rotated (positions belong in the scores, "
        "not in the values)": bug(rotate_v=True),
        "k is not rotated: rotate both q and k, so that q·k sees their relative position":
            bug(rotate_k=False),
        "heads split by a plain reshape to (B, nh, T, hs): .view(B, T, nh, hs).transpose(1, 2) "
        "keeps each token's channels together": bug(plain_split=True),
    })


@given(shape=gqa_shapes(), eps=st.sampled_from([1e-6, 1e-5]), seed=SEEDS)
def test_llama_block_matches_hf_decoder_layer(impl: Any, shape: tuple[int, int, int, int, int],
                                              eps: float, seed: int) -> None:
    _, nh, n_kv, t, half_hs = shape
    hs = 2 * half_hs
    g = torch.Generator().manual_seed(seed)
    config = hf_config(nh=nh, n_kv=n_kv, hs=hs, hidden=3 * hs, eps=eps)
    layer = hf.LlamaDecoderLayer(config, 0)
    weights = randomize(layer, g)
    x = torch.randn(2, t, nh * hs, generator=g) + 0.5  # a non-zero mean, as a residual stream has
    cos, sin = hf_rotary(config, torch.arange(t).expand(2, t))
    with torch.no_grad():
        want = layer(x, attention_mask=causal_additive_mask(t), position_embeddings=(cos, sin))
    got = impl.llama_block(x, weights, half(cos)[0], half(sin)[0], nh, n_kv, eps)

    def with_norms(first: str, second: str) -> Any:
        """HF's layer with its two norm weights taken from ``weights[first]``, ``[second]``."""
        def run() -> Tensor:
            bugged = copy.deepcopy(layer)
            with torch.no_grad():
                bugged.input_layernorm.weight.copy_(weights[first])
                bugged.post_attention_layernorm.weight.copy_(weights[second])
                out: Tensor = bugged(x, attention_mask=causal_additive_mask(t),
                                     position_embeddings=(cos, sin))
                return out
        return run

    n1, n2 = "input_layernorm.weight", "post_attention_layernorm.weight"
    assert_close(got, want, f"llama_block(nh={nh}, n_kv={n_kv}, T={t}, hs={hs}, eps={eps})", wrong={
        "the two norm weights swapped: input_layernorm before attention, "
        "post_attention_layernorm before the MLP": with_norms(n2, n1),
        "one norm weight for both sub-blocks: post_attention_layernorm normalises the MLP's "
        "input": with_norms(n1, n1),
    })


def test_llama_block_gradients_match_hf_autograd(impl: Any) -> None:
    nh, n_kv, hs, t = 4, 2, 4, 5
    g = torch.Generator().manual_seed(3)
    config = hf_config(nh=nh, n_kv=n_kv, hs=hs)
    layer = hf.LlamaDecoderLayer(config, 0)
    randomize(layer, g)
    x = torch.randn(2, t, nh * hs, generator=g)
    cos, sin = hf_rotary(config, torch.arange(t).expand(2, t))
    probe = torch.randn(2, t, nh * hs, generator=g)  # a random direction for the gradient

    x_hf = x.clone().requires_grad_()
    (layer(x_hf, attention_mask=causal_additive_mask(t), position_embeddings=(cos, sin))
     * probe).sum().backward()
    weights = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    x_ours = x.clone().requires_grad_()
    (impl.llama_block(x_ours, weights, half(cos)[0], half(sin)[0], nh, n_kv, 1e-5)
     * probe).sum().backward()
    pairs = [("x", x_ours.grad, x_hf.grad)]
    pairs += [(n, weights[n].grad, p.grad) for n, p in layer.named_parameters()]
    for name, ours, want in pairs:
        assert ours is not None and want is not None, f"no gradient for {name}"
        torch.testing.assert_close(ours, want, atol=TOL * float(want.abs().max()), rtol=0,
                                   msg=lambda m, name=name: f"gradient of {name}:\n{m}")
