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

sol_softmax = sol.softmax  # the original, kept before any mutant replaces sol.softmax


Causal = Callable[[int, int, torch.device], Tensor]


def _tril(diagonal: Callable[[int, int], int] = lambda t_q, t_k: 0) -> Causal:
    """A causal mask on the inputs' device, keeping the diagonals up to ``diagonal``."""
    return lambda t_q, t_k, device: torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(
        diagonal(t_q, t_k))


CAUSAL = _tril()  # the right one: j <= i


def _weights(
    scale: Callable[[Tensor, Tensor], float] = lambda q, k: 1 / math.sqrt(q.size(-1)),
    causal: Causal = CAUSAL,
    fill: float = -math.inf,
    invert_mask: bool = False,
    mask_only_if_not_causal: bool = False,
    mask_or_causal: bool = False,
    softmax_dim: int = -1,
) -> Callable[..., Tensor]:
    """attention_weights with one knob turned the wrong way."""

    def attention_weights(
        q: Tensor, k: Tensor, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        sol.check_attention_inputs(q, k, mask)  # given code, as in the solution
        scores = q @ k.transpose(-2, -1) * scale(q, k)
        if mask_or_causal and mask is not None and is_causal:  # either may let a key through
            visible = mask | causal(q.size(-2), k.size(-2), q.device)
            return sol.softmax(scores.masked_fill(~visible, fill), dim=softmax_dim)
        if is_causal:
            scores = scores.masked_fill(~causal(q.size(-2), k.size(-2), q.device), fill)
        if mask is not None and not (mask_only_if_not_causal and is_causal):
            scores = scores.masked_fill(mask if invert_mask else ~mask, fill)
        return sol.softmax(scores, dim=softmax_dim)

    return attention_weights


def _softmax_in_float32(x: Tensor, dim: int = -1) -> Tensor:
    return sol_softmax(x.float(), dim)  # silently changes the dtype (bfloat16 in, float32 out)


def _sdpa_detached_weights(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
) -> Tensor:
    return sol.attention_weights(q, k, mask, is_causal).detach() @ v  # no gradient to q or k


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
    "no_causal_mask": {"attention_weights": _weights(causal=_tril(lambda t_q, t_k: t_k))},
    "causal_mask_excludes_diagonal": {
        "attention_weights": _weights(causal=_tril(lambda t_q, t_k: -1))
    },
    "causal_mask_bottom_right_aligned": {
        "attention_weights": _weights(causal=_tril(lambda t_q, t_k: t_k - t_q))
    },
    # device: test_every_output_is_on_the_inputs_device_with_their_dtype (meta)
    "causal_mask_made_on_the_cpu": {
        "attention_weights": _weights(
            causal=lambda t_q, t_k, device: torch.ones(t_q, t_k, dtype=torch.bool).tril()
        )
    },
    # boolean mask: torch SDPA comparison, hand-worked mask example, fully masked rows
    "mask_inverted": {"attention_weights": _weights(invert_mask=True)},
    "mask_ignored_when_causal": {"attention_weights": _weights(mask_only_if_not_causal=True)},
    "mask_or_causal_instead_of_and": {"attention_weights": _weights(mask_or_causal=True)},
    "mask_fill_minus_1e9": {"attention_weights": _weights(fill=-1e9)},  # masked rows: uniform
    # softmax
    "softmax_over_queries_axis": {"attention_weights": _weights(softmax_dim=-2)},
    "softmax_without_max_subtraction": {"softmax": _softmax_no_max},
    "softmax_nan_on_fully_masked_rows": {"softmax": _softmax_nan_on_masked_rows},
    # dtypes: the bfloat16 and float64 tests
    "softmax_upcasts_to_float32": {"softmax": _softmax_in_float32},
    # gradients: test_sdpa_gradients_match_torch_autograd
    "sdpa_detaches_the_weights": {"scaled_dot_product_attention": _sdpa_detached_weights},
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

# Hints that teach: for each classic bug, the cause (a regex, case-insensitive) that the first
# spec test to catch it must name in its failure message (tests/test_mutants.py).
HINTS: dict[str, str] = {
    "no_scale": r"no 1/sqrt\(d\) scale",
    "scale_by_1_over_d": r"1/d instead of 1/sqrt\(d\)",
    "no_causal_mask": r"causal mask is not applied",
    "causal_mask_excludes_diagonal": r"hides the diagonal",
    "causal_mask_bottom_right_aligned": r"bottom-right.*top-left",
    "causal_mask_made_on_the_cpu": r"without device=",
    "mask_inverted": r"mask is inverted",
    "mask_ignored_when_causal": r"mask is ignored when is_causal",
    "mask_or_causal_instead_of_and": r"mask \| causal instead of mask & causal",
    "mask_fill_minus_1e9": r"-1e9.*-inf",
    "softmax_over_queries_axis": r"over the queries.*over the keys",
    "softmax_without_max_subtraction": r"overflow.*subtract the max",
    "softmax_nan_on_fully_masked_rows": r"all -inf row.*NaN",
    "softmax_upcasts_to_float32": r"dtype changed",
    "sdpa_detaches_the_weights": r"no gradient reaches.*detach",
    "split_heads_plain_reshape": r"plain reshape to \(B, nh, T, hs\)",
    "split_heads_interleaved": r"heads interleaved",
    "merge_heads_plain_reshape": r"without the transpose back",
    "mha_missing_out_proj_bias": r"output projection's bias is missing",
    "mha_qkv_chunks_swapped": r"chunks .* are swapped",
    "mha_values_from_key_input": r"values are projected from the key input",
    "gpt2_heads_split_before_qkv": r"heads split before q, k, v",
    "gpt2_not_causal": r"not causal",
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {
    ("softmax", "m = torch.where(m == -math.inf, 1.0, m)"):
        "only an all -inf slice takes this branch, and -inf minus any finite number is -inf: its "
        "exponentials are 0 whether 0 or 1 is subtracted (their gradient is 0 as well)",
    ("softmax", "return e / torch.where(s > 1, s, 1.0)"):
        "a slice with a finite entry has its maximum at exp(0) = 1, so s >= 1, and where s == 1 "
        "both divide by 1; the gradient through s is 0 there too (every other exponential is 0)",
    ("softmax", "return e / torch.where(s > 0, s, 2.0)"):
        "s == 0 only for an all -inf slice, whose exponentials are all 0: 0 / 2 = 0 / 1 = 0, "
        "forward and backward",
    ("attention_weights", "return softmax(scores, )"):
        "softmax's default dim is -1, the dim the solution passes: the same call",
    ("multi_head_attention", "k = split_heads(key @ w_k.T - b_k, n_head)"):
        "the key bias adds q . b_k to every logit of query q's row, and softmax is invariant to "
        "adding one number to a whole row: + b_k, - b_k (or none) give the same weights up to "
        "rounding, and b_k gets no gradient either way (torch's own MultiheadAttention too)",
}

