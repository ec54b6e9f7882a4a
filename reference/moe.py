"""A sparse mixture-of-experts feed-forward layer (Mixtral's), and its load-balancing loss.

A router (one linear map, ``gate``) scores every token against ``n_experts`` SwiGLU experts; each
token goes to its ``top_k`` best experts and its output is their outputs' weighted sum::

    p = softmax(gate(x))                    # over all experts, in float32
    w, i = top_k(p)                         # the k largest probabilities and their experts
    w = w / w.sum()                         # renormalised to sum to 1 (Mixtral)
    y = sum_j w_j * expert[i_j](x)

Renormalising is Mixtral's choice (``norm_topk_prob=True``); Switch Transformer and Qwen2-MoE's
default (``norm_topk_prob=False``) keep the raw probabilities, whose sum is below 1. With
``top_k == n_experts`` the layer is the dense softmax mixture of all experts.

Gradients reach the router through the weights ``w`` (the top-k choice itself is not
differentiable). The load-balancing loss (Switch Transformer, eq. 4-6) pushes the router toward
an even split: ``n_experts * sum_e f_e * P_e`` with ``f_e`` the fraction of top-k slots routed to
expert e (they sum to k) and ``P_e`` its mean router probability; it is k when both are uniform.

Parameter names are Hugging Face Mixtral's ``block_sparse_moe``/``mlp`` (``gate``, and
``experts.<e>.{gate,up,down}_proj``, which transformers >= 5 stores fused as
``experts.gate_up_proj`` (E, 2*hidden, C) and ``experts.down_proj`` (E, C, hidden)).

Shapes: B batch, T sequence length, C = n_embd, N = B*T tokens, E = n_experts, k = top_k.

Example::

    >>> moe = MoE(n_embd=8, hidden=16, n_experts=4, top_k=2)
    >>> y, router_logits = moe(torch.randn(2, 3, 8))
    >>> tuple(y.shape), tuple(router_logits.shape)
    ((2, 3, 8), (6, 4))
    >>> int(moe.last_counts.sum())  # 6 tokens, 2 experts each
    12
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .swiglu import SwiGLU

__all__ = ["MoE", "check_moe_sizes", "expert_counts", "load_balancing_loss", "moe_forward",
           "route"]

Expert = Callable[[Tensor], Tensor]


def check_moe_sizes(n_experts: int, top_k: int) -> None:
    """Raise ``ValueError`` naming the values unless ``1 <= top_k <= n_experts``."""
    if n_experts < 1 or not 1 <= top_k <= n_experts:
        raise ValueError(
            f"a mixture of experts needs 1 <= top_k <= n_experts; got n_experts={n_experts}, "
            f"top_k={top_k}"
        )


def route(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Each token's ``top_k`` experts and their weights, renormalised to sum to 1.

    ``router_logits`` (..., E) -> ``weights`` (..., k) float32, ``indices`` (..., k) int64, both
    in decreasing order of probability. The softmax is over all E experts, in float32.

    >>> w, i = route(torch.tensor([[0.0, 1.0, 0.5, 3.0]]), top_k=2)
    >>> i.tolist(), [round(v, 4) for v in w[0].tolist()]  # e^3 : e^1 = e^2 : 1
    ([[3, 1]], [0.8808, 0.1192])
    """
    check_moe_sizes(router_logits.size(-1), top_k)
    probs = F.softmax(router_logits.float(), dim=-1)  # (N, E)
    weights, indices = probs.topk(top_k, dim=-1)  # (N, k)
    return weights / weights.sum(dim=-1, keepdim=True), indices


def expert_counts(indices: Tensor, n_experts: int) -> Tensor:
    """How many tokens each expert receives: (N, k) indices -> (E,) int64.

    >>> expert_counts(torch.tensor([[0, 2], [2, 1]]), 4).tolist()
    [1, 1, 2, 0]
    """
    return torch.bincount(indices.reshape(-1), minlength=n_experts)


def moe_forward(x: Tensor, weights: Tensor, indices: Tensor, experts: Sequence[Expert]) -> Tensor:
    """Dispatch each token to its experts and add up their weighted outputs.

    ``x`` (N, C), ``weights`` and ``indices`` (N, k) from :func:`route`, ``experts`` E callables
    (N_e, C) -> (N_e, C). Returns (N, C) in x's dtype: ``y[n] = sum_j weights[n, j] *
    experts[indices[n, j]](x[n])``. Each expert runs once, on the tokens routed to it (an expert
    that receives none runs on an empty batch, so its parameters still get a (zero) gradient).

    >>> double, negate = (lambda t: 2 * t), (lambda t: -t)
    >>> moe_forward(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.75, 0.25], [1.0, 0.0]]),
    ...             torch.tensor([[0, 1], [1, 0]]), [double, negate]).tolist()
    [[1.25], [-3.0]]
    """
    top_k = indices.size(-1)
    flat_experts = indices.reshape(-1)  # (N*k,): slot s is token s // k's j-th choice
    order = flat_experts.argsort(stable=True)  # the slots grouped by expert
    tokens = order // top_k  # (N*k,) the token of each grouped slot
    slot_weights = weights.reshape(-1)[order].to(x.dtype).unsqueeze(-1)  # (N*k, 1)
    sizes = expert_counts(indices, len(experts)).tolist()  # one host sync for all experts
    grouped = torch.split(x.index_select(0, tokens), sizes)  # one gather: E chunks (N_e, C)
    out = torch.cat([expert(chunk) for expert, chunk in zip(experts, grouped, strict=True)])
    return torch.zeros_like(x).index_add_(0, tokens, out * slot_weights)  # one scatter: (N, C)


def load_balancing_loss(
    router_logits: Sequence[Tensor] | Tensor,
    n_experts: int,
    top_k: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Switch Transformer's auxiliary loss, as Hugging Face's ``load_balancing_loss_func``.

    ``router_logits``: one (N, E) tensor per layer (or one tensor), its rows taken together;
    ``attention_mask`` (B, T) with B*T = N, 1 for real tokens: padding counts in neither mean.
    Returns the float32 scalar ``E * sum_e f_e * P_e``: ``f_e`` the fraction of the tokens' top-k
    slots that go to expert e (summed over the k slots, so ``sum_e f_e = k``), ``P_e`` the mean
    router probability of expert e. Balanced routing gives ``k`` (1 per slot); all tokens on one
    expert that is certain gives ``E * k``. Gradients reach the logits through ``P`` only.

    >>> float(load_balancing_loss(torch.zeros(4, 2), n_experts=2, top_k=1))  # uniform
    1.0
    """
    check_moe_sizes(n_experts, top_k)
    layers = [router_logits] if isinstance(router_logits, Tensor) else list(router_logits)
    logits = torch.cat([layer.float() for layer in layers], dim=0)  # (L*N, E)
    probs = F.softmax(logits, dim=-1)
    chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, n_experts).float()  # (L*N, k, E)
    if attention_mask is None:
        tokens_per_expert = chosen.mean(dim=0)  # (k, E)
        prob_per_expert = probs.mean(dim=0)  # (E,)
    else:
        mask = attention_mask.reshape(-1).float().repeat(len(layers)).to(logits.device)  # (L*N,)
        tokens_per_expert = (chosen * mask[:, None, None]).sum(dim=0) / mask.sum()
        prob_per_expert = (probs * mask[:, None]).sum(dim=0) / mask.sum()
    return n_experts * (tokens_per_expert * prob_per_expert).sum()


class MoE(nn.Module):
    """Mixtral's sparse mixture-of-experts feed-forward: (B, T, C) -> ((B, T, C), (B*T, E)).

    ``forward`` returns the output and the router logits (for :func:`load_balancing_loss`), and
    leaves the tokens routed to each expert in ``last_counts`` (E,) for logging utilisation.
    """

    def __init__(self, n_embd: int, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        check_moe_sizes(n_experts, top_k)
        self.n_experts, self.top_k = n_experts, top_k
        self.gate = nn.Linear(n_embd, n_experts, bias=False)  # the router
        self.experts = nn.ModuleList([SwiGLU(n_embd, hidden) for _ in range(n_experts)])
        self.last_counts = torch.zeros(n_experts, dtype=torch.long)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        router_logits = self.gate(flat)  # (N, E)
        weights, indices = route(router_logits, self.top_k)  # (N, k) each
        self.last_counts = expert_counts(indices, self.n_experts).detach()
        y = moe_forward(flat, weights, indices, list(self.experts))
        return y.view(B, T, C), router_logits
