"""The Llama-style decoder block: RMSNorm, rotary positions, grouped-query attention, SwiGLU.

What a Llama block changes in a GPT-2 block (``solutions/gpt/block.py``), piece by piece:

* **RMSNorm** instead of LayerNorm: ``x / sqrt(mean(x²) + eps) * weight``; no mean subtracted,
  no bias.
* **Rotary position embeddings** (RoPE) instead of a learned position table: the query and key
  of the token at position p are *rotated*, pair of channels by pair of channels, pair i by the
  angle ``p * ω_i`` with ``ω_i = θ ** (-2i / hs)``. A dot product of two rotated vectors depends
  only on the difference of their angles, so attention sees relative positions. Values are not
  rotated. Here pair i is channels (i, i + hs/2), Hugging Face's "half-split" layout
  (``rotate_half``); Meta's original code pairs (2i, 2i + 1) instead (``reference/rope.py``
  has both).
* **Grouped-query attention**: fewer key/value heads than query heads; kv head j serves the
  ``n_head // n_kv_head`` consecutive query heads ``j*n_rep .. (j+1)*n_rep - 1``. One kv head
  is multi-query attention; ``n_kv_head == n_head`` is plain multi-head attention.
* **SwiGLU** feed-forward: ``down(silu(gate(x)) * up(x))``, no biases.

Shapes: B batch, T tokens, C width, nh query heads, n_kv key/value heads, hs head size (even),
H the feed-forward's hidden width. Weights in ``nn.Linear``'s layout (out, in), no biases.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.llama import BLOCK_WEIGHTS as BLOCK_WEIGHTS  # the names llama_block reads

# Given code from the library: input checks that name the bad shapes or keys.
from reference.llama import check_block_weights, check_gqa_inputs

from .attention import scaled_dot_product_attention


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim: ``x / sqrt(mean(x²) + eps) * weight``.

    Contract: ``x`` (..., C) of any float dtype, ``weight`` (C,); returns x's shape. The
    normalisation runs in float32 whatever x's dtype (a bfloat16 mean of squares loses digits)
    and is cast back to x's dtype *before* the weight multiplies it (Hugging Face's order).
    ``eps`` goes inside the square root.

    Worked example (eps = 0)::

        x = [3, 4]:  mean(x²) = (9 + 16) / 2 = 12.5,  rms = sqrt(12.5) = 3.5355
        rms_norm(x) = [3, 4] / 3.5355 = [0.8485, 1.1314]

    Unlike LayerNorm the mean is *not* subtracted: [3, 4] and [4, 5] do not share their
    normalised differences.

    Hints: ``x.float()``, ``.pow(2).mean(-1, keepdim=True)``, ``torch.rsqrt``; ``.to(x.dtype)``.
    """
    # BEGIN SOLUTION
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # (..., C) / (..., 1)
    return weight * h.to(x.dtype)
    # END SOLUTION


def rope_frequencies(head_size: int, theta: float = 10000.0) -> Tensor:
    """The (hs/2,) float32 angular frequencies ``ω_i = θ ** (-2i / hs)``, i = 0 .. hs/2 - 1.

    Pair 0 turns fastest (1 radian per position); the last pair turns slowest, about
    ``1/θ`` radian per position, so some pair still tells far-apart positions apart.

    Worked example: ``head_size = 4, theta = 100``: exponents 2i/hs = [0, 0.5], so
    ``ω = [100⁻⁰, 100⁻⁰·⁵] = [1, 0.1]``.

    Hint: ``torch.arange(0, head_size, 2)`` gives the 2i; compute in float32.
    """
    if head_size < 2 or head_size % 2:
        raise ValueError(f"rotary embeddings need an even head_size >= 2, got {head_size}")
    # BEGIN SOLUTION
    two_i = torch.arange(0, head_size, 2).float()  # (hs/2,)
    return 1.0 / (theta ** (two_i / head_size))
    # END SOLUTION


def rope_cache(head_size: int, max_len: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """The (max_len, hs/2) float32 tables ``cos(p * ω_i)`` and ``sin(p * ω_i)`` for the
    positions ``p = 0 .. max_len - 1`` (:func:`rope_frequencies` gives the ω).

    Worked example: ``head_size = 2`` (one pair, ω = 1), ``max_len = 3``: the angles are
    [0, 1, 2] radians, so ``cos = [[1], [0.5403], [-0.4161]]``, ``sin = [[0], [0.8415],
    [0.9093]]``.

    Hint: an outer product of the positions (as float32) and the frequencies.
    """
    # BEGIN SOLUTION
    positions = torch.arange(max_len).float()  # (S,)
    angles = positions[:, None] * rope_frequencies(head_size, theta)[None, :]  # (S, hs/2)
    return angles.cos(), angles.sin()
    # END SOLUTION


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair of channels (i, i + hs/2) of ``x`` (B, nh, T, hs) by its angle.

    Contract: ``cos``, ``sin`` are (T, hs/2), the angles of the T positions (rows of
    :func:`rope_cache`), or (B, T, hs/2), each row at its own positions (a KV cache's). They
    are cast to x's dtype. The pair (a, b) = (x[..., i], x[..., i + hs/2]) becomes::

        (a cos - b sin,  b cos + a sin)          # a 2-D rotation by the angle

    so with ``a`` the first half of the channels and ``b`` the second,
    ``out = x * [cos, cos] + [-b, a] * [sin, sin]`` (Hugging Face's ``rotate_half``).

    Worked example: x = [1, 0] (hs = 2) at position p with ω = 1 becomes
    ``[cos p, sin p]``: [1, 0] at p = 0, [0.5403, 0.8415] at p = 1. And ``[1, 2, 3, 4]``
    turned a quarter (cos 0, sin 1) in both pairs (1, 3) and (2, 4) is ``[-3, -4, 1, 2]``.

    Hints: ``x.chunk(2, dim=-1)``; ``cos[:, None]`` puts a (B, T, hs/2) table's head axis in
    place; ``torch.cat`` the two rotated halves.
    """
    # BEGIN SOLUTION
    if cos.dim() == 3:  # (B, T, hs/2): one table per row, broadcast over the heads
        cos, sin = cos[:, None], sin[:, None]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    a, b = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each: channel i pairs with i + hs/2
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    # END SOLUTION


def swiglu(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor) -> Tensor:
    """The SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``, no biases.

    Contract: ``x`` (..., C), ``w_gate`` and ``w_up`` (H, C), ``w_down`` (C, H); returns
    (..., C). ``silu(z) = z * sigmoid(z)`` gates the "up" features elementwise.

    Worked example (C = H = 1): w_gate = 1, w_up = 2, w_down = 1, x = 1:
    ``silu(1) * 2 = 0.7311 * 2 = 1.4621``.

    Hint: ``F.silu``; ``x @ w.T`` applies an ``nn.Linear`` weight.
    """
    # BEGIN SOLUTION
    gate = F.silu(x @ w_gate.T)  # (..., H)
    up = x @ w_up.T  # (..., H)
    return (gate * up) @ w_down.T  # (..., C)
    # END SOLUTION


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): each kv head repeated for the
    ``n_rep`` consecutive query heads it serves (head j -> heads j*n_rep .. (j+1)*n_rep - 1).

    Worked example: two kv heads holding 10 and 20, ``n_rep = 2``: [10, 10, 20, 20], not
    [10, 20, 10, 20] (that would pair query head 1 with kv head 1).

    Hint: ``x[:, :, None]`` then ``expand`` and ``reshape`` (or ``repeat_interleave`` on dim 1).
    """
    # BEGIN SOLUTION
    B, n_kv, T, hs = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, hs).reshape(B, n_kv * n_rep, T, hs)
    # END SOLUTION


def grouped_query_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of ``q`` (B, nh, T, hs) over ``k``, ``v`` (B, n_kv, T, hs), n_kv
    dividing nh -> (B, nh, T, hs). Query head h uses kv head ``h // (nh / n_kv)``.

    Equals ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)``.

    Worked example: q = 0 (every key scores the same), one kv head, T = 2: position 0 sees
    only key 0, so its output is v₀; position 1 averages v₀ and v₁: ``(v₀ + v₁) / 2``, in
    every query head.

    Hint: :func:`repeat_kv`, then your causal attention (``scaled_dot_product_attention``
    from the attention chapter, ``is_causal=True``).
    """
    check_gqa_inputs(q, k, v)
    # BEGIN SOLUTION
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, nh, T, hs)
    return scaled_dot_product_attention(q, k, v, is_causal=True)
    # END SOLUTION


def llama_attention(x: Tensor, cos: Tensor, sin: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                    w_o: Tensor, n_head: int, n_kv_head: int) -> Tensor:
    """Llama's attention sub-block: project, rotate q and k, attend, project back.

    Contract: ``x`` (B, T, C); ``cos``, ``sin`` (T, hs/2) for positions 0 .. T-1; ``w_q``
    (nh·hs, C), ``w_k`` and ``w_v`` (n_kv·hs, C), ``w_o`` (C, nh·hs). Returns (B, T, C)::

        q = split(x @ w_qᵀ, nh),  k = split(x @ w_kᵀ, n_kv),  v = split(x @ w_vᵀ, n_kv)
        y = grouped_query_attention(rotate(q), rotate(k), v)      # v is NOT rotated
        out = merge(y) @ w_oᵀ

    Hints: ``.view(B, T, heads, hs).transpose(1, 2)`` splits the heads, as in GPT-2; the
    scale ``1/sqrt(hs)`` is attention's usual one.
    """
    # BEGIN SOLUTION
    B, T, _ = x.shape
    hs = w_q.shape[0] // n_head
    q = (x @ w_q.T).view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = (x @ w_k.T).view(B, T, n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
    v = (x @ w_v.T).view(B, T, n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # positions in q and k only
    y = grouped_query_attention(q, k, v)  # (B, nh, T, hs)
    return y.transpose(1, 2).reshape(B, T, n_head * hs) @ w_o.T  # (B, T, C)
    # END SOLUTION


def llama_block(x: Tensor, weights: Mapping[str, Tensor], cos: Tensor, sin: Tensor,
                n_head: int, n_kv_head: int, eps: float) -> Tensor:
    """One pre-norm Llama block (Hugging Face's ``LlamaDecoderLayer``)::

        x = x + llama_attention(rms_norm(x, input_layernorm))
        x = x + swiglu(rms_norm(x, post_attention_layernorm))

    Contract: ``x`` (B, T, C), ``cos``/``sin`` as in :func:`llama_attention`, ``weights`` a
    dict with Hugging Face's names relative to the layer (``BLOCK_WEIGHTS``)::

        input_layernorm.weight (C,)          post_attention_layernorm.weight (C,)
        self_attn.q_proj.weight (nh·hs, C)   self_attn.k_proj / v_proj.weight (n_kv·hs, C)
        self_attn.o_proj.weight (C, nh·hs)   mlp.gate_proj / up_proj.weight (H, C)
        mlp.down_proj.weight (C, H)

    The residual stream is only ever added to: each norm reads it, and the sub-block's output
    is added back (pre-norm; GPT-2's block has the same shape).
    """
    check_block_weights(weights)
    # BEGIN SOLUTION
    w = weights
    h = rms_norm(x, w["input_layernorm.weight"], eps)
    x = x + llama_attention(h, cos, sin, w["self_attn.q_proj.weight"], w["self_attn.k_proj.weight"],
                            w["self_attn.v_proj.weight"], w["self_attn.o_proj.weight"], n_head,
                            n_kv_head)
    h = rms_norm(x, w["post_attention_layernorm.weight"], eps)
    return x + swiglu(h, w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"],
                      w["mlp.down_proj.weight"])
    # END SOLUTION

