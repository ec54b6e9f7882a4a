"""Evaluation: how good is a language model? Perplexity, bits per byte, multiple choice, ECE.

**Perplexity.** A text of N tokens gives N - 1 predictions: the token at ``p + 1`` from the
tokens up to ``p``. Its negative log-likelihood (NLL, in nats) is the sum of
``-log p(token | its context)`` over them, and the perplexity is ``exp(NLL / tokens)``: a model
that spreads its bets evenly over V tokens has perplexity V.

A model reads at most ``block_size`` tokens, so a long text is scored in *windows* (Hugging
Face's "Perplexity of fixed-length models"). Window k feeds the tokens ``[b, e)`` with
``b = k * stride``, ``e = min(b + context, N - 1)``, and scores only the predictions it has not
scored yet, ``p`` in ``[previous e, e)``::

    tokens    0 1 2 3 4 5 6 7 8 9          context 4, stride 2: 9 predictions
    window 0  [0 1 2 3]                    scores p = 0 1 2 3   (tokens 1 2 3 4)
    window 1      [2 3 4 5]                scores p = 4 5       (tokens 5 6)
    window 2          [4 5 6 7]            scores p = 6 7       (tokens 7 8)
    window 3              [6 7 8]          scores p = 8         (token 9)

Every token but the first is scored exactly once; later windows give each one more context (here
at least 3 tokens) than disjoint windows would (``stride = context``). A perplexity means
nothing without its context and stride: :class:`Perplexity` carries both.

**Bits per byte** divide the NLL in *bits* (nats / ln 2) by the text's UTF-8 bytes, and **word
perplexity** exponentiates the NLL per word: neither depends on the tokenizer, so two models with
different vocabularies can be compared (their token perplexities cannot).

**Multiple choice** (HellaSwag): score each choice by the log-likelihood of ``" " + choice``
after the context; ``acc`` takes the highest sum, ``acc_norm`` the highest per *character* of
the choice (long choices collect more negative log-probability; lm-eval normalises by
characters, not tokens, so the metric does not depend on the tokenizer).

**Calibration.** A calibrated model is right 70% of the times it says 70%. The expected
calibration error bins the predictions by confidence and weighs each bin's gap
``|accuracy - confidence|`` by its share of the predictions.

The model is anything called as ``model(idx)`` -> ``(logits (B, T, V), loss)`` with a
``config.block_size``, e.g. ``reference.model.GPT``, in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Given code from the library: the default and checked window, context = block_size and
# stride = context unless given (resolve_window(16, None, 4) == (16, 4)); the calibration
# result and a multiple-choice item are plain records.
from reference.evaluation.calibration import Calibration
from reference.evaluation.perplexity import resolve_window
from reference.evaluation.scorers import ChoiceScores, MultipleChoice
from reference.model import GPT
from reference.tokenizers import Tokenizer

__all__ = [
    "Calibration",
    "ChoiceScores",
    "MultipleChoice",
    "Perplexity",
    "calibration",
    "choose",
    "loglikelihood",
    "perplexity",
    "score_multiple_choice",
    "token_nlls",
    "windows",
]


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The sliding windows over ``n_tokens`` tokens as ``(begin, end, first)``: feed the tokens
    ``[begin, end)``, score the predictions ``p`` in ``[first, end)`` (of the token ``p + 1``).

    Contract: the scored ranges are disjoint and cover ``[0, n_tokens - 1)``; every window holds
    at most ``context`` tokens; window k begins at ``k * stride``. No window for fewer than two
    tokens (nothing to predict).

    Example (10 tokens; the picture in the module's docstring)::

        >>> windows(10, 4, 2)
        [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 9, 8)]
        >>> windows(10, 4, 4)  # stride = context: disjoint windows, each scored in full
        [(0, 4, 0), (4, 8, 4), (8, 9, 8)]

    Hint: keep the previous window's end; stop once it reaches ``n_tokens - 1``.
    """
    raise NotImplementedError("exercises/evaluation.py::windows is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")


@torch.no_grad()
def token_nlls(
    model: GPT, ids: Sequence[int], *, context: int | None = None, stride: int | None = None,
    batch_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """The NLL of every scored token, in nats (float64), and the position of its predictor.

    Contract: two tensors of length ``len(ids) - 1`` in the order of the text. ``nll[i]`` =
    ``-log p(ids[i + 1] | the window's tokens up to i)``; ``position[i]`` (int64) is the index
    of token ``i`` in its window (it had ``position + 1`` tokens of context). Windows as
    :func:`windows`, with ``context`` and ``stride`` from :func:`resolve_window` (given).
    ``batch_size`` is how many windows the library runs at once; one at a time is fine here.

    Example (ids = [5, 6, 7], one window): ``nll = [-log softmax(logits[0])[6],
    -log softmax(logits[1])[7]]``, ``position = [0, 1]``: the logits at position t predict
    the token at t + 1, so the targets are the inputs shifted left by one.

    Hint: ``F.cross_entropy(logits, targets, reduction="none")`` gives one NLL per position;
    compute it in float64 and keep the slice ``[first - begin, end - begin)``.
    """
    context, stride = resolve_window(model.config.block_size, context, stride)
    raise NotImplementedError("exercises/evaluation.py::token_nlls is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")


@dataclass(frozen=True)
class Perplexity:
    """The summed NLL of a text (nats, over ``tokens`` scored tokens) and what it is divided by:
    the text's UTF-8 ``bytes`` and whitespace-separated ``words`` (0 when no text was given),
    with the ``context`` and ``stride`` it was computed with.

    Example (two tokens at probability 1/4 each: NLL = 2 ln 4 nats = 4 bits; a 4-byte, one-word
    text)::

        >>> p = Perplexity(nll=2 * math.log(4), tokens=2, bytes=4, words=1, context=8, stride=8)
        >>> round(p.ppl, 6), round(p.bits_per_byte, 6), round(p.word_ppl, 6)
        (4.0, 1.0, 16.0)
    """

    nll: float
    tokens: int
    bytes: int
    words: int
    context: int
    stride: int

    @property
    def ppl(self) -> float:
        """``exp(nll / tokens)``; NaN when no token was scored."""
        raise NotImplementedError("exercises/evaluation.py::Perplexity.ppl is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")

    @property
    def bits_per_byte(self) -> float:
        """The NLL in bits per byte: ``nll / ln 2 / bytes``; NaN without bytes.

        Hint: the NLL is in nats (natural log); one bit is ln 2 nats.
        """
        raise NotImplementedError("exercises/evaluation.py::Perplexity.bits_per_byte is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")

    @property
    def word_ppl(self) -> float:
        """``exp(nll / words)``; NaN without words."""
        raise NotImplementedError("exercises/evaluation.py::Perplexity.word_ppl is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")

    def describe(self) -> str:
        """One line with every figure, stating the context and the stride."""
        return (f"perplexity {self.ppl:.3f} (context {self.context}, stride {self.stride}; "
                f"{self.tokens} tokens), {self.bits_per_byte:.4f} bits/byte, "
                f"word perplexity {self.word_ppl:.2f}")


def perplexity(
    model: GPT, ids: Sequence[int], *, text: str | None = None, context: int | None = None,
    stride: int | None = None, batch_size: int = 8,
) -> Perplexity:
    """The :class:`Perplexity` of ``ids`` with :func:`token_nlls`' windows; ``text`` (the text
    ``ids`` encode), when given, supplies the bytes (``len(text.encode("utf-8"))``) and the
    words (``len(text.split())``).

    Contract: ``nll`` is the sum over *tokens*, not a mean of the windows' means (windows score
    different numbers of tokens); ``context`` and ``stride`` are the resolved ones.

    Example: a model whose logits are all zero gives every token ``-log(1/V)``, so its
    perplexity is V whatever the text, the context and the stride.
    """
    context, stride = resolve_window(model.config.block_size, context, stride)
    raise NotImplementedError("exercises/evaluation.py::perplexity is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")


@torch.no_grad()
def loglikelihood(
    model: GPT, context: Sequence[int], continuation: Sequence[int]
) -> tuple[float, bool]:
    """``(log p(continuation | context), is_greedy)`` in nats, as lm-eval's ``loglikelihood``.

    Contract: ``context`` and ``continuation`` each hold a token at least; their concatenation
    is cut on the left to ``block_size + 1`` tokens, the model reads all but the last, and the
    continuation's tokens are scored. ``is_greedy`` is True when every continuation token is
    the model's top-1 choice (a greedy decoder would have written it).

    Example (context [1, 2], continuation [3]): the model reads [1, 2], and the answer is
    ``log_softmax(logits[0, -1])[3]``.

    Hint: read ``whole[:-1]``; the last ``len(continuation)`` logits predict the continuation.
    """
    if not context or not continuation:
        raise ValueError(f"context and continuation need a token each; got {len(context)} and "
                         f"{len(continuation)} tokens")
    raise NotImplementedError("exercises/evaluation.py::loglikelihood is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")


def choose(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(pred, pred_norm)``: the index of the highest log-likelihood (``acc``), and of the
    highest log-likelihood per character of the choice (``acc_norm``); ties go to the first.

    Example::

        >>> choose([-4.0, -2.0], ["aaaa", "b"])  # per character: -1.0 against -2.0
        (1, 0)
    """
    raise NotImplementedError("exercises/evaluation.py::choose is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")


def score_multiple_choice(
    model: GPT, tokenizer: Tokenizer, item: MultipleChoice, *, delimiter: str = " "
) -> ChoiceScores:
    """Score each choice as the continuation ``delimiter + choice`` of ``item.context``.

    Contract: ``ChoiceScores(loglikelihoods, pred, pred_norm)`` with one summed log-likelihood
    per choice (:func:`loglikelihood`) and the picks of :func:`choose`, normalised by the
    characters of the choice, never by its tokens.
    """
    raise NotImplementedError("exercises/evaluation.py::score_multiple_choice is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")


def calibration(confidence: Tensor, correct: Tensor, bins: int = 15) -> Calibration:
    """Reliability bins and the expected calibration error of predictions made with
    ``confidence`` (in [0, 1]) that were ``correct`` (bool or 0/1).

    Contract: ``bins`` equal-width bins of [0, 1]; bin i holds ``i/bins <= c < (i+1)/bins``, a
    confidence of exactly 1 the last bin. Per bin: ``counts``, mean ``confidence`` and
    ``accuracy`` (NaN in an empty bin); ``edges`` the ``bins + 1`` edges ``i / bins``; and
    ``ece = sum over bins of count / N * |accuracy - confidence|`` (empty bins add nothing).

    Example (always 90% sure, right 6 times in 10: ECE = |0.6 - 0.9| = 0.3)::

        >>> c = calibration(torch.full((10,), 0.9), torch.arange(10) < 6, bins=5)
        >>> round(c.ece, 6), c.counts
        (0.3, [0, 0, 0, 0, 10])

    Hint: ``(confidence * bins).floor().long().clamp(max=bins - 1)`` is each one's bin.
    """
    raise NotImplementedError("exercises/evaluation.py::calibration is a stub: fill it in (task evaluation), then run `pytest exercises -m evaluation`")
