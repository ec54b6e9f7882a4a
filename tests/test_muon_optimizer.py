"""The library's Muon + AdamW optimizer (reference/muon.py): which parameters each trains, one
step equal to torch's two optimizers run side by side, the trainer's ``group["lr"]`` schedule
scaled per group, and a state_dict round trip (through the checkpoint's JSON + safetensors
split) that resumes bit for bit.

Oracles: ``torch.optim.Muon`` and ``torch.optim.AdamW`` themselves; exact equality (the same
kernels on the same tensors).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from reference.llama import Llama, LlamaConfig
from reference.model import GPT, GPTConfig
from reference.muon import (
    MuonAdamW,
    MuonInDtype,
    make_muon_optimizer,
    muon_step,
    split_muon_params,
)
from reference.trainer.checkpoint import _join_optimizer_state, _split_optimizer_state


def llama(**options: Any) -> Llama:
    torch.manual_seed(0)
    return Llama(LlamaConfig(block_size=16, vocab_size=31, n_layer=2, n_head=2, n_embd=16,
                             intermediate_size=24, **options))


def names(model: nn.Module, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, lrs: list[float],
          seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, 31, (2, 8), generator=g)
        for group in opt.param_groups:
            group["lr"] = lrs[step]  # what the trainer's schedule does every step
        _, loss = model(idx, idx)
        assert loss is not None
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_block_matrices_get_muon_and_the_rest_adamw() -> None:
    model = llama(n_experts=2, n_experts_per_tok=1)
    muon, decay, no_decay = split_muon_params(model)
    assert names(model, muon) == {
        f"model.layers.{i}.{m}" for i in range(2) for m in (
            *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
            *(f"mlp.experts.{e}.{p}_proj.weight" for e in range(2) for p in ("gate", "up", "down")))
    }
    assert names(model, decay) == {"lm_head.weight"}
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.gate.weight",
            "model.layers.1.input_layernorm.weight"} <= names(model, no_decay)
    gpt = GPT(GPTConfig(block_size=8, vocab_size=31, n_layer=1, n_head=2, n_embd=8))
    muon, decay, no_decay = split_muon_params(gpt)
    assert names(gpt, muon) == {"transformer.h.0.attn.c_attn.weight",
                                "transformer.h.0.attn.c_proj.weight",
                                "transformer.h.0.mlp.c_fc.weight",
                                "transformer.h.0.mlp.c_proj.weight"}
    assert decay == []  # the tied head is the embedding
    assert len(muon) + len(no_decay) == len(list(gpt.parameters()))


def test_one_optimizer_steps_as_torch_muon_and_adamw_side_by_side() -> None:
    ours, theirs = llama(), llama()
    opt = make_muon_optimizer(ours, lr=1e-3, muon_lr=0.02, weight_decay=0.1, betas=(0.9, 0.95),
                              ns_dtype=torch.bfloat16)  # torch.optim.Muon itself
    muon, decay, no_decay = split_muon_params(theirs)
    lrs = [1.0, 0.5, 0.25]  # the schedule's factor of each step
    t_muon = torch.optim.Muon(muon, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    t_adamw = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    train(ours, opt, 3, [1e-3 * f for f in lrs])
    g = torch.Generator().manual_seed(1)
    for f in lrs:
        idx = torch.randint(0, 31, (2, 8), generator=g)
        for group in t_muon.param_groups:
            group["lr"] = 0.02 * f
        for group in t_adamw.param_groups:
            group["lr"] = 1e-3 * f
        _, loss = theirs(idx, idx)
        assert loss is not None
        t_muon.zero_grad()
        t_adamw.zero_grad()
        loss.backward()
        t_muon.step()
        t_adamw.step()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)
    assert [g["lr"] for g in opt.param_groups] == [0.25e-3] * 3  # the trainer's value kept


def test_state_dict_round_trips_and_resumes_bit_for_bit() -> None:
    model = llama(qk_norm=True)
    opt = make_muon_optimizer(model, lr=2e-3, muon_lr=0.03, ns_dtype=torch.bfloat16)
    train(model, opt, 2, [2e-3, 2e-3])
    tensors, rest = _split_optimizer_state(opt.state_dict())  # as a checkpoint stores it
    saved = _join_optimizer_state({k: v.clone() for k, v in tensors.items()},
                                  json.loads(json.dumps(rest)))
    model_state = {k: v.clone() for k, v in model.state_dict().items()}

    resumed = llama(qk_norm=True)
    resumed.load_state_dict(model_state)
    opt2 = make_muon_optimizer(resumed, lr=2e-3, muon_lr=0.03, ns_dtype=torch.bfloat16)
    opt2.load_state_dict(saved)
    assert isinstance(opt2, MuonAdamW)
    assert opt2.muon.param_groups[0] is opt2.param_groups[0]  # the inner ones see the load
    assert opt2.muon.state is opt2.state and opt2.adamw.state is opt2.state
    train(model, opt, 2, [1e-3, 5e-4], seed=9)
    train(resumed, opt2, 2, [1e-3, 5e-4], seed=9)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)


def test_float32_newton_schulz_on_the_cpu_is_muon_step_in_float32() -> None:
    model = llama()
    opt = make_muon_optimizer(model, lr=1e-3, muon_lr=0.02)  # CPU: float32 by default
    assert isinstance(opt.muon, MuonInDtype) and opt.muon.ns_dtype == torch.float32
    p = model.model.layers[0].self_attn.q_proj.weight
    before = p.detach().clone()
    grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(5))
    p.grad = grad.clone()
    opt.step()
    expected, buf = before.clone(), torch.zeros_like(before)
    muon_step(expected, grad, buf, lr=0.02, weight_decay=0.1, momentum=0.95,
              dtype=torch.float32)
    torch.testing.assert_close(p.detach(), expected, atol=0, rtol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, atol=0, rtol=0)


def test_bad_rates_and_models_without_matrices_are_refused() -> None:
    with pytest.raises(ValueError, match="muon_lr=0"):
        make_muon_optimizer(llama(), lr=1e-3, muon_lr=0)
    with pytest.raises(ValueError, match="no block matrix"):
        make_muon_optimizer(nn.Sequential(nn.LayerNorm(4)), lr=1e-3)
