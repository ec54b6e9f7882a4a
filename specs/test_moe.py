# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: mixture of experts (issue 16): top-k routing, dispatch and combine, the load-balancing loss.

Conventions: Mixtral's. The router's softmax is over all E experts in float32, the top k are
kept and renormalised to sum to 1 (Switch / Qwen2-MoE's ``norm_topk_prob=False`` would not); a
token's output is the weighted sum of its k experts' outputs. The auxiliary loss is Switch
Transformer's, computed as Hugging Face's ``load_balancing_loss_func``.

Contract:

| clause | tests | oracle |
|---|---|---|
| route: softmax over all experts, top-k largest first, weights renormalised, float32 weights and int64 indices, any leading dims (N, E) or (B, T, E) | `test_route_hand_worked_example`, `test_route_matches_hf_mixtral_router` | hand-worked (E = 4, k = 2); HF `MixtralTopKRouter` |
| moe_forward: `y[n] = sum_j w[n, j] * experts[i[n, j]](x[n])`, for any E, k <= E, token counts (0 tokens, experts that receive none) | `test_moe_forward_hand_worked_example`, `test_moe_forward_matches_a_dense_reference` | hand-worked (2 experts, top-1 and top-2); every expert run on every token, masked (float64) |
| the layer equals Mixtral's sparse MoE block with the same weights: output, router logits, gradients of the router and of every expert (zero, not missing, for an expert no token chose) | `test_moe_layer_matches_hf_mixtral_sparse_moe_block` | HF `MixtralSparseMoeBlock` from a `MixtralConfig` (fused `gate_up_proj`, `down_proj`) |
| last_counts: the tokens routed to each expert in the last forward | `test_last_counts_are_the_tokens_per_expert` | `torch.bincount` of HF's router indices |
| top_k == n_experts is the dense softmax mixture | `test_top_k_equal_to_n_experts_is_the_dense_softmax_mixture` | softmax-weighted sum of all experts (float64) |
| gradients reach the router through the weights, not the top-k indices (top-1: no gradient at all, the weight is 1) | `test_router_gradient_flows_through_the_weights_only` | `torch.autograd` through a dense mixture with a constant top-k mask |
| load_balancing_loss equals HF's: one tensor or a list / tuple of layers (each (N, E), the same N), with and without an attention mask, its gradient too | `test_load_balancing_loss_matches_hf`, `test_load_balancing_loss_gradient_matches_hf` | HF `load_balancing_loss_func` |
| load_balancing_loss by hand: E * sum f_e * P_e; uniform routing gives k; a float32 scalar whatever the mask's dtype (int, bool, float64) | `test_load_balancing_loss_hand_worked_example` | hand-worked (E = 2, k = 1 and 2) |
| dtypes: bfloat16 in, bfloat16 out (float32 router weights), within bfloat16's rounding | `test_bfloat16_in_bfloat16_out` | HF `MixtralSparseMoeBlock` in bfloat16 |
| outputs on the inputs' device (CPU, and CUDA when present) | `test_outputs_are_on_the_inputs_device` | the input's device |
| sizes are checked: 1 <= top_k <= n_experts, the error names the values | `test_bad_sizes_are_rejected_naming_them` | the documented error |

Tolerances (absolute, rtol 0): 1e-5 in float32 (inputs O(1), a few experts summed), as the
project's standard; bfloat16 against HF in bfloat16: ``BF16_TOL``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import (
    MixtralSparseMoeBlock,
    MixtralTopKRouter,
    load_balancing_loss_func,
)

from specs import hints

COMPONENT = "moe"
pytestmark = pytest.mark.moe

TOL = 1e-5
# bfloat16 keeps 8 bits: HF multiplies by the router weight in float32 and rounds once, we round
# the weight to bfloat16 first; outputs O(1) differ by a few bfloat16 ulps (2**-8 each).
BF16_TOL = 3e-2  # a few bfloat16 ulps of O(1) outputs

Expert = Callable[[Tensor], Tensor]


def assert_close(actual: Tensor, expected: Tensor, what: str, tol: float = TOL, *,
                 wrong: hints.Wrong | None = None, hint: str = "") -> None:
    """Shape, then values in float64; a mismatch names the classic bug in ``wrong`` whose
    answer ``actual`` matches (see specs/hints.py), else ``hint``."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    hints.assert_close(actual.double(), expected.double(), wrong=wrong, hint=hint,
                       what=f"{what} differs from the oracle beyond atol={tol}", atol=tol, rtol=0)


def mixtral_block(n_embd: int, hidden: int, n_experts: int, top_k: int, seed: int,
                  dtype: torch.dtype = torch.float32) -> MixtralSparseMoeBlock:
    """HF's sparse MoE block from a config, offline, with random O(1)-output weights."""
    config = MixtralConfig(hidden_size=n_embd, intermediate_size=hidden,
                           num_local_experts=n_experts, num_experts_per_tok=top_k)
    block = MixtralSparseMoeBlock(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.size(-1)))
    return block.to(dtype)


def our_layer(impl: Any, hf: MixtralSparseMoeBlock) -> Any:
    """``impl.MoE`` holding HF's weights: ``gate_up_proj[e]`` is (2*hidden, C), gate rows first."""
    n_experts, two_hidden, n_embd = hf.experts.gate_up_proj.shape
    layer = impl.MoE(n_embd, two_hidden // 2, n_experts, hf.top_k).to(hf.gate.weight.dtype)
    with torch.no_grad():
        layer.gate.weight.copy_(hf.gate.weight)
        for e, expert in enumerate(layer.experts):
            gate, up = hf.experts.gate_up_proj[e].chunk(2, dim=0)
            expert.gate_proj.weight.copy_(gate)
            expert.up_proj.weight.copy_(up)
            expert.down_proj.weight.copy_(hf.experts.down_proj[e])
    return layer


def tensor_experts(n_experts: int, c: int, g: torch.Generator,
                   dtype: torch.dtype = torch.float64) -> list[Expert]:
    """E small SwiGLU-shaped experts given as weight tensors (no attribute names involved)."""
    experts = []
    for _ in range(n_experts):
        w1, w2, w3 = (torch.randn(c, c, generator=g, dtype=dtype) / math.sqrt(c) for _ in range(3))
        experts.append(lambda t, w1=w1, w2=w2, w3=w3: (F.silu(t @ w1.T) * (t @ w2.T)) @ w3.T)
    return experts


def dense_mixture(x: Tensor, weights: Tensor, indices: Tensor, experts: list[Expert]) -> Tensor:
    """The oracle: every expert on every token, (N, E, C), times a dense (N, E) weight matrix
    that is 0 for the experts a token did not choose."""
    outs = torch.stack([f(x) for f in experts], dim=1)  # (N, E, C)
    dense = torch.zeros(x.size(0), len(experts), dtype=outs.dtype).scatter_add(
        1, indices, weights.to(outs.dtype))  # (N, E)
    return (dense.unsqueeze(-1) * outs).sum(dim=1)


def mixture_with_bug(x: Tensor, weights: Tensor, indices: Tensor, experts: list[Expert], *,
                     unweighted: bool = False, shift: int = 0, first_slot: bool = False) -> Tensor:
    """What moe_forward gives with a classic bug, token by token: the weights left out, each
    choice sent to the next expert, or every choice weighted by the token's first weight."""
    rows = []
    for n in range(x.size(0)):
        row = torch.zeros_like(x[n])
        for j in range(indices.size(1)):
            expert = experts[(int(indices[n, j]) + shift) % len(experts)]
            w = 1.0 if unweighted else float(weights[n, 0 if first_slot else j])
            row = row + w * expert(x[n:n + 1])[0]
        rows.append(row)
    return torch.stack(rows)


def forward_bugs(x: Tensor, weights: Tensor, indices: Tensor,
                 experts: list[Expert]) -> hints.Wrong:
    def bug(**kwargs: Any) -> Callable[[], Tensor]:
        return lambda: mixture_with_bug(x, weights, indices, experts, **kwargs)

    return {
        "the router weights are not applied: each expert's output is multiplied by the "
        "token's weight for that expert": bug(unweighted=True),
        "tokens dispatched to the wrong expert: expert e runs on the tokens whose indices == e":
            bug(shift=1),
        "every choice weighted by the first slot's weight: use weights[token, slot], the slot "
        "where the token chose this expert": bug(first_slot=True),
    }


def hf_input_gradient(hf: MixtralSparseMoeBlock, x: Tensor, probe: Tensor, *,
                      detach_weights: bool = False, detach_inputs: bool = False) -> Tensor:
    """The gradient of HF's (output · probe) for x, with a classic bug: the router weights or
    the experts' inputs cut from the graph (``autograd.grad``: HF's own gradients untouched)."""
    x = x.clone().requires_grad_()
    flat = x.view(-1, x.size(-1))
    _, weights, indices = hf.gate(flat)
    y = hf.experts(flat.detach() if detach_inputs else flat, indices,
                   weights.detach() if detach_weights else weights)
    (grad,) = torch.autograd.grad((y.view(probe.shape) * probe).sum(), x)
    return grad


@st.composite
def routed_tokens(draw: Any) -> tuple[Tensor, int, int]:
    """Router logits (N, E) for 0-12 tokens; the first ``starved`` experts are never chosen."""
    n_experts = draw(st.integers(1, 6), label="E")
    top_k = draw(st.integers(1, n_experts), label="k")
    n_tokens = draw(st.integers(0, 12), label="N")
    starved = draw(st.integers(0, n_experts - top_k), label="starved experts")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(n_tokens, n_experts, generator=g) * draw(st.sampled_from([0.5, 2.0]))
    logits[:, :starved] -= 30.0  # far below every other expert: they receive no token
    return logits, n_experts, top_k


# --- route --------------------------------------------------------------------------------------


def test_route_hand_worked_example(impl: Any) -> None:
    logits = torch.tensor([[0.0, 1.0, 0.5, 3.0]])
    weights, indices = impl.route(logits, 2)
    sigma = math.exp(2) / (math.exp(2) + 1)  # e^3 / (e^3 + e^1)
    cause = hints.likely(indices, {
        "the k smallest are picked: topk (largest=True) keeps the k most probable experts":
            logits.topk(2, largest=False).indices,
        "the softmax runs over the tokens (dim 0): it is over the experts, the last dim":
            torch.softmax(logits, dim=0).topk(2).indices,
    })
    assert indices.tolist() == [[3, 1]], (
        f"{cause + '; ' if cause else ''}experts {indices.tolist()}, want [[3, 1]] (largest first)")
    assert indices.dtype == torch.int64, f"indices are {indices.dtype}, not int64 (topk's)"
    assert weights.dtype == torch.float32, (
        f"route's weights are {weights.dtype}: likely cause: the softmax is not taken in float32 "
        "(F.softmax(logits.float(), dim=-1))")
    assert_close(weights, torch.tensor([[sigma, 1 - sigma]]), "route's weights, k = 2", wrong={
        "the top-k weights are not renormalised: divide them by their sum (Mixtral's router; "
        "Switch's would not)": torch.softmax(logits, dim=-1).topk(2).values,
        "no softmax: the weights are the softmax probabilities over all E experts, then "
        "renormalised": torch.tensor([[0.75, 0.25]]),  # the logits 3 and 1 over their sum
    })
    weights, indices = impl.route(logits, 1)
    assert indices.tolist() == [[3]]
    assert_close(weights, torch.tensor([[1.0]]), "route's weight, k = 1 (renormalised)")
    weights, indices = impl.route(logits.view(1, 1, 4), 2)  # any leading dims: (B, T, E)
    assert indices.tolist() == [[[3, 1]]]
    assert_close(weights, torch.tensor([[[sigma, 1 - sigma]]]), "route's weights, (1, 1, 4)")


@given(case=routed_tokens(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_route_matches_hf_mixtral_router(
    impl: Any, case: tuple[Tensor, int, int], dtype: torch.dtype
) -> None:
    logits, n_experts, top_k = case
    # HF's router maps hidden states to logits with its weight: identity weight, logits as input.
    config = MixtralConfig(hidden_size=n_experts, num_local_experts=n_experts,
                           num_experts_per_tok=top_k)
    router = MixtralTopKRouter(config).to(dtype)
    with torch.no_grad():
        router.weight.copy_(torch.eye(n_experts))
    hf_logits, hf_weights, hf_indices = router(logits.to(dtype))
    weights, indices = impl.route(hf_logits, top_k)
    assert weights.dtype == torch.float32, (
        f"route's weights are {weights.dtype}, not float32: likely cause: the softmax runs in "
        "the logits' dtype (F.softmax(logits.float(), dim=-1))")
    assert torch.equal(indices, hf_indices), f"experts {indices.tolist()} != HF's {hf_indices.tolist()}"
    assert_close(weights, hf_weights, "route's weights vs HF's router")
    weights, indices = impl.route(hf_logits.view(1, -1, n_experts), top_k)  # (B, T, E)
    assert torch.equal(indices[0], hf_indices), "route on (1, N, E) chose other experts"
    assert_close(weights[0], hf_weights, "route's weights on (1, N, E) vs HF's router")


# --- moe_forward ------------------------------------------------------------------------------


def test_moe_forward_hand_worked_example(impl: Any) -> None:
    """Expert 0 doubles, expert 1 negates; token 0 prefers expert 0 3:1, token 1 expert 1 3:1."""
    experts: list[Expert] = [lambda t: 2 * t, lambda t: -t]
    x = torch.tensor([[1.0], [3.0]])
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])  # softmax: 0.75, 0.25
    # top-2: token 0: 0.75 * 2 + 0.25 * -1 = 1.25; token 1: 0.25 * 6 + 0.75 * -3 = -0.75
    weights, indices = impl.route(logits, 2)
    assert_close(impl.moe_forward(x, weights, indices, experts), torch.tensor([[1.25], [-0.75]]),
                 "top-2 output", wrong=forward_bugs(x, weights, indices, experts))
    # top-1, renormalised: weight 1 each: token 0 -> 2 * 1 = 2, token 1 -> -3
    weights, indices = impl.route(logits, 1)
    assert_close(impl.moe_forward(x, weights, indices, experts), torch.tensor([[2.0], [-3.0]]),
                 "top-1 output", wrong=forward_bugs(x, weights, indices, experts))
    # explicit weights and indices, as in the docstring: 0.75 * 2 + 0.25 * -1 and 1.0 * -3
    weights, indices = torch.tensor([[0.75, 0.25], [1.0, 0.0]]), torch.tensor([[0, 1], [1, 0]])
    y = impl.moe_forward(x, weights, indices, experts)
    assert_close(y, torch.tensor([[1.25], [-3.0]]), "output with given weights",
                 wrong=forward_bugs(x, weights, indices, experts))


@given(case=routed_tokens(), c=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       renormalised=st.booleans())
def test_moe_forward_matches_a_dense_reference(
    impl: Any, case: tuple[Tensor, int, int], c: int, seed: int, renormalised: bool
) -> None:
    logits, n_experts, top_k = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(logits.size(0), c, generator=g, dtype=torch.float64)
    weights, indices = torch.softmax(logits, -1).topk(top_k, dim=-1)  # torch's top-k
    if renormalised:
        weights = weights / weights.sum(-1, keepdim=True)
    experts = tensor_experts(n_experts, c, g)
    y = impl.moe_forward(x, weights, indices, experts)
    assert y.dtype == x.dtype, (
        f"moe_forward returned {y.dtype} for {x.dtype} tokens: likely cause: the output is not "
        "in x's dtype (start from torch.zeros_like(x), cast the weights to x.dtype)")
    assert_close(y, dense_mixture(x, weights, indices, experts), "moe_forward vs the dense mixture")


# --- the layer against Hugging Face's Mixtral block -------------------------------------------


@pytest.mark.parametrize(
    ("n_experts", "top_k", "n_tokens"),
    [(4, 2, 21), (8, 2, 3), (5, 1, 12), (3, 3, 10), (1, 1, 4)],  # (8, 2, 3): some experts idle
)
def test_moe_layer_matches_hf_mixtral_sparse_moe_block(
    impl: Any, n_experts: int, top_k: int, n_tokens: int
) -> None:
    hf = mixtral_block(8, 12, n_experts, top_k, seed=n_experts * 10 + top_k)
    ours = our_layer(impl, hf)
    x = torch.randn(1, n_tokens, 8, generator=torch.Generator().manual_seed(n_tokens))
    x_ours, x_hf = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, router_logits = ours(x_ours)
    y_hf = hf(x_hf)
    assert_close(y, y_hf, "MoE output vs HF's MixtralSparseMoeBlock")
    assert_close(router_logits, x.view(-1, 8) @ hf.gate.weight.T, "router logits (B*T, E)")
    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * probe).sum().backward()
    (y_hf * probe).sum().backward()
    assert hf.gate.weight.grad is not None and hf.experts.gate_up_proj.grad is not None
    assert hf.experts.down_proj.grad is not None and x_ours.grad is not None
    assert_close(x_ours.grad, x_hf.grad, "gradient of the input", wrong={
        "the router weights are detached (or made under no_grad): the router learns through "
        "them": lambda: hf_input_gradient(hf, x, probe, detach_weights=True),
        "the experts' inputs are detached: the gradient reaches x through the experts too":
            lambda: hf_input_gradient(hf, x, probe, detach_inputs=True),
    })
    assert_close(ours.gate.weight.grad, hf.gate.weight.grad, "gradient of the router")
    for e, expert in enumerate(ours.experts):
        gate, up = hf.experts.gate_up_proj.grad[e].chunk(2, dim=0)
        for name, expected in [("gate_proj", gate), ("up_proj", up),
                               ("down_proj", hf.experts.down_proj.grad[e])]:
            grad = getattr(expert, name).weight.grad
            assert grad is not None, (
                f"expert {e}'s {name} got no gradient (not even zeros): likely cause: an expert "
                "no token chose is skipped; run every expert, on an empty batch if need be")
            assert_close(grad, expected, f"gradient of expert {e}'s {name}")


def test_last_counts_are_the_tokens_per_expert(impl: Any) -> None:
    hf = mixtral_block(8, 12, 6, 2, seed=3)
    ours = our_layer(impl, hf)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
    ours(x)
    _, _, hf_indices = hf.gate(x.view(-1, 8))
    expected = torch.bincount(hf_indices.reshape(-1), minlength=6)
    assert ours.last_counts.tolist() == expected.tolist()
    assert ours.last_counts.dtype == torch.int64 and int(ours.last_counts.sum()) == 2 * 10


@given(n_experts=st.integers(1, 5), c=st.integers(1, 5), n_tokens=st.integers(1, 8),
       seed=st.integers(0, 2**31 - 1))
def test_top_k_equal_to_n_experts_is_the_dense_softmax_mixture(
    impl: Any, n_experts: int, c: int, n_tokens: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, c, generator=g, dtype=torch.float64)
    logits = torch.randn(n_tokens, n_experts, generator=g, dtype=torch.float64)
    experts = tensor_experts(n_experts, c, g)
    weights, indices = impl.route(logits, n_experts)
    expected = sum(torch.softmax(logits, -1)[:, e:e + 1] * f(x) for e, f in enumerate(experts))
    assert isinstance(expected, Tensor)
    assert_close(impl.moe_forward(x, weights, indices, experts), expected,
                 "top_k == E vs the softmax mixture")


@given(case=routed_tokens(), c=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_router_gradient_flows_through_the_weights_only(
    impl: Any, case: tuple[Tensor, int, int], c: int, seed: int
) -> None:
    logits, n_experts, top_k = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(logits.size(0), c, generator=g, dtype=torch.float64)
    experts = tensor_experts(n_experts, c, g)
    probe = torch.randn(logits.size(0), c, generator=g, dtype=torch.float64)

    ours = logits.clone().requires_grad_()
    weights, indices = impl.route(ours, top_k)
    (impl.moe_forward(x, weights, indices, experts) * probe).sum().backward()

    oracle = logits.clone().requires_grad_()
    p = torch.softmax(oracle, -1)
    chosen = torch.zeros_like(p).scatter(1, p.topk(top_k, -1).indices, 1.0)  # constant mask
    w = p * chosen / (p * chosen).sum(-1, keepdim=True)  # (N, E)
    outs = torch.stack([f(x) for f in experts], dim=1)  # (N, E, C)
    ((w.unsqueeze(-1) * outs).sum(1) * probe).sum().backward()

    assert ours.grad is not None and oracle.grad is not None, "no gradient reached the router"
    assert_close(ours.grad, oracle.grad, "gradient of the router logits")
    if top_k == 1:  # a renormalised single weight is 1 whatever the logits
        assert_close(ours.grad, torch.zeros_like(ours.grad), "top-1 router gradient")


# --- the load-balancing loss ------------------------------------------------------------------


def test_load_balancing_loss_hand_worked_example(impl: Any) -> None:
    ln3 = math.log(3.0)
    # both tokens pick expert 0: f = [1, 0], P = [0.75, 0.25]: 2 * 0.75 = 1.5
    loss = impl.load_balancing_loss(torch.tensor([[ln3, 0.0], [ln3, 0.0]]), 2, 1)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert_close(loss, torch.tensor(1.5), "loss, both tokens on expert 0", wrong={
        "the loss is missing (0): it is E · sum_e f_e·P_e": torch.tensor(0.0),
        "the factor E (n_experts) is missing: the loss is E · sum_e f_e·P_e": torch.tensor(0.75),
        "the sign is flipped: the loss is +E · sum_e f_e·P_e, smallest when balanced":
            torch.tensor(-1.5),
        "f_e taken from the softmax: f_e is the fraction of the top-k choices (a one-hot count); "
        "only P_e is a mean probability": torch.tensor(1.25),  # 2 * (0.75² + 0.25²)
    })
    # top-2 of 2: f = [1, 1], P = [0.75, 0.25]: 2 * (0.75 + 0.25) = 2 = k
    loss = impl.load_balancing_loss(torch.tensor([[ln3, 0.0], [ln3, 0.0]]), 2, 2)
    assert_close(loss, torch.tensor(2.0), "loss, top-2 of 2 experts", wrong={
        "only each token's first choice is counted: f_e sums the one-hot over all k slots "
        "(sum_e f_e = k)": torch.tensor(1.5),
    })
    # one token each way: f = [0.5, 0.5], P = [0.5, 0.5]: 2 * 0.5 = 1 (balanced)
    loss = impl.load_balancing_loss(torch.tensor([[ln3, 0.0], [0.0, ln3]]), 2, 1)
    assert_close(loss, torch.tensor(1.0), "loss, balanced")
    # two layers, the same as their rows stacked; a mask dropping token 1 leaves 1.5
    layers = [torch.tensor([[ln3, 0.0], [0.0, ln3]])] * 2
    assert_close(impl.load_balancing_loss(layers, 2, 1), torch.tensor(1.0), "two layers")
    for mask in [torch.tensor([[1, 0]]), torch.tensor([[True, False]]),
                 torch.tensor([[1.0, 0.0]], dtype=torch.float64)]:
        masked = impl.load_balancing_loss(layers, 2, 1, attention_mask=mask)
        assert masked.dtype == torch.float32, f"a {mask.dtype} mask gave a {masked.dtype} loss"
        assert_close(masked, torch.tensor(1.5), f"loss with token 1 masked out ({mask.dtype})",
                     wrong={"the attention mask is ignored: padding tokens count in neither "
                            "f_e nor P_e": torch.tensor(1.0)})


@st.composite
def gate_logits(draw: Any) -> tuple[tuple[Tensor, ...], int, int, Tensor | None]:
    n_experts = draw(st.integers(1, 6), label="E")
    top_k = draw(st.integers(1, n_experts), label="k")
    b, t = draw(st.integers(1, 3), label="B"), draw(st.integers(1, 5), label="T")
    n_layers = draw(st.integers(1, 3), label="layers")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    layers = tuple(torch.randn(b * t, n_experts, generator=g) * 2 for _ in range(n_layers))
    mask = None
    if draw(st.booleans(), label="mask"):
        mask = (torch.rand(b, t, generator=g) < 0.6).long()
        mask[0, 0] = 1  # at least one real token
    return layers, n_experts, top_k, mask


@given(case=gate_logits(), as_list=st.booleans())
def test_load_balancing_loss_matches_hf(
    impl: Any, case: tuple[tuple[Tensor, ...], int, int, Tensor | None], as_list: bool
) -> None:
    layers, n_experts, top_k, mask = case
    expected = load_balancing_loss_func(layers, n_experts, top_k, mask)
    assert isinstance(expected, Tensor)
    given_layers = list(layers) if as_list else layers
    loss = impl.load_balancing_loss(given_layers, n_experts, top_k, attention_mask=mask)
    assert loss.dim() == 0, f"the loss has shape {tuple(loss.shape)}, not a scalar"
    assert_close(loss, expected, "load_balancing_loss vs HF's load_balancing_loss_func", tol=1e-6,
                 wrong={"one loss per layer, averaged: the layers' tokens are pooled into one "
                        "set (HF concatenates them) before f_e and P_e": lambda: torch.stack([
                            torch.as_tensor(load_balancing_loss_func((layer,), n_experts, top_k,
                                                                     mask))
                            for layer in layers]).mean()})
    if len(layers) == 1:  # a single tensor is one layer
        single = impl.load_balancing_loss(layers[0], n_experts, top_k, attention_mask=mask)
        assert_close(single, expected, "load_balancing_loss of one tensor", tol=1e-6)


@given(case=gate_logits())
def test_load_balancing_loss_gradient_matches_hf(
    impl: Any, case: tuple[tuple[Tensor, ...], int, int, Tensor | None],
) -> None:
    layers, n_experts, top_k, mask = case
    ours = tuple(t.clone().requires_grad_() for t in layers)
    theirs = tuple(t.clone().requires_grad_() for t in layers)
    loss = impl.load_balancing_loss(ours, n_experts, top_k, attention_mask=mask)
    assert loss.requires_grad, (
        "the loss has no gradient: likely cause: it is cut from the graph (P_e detached or made "
        "under no_grad); its gradient flows through P_e, the mean probability")
    loss.backward()
    expected = load_balancing_loss_func(theirs, n_experts, top_k, mask)
    assert isinstance(expected, Tensor)
    expected.backward()
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.grad is not None and b.grad is not None, f"layer {i}: no gradient"
        assert_close(a.grad, b.grad, f"gradient of layer {i}'s logits", tol=1e-6)


# --- dtypes, devices, errors --------------------------------------------------------------------


def test_bfloat16_in_bfloat16_out(impl: Any) -> None:
    hf = mixtral_block(16, 24, 4, 2, seed=7, dtype=torch.bfloat16)
    ours = our_layer(impl, hf)
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    y, router_logits = ours(x)
    assert y.dtype == torch.bfloat16 and router_logits.dtype == torch.bfloat16
    weights, _ = impl.route(router_logits, 2)
    assert weights.dtype == torch.float32, "route's weights are float32 whatever the logits"
    assert_close(y, hf(x), "bfloat16 output vs HF in bfloat16", tol=BF16_TOL)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_on_the_inputs_device(impl: Any, device: str) -> None:
    hf = mixtral_block(8, 12, 4, 2, seed=1)
    ours = our_layer(impl, hf).to(device)
    x = torch.randn(2, 3, 8, device=device)
    y, router_logits = ours(x)
    loss = impl.load_balancing_loss([router_logits], 4, 2,
                                    attention_mask=torch.ones(2, 3, dtype=torch.long, device=device))
    for name, t in [("output", y), ("router logits", router_logits), ("loss", loss),
                    ("last_counts", ours.last_counts)]:
        assert t.device == x.device, f"{name} on {t.device}, the input on {x.device}"
    assert_close(y.cpu(), hf(x.cpu()), f"output on {device} vs HF on the CPU")


def test_bad_sizes_are_rejected_naming_them(impl: Any) -> None:
    weights, _ = impl.route(torch.zeros(1, 3), 3)  # a good call first: the stub must fail here
    assert weights.shape == (1, 3)
    for top_k in (0, 4):
        with pytest.raises(ValueError, match=f"n_experts=3, top_k={top_k}"):
            impl.route(torch.zeros(2, 3), top_k)
        with pytest.raises(ValueError, match=f"n_experts=3, top_k={top_k}"):
            impl.load_balancing_loss(torch.zeros(2, 3), 3, top_k)
    with pytest.raises(ValueError, match="n_experts=2, top_k=3"):
        impl.MoE(4, 8, 2, 3)
