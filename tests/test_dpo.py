"""DPO in the library (``reference/trainer/dpo.py``) on the generated preference set.

The loss formula itself is the fine-tuning spec's (``specs/test_finetune.py``); here: the loop
keeps the reference frozen, starts at log 2 (policy = reference), and shifts the preference on
held-out pairs.
"""

from __future__ import annotations

import math

import pytest
import torch

from reference.chat import ChatTokenizer
from reference.model import GPT, GPTConfig
from reference.tasks import reverse_preferences
from reference.tokenizers import CharTokenizer
from reference.trainer.dpo import (
    Pair,
    encode_pairs,
    preference_accuracy,
    preference_margin,
    train_dpo,
)

pytestmark = pytest.mark.finetune

CHAT = ChatTokenizer(CharTokenizer("abcdefghijklmnopqrstuvwxyz :"))


def pairs(n: int, seed: int) -> list[Pair]:
    """The generated reversal pairs' prompts, with a preference a small random model can learn
    in a few steps and carry over to new prompts: "yes" over "no"."""
    return [Pair(tuple(r["prompt"]), "yes", "no")  # type: ignore[arg-type]
            for r in reverse_preferences(n, seed=seed)]


def test_dpo_keeps_the_reference_frozen_and_shifts_the_preference() -> None:
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=32, vocab_size=CHAT.vocab_size, n_layer=1, n_head=2,
                           n_embd=32)).eval()
    train = encode_pairs(CHAT, pairs(64, seed=1), max_len=33)
    held_out = encode_pairs(CHAT, pairs(64, seed=2), max_len=33)
    before = preference_accuracy(policy, held_out)
    margin = preference_margin(policy, held_out)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    result = train_dpo(policy, train, steps=40, beta=0.5, lr=3e-3, batch_size=16)
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6), "policy = reference at start"
    reference = result.reference
    assert all(not p.requires_grad and p.grad is None for p in reference.parameters())
    for k, v in reference.state_dict().items():
        assert torch.equal(v, start[k]), f"the reference's {k} changed"
    after = preference_accuracy(policy, held_out)
    assert after > max(before, 0.75), f"held-out preference accuracy {before:.2f} -> {after:.2f}"
    assert sum(result.losses[-5:]) / 5 < math.log(2) - 0.1
    assert preference_margin(policy, held_out) > margin + 1.0


def test_encode_pairs_refuses_a_pair_too_long() -> None:
    with pytest.raises(ValueError, match="pair 0"):
        encode_pairs(CHAT, pairs(1, seed=0), max_len=5)
