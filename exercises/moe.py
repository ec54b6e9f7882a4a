"""Mixture of experts: top-k routing, dispatch and combine, and the load-balancing loss.

A mixture-of-experts (MoE) feed-forward layer holds E experts (here SwiGLU MLPs) and a router,
one linear map ``gate`` from a token's C features to E scores (logits). Each token runs through
only its k best experts, so the layer has E times the parameters of one MLP for about k times
its compute. Mixtral's layer, which Hugging Face's ``MixtralSparseMoeBlock`` implements::

    p = softmax(router_logits)          # over all E experts, in float32
    w, i = top_k(p)                     # the k largest probabilities and their experts
    w = w / w.sum()                     # renormalised: the k weights sum to 1
    y = sum_j w_j * experts[i_j](x)

Switch Transformer and Qwen2-MoE (``norm_topk_prob=False``) skip the renormalisation; with it,
``top_k == E`` is the dense softmax mixture of all experts. The top-k choice is a discrete
decision with no gradient: the router learns through the weights ``w`` only.

Left alone, a router collapses onto a few experts (they get more tokens, so they train faster,
so they get more tokens). The load-balancing loss, added to the language-model loss times a
small coefficient (Mixtral: 0.02), is smallest when tokens and probability spread evenly.

Shapes: N tokens (B*T flattened), C features, E experts, k = top_k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Given code from the library: the size check (a message naming the bad values), how many
# tokens each expert gets (expert_counts(indices, E), for logging), the expert type (a callable
# (N_e, C) -> (N_e, C)) and the layer's parameters (router ``gate`` and SwiGLU ``experts``,
# named as Hugging Face Mixtral's).
from reference import moe as library
from reference.moe import Expert, check_moe_sizes, expert_counts


def route(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Each token's ``top_k`` experts and their weights, renormalised to sum to 1.

    Contract: ``router_logits`` (..., E) of any float dtype (usually (N, E), N tokens) ->
    ``(weights, indices)``, both (..., k): ``indices`` (int64) the experts with the k largest
    probabilities, largest first; ``weights`` (float32) their softmax probabilities (softmax
    over all E, in float32) divided by their sum. Gradients flow from the weights to the logits.

    Worked example (E = 4, k = 2)::

        logits = [0, 1, 0.5, 3]     the top two are expert 3 (e^3) and expert 1 (e^1)
        weights = [e^3, e^1] / (e^3 + e^1) = [e^2, 1] / (e^2 + 1) = [0.8808, 0.1192]
        indices = [3, 1]

    Hints: ``F.softmax(logits.float(), dim=-1)``, then ``probs.topk(top_k, dim=-1)`` (largest
    first); divide by the sum over the last dim, ``keepdim=True``.
    """
    check_moe_sizes(router_logits.size(-1), top_k)
    raise NotImplementedError("exercises/moe.py::route is a stub: fill it in (task moe), then run `pytest exercises -m moe`")


def moe_forward(x: Tensor, weights: Tensor, indices: Tensor, experts: Sequence[Expert]) -> Tensor:
    """Send each token to its experts and add up their outputs, weighted.

    Contract: ``x`` (N, C); ``weights``, ``indices`` (N, k) as :func:`route` gives them;
    ``experts`` a list of E callables, each (N_e, C) -> (N_e, C). Returns (N, C) in x's dtype
    (the weights are cast to it)::

        y[n] = sum over j of weights[n, j] * experts[indices[n, j]](x[n])

    Each expert runs once, on a batch of the tokens routed to it (no loop over tokens); an
    expert no token chose runs on an empty batch, so every expert's parameters get a gradient.

    Worked example (N = 2, C = 1, E = 2, k = 2; expert 0 doubles, expert 1 negates)::

        x = [[1], [3]]    indices = [[0, 1], [1, 0]]    weights = [[0.75, 0.25], [1, 0]]
        y[0] = 0.75 * 2*1 + 0.25 * -1 = 1.25
        y[1] = 1.0 * -3   + 0.0 * 2*3 = -3

    Hints: for expert e, ``token, slot = torch.where(indices == e)`` lists its tokens and which
    of their k choices it was; ``x.index_select(0, token)`` gathers them, and
    ``y.index_add_(0, token, out)`` adds the weighted outputs back to their rows (start from
    ``torch.zeros_like(x)``).
    """
    raise NotImplementedError("exercises/moe.py::moe_forward is a stub: fill it in (task moe), then run `pytest exercises -m moe`")


def load_balancing_loss(
    router_logits: Sequence[Tensor] | Tensor,
    n_experts: int,
    top_k: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Switch Transformer's auxiliary loss, as Hugging Face's ``load_balancing_loss_func``.

    Contract: ``router_logits`` one (N, E) tensor per layer, the same N (or a single tensor);
    the layers' rows are taken as one set of L*N tokens (Hugging Face concatenates them). With
    ``f_e`` the fraction of the tokens' top-k choices that went to expert e (a count from the
    one-hot of the top-k indices, summed over the k slots and divided by the number of tokens,
    so ``sum_e f_e = k``) and ``P_e`` the mean softmax probability of expert e::

        loss = E * sum over e of f_e * P_e          (a float32 scalar)

    ``attention_mask`` (B, T) with B*T = N, 1 for real tokens, 0 for padding: padding tokens
    count in neither mean (the same mask applies to every layer). Perfectly balanced routing
    gives ``k``; the loss grows as the tokens crowd onto experts the router is sure of. The
    gradient flows through ``P`` only (``f`` is a count).

    Worked example (E = 2, k = 1, two tokens, logits [[ln 3, 0], [ln 3, 0]]): both tokens pick
    expert 0, so f = [1, 0]; p = [0.75, 0.25] for each, so P = [0.75, 0.25];
    loss = 2 * (1 * 0.75 + 0 * 0.25) = 1.5.

    Hints: ``torch.stack`` the layers (in float32) to (L, N, E); ``F.one_hot(indices, E)`` is
    (L, N, k, E); with a mask, weight each token by it and divide by ``L * mask.sum()``
    instead of ``L * N``.
    """
    check_moe_sizes(n_experts, top_k)
    raise NotImplementedError("exercises/moe.py::load_balancing_loss is a stub: fill it in (task moe), then run `pytest exercises -m moe`")


class MoE(library.MoE):
    """Given code: the library's layer (router ``gate``, SwiGLU ``experts``) running the
    functions above: (B, T, C) -> (output (B, T, C), router logits (B*T, E)); the tokens each
    expert received in ``last_counts`` (E,).

    >>> moe = MoE(n_embd=8, hidden=16, n_experts=4, top_k=2)
    >>> y, router_logits = moe(torch.randn(2, 3, 8))
    >>> tuple(y.shape), tuple(router_logits.shape), int(moe.last_counts.sum())
    ((2, 3, 8), (6, 4), 12)
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        router_logits = self.gate(flat)  # (N, E)
        weights, indices = route(router_logits, self.top_k)  # (N, k) each
        self.last_counts = expert_counts(indices, self.n_experts).detach()
        y = moe_forward(flat, weights, indices, list(self.experts))
        return y.view(B, T, C), router_logits
