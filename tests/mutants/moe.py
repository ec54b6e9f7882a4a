"""Classic learner bugs in the mixture of experts; specs/test_moe.py must catch every one.

Each mutant replaces functions of ``solutions.moe`` (patched everywhere, so the layer ``MoE``
calls the broken one). Named for the bug; grouped by what they break, each group commented with
the spec tests expected to catch it.

Not a mutant, because it is not a bug: "softmax after top-k" (take the top k *logits*, then a
softmax over those k) gives exactly the renormalised top-k probabilities,
``e^l_i / sum_topk e^l_j = p_i / sum_topk p_j``, and ``topk`` picks the same experts from the
logits as from the probabilities (softmax is monotonic). It differs only if the softmax is left
in the logits' dtype, which ``softmax_after_top_k_in_the_logits_dtype`` below is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.moe import Expert, check_moe_sizes
from solutions import moe as sol

sol_route = sol.route  # the originals, kept before any mutant replaces them
sol_moe_forward = sol.moe_forward
sol_load_balancing_loss = sol.load_balancing_loss


# --- route: hand-worked examples, HF's router, the layer vs HF, the dense mixture -------------


def _route_not_renormalised(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    probs = F.softmax(router_logits.float(), dim=-1)
    return probs.topk(top_k, dim=-1)  # Switch / Qwen2-MoE's weights, not Mixtral's


def _route_softmax_after_top_k_in_logits_dtype(
    router_logits: Tensor, top_k: int
) -> tuple[Tensor, Tensor]:
    top, indices = router_logits.topk(top_k, dim=-1)
    return F.softmax(top, dim=-1), indices  # bfloat16 weights for bfloat16 logits


def _route_smallest(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    probs = F.softmax(router_logits.float(), dim=-1)
    weights, indices = probs.topk(top_k, dim=-1, largest=False)  # the k *worst* experts
    return weights / weights.sum(dim=-1, keepdim=True), indices


def _route_detached(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    weights, indices = sol_route(router_logits, top_k)
    return weights.detach(), indices  # the router never learns


def _route_softmax_over_tokens(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    probs = F.softmax(router_logits.float(), dim=0)  # over the tokens, not the experts
    weights, indices = probs.topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), indices


def _route_weights_are_logits(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    top, indices = router_logits.float().topk(top_k, dim=-1)
    return top / top.sum(dim=-1, keepdim=True), indices  # no softmax at all


# --- moe_forward: hand-worked example, the dense mixture, the layer vs HF ----------------------


def _forward(
    apply_weights: bool = True, expert_shift: int = 0, first_slot_weight: bool = False,
    detach_input: bool = False,
) -> Any:
    def moe_forward(x: Tensor, weights: Tensor, indices: Tensor,
                    experts: Sequence[Expert]) -> Tensor:
        y = torch.zeros_like(x)
        for e in range(len(experts)):
            token, slot = torch.where(indices == e)
            expert = experts[(e + expert_shift) % len(experts)]  # shift != 0: the wrong expert
            inputs = x.index_select(0, token)
            out = expert(inputs.detach() if detach_input else inputs)
            w = weights[token, 0 if first_slot_weight else slot].to(x.dtype).unsqueeze(-1)
            y.index_add_(0, token, out * w if apply_weights else out)
        return y

    return moe_forward


def _forward_skips_idle_experts(x: Tensor, weights: Tensor, indices: Tensor,
                                experts: Sequence[Expert]) -> Tensor:
    y = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        token, slot = torch.where(indices == e)
        if len(token) == 0:
            continue  # its parameters get no gradient at all (None), not zeros
        y.index_add_(0, token, expert(x[token]) * weights[token, slot].to(x.dtype)[:, None])
    return y


def _forward_in_float32(x: Tensor, weights: Tensor, indices: Tensor,
                        experts: Sequence[Expert]) -> Tensor:
    y = torch.zeros_like(x, dtype=torch.float32)  # the router weights' dtype, not x's
    for e, expert in enumerate(experts):
        token, slot = torch.where(indices == e)
        y.index_add_(0, token, expert(x[token]).float() * weights[token, slot][:, None])
    return y


# --- load_balancing_loss: hand-worked example, HF's loss and its gradient ---------------------


def _loss(
    sign: float = 1.0, with_n_experts: bool = True, counts_from_softmax: bool = False,
    per_layer_mean: bool = False, ignore_mask: bool = False, first_slot_only: bool = False,
    detach_probs: bool = False,
) -> Any:
    def load_balancing_loss(router_logits: Sequence[Tensor] | Tensor, n_experts: int,
                            top_k: int, attention_mask: Tensor | None = None) -> Tensor:
        if ignore_mask:
            attention_mask = None
        layers = [router_logits] if isinstance(router_logits, Tensor) else list(router_logits)
        if per_layer_mean and len(layers) > 1:  # one loss per layer, averaged: not HF's
            return torch.stack([load_balancing_loss(layer, n_experts, top_k, attention_mask)
                                for layer in layers]).mean()
        logits = torch.cat([layer.float() for layer in layers], dim=0)
        probs = F.softmax(logits, dim=-1)
        chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, n_experts).float()
        if first_slot_only:
            chosen = chosen[:, :1]  # counts only each token's first choice
        if counts_from_softmax:
            chosen = probs.unsqueeze(1)  # the probabilities, not the top-k one-hot
        mask = torch.ones(len(logits))
        if attention_mask is not None:
            mask = attention_mask.reshape(-1).float().repeat(len(layers))
        f = (chosen * mask[:, None, None]).sum(dim=0) / mask.sum()
        p = (probs * mask[:, None]).sum(dim=0) / mask.sum()
        if detach_probs:
            p = p.detach()
        return sign * (n_experts if with_n_experts else 1) * (f * p).sum()

    return load_balancing_loss


def _loss_missing(router_logits: Sequence[Tensor] | Tensor, n_experts: int, top_k: int,
                  attention_mask: Tensor | None = None) -> Tensor:
    check_moe_sizes(n_experts, top_k)
    return torch.zeros((), dtype=torch.float32)  # the auxiliary loss left out: nothing balances


MUTANTS: dict[str, dict[str, Any]] = {
    # route
    "router_without_renormalisation": {"route": _route_not_renormalised},
    "softmax_after_top_k_in_the_logits_dtype": {
        "route": _route_softmax_after_top_k_in_logits_dtype
    },
    "top_k_by_smallest": {"route": _route_smallest},
    "router_weights_detached": {"route": _route_detached},
    "router_softmax_over_tokens": {"route": _route_softmax_over_tokens},
    "router_weights_without_softmax": {"route": _route_weights_are_logits},
    # moe_forward
    "weights_not_applied": {"moe_forward": _forward(apply_weights=False)},
    "dispatch_to_the_wrong_expert": {"moe_forward": _forward(expert_shift=1)},
    "every_slot_weighted_by_the_first": {"moe_forward": _forward(first_slot_weight=True)},
    "no_gradient_to_the_input": {"moe_forward": _forward(detach_input=True)},
    "idle_experts_get_no_gradient": {"moe_forward": _forward_skips_idle_experts},
    "output_in_float32": {"moe_forward": _forward_in_float32},
    # load_balancing_loss
    "aux_loss_missing": {"load_balancing_loss": _loss_missing},
    "aux_loss_missing_the_factor_n_experts": {"load_balancing_loss": _loss(with_n_experts=False)},
    "aux_loss_with_the_wrong_sign": {"load_balancing_loss": _loss(sign=-1.0)},
    "aux_loss_tokens_per_expert_from_the_softmax": {
        "load_balancing_loss": _loss(counts_from_softmax=True)
    },
    "aux_loss_averaged_per_layer": {"load_balancing_loss": _loss(per_layer_mean=True)},
    "aux_loss_ignores_the_attention_mask": {"load_balancing_loss": _loss(ignore_mask=True)},
    "aux_loss_counts_only_the_first_choice": {"load_balancing_loss": _loss(first_slot_only=True)},
    "aux_loss_without_gradient": {"load_balancing_loss": _loss(detach_probs=True)},
}

# Hints that teach (tests/test_mutants.py): the cause, in a learner's words, that the first spec
# test failing on each of these classic bugs must name (a case-insensitive regex).
HINTS: dict[str, str] = {
    "router_without_renormalisation": r"not renormalised",
    "softmax_after_top_k_in_the_logits_dtype": r"softmax runs in the logits' dtype",
    "top_k_by_smallest": r"k smallest",
    "router_weights_detached": r"router weights are detached",
    "router_softmax_over_tokens": r"softmax runs over the tokens",
    "router_weights_without_softmax": r"no softmax",
    "weights_not_applied": r"router weights are not applied",
    "dispatch_to_the_wrong_expert": r"wrong expert",
    "every_slot_weighted_by_the_first": r"first slot's weight",
    "no_gradient_to_the_input": r"inputs are detached",
    "idle_experts_get_no_gradient": r"no token chose is skipped",
    "output_in_float32": r"not in x's dtype",
    "aux_loss_missing": r"loss is missing",
    "aux_loss_missing_the_factor_n_experts": r"factor E \(n_experts\) is missing",
    "aux_loss_with_the_wrong_sign": r"sign is flipped",
    "aux_loss_tokens_per_expert_from_the_softmax": r"f_e taken from the softmax",
    "aux_loss_averaged_per_layer": r"one loss per layer",
    "aux_loss_ignores_the_attention_mask": r"attention mask is ignored",
    "aux_loss_counts_only_the_first_choice": r"first choice",
    "aux_loss_without_gradient": r"cut from the graph",
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {}
