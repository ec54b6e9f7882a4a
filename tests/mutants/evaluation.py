"""Classic learner bugs in evaluation; specs/test_evaluation.py must catch every one.

Each mutant replaces functions (or a property of ``Perplexity``) of ``solutions.evaluation``,
patched in place so the other solution functions call the broken one. Named for the bug.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from solutions import evaluation as sol

sol_windows = sol.windows  # the originals, kept before any mutant replaces them
sol_token_nlls = sol.token_nlls
sol_loglikelihood = sol.loglikelihood


# --- the sliding window ---------------------------------------------------------------------
# caught by test_windows_hand_worked, test_token_nlls_*, test_perplexity_matches_hugging_face_*


def _token_nlls(
    target_offset: int = 1, score_from_window_start: bool = False, drop_window_start: bool = False,
    stride_is_context: bool = False,
) -> Callable[..., tuple[Tensor, Tensor]]:
    def token_nlls(model: Any, ids: Sequence[int], *, context: int | None = None,
                   stride: int | None = None, batch_size: int = 8) -> tuple[Tensor, Tensor]:
        context, stride = sol.resolve_window(model.config.block_size, context, stride)
        if stride_is_context:
            stride = context
        tokens = torch.tensor(list(ids), dtype=torch.long)
        nlls, positions = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.long)]
        for begin, end, first in sol.windows(len(tokens), context, stride):
            x = tokens[begin:end]
            y = tokens[begin + target_offset:end + target_offset]
            logits, _ = model(x[None, :len(y)])
            nll = F.cross_entropy(logits[0].double(), y, reduction="none")
            start = 0 if score_from_window_start else first - begin
            if drop_window_start and start == 0 and begin > 0:
                start = 1  # HF's doc loop with stride = max_length: a window's first token is lost
            nlls.append(nll[start:])
            positions.append(torch.arange(start, end - begin))
        return torch.cat(nlls), torch.cat(positions)

    return token_nlls


def _perplexity_mean_of_window_means(model: Any, ids: Sequence[int], *, text: str | None = None,
                                     context: int | None = None, stride: int | None = None,
                                     batch_size: int = 8) -> Any:
    context, stride = sol.resolve_window(model.config.block_size, context, stride)
    nll, pos = sol.token_nlls(model, ids, context=context, stride=stride)
    # split at the starts of windows: a position that does not grow starts a new window
    starts = [0] + [i for i in range(1, len(pos)) if pos[i] <= pos[i - 1]] + [len(pos)]
    means = [float(nll[a:b].mean()) for a, b in itertools.pairwise(starts) if b > a]
    total = (sum(means) / len(means)) * len(nll) if means else 0.0
    return sol.Perplexity(total, len(nll), len(text.encode()) if text else 0,
                          len(text.split()) if text else 0, context, stride)


def _windows_end_at_n(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Forgets that the last token predicts nothing: the windows run to ``n_tokens``."""
    out = []
    begin, prev_end = 0, 0
    while prev_end < n_tokens:
        end = min(begin + context, n_tokens)
        out.append((begin, end, prev_end))
        begin, prev_end = begin + stride, end
    return out


def _windows_begin_at_prev_end(n_tokens: int, context: int, stride: int
                               ) -> list[tuple[int, int, int]]:
    """Restarts each window where the last one ended: disjoint whatever the stride."""
    return sol_windows(n_tokens, context, context)


# --- figures: log base and normalisation ------------------------------------------------------
# caught by test_perplexity_figures_hand_worked, test_uniform_model_perplexity_*


def _ppl_base_2(self: Any) -> float:
    return 2 ** (self.nll / self.tokens) if self.tokens else math.nan


def _bits_per_byte_in_nats(self: Any) -> float:
    return self.nll / self.bytes if self.bytes else math.nan


def _bits_per_byte_times_ln2(self: Any) -> float:
    return self.nll * math.log(2) / self.bytes if self.bytes else math.nan


def _word_ppl_by_tokens(self: Any) -> float:
    return math.exp(self.nll / self.tokens) if self.tokens else math.nan


def _perplexity_chars_not_bytes(model: Any, ids: Sequence[int], *, text: str | None = None,
                                context: int | None = None, stride: int | None = None,
                                batch_size: int = 8) -> Any:
    context, stride = sol.resolve_window(model.config.block_size, context, stride)
    nll, _ = sol.token_nlls(model, ids, context=context, stride=stride)
    return sol.Perplexity(float(nll.sum()), len(nll), len(text) if text else 0,
                          len(text.split()) if text else 0, context, stride)


# --- loglikelihood and multiple choice -------------------------------------------------------
# caught by test_loglikelihood_*, test_multiple_choice_*, test_length_normalisation_*


def _loglikelihood(read_all: bool = False, keep: Callable[[int], int] = lambda bs: bs + 1
                   ) -> Callable[..., tuple[float, bool]]:
    def loglikelihood(model: Any, context: Sequence[int], continuation: Sequence[int]
                      ) -> tuple[float, bool]:
        whole = torch.tensor([*context, *continuation][-keep(model.config.block_size):])
        n = len(continuation)
        logits, _ = model(whole[None] if read_all else whole[None, :-1])
        logp = logits[0, -n:].double().log_softmax(-1)
        target = whole[-n:]
        return float(logp.gather(-1, target[:, None]).sum()), bool(
            (logp.argmax(-1) == target).all())

    return loglikelihood


def _score_by_tokens(model: Any, tokenizer: Any, item: Any, *, delimiter: str = " ") -> Any:
    context = tokenizer.encode(item.context)
    conts = [tokenizer.encode(delimiter + c) for c in item.choices]
    lls = [sol.loglikelihood(model, context, c)[0] for c in conts]
    pred = max(range(len(lls)), key=lambda i: lls[i])
    pred_norm = max(range(len(lls)), key=lambda i: lls[i] / len(conts[i]))
    return sol.ChoiceScores(lls, pred, pred_norm)


def _choose_norm_by_min(loglikelihoods: Sequence[float], choices: Sequence[str]
                        ) -> tuple[int, int]:
    pred = max(range(len(choices)), key=lambda i: loglikelihoods[i])
    pred_norm = min(range(len(choices)), key=lambda i: loglikelihoods[i] / len(choices[i]))
    return pred, pred_norm


# --- calibration -------------------------------------------------------------------------------
# caught by test_calibration_hand_worked_bins, test_*_ece*


def _calibration(equal_weights: bool = False, round_bins: bool = False,
                 signed: bool = False) -> Callable[..., Any]:
    def calibration(confidence: Tensor, correct: Tensor, bins: int = 15) -> Any:
        confidence, correct = confidence.reshape(-1).double(), correct.reshape(-1).double()
        scaled = confidence * bins
        index = (scaled.round() if round_bins else scaled.floor()).long().clamp(max=bins - 1)
        counts, confs, accs, gaps = [], [], [], []
        for b in range(bins):
            in_bin = index == b
            n = int(in_bin.sum())
            conf = float(confidence[in_bin].mean()) if n else math.nan
            acc = float(correct[in_bin].mean()) if n else math.nan
            if n:
                gap = acc - conf if signed else abs(acc - conf)
                gaps.append((n, gap))
            counts.append(n)
            confs.append(conf)
            accs.append(acc)
        if equal_weights:
            ece = sum(g for _, g in gaps) / len(gaps)
        else:
            ece = sum(n / len(confidence) * g for n, g in gaps)
        return sol.Calibration(abs(ece), counts, confs, accs, [i / bins for i in range(bins + 1)])

    return calibration


MUTANTS: dict[str, dict[str, Any]] = {
    # the ones issue 14 names first
    "average_per_window": {"perplexity": _perplexity_mean_of_window_means},
    "overlap_counted_twice": {"token_nlls": _token_nlls(score_from_window_start=True)},
    "ppl_log_base_2": {"Perplexity.ppl": property(_ppl_base_2)},
    "bits_per_byte_in_nats": {"Perplexity.bits_per_byte": property(_bits_per_byte_in_nats)},
    "target_shift_off_by_one": {"token_nlls": _token_nlls(target_offset=0)},
    "acc_norm_by_tokens": {"score_multiple_choice": _score_by_tokens},
    "ece_bins_weighted_equally": {"calibration": _calibration(equal_weights=True)},
    # more
    "target_shift_by_two": {"token_nlls": _token_nlls(target_offset=2)},
    "window_first_token_dropped": {"token_nlls": _token_nlls(drop_window_start=True)},
    "stride_ignored": {"token_nlls": _token_nlls(stride_is_context=True)},
    "windows_always_disjoint": {"windows": _windows_begin_at_prev_end},
    "windows_one_too_many": {"windows": _windows_end_at_n},
    "bits_per_byte_times_ln2": {"Perplexity.bits_per_byte": property(_bits_per_byte_times_ln2)},
    "word_ppl_by_tokens": {"Perplexity.word_ppl": property(_word_ppl_by_tokens)},
    "bytes_are_characters": {"perplexity": _perplexity_chars_not_bytes},
    "loglikelihood_reads_the_target_too": {"loglikelihood": _loglikelihood(read_all=True)},
    "loglikelihood_cut_to_block_size": {
        "loglikelihood": _loglikelihood(keep=lambda bs: bs)},
    "acc_norm_picks_the_lowest": {"choose": _choose_norm_by_min},
    "ece_bins_by_rounding": {"calibration": _calibration(round_bins=True)},
    "ece_signed_gaps": {"calibration": _calibration(signed=True)},
}

# Hints that teach (tests/test_mutants.py): the cause, in a learner's words, that the first spec
# test failing on each of these classic bugs must name (a case-insensitive regex).
HINTS: dict[str, str] = {
    "average_per_window": r"mean NLLs are averaged",
    "overlap_counted_twice": r"overlap is scored again",
    "ppl_log_base_2": r"base 2",
    "bits_per_byte_in_nats": r"left in nats",
    "target_shift_off_by_one": r"targets are not shifted",
    "acc_norm_by_tokens": r"divides by the tokens",
    "ece_bins_weighted_equally": r"weighted equally",
    "target_shift_by_two": r"shifted by two",
    "window_first_token_dropped": r"lost at the window boundaries",
    "stride_ignored": r"stride is ignored",
    "windows_always_disjoint": r"disjoint whatever the stride",
    "windows_one_too_many": r"windows run to N",
    "bits_per_byte_times_ln2": r"multiplied by ln 2",
    "word_ppl_by_tokens": r"divided by the tokens",
    "bytes_are_characters": r"characters are counted, not the UTF-8 bytes",
    "loglikelihood_reads_the_target_too": r"reads the last continuation token",
    "loglikelihood_cut_to_block_size": r"block_size \+ 1",
    "acc_norm_picks_the_lowest": r"picks the lowest",
    "ece_bins_by_rounding": r"by rounding",
    "ece_signed_gaps": r"gaps are signed",
}

EQUIVALENT: dict[tuple[str, str], str] = {
    ("perplexity",
     "nll, _ = token_nlls(model, ids, context=context, stride=stride, batch_size=None)"):
        "the worked token_nlls runs one window at a time and never reads batch_size (it is in "
        "the signature for the library, which batches windows): no result depends on it",
    ("perplexity", "nll, _ = token_nlls(model, ids, context=context, stride=stride, )"):
        "the same: batch_size only sets how many windows the library runs per forward pass",
}
