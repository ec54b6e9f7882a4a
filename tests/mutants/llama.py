"""Classic learner bugs in the Llama block; specs/test_llama.py must catch every one.

Each mutant replaces functions of ``solutions.llama`` (patched everywhere they are referenced, so
the block calls the broken part). Named for the bug; grouped by the part they break, each group
commented with the spec tests expected to catch it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.llama import check_block_weights, check_gqa_inputs
from solutions import llama as sol

# the originals, kept before any mutant replaces them
sol_apply_rotary = sol.apply_rotary
sol_rms_norm = sol.rms_norm
sol_swiglu = sol.swiglu
sol_gqa = sol.grouped_query_attention


# --- RMSNorm -------------------------------------------------------------------------------


def _rms_norm_subtracts_mean(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    h = x.float() - x.float().mean(-1, keepdim=True)  # that is LayerNorm (without a bias)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rms_norm_eps_outside_sqrt(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    h = x.float()
    return weight * (h / (h.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)


def _rms_norm_no_eps(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return sol_rms_norm(x, weight, 0.0)


def _rms_norm_sum_not_mean(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def _rms_norm_ignores_weight(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return sol_rms_norm(x, torch.ones_like(weight), eps)


def _rms_norm_returns_float32(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    h = x.float()
    return weight.float() * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


# --- rotary ----------------------------------------------------------------------------------


def _frequencies_exponent_without_2(head_size: int, theta: float = 10000.0) -> Tensor:
    i = torch.arange(0, head_size // 2).float()  # i / hs instead of 2i / hs: too slow
    return 1.0 / (theta ** (i / head_size))


def _frequencies_positive_exponent(head_size: int, theta: float = 10000.0) -> Tensor:
    two_i = torch.arange(0, head_size, 2).float()
    return theta ** (two_i / head_size) / theta  # θ^(2i/hs - 1): the order reversed


def _cache_positions_from_1(head_size: int, max_len: int,
                            theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    angles = torch.arange(1, max_len + 1).float()[:, None] * sol.rope_frequencies(head_size, theta)
    return angles.cos(), angles.sin()


def _cache_cos_sin_swapped(head_size: int, max_len: int,
                           theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    angles = torch.arange(max_len).float()[:, None] * sol.rope_frequencies(head_size, theta)
    return angles.sin(), angles.cos()


def _rotary(sign: float = 1.0, interleaved: bool = False, halves_swapped: bool = False) -> Any:
    def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        if interleaved:  # pairs (2i, 2i+1): Meta's layout against HF's weights
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack((a * cos - b * sin, b * cos + a * sin), -1).flatten(-2)
        a, b = x.chunk(2, dim=-1)
        if halves_swapped:  # the wrong half rotated into place
            a, b = b, a
        return torch.cat((a * cos - sign * b * sin, b * cos + sign * a * sin), dim=-1)

    return apply_rotary


def _rotary_upcasts(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    a, b = x.chunk(2, dim=-1)  # float32 tables: bfloat16 queries come out float32
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def _rotary_ignores_per_row_positions(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    if cos.dim() == 3:  # uses row 0's positions for every row
        cos, sin = cos[0], sin[0]
    return sol_apply_rotary(x, cos, sin)


# --- SwiGLU --------------------------------------------------------------------------------


def _swiglu(act: Any = F.silu, swap: bool = False) -> Any:
    def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
        if swap:
            w_gate, w_up = w_up, w_gate
        return (act(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T

    return swiglu


# --- grouped-query attention ------------------------------------------------------------------


def _repeat_kv_tiled(x: Tensor, n_rep: int) -> Tensor:
    return x.repeat(1, n_rep, 1, 1)  # [10, 20, 10, 20]: query head 1 reads kv head 1


def _gqa(is_causal: bool = True, scale_by_d: bool = False) -> Any:
    def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        check_gqa_inputs(q, k, v)  # given code: the learner's stub keeps it
        n_rep = q.shape[1] // k.shape[1]
        k, v = sol.repeat_kv(k, n_rep), sol.repeat_kv(v, n_rep)
        scale = 1.0 / q.shape[-1] if scale_by_d else None
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)

    return grouped_query_attention


def _attention(rotate_v: bool = False, rotate_k: bool = True, plain_split: bool = False) -> Any:
    def llama_attention(x: Tensor, cos: Tensor, sin: Tensor, w_q: Tensor, w_k: Tensor,
                        w_v: Tensor, w_o: Tensor, n_head: int, n_kv_head: int) -> Tensor:
        B, T, _ = x.shape
        hs = w_q.shape[0] // n_head

        def split(t: Tensor, heads: int) -> Tensor:
            if plain_split:  # right shape, wrong layout
                return t.reshape(B, heads, T, hs)
            return t.view(B, T, heads, hs).transpose(1, 2)

        q, k, v = split(x @ w_q.T, n_head), split(x @ w_k.T, n_kv_head), split(x @ w_v.T, n_kv_head)
        q = sol.apply_rotary(q, cos, sin)
        if rotate_k:
            k = sol.apply_rotary(k, cos, sin)
        if rotate_v:
            v = sol.apply_rotary(v, cos, sin)
        y = sol.grouped_query_attention(q, k, v)
        return y.transpose(1, 2).reshape(B, T, n_head * hs) @ w_o.T

    return llama_attention


# --- the block ---------------------------------------------------------------------------------


def _block(post_norm: bool = False, norms_swapped: bool = False, no_mlp_residual: bool = False,
           one_norm: bool = False) -> Any:
    def llama_block(x: Tensor, weights: Mapping[str, Tensor], cos: Tensor, sin: Tensor,
                    n_head: int, n_kv_head: int, eps: float) -> Tensor:
        check_block_weights(weights)  # given code: the learner's stub keeps it
        w = weights
        n1, n2 = w["input_layernorm.weight"], w["post_attention_layernorm.weight"]
        if norms_swapped:
            n1, n2 = n2, n1
        if one_norm:
            n2 = n1

        def attn(h: Tensor) -> Tensor:
            return sol.llama_attention(h, cos, sin, w["self_attn.q_proj.weight"],
                                       w["self_attn.k_proj.weight"], w["self_attn.v_proj.weight"],
                                       w["self_attn.o_proj.weight"], n_head, n_kv_head)

        def mlp(h: Tensor) -> Tensor:
            return sol.swiglu(h, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"],
                              w["mlp.down_proj.weight"])

        if post_norm:  # the original transformer's order: normalise the sum
            x = sol.rms_norm(x + attn(x), n1, eps)
            return sol.rms_norm(x + mlp(x), n2, eps)
        x = x + attn(sol.rms_norm(x, n1, eps))
        h = mlp(sol.rms_norm(x, n2, eps))
        return h if no_mlp_residual else x + h

    return llama_block


MUTANTS: dict[str, dict[str, Any]] = {
    # RMSNorm: hand-worked [3, 4], HF LlamaRMSNorm (shifted inputs), bfloat16
    "rmsnorm_subtracts_the_mean": {"rms_norm": _rms_norm_subtracts_mean},
    "rmsnorm_eps_outside_the_sqrt": {"rms_norm": _rms_norm_eps_outside_sqrt},
    "rmsnorm_without_eps": {"rms_norm": _rms_norm_no_eps},
    "rmsnorm_sum_instead_of_mean": {"rms_norm": _rms_norm_sum_not_mean},
    "rmsnorm_ignores_its_weight": {"rms_norm": _rms_norm_ignores_weight},
    "rmsnorm_returns_float32": {"rms_norm": _rms_norm_returns_float32},
    # rotary frequencies and tables: hand-worked, HF inv_freq, HF LlamaRotaryEmbedding
    "theta_exponent_off_by_factor_2": {"rope_frequencies": _frequencies_exponent_without_2},
    "theta_exponent_sign_flipped": {"rope_frequencies": _frequencies_positive_exponent},
    "rope_positions_start_at_1": {"rope_cache": _cache_positions_from_1},
    "rope_cos_and_sin_swapped": {"rope_cache": _cache_cos_sin_swapped},
    # apply_rotary: hand-worked turns, HF apply_rotary_pos_emb, the relative-position property
    "rotate_half_sign_flipped": {"apply_rotary": _rotary(sign=-1.0)},
    "rotary_wrong_half_rotated": {"apply_rotary": _rotary(halves_swapped=True)},
    "rotary_interleaved_pairs_with_hf_weights": {"apply_rotary": _rotary(interleaved=True)},
    "rotary_ignores_per_row_positions": {"apply_rotary": _rotary_ignores_per_row_positions},
    "rotary_upcasts_bfloat16_to_float32": {"apply_rotary": _rotary_upcasts},
    # SwiGLU: hand-worked, HF LlamaMLP
    "silu_swapped_for_gelu": {"swiglu": _swiglu(act=F.gelu)},
    "gate_and_up_swapped": {"swiglu": _swiglu(swap=True)},
    # GQA: hand-worked [10, 20], HF repeat_kv, torch SDPA enable_gqa, causality
    "kv_heads_repeated_in_the_wrong_order": {"repeat_kv": _repeat_kv_tiled},
    "gqa_without_causal_mask": {"grouped_query_attention": _gqa(is_causal=False)},
    "gqa_scaled_by_1_over_d": {"grouped_query_attention": _gqa(scale_by_d=True)},
    # the attention sub-block: HF LlamaAttention
    "rotary_applied_to_v": {"llama_attention": _attention(rotate_v=True)},
    "rotary_not_applied_to_k": {"llama_attention": _attention(rotate_k=False)},
    "heads_split_by_plain_reshape": {"llama_attention": _attention(plain_split=True)},
    # the block: hand-worked identity, HF LlamaDecoderLayer
    "block_post_norm": {"llama_block": _block(post_norm=True)},
    "block_norm_weights_swapped": {"llama_block": _block(norms_swapped=True)},
    "block_one_norm_for_both": {"llama_block": _block(one_norm=True)},
    "block_mlp_without_residual": {"llama_block": _block(no_mlp_residual=True)},
}

# Hints that teach (tests/test_mutants.py): the cause, in a learner's words, that the first spec
# test failing on each of these classic bugs must name (a case-insensitive regex).
HINTS: dict[str, str] = {
    "rmsnorm_subtracts_the_mean": r"mean is subtracted|LayerNorm",
    "rmsnorm_eps_outside_the_sqrt": r"eps outside the square root",
    "rmsnorm_without_eps": r"eps is ignored",
    "rmsnorm_sum_instead_of_mean": r"sum of squares",
    "rmsnorm_ignores_its_weight": r"weight is ignored",
    "rmsnorm_returns_float32": r"not cast back to x's dtype",
    "theta_exponent_off_by_factor_2": r"exponent is i/hs, not 2i/hs",
    "theta_exponent_sign_flipped": r"exponent's sign is flipped",
    "rope_positions_start_at_1": r"positions start at 1",
    "rope_cos_and_sin_swapped": r"cos and sin swapped",
    "rotate_half_sign_flipped": r"turns the wrong way|sign flipped",
    "rotary_wrong_half_rotated": r"wrong half",
    "rotary_interleaved_pairs_with_hf_weights": r"interleaved",
    "rotary_ignores_per_row_positions": r"rows of a \(B, T, hs/2\) table are ignored",
    "rotary_upcasts_bfloat16_to_float32": r"tables are not cast to x's dtype",
    "silu_swapped_for_gelu": r"another activation than silu",
    "gate_and_up_swapped": r"gate and up swapped",
    "kv_heads_repeated_in_the_wrong_order": r"kv heads are tiled",
    "gqa_without_causal_mask": r"no causal mask",
    "gqa_scaled_by_1_over_d": r"1/sqrt\(hs\)",
    "rotary_applied_to_v": r"rotary applied to v",
    "rotary_not_applied_to_k": r"k is not rotated",
    "heads_split_by_plain_reshape": r"plain reshape",
    "block_post_norm": r"post-norm",
    "block_norm_weights_swapped": r"norm weights swapped",
    "block_one_norm_for_both": r"one norm weight for both",
    "block_mlp_without_residual": r"replaces the residual stream",
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {}
