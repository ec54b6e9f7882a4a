"""Attention: scaled dot-product, multi-head, and GPT-2's causal self-attention.

Attention lets every query position read a weighted average of the value vectors, with weights
from how well the query matches each key::

    attention(q, k, v) = softmax(q @ kᵀ / sqrt(d)) @ v

The ``1/sqrt(d)`` keeps the logits' variance near 1 whatever the head size ``d``, so the softmax
does not saturate. Masks say which keys a query may see; ``True`` means "may attend", the
convention of ``torch.nn.functional.scaled_dot_product_attention``.

Defined result for fully masked rows: a query row that may see no key at all gets all-zero
weights, so its output is the zero vector (and its gradients are zero, never NaN). Padding masks
produce such rows, and a NaN there would poison a whole training step.

Shapes: B batch, T sequence length, C (or E) embedding size, nh number of heads, hs = C // nh
head size. Weights use ``nn.Linear``'s layout, (out_features, in_features).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Given code from the library: input validation at the edges (a message naming the bad shape
# instead of a broadcasting error deep inside), and the causal mask, j <= i (top-left aligned):
# causal_mask(2, 3) is [[True, False, False], [True, True, False]].
from reference.attention import (
    causal_mask,
    check_attention_inputs,
    check_gpt2_weights,
    check_mha_weights,
)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable softmax of ``x`` along ``dim``.

    Contract: ``softmax(x)_i = exp(x_i) / sum_j exp(x_j)`` along ``dim``, for any float tensor
    with finite entries or ``-inf`` (a masked-out entry, weight exactly 0). No overflow at logits
    like ±1e4: subtracting the maximum first leaves the result unchanged but keeps every
    exponent ≤ 0. A slice whose entries are all ``-inf`` gives all zeros (not NaN): this is the
    defined result for a query that may attend no key.

    Shapes: any; the output has the shape of ``x``.

    Example::

        >>> softmax(torch.tensor([0.0, math.log(3.0)]))  # e^0 : e^ln3 = 1 : 3
        tensor([0.2500, 0.7500])
        >>> softmax(torch.tensor([1e4, 1e4 - 1, -math.inf]))  # no overflow; -inf weighs 0
        tensor([0.7311, 0.2689, 0.0000])
        >>> softmax(torch.tensor([-math.inf, -math.inf]))  # defined result: zeros
        tensor([0., 0.])

    Hints: ``x.amax(dim, keepdim=True)``; an all ``-inf`` slice has max ``-inf`` and
    ``-inf - (-inf)`` is NaN, so use 0 as the max there (``torch.where``); likewise its sum of
    exponentials is 0, so divide by 1 there instead.
    """
    # BEGIN SOLUTION
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(m == -math.inf, 0.0, m)  # all -inf slice: subtract 0, exp gives 0s
    e = torch.exp(x - m)  # every exponent ≤ 0: no overflow
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, 1.0)  # all -inf slice: 0 / 1 = 0
    # END SOLUTION


def attention_weights(
    q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """The attention probabilities ``softmax(q @ kᵀ / sqrt(d))``, masked.

    Contract: ``q`` (..., Tq, d), ``k`` (..., Tk, d) with the same (broadcastable) leading
    dims; returns (..., Tq, Tk), each row summing to 1 over the keys the query may see.

    * ``mask``: bool, broadcastable to (..., Tq, Tk); ``True`` = may attend.
    * ``is_causal``: query i may attend key j only if j <= i (top-left aligned, as torch's
      ``is_causal``; see :func:`causal_mask`). Combined with ``mask`` by logical and.
    * A row with no visible key is all zeros (see :func:`softmax`).

    Worked example (d = 4, so the scale is 1/2), causal::

        q = [[1, 1, 1, 1],       k = [[1, 1, 1, 1],      q @ kᵀ / 2 = [[2, 0],
             [1, 1, 1, 1]]            [0, 0, 0, 0]]                    [2, 0]]

        query 0 sees key 0 only:  [1, 0]
        query 1 sees both keys:   [e²/(e²+1), 1/(e²+1)] = [0.8808, 0.1192]

    Hints: ``k.transpose(-2, -1)``; fill masked logits with ``-inf`` (``masked_fill``) so
    their weight is exactly 0; softmax over the last dim (the keys).
    """
    check_attention_inputs(q, k, mask)
    # BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., Tq, Tk)
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return softmax(scores, dim=-1)  # over the keys: each query's weights sum to 1
    # END SOLUTION


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    """``softmax(q @ kᵀ / sqrt(d)) @ v``: each query's weighted average of the values.

    Contract: ``q`` (..., Tq, d), ``k`` (..., Tk, d), ``v`` (..., Tk, dv), any number of
    leading batch dims (including none); returns (..., Tq, dv). ``mask`` and ``is_causal`` as
    in :func:`attention_weights`; a query that may see no key outputs zeros. Equals
    ``torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
    is_causal=is_causal)`` wherever a row has a visible key.

    Worked example: with q, k as in :func:`attention_weights` (causal) and
    ``v = [[1, 0], [0, 1]]`` the output equals the weights: ``[[1, 0], [0.8808, 0.1192]]``.
    """
    check_attention_inputs(q, k, mask, v)
    # BEGIN SOLUTION
    return attention_weights(q, k, mask, is_causal) @ v  # (..., Tq, Tk) @ (..., Tk, dv)
    # END SOLUTION


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """Split the channels into heads: (B, T, C) -> (B, nh, T, hs), hs = C // nh.

    Head h gets channels ``h*hs : (h+1)*hs`` of every position, and the head dim moves before
    T so each head attends independently over its own (T, hs) matrix.

    Example (C = 4, nh = 2)::

        x[0] = [[0, 1, 2, 3],      split_heads(x, 2)[0] = [[[0, 1], [4, 5]],   # head 0
                [4, 5, 6, 7]]                              [[2, 3], [6, 7]]]   # head 1

    Hint: ``view(B, T, nh, hs)`` then ``transpose(1, 2)``; a bare ``view(B, nh, T, hs)``
    has the right shape and the wrong layout.
    """
    if x.dim() != 3 or n_head < 1 or x.size(-1) % n_head:
        raise ValueError(
            f"split_heads needs (B, T, C) with C divisible by n_head; got {tuple(x.shape)}, "
            f"n_head={n_head}"
        )
    # BEGIN SOLUTION
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
    # END SOLUTION


def merge_heads(x: Tensor) -> Tensor:
    """The inverse of :func:`split_heads`: (B, nh, T, hs) -> (B, T, nh * hs).

    Hint: transpose back, then ``reshape`` (the transposed tensor is not contiguous, so ``view``
    would fail).
    """
    if x.dim() != 4:
        raise ValueError(f"merge_heads needs (B, nh, T, hs); got {tuple(x.shape)}")
    # BEGIN SOLUTION
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, C)
    # END SOLUTION


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
    """Multi-head attention with the weights of ``torch.nn.MultiheadAttention(batch_first=True)``.

    Contract: ``query`` (B, Tq, E), ``key`` and ``value`` (B, Tk, E); ``in_proj_weight``
    (3E, E) stacks the query, key and value projections in that order, ``in_proj_bias`` (3E,);
    ``out_proj_weight`` (E, E), ``out_proj_bias`` (E,). Returns (B, Tq, E)::

        q, k, v = query @ W_qᵀ + b_q, key @ W_kᵀ + b_k, value @ W_vᵀ + b_v
        heads   = attention(split_heads(q), split_heads(k), split_heads(v))   # (B, nh, Tq, hs)
        out     = merge_heads(heads) @ W_outᵀ + b_out

    ``mask`` is broadcast against (B, nh, Tq, Tk), ``True`` = may attend: e.g. (Tq, Tk) for all
    sequences and heads, or (B, 1, 1, Tk) to hide padded keys. (``nn.MultiheadAttention``'s
    ``attn_mask`` uses the opposite convention: True = not allowed.)

    Hint: ``in_proj_weight.chunk(3)``; reuse :func:`split_heads`,
    :func:`scaled_dot_product_attention` and :func:`merge_heads`.
    """
    check_mha_weights(query, in_proj_weight, out_proj_weight)
    # BEGIN SOLUTION
    w_q, w_k, w_v = in_proj_weight.chunk(3)  # each (E, E)
    b_q, b_k, b_v = in_proj_bias.chunk(3)  # each (E,)
    q = split_heads(query @ w_q.T + b_q, n_head)  # (B, nh, Tq, hs)
    k = split_heads(key @ w_k.T + b_k, n_head)  # (B, nh, Tk, hs)
    v = split_heads(value @ w_v.T + b_v, n_head)  # (B, nh, Tk, hs)
    y = merge_heads(scaled_dot_product_attention(q, k, v, mask, is_causal))  # (B, Tq, E)
    return y @ out_proj_weight.T + out_proj_bias
    # END SOLUTION


def causal_self_attention(
    x: Tensor,
    c_attn_weight: Tensor,
    c_attn_bias: Tensor,
    c_proj_weight: Tensor,
    c_proj_bias: Tensor,
    n_head: int,
) -> Tensor:
    """GPT-2's attention sub-block: fused qkv projection, causal multi-head attention, output proj.

    Contract: ``x`` (B, T, C); ``c_attn_weight`` (3C, C) and ``c_attn_bias`` (3C,) compute q, k
    and v at once (GPT-2's ``attn.c_attn``, here in ``nn.Linear`` layout (out, in));
    ``c_proj_weight`` (C, C), ``c_proj_bias`` (C,). Returns (B, T, C). Position t's output
    depends only on ``x[:, :t+1]``: the model may not peek at the tokens it must predict.

    Hint: ``(x @ c_attn_weight.T + c_attn_bias).chunk(3, dim=-1)`` gives q, k, v, each (B, T, C).
    """
    check_gpt2_weights(x, c_attn_weight, c_proj_weight)
    # BEGIN SOLUTION
    q, k, v = (x @ c_attn_weight.T + c_attn_bias).chunk(3, dim=-1)  # each (B, T, C)
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))  # each (B, nh, T, hs)
    y = merge_heads(scaled_dot_product_attention(q, k, v, is_causal=True))  # (B, T, C)
    return y @ c_proj_weight.T + c_proj_bias
    # END SOLUTION
