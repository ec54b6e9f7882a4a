"""The mixture-of-experts language model (``reference.llama.Llama`` with ``n_experts > 0``)
against Hugging Face's ``MixtralForCausalLM``, built offline from a config with random weights.

``tests/test_llama_model.py`` checks the logits, the loss and the gradients of one Mixtral
(4 experts, top-2); here: the routing itself at model level, for top-1, top-2 of 8 and every
expert (top_k = n_experts): each layer's router logits, the load-balancing loss alone (HF's
``aux_loss`` with ``output_router_logits=True``), with and without an attention mask, the
loss that adds it, the expert counts logged for utilisation, every gradient, and that every
parameter gets a gradient even when some expert receives no token (data-parallel training
needs that). Tolerances: logits, router logits and losses 1e-5 absolute (O(1) values through
2 layers); gradients 1e-5 relative to each gradient's largest entry (their scales differ by
orders of magnitude between parameters), as in ``tests/test_llama_model.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from reference.hf_llama import to_hf_state_dict
from reference.llama import Llama, LlamaConfig
from reference.moe import load_balancing_loss

TOL = 1e-5
V, C, NH, L, S = 97, 32, 4, 2, 64  # vocab, width, query heads, layers, max positions
COEF = 0.02  # Mixtral's router_aux_loss_coef


def hf_mixtral(n_experts: int, top_k: int, seed: int = 0) -> Any:
    """A MixtralForCausalLM from Hugging Face's own config names, every weight random."""
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        vocab_size=V, hidden_size=C, intermediate_size=24, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=2, max_position_embeddings=S,
        rms_norm_eps=1e-5, num_local_experts=n_experts, num_experts_per_tok=top_k,
        router_aux_loss_coef=COEF, output_router_logits=True, sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
    )
    model = transformers.MixtralForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = "norm" in name
            p.copy_(torch.randn_like(p) * (0.3 if norm else 0.15) + (1.0 if norm else 0.0))
    return model.eval()


def batch(B: int = 2, T: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=0,
                               msg=lambda m: f"{what} differs from Hugging Face:\n{m}")


def router_logits(model: Llama) -> list[torch.Tensor]:
    logits = [block.router_logits for block in model.blocks()]
    assert all(t is not None for t in logits), "a block kept no router logits"
    return [t for t in logits if t is not None]


ROUTINGS = [(4, 1), (8, 2), (3, 3)]  # top-1; top-2 of 8 (some experts idle); every expert


@pytest.mark.parametrize(("n_experts", "top_k"), ROUTINGS)
def test_router_logits_aux_loss_and_gradients_match_hf_mixtral(n_experts: int,
                                                               top_k: int) -> None:
    hf = hf_mixtral(n_experts, top_k)
    ours = Llama.from_hf(hf).eval()
    assert (ours.config.n_experts, ours.config.n_experts_per_tok) == (n_experts, top_k)
    idx = batch()
    targets = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)  # we do not shift
    out = hf(input_ids=idx, labels=idx)
    logits, loss = ours(idx, targets)
    assert loss is not None
    assert_close(logits, out.logits, "logits")
    ours_router = router_logits(ours)
    assert len(ours_router) == len(out.router_logits) == L
    for i, (a, b) in enumerate(zip(ours_router, out.router_logits, strict=True)):
        assert_close(a, b, f"layer {i}'s router logits (B*T, E)")
    aux = load_balancing_loss(ours_router, n_experts, top_k)
    assert_close(aux, out.aux_loss, "the load-balancing loss")
    assert_close(loss, out.loss, "the loss (cross-entropy + coef * aux)")
    loss.backward()
    out.loss.backward()
    grads = to_hf_state_dict({n: p.grad for n, p in ours.named_parameters()
                              if p.grad is not None}, ours.config)
    for name, p in hf.named_parameters():
        want = p.grad
        assert want is not None and name in grads, f"no gradient for {name}"
        torch.testing.assert_close(grads[name], want, atol=TOL * float(want.abs().max()), rtol=0,
                                   msg=lambda m, name=name: f"grad of {name}:\n{m}")


def test_aux_loss_with_an_attention_mask_matches_hf_mixtral() -> None:
    """Right padding: causal attention keeps the real tokens' router logits as they are without
    the padding, and the mask keeps the padding out of both means of the loss."""
    hf = hf_mixtral(4, 2)
    ours = Llama.from_hf(hf).eval()
    idx = batch(T=9)
    mask = torch.ones_like(idx)
    mask[1, 6:] = 0  # row 1 has 6 real tokens
    out = hf(input_ids=idx, attention_mask=mask)
    ours(idx)
    aux = load_balancing_loss(router_logits(ours), 4, 2, attention_mask=mask)
    assert_close(aux, out.aux_loss, "the load-balancing loss with padding masked out")
    unmasked = load_balancing_loss(router_logits(ours), 4, 2)
    assert abs(unmasked.item() - out.aux_loss.item()) > 1e-4, "the mask changed nothing"


@pytest.mark.parametrize(("n_experts", "top_k"), ROUTINGS)
def test_expert_counts_are_hf_mixtral_routing(n_experts: int, top_k: int) -> None:
    hf = hf_mixtral(n_experts, top_k, seed=2)
    ours = Llama.from_hf(hf).eval()
    idx = batch(seed=3)
    out = hf(input_ids=idx)
    ours(idx)
    counts = ours.last_expert_counts
    assert counts is not None and counts.dtype == torch.int64
    expected = torch.stack([
        torch.bincount(layer.softmax(-1).topk(top_k, dim=-1).indices.reshape(-1),
                       minlength=n_experts)
        for layer in out.router_logits
    ])
    assert counts.tolist() == expected.tolist()


def test_every_parameter_gets_a_gradient_even_an_idle_expert() -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=S, vocab_size=V, n_layer=L, n_head=NH, n_kv_head=2,
                              n_embd=C, n_experts=8, n_experts_per_tok=1))
    idx = batch(B=1, T=2)
    _, loss = model(idx, idx)
    assert loss is not None
    loss.backward()
    counts = model.last_expert_counts
    assert counts is not None and (counts == 0).any(), "every expert got a token: no idle one"
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient (DDP would stop): {missing}"


def test_descending_the_aux_loss_balances_the_router() -> None:
    """The loss has the right sign at model level: SGD on the router alone, from a router
    leaning to expert 0 (2/3 of the tokens), brings the loss to its balanced value k = 1 and
    spreads the tokens."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=S, vocab_size=V, n_layer=1, n_head=NH, n_kv_head=2,
                              n_embd=C, n_experts=4, n_experts_per_tok=1))
    gate = model.blocks()[0].mlp.gate
    assert isinstance(gate, torch.nn.Linear)
    with torch.no_grad():
        gate.weight[0] += 1.0 * model.model.embed_tokens.weight.mean(0) / 0.02  # lean to 0
    optimizer = torch.optim.SGD([gate.weight], lr=0.2)
    idx = batch(B=4, T=16)

    def aux_and_top_share() -> tuple[torch.Tensor, float]:
        model(idx)
        counts = model.last_expert_counts
        assert counts is not None
        aux = load_balancing_loss(router_logits(model), 4, 1)
        return aux, float(counts.max()) / float(counts.sum())

    before, share_before = aux_and_top_share()
    for _ in range(30):  # balanced (loss ~1 = k) after about 20
        aux, _ = aux_and_top_share()
        optimizer.zero_grad()
        aux.backward()
        optimizer.step()
    after, share_after = aux_and_top_share()
    assert before.item() > 1.1 and share_before > 0.6, "the router did not start unbalanced"
    assert after.item() < 1.01, f"the loss went {before.item():.4f} -> {after.item():.4f}, not to 1"
    assert share_after < 0.35, f"the busiest expert still has {share_after:.0%} of the tokens"

