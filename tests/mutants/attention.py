"""Classic learner bugs in attention; specs/test_attention.py must catch every one.

Each mutant replaces functions of ``solutions.attention`` (patched in place, so the other solution
functions call the broken one). Named for the bug; grouped by what they break, each group
commented with the spec tests expected to catch it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from solutions import attention as sol


def _weights(
    scale: Callable[[Tensor, Tensor], float] = lambda q, k: 1 / math.sqrt(q.size(-1)),
    causal: Callable[[int, int], Tensor] = lambda t_q, t_k: torch.ones(t_q, t_k).tril().bool(),
    fill: float = -math.inf,
    invert_mask: bool = False,
    mask_only_if_not_causal: bool = False,
    softmax_dim: int = -1,
) -> Callable[..., Tensor]:
    """attention_weights with one knob turned the wrong way."""

    def attention_weights(
        q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        scores = q @ k.transpose(-2, -1) * scale(q, k)
        if is_causal:
            scores = scores.masked_fill(~causal(q.size(-2), k.size(-2)), fill)
        if mask is not None and not (mask_only_if_not_causal and is_causal):
            scores = scores.masked_fill(mask if invert_mask else ~mask, fill)
        return sol.softmax(scores, dim=softmax_dim)

    return attention_weights


def _softmax_no_max(x: Tensor, dim: int = -1) -> Tensor:
    e = torch.exp(x)  # overflows at 1e4
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_nan_on_masked_rows(x: Tensor, dim: int = -1) -> Tensor:
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))  # -inf - -inf = NaN
    return e / e.sum(dim=dim, keepdim=True)


def _split_plain_view(x: Tensor, n_head: int) -> Tensor:
    b, t, c = x.shape
    return x.reshape(b, n_head, t, c // n_head)  # right shape, wrong layout


def _split_transpose_wrong(x: Tensor, n_head: int) -> Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, c // n_head, n_head).permute(0, 3, 1, 2)  # heads interleaved


def _merge_plain_view(x: Tensor) -> Tensor:
    b, nh, t, hs = x.shape
    return x.reshape(b, t, nh * hs)  # no transpose back


def _mha(
    drop_out_bias: bool = False, order: str = "qkv", value_from_key: bool = False
) -> Any:
    def multi_head_attention(
        query: Tensor, key: Tensor, value: Tensor, in_proj_weight: Tensor, in_proj_bias: Tensor,
        out_proj_weight: Tensor, out_proj_bias: Tensor, n_head: int,
        mask: Tensor | None = None, is_causal: bool = False,
    ) -> Tensor:
        ws = dict(zip(order, in_proj_weight.chunk(3), strict=True))
        bs = dict(zip(order, in_proj_bias.chunk(3), strict=True))
        q = sol.split_heads(query @ ws["q"].T + bs["q"], n_head)
        k = sol.split_heads(key @ ws["k"].T + bs["k"], n_head)
        v_in = key if value_from_key else value
        v = sol.split_heads(v_in @ ws["v"].T + bs["v"], n_head)
        y = sol.merge_heads(sol.scaled_dot_product_attention(q, k, v, mask, is_causal))
        y = y @ out_proj_weight.T
        return y if drop_out_bias else y + out_proj_bias

    return multi_head_attention


def _csa(heads_before_qkv: bool = False, is_causal: bool = True) -> Any:
    def causal_self_attention(
        x: Tensor, c_attn_weight: Tensor, c_attn_bias: Tensor, c_proj_weight: Tensor,
        c_proj_bias: Tensor, n_head: int,
    ) -> Tensor:
        b, t, c = x.shape
        qkv = x @ c_attn_weight.T + c_attn_bias  # (B, T, 3C)
        if heads_before_qkv:  # split into heads first, then q/k/v inside each head: wrong
            q, k, v = qkv.view(b, t, n_head, 3 * c // n_head).transpose(1, 2).chunk(3, dim=-1)
        else:
            q, k, v = (sol.split_heads(p, n_head) for p in qkv.chunk(3, dim=-1))
        y = sol.merge_heads(sol.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
        return y @ c_proj_weight.T + c_proj_bias

    return causal_self_attention


MUTANTS: dict[str, dict[str, Any]] = {
    # scale: hand-worked example, torch SDPA comparison
    "no_scale": {"attention_weights": _weights(scale=lambda q, k: 1.0)},
    "scale_by_1_over_d": {"attention_weights": _weights(scale=lambda q, k: 1 / q.size(-1))},
    # causal mask: causality property, torch is_causal
    "no_causal_mask": {
        "attention_weights": _weights(causal=lambda t_q, t_k: torch.ones(t_q, t_k).bool())
    },
    "causal_mask_excludes_diagonal": {
        "attention_weights": _weights(causal=lambda t_q, t_k: torch.ones(t_q, t_k).tril(-1).bool())
    },
    "causal_mask_bottom_right_aligned": {
        "attention_weights": _weights(
            causal=lambda t_q, t_k: torch.ones(t_q, t_k).tril(t_k - t_q).bool()
        )
    },
    # boolean mask: torch SDPA comparison, hand-worked mask example, fully masked rows
    "mask_inverted": {"attention_weights": _weights(invert_mask=True)},
    "mask_ignored_when_causal": {"attention_weights": _weights(mask_only_if_not_causal=True)},
    "mask_fill_minus_1e9": {"attention_weights": _weights(fill=-1e9)},  # masked rows: uniform
    # softmax
    "softmax_over_queries_axis": {"attention_weights": _weights(softmax_dim=-2)},
    "softmax_without_max_subtraction": {"softmax": _softmax_no_max},
    "softmax_nan_on_fully_masked_rows": {"softmax": _softmax_nan_on_masked_rows},
    # heads
    "split_heads_plain_reshape": {"split_heads": _split_plain_view},
    "split_heads_interleaved": {"split_heads": _split_transpose_wrong},
    "merge_heads_plain_reshape": {"merge_heads": _merge_plain_view},
    # projections
    "mha_missing_out_proj_bias": {"multi_head_attention": _mha(drop_out_bias=True)},
    "mha_qkv_chunks_swapped": {"multi_head_attention": _mha(order="kqv")},
    "mha_values_from_key_input": {"multi_head_attention": _mha(value_from_key=True)},
    "gpt2_heads_split_before_qkv": {"causal_self_attention": _csa(heads_before_qkv=True)},
    "gpt2_not_causal": {"causal_self_attention": _csa(is_causal=False)},
}
