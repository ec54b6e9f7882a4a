"""Fine-tuning: the chat format, supervised fine-tuning (SFT) and preference tuning (DPO).

A base model continues text. To make it answer, it is fine-tuned on conversations, each written
in one fixed *chat format*: a special token opens every turn and one closes it::

    <|system|>You are terse.<|end|><|user|>Reverse: cat<|end|><|assistant|>tac<|end|>

At inference the prompt is the conversation so far followed by ``<|assistant|>``; the model writes
the answer and then ``<|end|>``, where generation stops. The format must be *the same* in
training and at inference, to the token: a model trained on ``<|assistant|>\\n`` and prompted
with ``<|assistant|>`` sees a prefix it never saw in training.

The four special tokens get new ids after the base tokenizer's last one (``base.vocab_size +
0..3``), so every existing id keeps its meaning. Each is always exactly one id: text is cut at
the special strings *before* the base tokenizer sees it, so no BPE merge or character split
crosses one (``"<|end|>"`` as seven characters would teach nothing about stopping).

**SFT** trains with the ordinary next-token loss, but only where the next token is the
assistant's: the content of each assistant turn and its closing ``<|end|>``. Prompt tokens
(system and user turns, role tokens) and padding carry no loss: their targets are ``-1``, the
model's ``ignore_index``. Examples of different lengths share a batch by right padding: with a
causal model a real token never attends to the padding after it.

**DPO** (Rafailov et al. 2023, eq. 7) tunes a policy π to prefer a chosen response ``y_w`` to a
rejected ``y_l``, relative to a frozen reference model π_ref (the model before tuning)::

    loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

where ``log π(y|x)`` is the *sum* of the response tokens' log-probabilities
(:func:`sequence_logprob`).

Shapes: B batch, T sequence length, V vocabulary size. The library version is
``reference/chat.py`` and ``reference/finetune.py`` (with the JSONL readers the trainer uses).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Given code from the library: the chat tokenizer's frame (the special ids, decode, to_dict),
# the message check (roles, no special string inside a content) and the checks at the edges.
# SPECIALS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), END = "<|end|>".
from reference import chat
from reference.chat import END, SPECIALS, Message, validate
from reference.finetune import (
    check_dpo_inputs,
    check_example,
    check_logprob_inputs,
    check_sft_batch,
)

IGNORE = -1  # the target of a position without loss (``F.cross_entropy(ignore_index=-1)``)


class ChatTokenizer(chat.ChatTokenizer):
    """A base tokenizer plus the four special tokens at ids ``base.vocab_size + i``.

    Given (from the library): ``self.base``, ``self.special_ids`` (``{"<|system|>":
    base.vocab_size, ..., "<|end|>": base.vocab_size + 3}``), ``vocab_size``, ``eot_id`` (the
    id of ``<|end|>``), ``decode`` and ``to_dict``. You write :meth:`encode`.
    """

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``: each special string is its one id, and every piece of text
        between them encodes exactly as ``self.base.encode`` encodes that piece alone.

        Worked example (the base knows the characters "<>abct|", ids 0..6 in that order; the
        specials are 7..10)::

            >>> from reference.tokenizers import CharTokenizer
            >>> tok = ChatTokenizer(CharTokenizer("abct<|>"))
            >>> tok.encode("cat<|end|>")       # c a t, then <|end|> as one id
            [4, 2, 5, 10]
            >>> tok.encode("<|a|>")            # not a special string: plain characters
            [0, 6, 2, 6, 1]
            >>> tok.decode(tok.encode("a<|user|>b")) == "a<|user|>b"
            True

        Hints: ``re.finditer`` with the special strings escaped (``re.escape``) and joined by
        ``|``; encode the text before each match with the base, then append the match's id;
        do not forget the text after the last match.
        """
        # BEGIN SOLUTION
        pattern = re.compile("|".join(re.escape(s) for s in SPECIALS))
        ids: list[int] = []
        start = 0
        for match in pattern.finditer(text):
            ids += self.base.encode(text[start : match.start()])  # ordinary text ("" -> [])
            ids.append(self.special_ids[match.group()])  # one id, never split
            start = match.end()
        return ids + self.base.encode(text[start:])  # the text after the last special
        # END SOLUTION


def render(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """A conversation as text in the chat format.

    Contract: each message ``{"role": r, "content": c}`` becomes ``<|r|>c<|end|>``, in order;
    with ``add_generation_prompt`` the text ends with ``<|assistant|>``: the prompt at
    inference, where the model writes the assistant's turn. Bad messages (an unknown role, a
    content holding a special string) raise ValueError (given: ``validate``).

    Worked example::

        >>> render([{"role": "system", "content": "Be terse."},
        ...         {"role": "user", "content": "Reverse: cat"}], add_generation_prompt=True)
        '<|system|>Be terse.<|end|><|user|>Reverse: cat<|end|><|assistant|>'

    Hint: nothing between the turns (no newline): the template at inference must be, token
    for token, the one :func:`encode_chat` writes in training.
    """
    validate(messages)
    # BEGIN SOLUTION
    text = "".join(f"<|{m['role']}|>{m['content']}{END}" for m in messages)
    if add_generation_prompt:
        text += "<|assistant|>"  # the model's turn
    return text
    # END SOLUTION


def encode_chat(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> tuple[list[int],
                                                                                 list[bool]]:
    """The ids of a whole conversation and, per id, whether the model is trained to predict it.

    Contract: ``ids == tokenizer.encode(render(messages))``; ``learn[i]`` is True exactly for
    the content and the closing ``<|end|>`` of every assistant turn (the model learns to answer
    *and to stop*), False for the role tokens and the system and user turns (the prompt).

    Worked example (base "abct", ids 0..3; <|system|> 4, <|user|> 5, <|assistant|> 6,
    <|end|> 7)::

        >>> from reference.tokenizers import CharTokenizer
        >>> ids, learn = encode_chat(ChatTokenizer(CharTokenizer("abct")),
        ...                          [{"role": "user", "content": "cat"},
        ...                           {"role": "assistant", "content": "tac"}])
        >>> ids     # <|user|> c a t <|end|> <|assistant|> t a c <|end|>
        [5, 2, 0, 3, 7, 6, 3, 0, 2, 7]
        >>> learn   # only the assistant's "tac" and its <|end|>
        [False, False, False, False, False, False, True, True, True, True]

    Hints: encode turn by turn, so you know where each turn's ids are: the role token's id is
    ``tokenizer.special_ids[f"<|{role}|>"]``, then the content's ids, then
    ``tokenizer.eot_id``.
    """
    validate(messages)
    # BEGIN SOLUTION
    ids: list[int] = []
    learn: list[bool] = []
    for m in messages:
        ids.append(tokenizer.special_ids[f"<|{m['role']}|>"])  # the role token: prompt
        learn.append(False)
        body = [*tokenizer.encode(m["content"]), tokenizer.eot_id]  # content + <|end|>
        ids += body
        learn += [m["role"] == "assistant"] * len(body)
    return ids, learn
    # END SOLUTION


def sft_targets(ids: Sequence[int], learn: Sequence[bool]) -> tuple[list[int], list[int]]:
    """The inputs and targets of one training example.

    Contract: ``x = ids[:-1]``; ``y[t] = ids[t + 1]`` (the next token) where ``learn[t + 1]``,
    else ``-1`` (no loss). Raises ValueError for fewer than 2 ids or a learn flag count that
    differs (given: ``check_example``).

    Worked example::

        >>> sft_targets([5, 2, 7, 6, 3, 7], [False, False, False, False, True, True])
        ([5, 2, 7, 6, 3], [-1, -1, -1, 3, 7])

    (Position 3 reads ``<|assistant|>`` and must predict the answer's first token, 3.)

    Hint: the flag that matters for target ``t`` is the one of the token it predicts,
    ``learn[t + 1]``: ``zip(ids[1:], learn[1:])``.
    """
    check_example(ids, learn)
    # BEGIN SOLUTION
    x = list(ids[:-1])
    y = [token if keep else IGNORE for token, keep in zip(ids[1:], learn[1:], strict=True)]
    return x, y
    # END SOLUTION


def sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[bool]]], *, pad_id: int,
              device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-padded inputs and targets of a batch of ``(ids, learn)`` examples.

    Contract: returns ``x``, ``y``, both int64 (B, T) on ``device``, T the longest example's
    length - 1. Row b holds :func:`sft_targets` of example b from position 0, then ``pad_id``
    in ``x`` and ``-1`` in ``y``. Because attention is causal, no real token sees the padding
    after it, so the logits of the real tokens are those of the example alone.

    Worked example::

        >>> x, y = sft_batch([([4, 1, 7], [False, True, True]), ([4, 1, 2, 3], [False] * 4)],
        ...                  pad_id=0)
        >>> x.tolist(), y.tolist()
        ([[4, 1, 0], [4, 1, 2]], [[1, 7, -1], [-1, -1, -1]])

    Hint: ``torch.full((B, T), pad_id)`` and ``torch.full((B, T), -1)``, then copy each row's
    values into its start. Padding on the left would move every real token to another position.
    """
    check_sft_batch(examples, pad_id)
    # BEGIN SOLUTION
    pairs = [sft_targets(ids, learn) for ids, learn in examples]
    T = max(len(xs) for xs, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (B, T)
    y = torch.full((len(pairs), T), IGNORE, dtype=torch.long)  # (B, T)
    for b, (xs, ys) in enumerate(pairs):
        x[b, : len(xs)] = torch.tensor(xs)
        y[b, : len(ys)] = torch.tensor(ys)
    return x.to(device), y.to(device)
    # END SOLUTION


def sequence_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """Each row's log-probability of its targets: ``sum_t log softmax(logits[b, t])[y[b, t]]``
    over the positions where ``targets[b, t] != -1``.

    Contract: ``logits`` (B, T, V) float, ``targets`` (B, T) integer ids or -1; returns (B,),
    in float32 (float64 stays float64; bfloat16 and float16 are computed in float32). A row
    with no target gives 0, and an ignored position adds exactly 0 even where its logits are
    ``-inf``. A *sum*, not a mean: log π(y|x) of a whole response.

    Worked example (V = 2, one row; position 1 is ignored)::

        >>> logits = torch.tensor([[[0.0, 0.0], [5.0, -5.0], [1.0986123, 0.0]]])  # log 3
        >>> sequence_logprob(logits, torch.tensor([[1, -1, 0]]))   # log(1/2) + log(3/4)
        tensor([-0.9808])

    Hints: ``F.log_softmax`` over the last dim, then ``gather`` the targets' entries (replace
    the -1s by a valid id first, e.g. ``clamp(min=0)``); zero the ignored positions with
    ``masked_fill`` (not by multiplying: ``-inf * 0`` is NaN), then sum over T.
    """
    check_logprob_inputs(logits, targets)
    # BEGIN SOLUTION
    dtype = torch.promote_types(logits.dtype, torch.float32)  # float32 at least
    logp = F.log_softmax(logits.to(dtype), dim=-1)  # (B, T, V)
    keep = targets != IGNORE  # (B, T)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked.masked_fill(~keep, 0.0).sum(dim=-1)  # (B,)
    # END SOLUTION


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
             reference_rejected: Tensor, beta: float = 0.1) -> Tensor:
    """The mean DPO loss of B preference pairs.

    Contract: the four arguments are (B,) sequence log-probabilities (:func:`sequence_logprob`)
    of the chosen and rejected responses under the policy and under the frozen reference; the
    loss is the mean over the batch of ``-log σ(β m)`` with the margin ``m = (policy_chosen -
    reference_chosen) - (policy_rejected - reference_rejected)``. The reference is frozen: no
    gradient reaches its log-probabilities, even if they require one. Finite for any finite
    margin (``-log σ(z)`` of a very negative ``z`` is about ``-z``, not ``inf``). ``beta`` > 0;
    bad inputs raise ValueError (given: ``check_dpo_inputs``).

    Worked example (β = 1: the policy gained 1 nat over the reference on the chosen response
    and lost 1 on the rejected, so m = 2)::

        >>> dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]),
        ...          torch.tensor([-2.0]), torch.tensor([-2.0]), beta=1.0)   # log(1 + e^-2)
        tensor(0.1269)

    At the start of training the policy is the reference, m = 0 and the loss is log 2.

    Hints: ``F.logsigmoid`` is the stable ``log σ``; ``.detach()`` the reference terms.
    """
    check_dpo_inputs(beta, policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    # BEGIN SOLUTION
    chosen = policy_chosen - reference_chosen.detach()  # (B,) log π/π_ref of y_w
    rejected = policy_rejected - reference_rejected.detach()  # (B,) log π/π_ref of y_l
    return -F.logsigmoid(beta * (chosen - rejected)).mean()
    # END SOLUTION
