"""Attention, production version: dispatches to PyTorch's fused kernels.

The contract is the attention spec's (``specs/test_attention.py``; the course's worked solution,
``solutions/attention.py``, explains the ideas): ``True`` in a mask means "may attend",
``is_causal`` is top-left aligned (query i sees keys ``j <= i``), and a query that may see no
key outputs zeros with zero gradients. What differs from the worked solution is speed:

* :func:`scaled_dot_product_attention` calls ``torch.nn.functional.scaled_dot_product_attention``
  (flash / memory-efficient kernels on GPU, a fused kernel on CPU), which never materializes the
  (T, T) weights for the plain causal case. The zero result for fully masked rows is enforced
  here, so it does not depend on the torch version or the kernel chosen.
* The projections use ``F.linear``, and self-attention (query is key is value) computes q, k, v
  with one fused matmul.

:func:`softmax`, :func:`attention_weights` (the visualizer's input), :func:`split_heads` and
:func:`merge_heads` are the library's own copies of the clear versions, which are also the best
ones; the shared spec keeps both copies honest. The ``check_*`` functions validate inputs at
the edges (a message naming the bad shape instead of a broadcasting error deep inside); the
course's solutions use them as given code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attention_weights",
    "causal_mask",
    "causal_self_attention",
    "check_attention_inputs",
    "check_gpt2_weights",
    "check_mha_weights",
    "merge_heads",
    "multi_head_attention",
    "scaled_dot_product_attention",
    "softmax",
    "split_heads",
]


# ---------------------------------------------------------------- validation at the edges


def check_attention_inputs(
    q: Tensor, k: Tensor, mask: Tensor | None, v: Tensor | None = None
) -> None:
    """Raise ValueError/TypeError naming the shapes unless q (..., Tq, d), k (..., Tk, d),
    v (..., Tk, dv) and a bool mask can be attended."""
    if q.dim() < 2 or k.dim() < 2:
        raise ValueError(
            f"q and k need at least 2 dims (..., T, d); got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if q.size(-1) != k.size(-1):
        raise ValueError(
            f"q and k must share the last dim d; got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if v is not None and v.size(-2) != k.size(-2):
        raise ValueError(
            f"k and v must have the same number of keys; got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend); got {mask.dtype}")


def check_mha_weights(query: Tensor, in_proj_weight: Tensor, out_proj_weight: Tensor) -> None:
    """Raise ValueError unless query (B, T, E), in_proj_weight (3E, E), out_proj_weight (E, E)."""
    E = query.size(-1)
    if query.dim() != 3 or in_proj_weight.shape != (3 * E, E) or out_proj_weight.shape != (E, E):
        raise ValueError(
            f"expected query (B, T, E), in_proj_weight (3E, E), out_proj_weight (E, E); got "
            f"{tuple(query.shape)}, {tuple(in_proj_weight.shape)}, {tuple(out_proj_weight.shape)}"
        )


def check_gpt2_weights(x: Tensor, c_attn_weight: Tensor, c_proj_weight: Tensor) -> None:
    """Raise ValueError unless x (B, T, C), c_attn_weight (3C, C), c_proj_weight (C, C)."""
    C = x.size(-1)
    if x.dim() != 3 or c_attn_weight.shape != (3 * C, C) or c_proj_weight.shape != (C, C):
        raise ValueError(
            f"expected x (B, T, C), c_attn_weight (3C, C), c_proj_weight (C, C); got "
            f"{tuple(x.shape)}, {tuple(c_attn_weight.shape)}, {tuple(c_proj_weight.shape)}"
        )


# ---------------------------------------------------------------- the clear versions


def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> Tensor:
    """The (t_q, t_k) bool mask where query i may attend key j iff j <= i (top-left aligned).

    Example::

        >>> causal_mask(2, 3)
        tensor([[ True, False, False],
                [ True,  True, False]])
    """
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable softmax along ``dim``; a slice of only ``-inf`` gives zeros, not NaN.

    Example::

        >>> softmax(torch.tensor([1e4, 1e4 - 1, -math.inf]))
        tensor([0.7311, 0.2689, 0.0000])
    """
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(m == -math.inf, 0.0, m)  # all -inf slice: subtract 0, exp gives 0s
    e = torch.exp(x - m)  # every exponent <= 0: no overflow
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, 1.0)  # all -inf slice: 0 / 1 = 0


def attention_weights(
    q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """``softmax(q @ kᵀ / sqrt(d))`` masked: q (..., Tq, d), k (..., Tk, d) -> (..., Tq, Tk).

    ``mask`` bool, broadcastable to (..., Tq, Tk), True = may attend; ``is_causal`` top-left
    aligned, combined with ``mask`` by logical and; a row with no visible key is all zeros.

    Example (d = 4, so the scale is 1/2; causal, so query 0 sees key 0 only)::

        >>> q, k = torch.ones(2, 4), torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]])
        >>> attention_weights(q, k, is_causal=True)  # row 1: softmax([2, 0])
        tensor([[1.0000, 0.0000],
                [0.8808, 0.1192]])
        >>> attention_weights(q, k, mask=torch.tensor([False, False]))  # sees no key: zeros
        tensor([[0., 0.],
                [0., 0.]])
    """
    check_attention_inputs(q, k, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., Tq, Tk)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return softmax(scores, dim=-1)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, C) -> (B, nh, T, hs), hs = C // nh: head h gets channels ``h*hs : (h+1)*hs``."""
    if x.dim() != 3 or n_head < 1 or x.size(-1) % n_head:
        raise ValueError(
            f"split_heads needs (B, T, C) with C divisible by n_head; got {tuple(x.shape)}, "
            f"n_head={n_head}"
        )
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)


def merge_heads(x: Tensor) -> Tensor:
    """The inverse of :func:`split_heads`: (B, nh, T, hs) -> (B, T, nh * hs)."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads needs (B, nh, T, hs); got {tuple(x.shape)}")
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, C)


# ---------------------------------------------------------------- the fast versions


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """``softmax(q @ kᵀ / sqrt(d)) @ v`` on PyTorch's fused kernels.

    q (..., Tq, d), k (..., Tk, d), v (..., Tk, dv) -> (..., Tq, dv); ``mask`` bool,
    broadcastable to (..., Tq, Tk), True = may attend; a query with no visible key outputs 0.

    Example: with ``v = I`` the output is the weights (see :func:`attention_weights`)::

        >>> q, k = torch.ones(2, 4), torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]])
        >>> scaled_dot_product_attention(q, k, torch.eye(2), is_causal=True)
        tensor([[1.0000, 0.0000],
                [0.8808, 0.1192]])
    """
    check_attention_inputs(q, k, mask, v)
    if mask is None:
        # The fast path: no (Tq, Tk) tensor at all; every row sees key 0 at least.
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    if mask.dim() < 2:  # torch's kernels want (..., Tq, Tk): (Tk,) is one row for every query
        mask = mask[(None,) * (2 - mask.dim())]
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
    (B, nh, Tq, Tk), True = may attend; ``in_proj_weight`` stacks the q, k, v projections.
    """
    check_mha_weights(query, in_proj_weight, out_proj_weight)
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
    check_gpt2_weights(x, c_attn_weight, c_proj_weight)
    q, k, v = F.linear(x, c_attn_weight, c_attn_bias).chunk(3, dim=-1)  # each (B, T, C)
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))  # each (B, nh, T, hs)
    y = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs), flash on GPU
    return F.linear(merge_heads(y), c_proj_weight, c_proj_bias)
