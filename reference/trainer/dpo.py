"""Direct preference optimisation (DPO, Rafailov et al. 2023) of a chat model on preference pairs.

A pair is a conversation prompt with a *chosen* and a *rejected* assistant answer. The policy is
trained to raise ``log π(chosen) - log π(rejected)`` relative to a frozen *reference* model (the
policy as it was before DPO), with :func:`reference.finetune.dpo_loss`; no reward model, no
sampling. The reference is a copy taken at the start, in eval mode, with no gradients: its log
probabilities are computed under ``torch.no_grad``.

Progress is measured on held-out pairs by the implicit reward margin
``β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]`` and the *preference
accuracy*: the fraction of pairs whose policy log-probability of the chosen answer exceeds the
rejected one's (:func:`preference_accuracy`), and the mean log-probability margin between them
(:func:`preference_margin`).

The loop is deliberately small (AdamW, a constant learning rate after a short warm-up, gradient
clipping): the pre-training and SFT trainer (``reference/trainer/loop.py``) samples token
windows or single examples, while a DPO step needs two aligned batches and a second model.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..chat import ChatTokenizer, Message, encode_chat
from ..finetune import dpo_loss, sequence_logprob, sft_batch
from ..llama import Llama
from ..model import GPT

__all__ = ["DPOResult", "Pair", "encode_pairs", "preference_accuracy", "preference_margin",
           "train_dpo"]


@dataclass(frozen=True)
class Pair:
    """A prompt (the conversation before the answer) and two answers, the chosen one first."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str


Encoded = tuple[tuple[list[int], list[bool]], tuple[list[int], list[bool]]]


def encode_pairs(chat: ChatTokenizer, pairs: Sequence[Pair], max_len: int) -> list[Encoded]:
    """Each pair as two chat examples (ids, learn flags): the prompt then the chosen answer,
    the prompt then the rejected one; at most ``max_len`` ids each (a longer one is a
    ValueError naming the pair)."""
    out = []
    for i, pair in enumerate(pairs):
        sides = []
        for answer in (pair.chosen, pair.rejected):
            ids, learn = encode_chat(chat, [*pair.prompt, {"role": "assistant", "content": answer}])
            if len(ids) > max_len:
                raise ValueError(f"pair {i}: {len(ids)} tokens, more than {max_len}")
            sides.append((ids, learn))
        out.append((sides[0], sides[1]))
    return out


def _logps(model: GPT | Llama, examples: Sequence[tuple[list[int], list[bool]]],
           device: torch.device) -> torch.Tensor:
    x, y = sft_batch(examples, pad_id=0, device=device)
    logits, _ = model(x)
    return sequence_logprob(logits, y)  # (B,)


@torch.no_grad()
def preference_accuracy(model: GPT | Llama, pairs: Sequence[Encoded]) -> float:
    """The fraction of ``pairs`` for which ``model`` gives the chosen answer a higher total
    log-probability than the rejected one (ties count as misses). Mode left alone."""
    device = next(model.parameters()).device
    chosen = _logps(model, [c for c, _ in pairs], device)
    rejected = _logps(model, [r for _, r in pairs], device)
    return float((chosen > rejected).float().mean())


@torch.no_grad()
def preference_margin(model: GPT | Llama, pairs: Sequence[Encoded]) -> float:
    """The mean over ``pairs`` of ``log π(chosen) - log π(rejected)`` (nats): how strongly
    ``model`` prefers the chosen answers, beyond the yes/no of :func:`preference_accuracy`."""
    device = next(model.parameters()).device
    chosen = _logps(model, [c for c, _ in pairs], device)
    rejected = _logps(model, [r for _, r in pairs], device)
    return float((chosen - rejected).mean())


@dataclass
class DPOResult:
    losses: list[float]  # one per step
    reference: GPT | Llama  # the frozen copy the policy was measured against


def train_dpo(policy: GPT | Llama, pairs: Sequence[Encoded], *, steps: int, beta: float = 0.1,
              lr: float = 1e-3, batch_size: int = 16, seed: int = 0, warmup: int = 10,
              grad_clip: float = 1.0) -> DPOResult:
    """Train ``policy``'s trainable parameters for ``steps`` DPO steps on random batches of
    ``pairs`` against a frozen copy of itself; returns the losses and that reference."""
    if steps < 1 or batch_size < 1 or not pairs:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and pairs, got {steps}, "
                         f"{batch_size} and {len(pairs)} pairs")
    device = next(policy.parameters()).device
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    policy.train()
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(warmup, 1))
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(batch_size)]
        chosen, rejected = [c for c, _ in batch], [r for _, r in batch]
        with torch.no_grad():
            ref_chosen = _logps(reference, chosen, device)
            ref_rejected = _logps(reference, rejected, device)
        loss = dpo_loss(_logps(policy, chosen, device), _logps(policy, rejected, device),
                        ref_chosen, ref_rejected, beta=beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    policy.eval()
    return DPOResult(losses, reference)
