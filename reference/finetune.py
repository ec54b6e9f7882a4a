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

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .chat import SPECIALS, ChatTokenizer, Message, encode_chat, render, validate

# The chat format, re-exported: the fine-tuning chapter covers both (``reference.finetune`` is
# the component's library module).
from .jsonl import iter_jsonl

__all__ = ["SPECIALS", "ChatTokenizer", "check_dpo_inputs", "check_example", "check_logprob_inputs",
           "check_sft_batch", "dpo_loss", "encode_chat", "encode_conversations",
           "read_conversations", "render", "sequence_logprob", "sft_batch", "sft_targets",
           "to_messages"]

IGNORE = -1  # the target of a position that carries no loss (the model's ignore_index)


# ---------------------------------------------------------------- checks at the edges


def check_example(ids: Sequence[int], learn: Sequence[bool]) -> None:
    """Raise ValueError unless ``ids`` has at least 2 ids and ``learn`` one flag per id."""
    if len(ids) != len(learn) or len(ids) < 2:
        raise ValueError(f"an example needs at least 2 ids and one learn flag per id, got "
                         f"{len(ids)} ids and {len(learn)} flags")


def check_sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[bool]]], pad_id: int) -> None:
    """Raise ValueError for an empty batch or a negative ``pad_id``."""
    if not examples:
        raise ValueError("a batch needs at least one example, got none")
    if pad_id < 0:
        raise ValueError(f"pad_id must be a token id >= 0, got {pad_id}")


def check_logprob_inputs(logits: Tensor, targets: Tensor) -> None:
    """Raise ValueError unless ``logits`` is float (B, T, V) and ``targets`` integer (B, T)."""
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be float (B, T, V), got {tuple(logits.shape)} "
                         f"{logits.dtype}")
    if targets.shape != logits.shape[:2] or targets.is_floating_point():
        raise ValueError(f"targets must be integer ids of shape {tuple(logits.shape[:2])} "
                         f"(the logits' B, T), got {tuple(targets.shape)} {targets.dtype}")


def check_dpo_inputs(beta: float, *logps: Tensor) -> None:
    """Raise ValueError unless ``beta`` > 0 and the four log-probabilities are (B,) alike."""
    if not beta > 0 or beta == float("inf"):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    shapes = [tuple(t.shape) for t in logps]
    if len(shapes[0]) != 1 or len(set(shapes)) != 1:
        raise ValueError(f"the four sequence log-probabilities must all be (B,), got {shapes}")


# ---------------------------------------------------------------- SFT and DPO


def sft_targets(ids: Sequence[int], learn: Sequence[bool]) -> tuple[list[int], list[int]]:
    """The inputs and targets of one example: ``ids[:-1]`` and ``ids[1:]`` with ``-1`` where
    the next token is not one to learn (``learn[t + 1]`` is False)."""
    check_example(ids, learn)
    x = list(ids[:-1])
    y = [token if keep else IGNORE for token, keep in zip(ids[1:], learn[1:], strict=True)]
    return x, y


def sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[bool]]], *, pad_id: int,
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-padded inputs and targets (B, T) of ``examples`` ((ids, learn) pairs), T the
    longest example's length - 1; padding gets ``pad_id`` as input and ``-1`` as target."""
    check_sft_batch(examples, pad_id)
    pairs = [sft_targets(ids, learn) for ids, learn in examples]
    T = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for b, (xs, ys) in enumerate(pairs):
        x[b, : len(xs)] = torch.tensor(xs)
        y[b, : len(ys)] = torch.tensor(ys)
    return x.to(device), y.to(device)


def sequence_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """The sum over each row of ``log p(target)`` where ``targets`` (B, T) is not ``-1``:
    logits (B, T, V) -> (B,), in float32 (float64 stays float64). An ignored position adds
    exactly 0, even where its logits hold ``-inf``."""
    check_logprob_inputs(logits, targets)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(dtype), dim=-1)  # (B, T, V)
    keep = targets != IGNORE
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (B, T)
    return picked.masked_fill(~keep, 0.0).sum(dim=-1)  # not picked * keep: -inf * 0 is NaN


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
    check_dpo_inputs(beta, policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    ref_chosen, ref_rejected = reference_chosen.detach(), reference_rejected.detach()  # frozen
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
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
    for where, record in iter_jsonl(path):
        yield to_messages(record, where=where)


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
