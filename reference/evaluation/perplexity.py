"""Exact token-level perplexity with a strided sliding window, bits per byte, word perplexity.

A text of N tokens has N - 1 predictions: the token at ``p + 1`` from the tokens up to ``p``.
A model sees at most ``context`` tokens at once, so the predictions are made in windows
(Hugging Face's documented method, "Perplexity of fixed-length models"): window k feeds the
tokens ``[b, e)`` with ``b = k * stride`` and ``e = min(b + context, N - 1)``, and scores only
the predictions it has not scored yet, ``p`` in ``[previous e, e)``. Every prediction is scored
exactly once, with up to ``context`` tokens of context; ``stride = context`` is the
non-overlapping computation (disjoint windows), a smaller stride gives every scored token more
context at the cost of ``context / stride`` times the compute.

Hugging Face's loop, with ``max_length = context + 1`` (its window holds the target too), scores
the same tokens in the same windows (with ``max_length = stride`` it never scores the first token
of each window, so ``stride = context`` here is ``max_length = context + 1, stride = context``
there); its known slip, ``outputs.loss * trg_len`` where the loss
averages ``trg_len - 1`` tokens in the first window, is not copied: the sum is per token.

Figures always come with their context and stride (:meth:`Perplexity.describe`): a perplexity
without them is not comparable with another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..llama import Llama
from ..model import GPT

__all__ = ["Perplexity", "perplexity", "resolve_window", "token_nlls", "windows"]


@dataclass(frozen=True)
class Perplexity:
    """The summed negative log-likelihood of a text and what it is divided by.

    ``nll`` is in nats over the ``tokens`` scored tokens (all but the first); ``bytes`` (UTF-8)
    and ``words`` (whitespace-separated) count the whole text, 0 when it was not given (the
    first token, never scored, is counted in them: negligible on a real text).

    Example (two tokens at probability 1/4 each, a 4-byte text of one word)::

        >>> p = Perplexity(nll=2 * math.log(4), tokens=2, bytes=4, words=1, context=8, stride=8)
        >>> round(p.ppl, 6), round(p.bits_per_byte, 6), round(p.word_ppl, 6)
        (4.0, 1.0, 16.0)
        >>> p.describe()
        'perplexity 4.000 (context 8, stride 8; 2 tokens), 1.0000 bits/byte, word perplexity 16.00'
    """

    nll: float
    tokens: int
    bytes: int
    words: int
    context: int
    stride: int

    @property
    def ppl(self) -> float:
        """exp(mean NLL per token); NaN without tokens."""
        return math.exp(self.nll / self.tokens) if self.tokens else math.nan

    @property
    def bits_per_byte(self) -> float:
        """The NLL in bits (nats / ln 2) per UTF-8 byte: comparable across tokenizers."""
        return self.nll / math.log(2) / self.bytes if self.bytes else math.nan

    @property
    def word_ppl(self) -> float:
        """exp(NLL per whitespace-separated word): comparable across tokenizers; infinite
        past a float's range (text with few spaces, e.g. a Markov chain's)."""
        if not self.words:
            return math.nan
        return math.exp(self.nll / self.words) if self.nll / self.words < 700 else math.inf

    def describe(self) -> str:
        """One line with every figure, stating the context and the stride."""
        return (f"perplexity {self.ppl:.3f} (context {self.context}, stride {self.stride}; "
                f"{self.tokens} tokens), {self.bits_per_byte:.4f} bits/byte, "
                f"word perplexity {self.word_ppl:.2f}")


def resolve_window(block_size: int, context: int | None, stride: int | None) -> tuple[int, int]:
    """``(context, stride)``: context defaults to ``block_size``, stride to the context.

    Raises ValueError naming the value unless ``1 <= stride <= context <= block_size``.
    """
    context = block_size if context is None else context
    stride = context if stride is None else stride
    if not 1 <= context <= block_size:
        raise ValueError(f"context must be in [1, block_size={block_size}], got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    return context, stride


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over ``n_tokens`` tokens as ``(begin, end, first)``: feed the tokens
    ``[begin, end)`` and score the predictions ``p`` in ``[first, end)`` (the token ``p + 1``).

    Example (10 tokens, 9 predictions; context 4, stride 2)::

        >>> windows(10, 4, 2)
        [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 9, 8)]
        >>> windows(10, 4, 4)  # stride = context: disjoint windows
        [(0, 4, 0), (4, 8, 4), (8, 9, 8)]
    """
    out: list[tuple[int, int, int]] = []
    last = n_tokens - 1  # the number of predictions
    begin, prev_end = 0, 0
    while prev_end < last:
        end = min(begin + context, last)
        out.append((begin, end, prev_end))
        begin, prev_end = begin + stride, end
    return out


@torch.no_grad()
def token_nlls(
    model: GPT | Llama, ids: Sequence[int], *, context: int | None = None,
    stride: int | None = None, batch_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """The NLL (nats, float64) of every scored token and its predictor's position in its window.

    Returns two tensors of length ``len(ids) - 1``: ``nll[i]`` = -log p(ids[i+1] | context) and
    ``position[i]`` (0-based, int64), the index in its window of the token that predicts it
    (so it had ``position + 1`` tokens of context). Windows as :func:`windows`; up to
    ``batch_size`` full windows run as one batch. The model should be in eval mode.

    Example (a model whose logits are all 0 gives every token -log(1/V))::

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=4, vocab_size=8, n_layer=1, n_head=1, n_embd=8))
        >>> _ = torch.nn.init.zeros_(model.lm_head.weight)
        >>> nll, pos = token_nlls(model.eval(), [1, 2, 3, 4, 5, 6], context=4, stride=2)
        >>> torch.allclose(nll, torch.full((5,), math.log(8), dtype=torch.float64)), pos.tolist()
        (True, [0, 1, 2, 3, 2])
    """
    block_size = model.config.block_size
    context, stride = resolve_window(block_size, context, stride)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    tokens = torch.as_tensor(list(ids), dtype=torch.long, device=device)  # (N,)
    spans = windows(len(tokens), context, stride)
    nlls, positions = [], []
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        width = max(end - begin for begin, end, _ in group)
        x = torch.zeros(len(group), width, dtype=torch.long, device=device)  # right-padded
        y = torch.zeros_like(x)
        for row, (begin, end, _) in enumerate(group):
            x[row, :end - begin] = tokens[begin:end]
            y[row, :end - begin] = tokens[begin + 1:end + 1]  # the next tokens
        logits, _ = model(x)  # (b, T, V); causal, so the padding never reaches a real position
        nll = F.cross_entropy(logits.double().transpose(1, 2), y, reduction="none")  # (b, T)
        for row, (begin, end, first) in enumerate(group):
            nlls.append(nll[row, first - begin:end - begin])
            positions.append(torch.arange(first - begin, end - begin, device=device))
    if not nlls:
        empty = torch.zeros(0, device=device)
        return empty.double(), empty.long()
    return torch.cat(nlls).cpu(), torch.cat(positions).cpu()


def perplexity(
    model: GPT | Llama, ids: Sequence[int], *, text: str | None = None, context: int | None = None,
    stride: int | None = None, batch_size: int = 8,
) -> Perplexity:
    """The :class:`Perplexity` of ``ids`` (the tokens of ``text``, when given, which supplies the
    byte and word counts) with the sliding window of :func:`token_nlls`.

    Example (the uniform model: perplexity = vocabulary size, 3 bits per token)::

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=4, vocab_size=8, n_layer=1, n_head=1, n_embd=8))
        >>> _ = torch.nn.init.zeros_(model.lm_head.weight)
        >>> p = perplexity(model.eval(), [1, 2, 3, 4, 5], text="ab cd")
        >>> round(p.ppl, 6), round(p.bits_per_byte, 6), p.tokens, p.context, p.stride
        (8.0, 2.4, 4, 4, 4)
    """
    nll, _ = token_nlls(model, ids, context=context, stride=stride, batch_size=batch_size)
    context, stride = resolve_window(model.config.block_size, context, stride)
    return Perplexity(
        nll=float(nll.sum()), tokens=len(nll),
        bytes=len(text.encode("utf-8")) if text is not None else 0,
        words=len(text.split()) if text is not None else 0,
        context=context, stride=stride,
    )
