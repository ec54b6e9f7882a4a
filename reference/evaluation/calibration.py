"""Calibration of next-token probabilities: reliability bins and the expected calibration error.

A model is calibrated when, of the predictions it makes with confidence ~c, a fraction ~c is
right. Bin the predictions by confidence into ``bins`` equal-width bins of [0, 1] (bin i holds
``i/bins <= c < (i+1)/bins``; a confidence of exactly 1 goes in the last bin); the expected
calibration error (Guo et al. 2017) is the gap between accuracy and confidence in each bin,
weighted by the bin's share of the predictions::

    ECE = sum over bins of count / N * |accuracy - confidence|

The reliability diagram plots ``accuracy`` against ``confidence`` per bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..llama import Llama
from ..model import GPT
from .perplexity import resolve_window, windows

__all__ = ["Calibration", "calibration", "next_token_calibration"]


@dataclass(frozen=True)
class Calibration:
    """ECE and the reliability bins: per bin its count, mean confidence and accuracy (NaN in an
    empty bin), and the ``bins + 1`` bin edges."""

    ece: float
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]
    edges: list[float]


def calibration(confidence: Tensor, correct: Tensor, bins: int = 15) -> Calibration:
    """The :class:`Calibration` of predictions made with ``confidence`` (in [0, 1]) that were
    ``correct`` (bool or 0/1), in ``bins`` equal-width bins.

    Example (always 90% sure, right 6 times in 10: ECE = |0.6 - 0.9| = 0.3)::

        >>> c = calibration(torch.full((10,), 0.9), torch.arange(10) < 6, bins=5)
        >>> round(c.ece, 6), c.counts
        (0.3, [0, 0, 0, 0, 10])
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence, correct = confidence.reshape(-1).double(), correct.reshape(-1).double()
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct must have the same number of elements, got "
                         f"{confidence.numel()} and {correct.numel()}")
    if confidence.numel() and not bool(((confidence >= 0) & (confidence <= 1)).all()):
        raise ValueError("confidence must lie in [0, 1]")
    index = (confidence * bins).floor().long().clamp(max=bins - 1)  # (N,) bin of each
    counts = torch.bincount(index, minlength=bins).double()  # (bins,)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    seen = counts > 0
    mean_conf = torch.where(seen, conf_sum / counts.clamp(min=1), math.nan)
    mean_acc = torch.where(seen, acc_sum / counts.clamp(min=1), math.nan)
    n = max(confidence.numel(), 1)
    ece = float(((counts / n) * (mean_acc - mean_conf).abs())[seen].sum())
    return Calibration(
        ece=ece, counts=[int(c) for c in counts.tolist()], confidence=mean_conf.tolist(),
        accuracy=mean_acc.tolist(), edges=[i / bins for i in range(bins + 1)],
    )


@torch.no_grad()
def next_token_calibration(
    model: GPT | Llama, ids: Sequence[int], *, context: int | None = None, bins: int = 15,
) -> Calibration:
    """The calibration of ``model``'s next-token predictions over ``ids``: confidence = the
    top-1 probability, correct = the top-1 token is the next token; disjoint windows of
    ``context`` tokens (default ``block_size``), every prediction once."""
    context, _ = resolve_window(model.config.block_size, context, None)
    device = next(model.parameters()).device
    tokens = torch.as_tensor(list(ids), dtype=torch.long, device=device)
    confs, hits = [], []
    for begin, end, _ in windows(len(tokens), context, context):
        logits, _ = model(tokens[None, begin:end])  # (1, T, V)
        conf, top = logits[0].double().softmax(-1).max(-1)  # (T,) each
        confs.append(conf)
        hits.append(top == tokens[begin + 1:end + 1])
    if not confs:
        return calibration(torch.zeros(0), torch.zeros(0), bins)
    return calibration(torch.cat(confs).cpu(), torch.cat(hits).cpu(), bins)
