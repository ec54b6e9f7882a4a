"""One GPT-2 transformer block: pre-LayerNorm, causal self-attention, MLP, two residual adds.

Weights are passed as a dict with GPT-2's names relative to the block, in ``nn.Linear`` layout
(out_features, in_features); C = n_embd::

    ln_1.weight, ln_1.bias                 (C,)
    attn.c_attn.weight (3C, C)  .bias (3C,)   q, k, v projections stacked
    attn.c_proj.weight (C, C)   .bias (C,)
    ln_2.weight, ln_2.bias                 (C,)
    mlp.c_fc.weight   (4C, C)   .bias (4C,)
    mlp.c_proj.weight (C, 4C)   .bias (C,)

With ``bias=False`` models the ``*.bias`` entries are absent.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..attention import causal_self_attention
from .layers import gelu, layer_norm


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` with an ``nn.Linear`` weight (out, in); no bias if None."""
    y = x @ weight.T
    return y if bias is None else y + bias


def _bias(params: Mapping[str, Tensor], name: str, like: Tensor) -> Tensor:
    """``params[name]``, or zeros shaped like one row of ``like`` for a bias-free model."""
    b = params.get(name)
    return b if b is not None else torch.zeros_like(like[:, 0])


def mlp_forward(x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
    """The feed-forward half: (B, T, C) -> (B, T, C), position by position.

    Contract: ``c_proj(gelu(c_fc(x)))`` with ``params["mlp.c_fc.weight"]`` (4C, C), ``...bias``
    (4C,), ``params["mlp.c_proj.weight"]`` (C, 4C), ``...bias`` (C,). GELU is GPT-2's tanh
    approximation (:func:`gelu`). The 4x expansion gives each position room to compute.

    Hint: :func:`linear` and ``params.get("mlp.c_fc.bias")`` (None when the model has no bias).
    """
    # BEGIN SOLUTION
    h = gelu(linear(x, params["mlp.c_fc.weight"], params.get("mlp.c_fc.bias")))  # (B, T, 4C)
    return linear(h, params["mlp.c_proj.weight"], params.get("mlp.c_proj.bias"))  # (B, T, C)
    # END SOLUTION


def block_forward(x: Tensor, params: Mapping[str, Tensor], n_head: int) -> Tensor:
    """One pre-LayerNorm block: (B, T, C) -> (B, T, C).

    Contract (GPT-2 / "pre-LN": normalize the *input* of each sub-layer, and add its output to
    the untouched residual stream)::

        x = x + attn(ln_1(x))
        x = x + mlp(ln_2(x))

    ``attn`` is causal multi-head self-attention with ``n_head`` heads
    (:func:`solutions.attention.causal_self_attention`), ``mlp`` is :func:`mlp_forward`, the
    LayerNorms use eps 1e-5. (The original transformer was post-LN, ``ln(x + attn(x))``; pre-LN
    trains deep stacks without warm-up tricks because the residual path is an identity.)

    Hint: ``_bias(params, "attn.c_attn.bias", params["attn.c_attn.weight"])`` gives zeros for a
    model without biases, as ``causal_self_attention`` wants a tensor.
    """
    # BEGIN SOLUTION
    h = layer_norm(x, params.get("ln_1.weight"), params.get("ln_1.bias"))
    w_attn, w_proj = params["attn.c_attn.weight"], params["attn.c_proj.weight"]
    x = x + causal_self_attention(
        h,
        w_attn,
        _bias(params, "attn.c_attn.bias", w_attn),
        w_proj,
        _bias(params, "attn.c_proj.bias", w_proj),
        n_head,
    )
    h = layer_norm(x, params.get("ln_2.weight"), params.get("ln_2.bias"))
    return x + mlp_forward(h, params)
    # END SOLUTION
