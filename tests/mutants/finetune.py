"""Classic learner bugs in fine-tuning; specs/test_finetune.py must catch every one.

Each mutant replaces functions of ``solutions.finetune`` (patched everywhere they are
referenced; ``ChatTokenizer.encode`` on the class). Named for the bug; grouped by what they
break, each group commented with the spec tests expected to catch it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.chat import END, Message, validate
from reference.finetune import check_example, check_sft_batch
from solutions import finetune as sol

# --- the chat template: HF's chat template and assistant mask, the hand-worked example, the
# training = inference property


def _encode_chat(learn_of: Callable[[str, int], list[bool]] = lambda role, n: [False] + [
        role == "assistant"] * (n - 1), end: bool = True) -> Any:
    """encode_chat; ``learn_of(role, n)`` gives the flags of a turn's n ids (role token first)."""

    def encode_chat(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
        validate(messages)
        ids: list[int] = []
        learn: list[bool] = []
        for m in messages:
            turn = [tokenizer.special_ids[f"<|{m['role']}|>"], *tokenizer.encode(m["content"])]
            if end:
                turn.append(tokenizer.eot_id)
            ids += turn
            learn += learn_of(m["role"], len(turn))
        return ids, learn

    return encode_chat


def _render(role_sep: str = "", end: str = END, generation_prompt: str = "<|assistant|>") -> Any:
    def render(messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        validate(messages)
        text = "".join(f"<|{m['role']}|>{role_sep}{m['content']}{end}" for m in messages)
        return text + generation_prompt if add_generation_prompt else text

    return render


def _encode_with_the_base(self: Any, text: str) -> list[int]:
    """The special strings go through the base tokenizer: "<|end|>" becomes 7 characters."""
    return list(self.base.encode(text)) if text else []


def _encode_first_special_only(self: Any, text: str) -> list[int]:
    """str.partition at the first special string found: later ones are split by the base."""
    for special in sorted(self.special_ids, key=text.find):
        if special in text:
            head, _, tail = text.partition(special)
            return [*(self.base.encode(head) if head else []), self.special_ids[special],
                    *(self.base.encode(tail) if tail else [])]
    return list(self.base.encode(text)) if text else []


# --- SFT targets and batches: the hand-worked examples, the shift property, the loss over the
# assistant's tokens, the padding test


def _sft_targets(shift: bool = True, flag_of_input: bool = False) -> Any:
    def sft_targets(ids: Sequence[int], learn: Sequence[bool]) -> tuple[list[int], list[int]]:
        check_example(ids, learn)
        nxt = ids[1:] if shift else ids[:-1]
        flags = learn[:-1] if flag_of_input else learn[1:]
        return list(ids[:-1]), [t if k else -1 for t, k in zip(nxt, flags, strict=True)]

    return sft_targets


def _sft_batch(left: bool = False, pad_targets: bool = False) -> Any:
    """sft_batch padding on the left, or giving the padding ``pad_id`` as its target."""

    def sft_batch(examples: Sequence[tuple[Sequence[int], Sequence[bool]]], *, pad_id: int,
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        check_sft_batch(examples, pad_id)
        pairs = [sol.sft_targets(ids, learn) for ids, learn in examples]
        T = max(len(xs) for xs, _ in pairs)
        x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
        y = torch.full((len(pairs), T), pad_id if pad_targets else -1, dtype=torch.long)
        for b, (xs, ys) in enumerate(pairs):
            cols = slice(T - len(xs), T) if left else slice(0, len(xs))
            x[b, cols] = torch.tensor(xs, dtype=torch.long)
            y[b, cols] = torch.tensor(ys, dtype=torch.long)
        return x.to(device), y.to(device)

    return sft_batch


# --- sequence_logprob: the hand-worked example, the float64 oracle, the ignored positions


def _logprob(reduce: str = "sum", mask: str = "fill", dtype: torch.dtype | None = None) -> Any:
    def sequence_logprob(logits: Tensor, targets: Tensor) -> Tensor:
        sol.check_logprob_inputs(logits, targets)
        want = dtype or torch.promote_types(logits.dtype, torch.float32)
        logp = F.log_softmax(logits.to(want), dim=-1)
        keep = targets != -1
        picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        if mask == "fill":
            picked = picked.masked_fill(~keep, 0.0)
        elif mask == "multiply":
            picked = picked * keep
        return picked.mean(-1) if reduce == "mean" else picked.sum(-1)

    return sequence_logprob


def _logprob_softmax_over_time(logits: Tensor, targets: Tensor) -> Tensor:
    """log_softmax over the positions (dim 1) instead of the vocabulary."""
    logp = F.log_softmax(logits.float(), dim=1)
    picked = logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return picked.masked_fill(targets == -1, 0.0).sum(-1)


# --- DPO: the hand-worked example, the paper's formula, extreme margins, the gradient test


def _dpo(margin: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None,
         scale: Callable[[float], float] = lambda beta: beta, detach: bool = True,
         naive: bool = False, reduce: str = "mean", sign: float = 1.0) -> Any:
    def dpo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float = 0.1) -> Tensor:
        sol.check_dpo_inputs(beta, pc, pr, rc, rr)
        if detach:
            rc, rr = rc.detach(), rr.detach()
        m = margin(pc, pr, rc, rr) if margin else (pc - rc) - (pr - rr)
        z = sign * scale(beta) * m
        per_pair = -torch.log(torch.sigmoid(z)) if naive else -F.logsigmoid(z)
        return per_pair.sum() if reduce == "sum" else per_pair.mean()

    return dpo_loss


MUTANTS: dict[str, dict[str, Any]] = {
    # the loss reads the prompt: HF's assistant mask, the loss over the assistant's tokens,
    # training = inference
    "loss_on_prompt_tokens": {"encode_chat": _encode_chat(lambda role, n: [True] * n)},
    "loss_on_the_assistant_role_token": {
        "encode_chat": _encode_chat(lambda role, n: [role == "assistant"] * n)},
    "end_token_not_learned": {
        "encode_chat": _encode_chat(lambda role, n: [False] + [role == "assistant"] * (n - 2)
                                    + [False])},
    "only_the_last_turn_learned": {
        "encode_chat": lambda tok, msgs: _last_turn_only(tok, msgs)},
    "no_end_token_in_training": {"encode_chat": _encode_chat(end=False)},
    # a template that differs between training and inference
    "inference_prompt_without_the_assistant_token": {"render": _render(generation_prompt="")},
    "render_with_a_newline_after_the_role": {"render": _render(role_sep="\n")},
    "render_without_end_tokens": {"render": _render(end="")},
    "render_with_a_newline_between_turns": {"render": _render(end=END + "\n")},
    # special strings split by the base tokenizer: one id per special, HF's ids
    "specials_encoded_by_the_base_tokenizer": {"ChatTokenizer.encode": _encode_with_the_base},
    "only_the_first_special_cut_out": {"ChatTokenizer.encode": _encode_first_special_only},
    # sft targets
    "targets_not_shifted": {"sft_targets": _sft_targets(shift=False)},
    "learn_flag_of_the_input_not_the_target": {"sft_targets": _sft_targets(flag_of_input=True)},
    # batches
    "padding_on_the_left_without_positions": {"sft_batch": _sft_batch(left=True)},
    "padding_targets_are_the_pad_id": {"sft_batch": _sft_batch(pad_targets=True)},
    # sequence log-probabilities
    "logprob_mean_instead_of_sum": {"sequence_logprob": _logprob(reduce="mean")},
    "logprob_includes_ignored_positions": {"sequence_logprob": _logprob(mask="none")},
    "logprob_masks_by_multiplying": {"sequence_logprob": _logprob(mask="multiply")},
    "logprob_float64_cast_down_to_float32": {"sequence_logprob": _logprob(dtype=torch.float32)},
    "logprob_softmax_over_positions": {"sequence_logprob": _logprob_softmax_over_time},
    # DPO
    "dpo_sign_flipped": {"dpo_loss": _dpo(sign=-1.0)},
    "dpo_missing_beta": {"dpo_loss": _dpo(scale=lambda beta: 1.0)},
    "dpo_reference_terms_swapped": {
        "dpo_loss": _dpo(margin=lambda pc, pr, rc, rr: (pc - rr) - (pr - rc))},
    "dpo_chosen_and_rejected_swapped": {
        "dpo_loss": _dpo(margin=lambda pc, pr, rc, rr: (pr - rr) - (pc - rc))},
    "dpo_reference_not_frozen": {"dpo_loss": _dpo(detach=False)},
    "dpo_naive_log_of_sigmoid": {"dpo_loss": _dpo(naive=True)},
    "dpo_sum_over_the_batch": {"dpo_loss": _dpo(reduce="sum")},
}

# Hints that teach: for each classic bug, a regex of the cause the first spec test that catches
# it must name in its failure message (tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "loss_on_prompt_tokens": r"loss on the prompt",
    "loss_on_the_assistant_role_token": r"loss on the assistant role token",
    "end_token_not_learned": r"<\|end\|> not learned",
    "only_the_last_turn_learned": r"only the last assistant turn learned",
    "no_end_token_in_training": r"no <\|end\|> after each turn",
    "inference_prompt_without_the_assistant_token": r"must end with <\|assistant\|>",
    "render_with_a_newline_after_the_role": r"newline after the role",
    "render_without_end_tokens": r"no <\|end\|> after each turn",
    "render_with_a_newline_between_turns": r"newline between turns",
    "specials_encoded_by_the_base_tokenizer": r"special string went to the base tokenizer",
    "only_the_first_special_cut_out": r"only the first special string cut out",
    "targets_not_shifted": r"targets not shifted",
    "learn_flag_of_the_input_not_the_target": r"learn flag of the input",
    "padding_on_the_left_without_positions": r"padding on the left",
    "padding_targets_are_the_pad_id": r"padding targets are the pad id",
    "logprob_mean_instead_of_sum": r"mean instead of the sum",
    "logprob_includes_ignored_positions": r"ignored positions included",
    "logprob_masks_by_multiplying": r"masking by multiplying",
    "logprob_float64_cast_down_to_float32": r"cast down to float32",
    "logprob_softmax_over_positions": r"over the positions \(dim 1\)",
    "dpo_sign_flipped": r"sign flipped",
    "dpo_missing_beta": r"β missing",
    "dpo_reference_terms_swapped": r"reference terms swapped",
    "dpo_chosen_and_rejected_swapped": r"chosen and rejected swapped",
    "dpo_reference_not_frozen": r"reference log-probabilities are not detached",
    "dpo_naive_log_of_sigmoid": r"logsigmoid",
    "dpo_sum_over_the_batch": r"sum over the batch",
}


def _last_turn_only(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """Only the final assistant turn is learned (earlier answers of a dialogue are not)."""
    ids, learn = _encode_chat()(tokenizer, messages)
    last = max((i for i, t in enumerate(ids) if t == tokenizer.special_ids["<|assistant|>"]),
               default=len(ids))
    return ids, [flag and i > last for i, flag in enumerate(learn)]


# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
_SAME_LENGTH = ("check_example has already made ids and learn the same length, so zip's strict "
                "flag never sees unequal lengths: strict=True, False or none behave alike")
_FULL_INFERS_INT64 = ("torch.full infers int64 from an int fill value (pad_id, -1): "
                      "dtype=torch.long, dtype=None or none make the same tensor")
EQUIVALENT: dict[tuple[str, str], str] = {
    ("xǁChatTokenizerǁencode", "start = None"):
        "the first slice text[start : match.start()] with start None is text[:match.start()], "
        "the same as from 0 (and text[None:] is the whole text when there is no special)",
    ("sft_targets", "y = [token if keep else IGNORE for token, keep in zip(ids[1:], learn[1:], "
                    "strict=None)]"): _SAME_LENGTH,
    ("sft_targets", "y = [token if keep else IGNORE for token, keep in zip(ids[1:], learn[1:], )]"):
        _SAME_LENGTH,
    ("sft_targets", "y = [token if keep else IGNORE for token, keep in zip(ids[1:], learn[1:], "
                    "strict=False)]"): _SAME_LENGTH,
    ("sft_batch", "x = torch.full((len(pairs), T), pad_id, dtype=None)"): _FULL_INFERS_INT64,
    ("sft_batch", "x = torch.full((len(pairs), T), pad_id, )"): _FULL_INFERS_INT64,
    ("sft_batch", "y = torch.full((len(pairs), T), IGNORE, dtype=None)"): _FULL_INFERS_INT64,
    ("sft_batch", "y = torch.full((len(pairs), T), IGNORE, )"): _FULL_INFERS_INT64,
    ("sequence_logprob", "return picked.masked_fill(~keep, 0.0).sum(dim=+1)"):
        "picked is (B, T): dim=+1 and dim=-1 are the same axis, the positions",
}
