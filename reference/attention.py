"""Attention, production version: dispatches to PyTorch's fused kernels.

Same contract as :mod:`solutions.attention` (read that module for the ideas): ``True`` in a mask
means "may attend", ``is_causal`` is top-left aligned, and a query that may see no key outputs
zeros with zero gradients. What differs is speed:

* :func:`scaled_dot_product_attention` calls ``torch.nn.functional.scaled_dot_product_attention``
  (flash / memory-efficient kernels on GPU, a fused kernel on CPU), which never materializes the
  (T, T) weights for the plain causal case. The zero result for fully masked rows is enforced
  here, so it does not depend on the torch version or the kernel chosen.
* The projections use ``F.linear``, and self-attention (query is key is value) computes q, k, v
  with one fused matmul.

``softmax``, ``attention_weights`` (the visualizer's input), ``split_heads`` and ``merge_heads``
are the solutions' own: the clear version is also the best one.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from solutions.attention import (
    _check_attention_inputs,
    _check_gpt2_weights,
    _check_mha_weights,
    attention_weights,
    causal_mask,
    merge_heads,
    softmax,
    split_heads,
)

__all__ = [
    "attention_weights",
    "causal_mask",
    "causal_self_attention",
    "merge_heads",
    "multi_head_attention",
    "scaled_dot_product_attention",
    "softmax",
    "split_heads",
]


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """``softmax(q @ kᵀ / sqrt(d)) @ v`` on PyTorch's fused kernels.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) -> (..., Tq, dv); ``mask`` bool,
    broadcastable to (..., Tq, Tk), True = may attend; a query with no visible key outputs 0.
    """
    _check_attention_inputs(q, k, mask, v)
    if mask is None:
        # The fast path: no (Tq, Tk) tensor at all; every row sees key 0 at least.
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if is_causal:  # torch takes a mask or is_causal, not both: fold the causal part in
        mask = mask & causal_mask(q.size(-2), k.size(-2), q.device)
    # Rows that see no key: let them see every key (no NaN forward or backward in any
    # kernel), then zero their output, which is the defined result.
    visible = mask.any(dim=-1, keepdim=True)  # (..., Tq, 1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~visible)
    return y.masked_fill(~visible, 0.0)


def _in_projection(
    query: Tensor, key: Tensor, value: Tensor, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v projections; one fused matmul when query, key and value are the same tensor."""
    if query is key and key is value:
        q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        return q, k, v
    w_q, w_k, w_v = weight.chunk(3)
    b_q, b_k, b_v = bias.chunk(3)
    return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)


def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    n_head: int,
    mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """``nn.MultiheadAttention(batch_first=True)``'s forward with these weights (no dropout).

    query (B, Tq, E), key and value (B, Tk, E) -> (B, Tq, E); ``mask`` broadcast against
    (B, nh, Tq, Tk), True = may attend. See :func:`solutions.attention.multi_head_attention`.
    """
    _check_mha_weights(query, in_proj_weight, out_proj_weight)
    q, k, v = _in_projection(query, key, value, in_proj_weight, in_proj_bias)
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))  # (B, nh, T, hs)
    y = merge_heads(scaled_dot_product_attention(q, k, v, mask, is_causal))  # (B, Tq, E)
    return F.linear(y, out_proj_weight, out_proj_bias)


def causal_self_attention(
    x: Tensor,
    c_attn_weight: Tensor,
    c_attn_bias: Tensor,
    c_proj_weight: Tensor,
    c_proj_bias: Tensor,
    n_head: int,
) -> Tensor:
    """GPT-2's attention sub-block: x (B, T, C) -> (B, T, C), weights in nn.Linear layout."""
    _check_gpt2_weights(x, c_attn_weight, c_proj_weight)
    q, k, v = F.linear(x, c_attn_weight, c_attn_bias).chunk(3, dim=-1)  # each (B, T, C)
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))  # each (B, nh, T, hs)
    y = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs), flash on GPU
    return F.linear(merge_heads(y), c_proj_weight, c_proj_bias)
