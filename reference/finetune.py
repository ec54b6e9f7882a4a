"""Supervised fine-tuning and preference tuning: the losses and the data they read.

**Supervised fine-tuning (SFT)** trains on conversations rendered in the chat format
(``reference/chat.py``) with the loss on the assistant's tokens only: the model learns to answer,
not to write prompts. An example's targets are its ids shifted left by one, with ``-1`` (ignored
by the loss) wherever the next token is not one to learn.

Examples of different lengths share a batch by *right padding*, one example per row: row ``b``
holds its example then padding, the padding's targets are ``-1``, and because attention is causal
a real token never sees the padding after it, so no attention mask is needed and no example can
attend into another (each is alone in its row). (Packing several examples in a row would need
block-diagonal masks; padding wastes a little compute on short examples instead.)

**Direct preference optimisation (DPO**, Rafailov et al. 2023) trains a policy to prefer the
chosen response ``y_w`` over the rejected ``y_l`` of a prompt ``x``, relative to a frozen
reference model, with no reward model::

    loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where ``log π(y|x)`` is the sum of the response tokens' log-probabilities.

Example::

    >>> x, y = sft_batch([([5, 2, 0, 7, 6, 1, 7], [False] * 5 + [True] * 2)], pad_id=0)
    >>> y.tolist()   # the loss reads the answer's tokens and its <|end|> only
    [[-1, -1, -1, -1, 1, 7]]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .chat import ChatTokenizer, Message, encode_chat, validate

__all__ = ["dpo_loss", "read_conversations", "sequence_logprob", "sft_batch", "sft_targets",
           "to_messages"]


def sft_targets(ids: Sequence[int], learn: Sequence[bool]) -> tuple[list[int], list[int]]:
    """The inputs and targets of one example: ``ids[:-1]`` and ``ids[1:]`` with ``-1`` where
    the next token is not one to learn (``learn[t + 1]`` is False)."""
    if len(ids) != len(learn) or len(ids) < 2:
        raise ValueError(f"an example needs at least 2 ids and one learn flag per id, got "
                         f"{len(ids)} ids and {len(learn)} flags")
    x = list(ids[:-1])
    y = [token if keep else -1 for token, keep in zip(ids[1:], learn[1:], strict=True)]
    return x, y


def sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[bool]]], *, pad_id: int,
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-padded inputs and targets (B, T) of ``examples`` ((ids, learn) pairs), T the
    longest example's length - 1; padding gets ``pad_id`` as input and ``-1`` as target."""
    pairs = [sft_targets(ids, learn) for ids, learn in examples]
    T = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), T), -1, dtype=torch.long)
    for b, (xs, ys) in enumerate(pairs):
        x[b, : len(xs)] = torch.tensor(xs)
        y[b, : len(ys)] = torch.tensor(ys)
    return x.to(device), y.to(device)


def sequence_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """The sum over each row of ``log p(target)`` where ``targets`` (B, T) is not ``-1``:
    logits (B, T, V) -> (B,), computed in float32 at least."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    keep = targets != -1
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (B, T)
    return (picked * keep).sum(dim=-1)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
             reference_rejected: Tensor, beta: float = 0.1) -> Tensor:
    """The mean DPO loss of a batch of preference pairs (all arguments (B,) sequence
    log-probabilities; see the module docstring).

    Example (β = 1: the policy gained 1 nat on the chosen response, lost 1 on the rejected)::

        >>> loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]),
        ...                 torch.tensor([-2.0]), torch.tensor([-2.0]), beta=1.0)
        >>> round(float(loss), 4)  # -log(sigmoid(2))
        0.1269
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


# ---------------------------------------------------------------- data


def to_messages(record: Any, *, where: str) -> list[Message]:
    """One JSONL record as a conversation: ``{"messages": [...]}`` as it is, or Alpaca's
    ``{"instruction", "input" (optional), "output", "system" (optional)}``."""
    if isinstance(record, dict) and "messages" in record:
        messages = list(record["messages"])
    elif isinstance(record, dict) and "instruction" in record and "output" in record:
        prompt = str(record["instruction"])
        if record.get("input"):
            prompt += "\n\n" + str(record["input"])
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": str(record["output"])}]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": str(record["system"])})
    else:
        raise ValueError(f"{where}: expected {{'messages': [...]}} or Alpaca's "
                         f"{{'instruction', 'input', 'output'}}, got {record!r:.80}")
    validate(messages, where=where)
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's (what is learned)")
    return messages


def read_conversations(path: str | os.PathLike[str]) -> Iterator[list[Message]]:
    """The conversations of a JSONL file, one per non-blank line (see :func:`to_messages`);
    a bad line is a ValueError naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found")
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({e})") from None
            yield to_messages(record, where=f"{p}:{lineno}")


def encode_conversations(tokenizer: ChatTokenizer, conversations: Sequence[Sequence[Message]],
                         max_len: int) -> list[tuple[list[int], list[bool]]]:
    """Each conversation's (ids, learn flags), cut to ``max_len`` ids (the model's block_size
    plus one); a conversation whose answer starts past the cut is a ValueError."""
    out = []
    for i, messages in enumerate(conversations):
        ids, learn = encode_chat(tokenizer, messages)
        if not any(learn[1:max_len]):
            raise ValueError(f"conversation {i}: its answer starts after token {max_len - 1} "
                             f"(the model's block_size): shorten the prompt")
        out.append((ids[:max_len], learn[:max_len]))
    return out
