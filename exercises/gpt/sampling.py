"""Choosing the next token: temperature, top-k, top-p (nucleus), and the generation loop.

The model gives logits for the next token; sampling turns them into a choice. Temperature
sharpens (< 1) or flattens (> 1) the distribution, top-k and top-p cut off its unlikely tail,
where most of the incoherent continuations live (Holtzman et al. 2019).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from reference.model import GPTConfig  # given: the library's model config

from .model import gpt_forward


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of the last dimension, set the others to -inf.

    Contract: ``logits`` (..., V) -> same shape; a logit tied with the k-th largest stays too;
    ``k >= V`` changes nothing; ``k < 1`` is a ValueError. -inf has probability 0 after softmax.

    Worked example: the two largest of [1, 3, 2, 0], then a tie at the 2nd largest::

        >>> top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
        tensor([-inf, 3., 2., -inf])
        >>> top_k_filter(torch.tensor([2.0, 1.0, 1.0, 0.0]), 2)
        tensor([2., 1., 1., -inf])

    Hint: ``torch.topk(logits, k).values[..., -1:]`` is the k-th largest, kept as (..., 1) so
    it broadcasts; ``masked_fill``.
    """
    raise NotImplementedError("exercises/gpt/sampling.py::top_k_filter is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens with total probability >= p.

    Contract: ``logits`` (..., V) -> same shape, the others set to -inf. Going down the tokens
    from most to least likely, a token is kept while the probability of the tokens *before* it
    is still < p; so the token that crosses p is kept, and the most likely one always is.
    ``p == 1`` keeps everything; p outside (0, 1] is a ValueError.

    Worked example: probabilities [0.1, 0.5, 0.15, 0.25] and p = 0.7: sorted 0.5, 0.25, 0.15,
    0.1; mass before each: 0, 0.5, 0.75, 0.9; kept: the 0.5 and the 0.25 tokens (0.75 >= 0.7)::

        >>> top_p_filter(torch.tensor([0.1, 0.5, 0.15, 0.25]).log(), 0.7)
        tensor([   -inf, -0.6931,    -inf, -1.3863])

    Hint: ``torch.sort(logits, descending=True)``; ``probs.cumsum(-1) - probs`` is the mass
    before each token; put the decision back in vocabulary order with ``scatter``.
    """
    raise NotImplementedError("exercises/gpt/sampling.py::top_p_filter is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token id per row: logits (B, V) -> ids (B,) int64.

    Contract: ``temperature == 0`` is greedy, the argmax (``top_k``/``top_p`` then change
    nothing); negative temperature is a ValueError. Otherwise divide the logits by
    ``temperature``, apply :func:`top_k_filter` then :func:`top_p_filter` (each if not None),
    and draw from their softmax with ``torch.multinomial(probs, 1, generator=generator)``: the
    same generator state gives the same tokens (Hugging Face's sampler's, for the same logits;
    the spec checks that).

    Worked example: logits [0, ln 3] at temperature 1 give token 1 with probability 3/4; at
    temperature 0.5 the logits become [0, 2 ln 3], so 9/10; at temperature 0 always 1::

        >>> import math
        >>> logits = torch.tensor([[0.0, math.log(3.0)]])
        >>> sample_next_token(logits, temperature=0.0)
        tensor([1])
        >>> draws = sample_next_token(logits.expand(10_000, 2), 0.5, generator=torch.Generator())
        >>> round(draws.float().mean().item(), 1)  # the share of token 1: about 9/10
        0.9
    """
    raise NotImplementedError("exercises/gpt/sampling.py::sample_next_token is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def generate(
    idx: Tensor,
    params: Mapping[str, Tensor],
    config: GPTConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Tensor:
    """Extend ``idx`` (B, T) one sampled token at a time -> (B, T + n), n <= max_new_tokens.

    Contract: each step runs :func:`gpt_forward` on the last ``block_size`` tokens only (the
    context is cropped once it grows longer: there are no positions beyond block_size), takes
    the logits of the last position and picks with :func:`sample_next_token`. With ``eos_id``,
    a row that has produced it gets only ``eos_id`` afterwards, and the loop stops as soon as
    every row has produced it. Runs without gradients. The result has ``idx``'s dtype and
    device, and so has every tensor made on the way (``device=idx.device``).

    Hint: ``idx[:, -config.block_size:]``; ``torch.cat([idx, next_ids[:, None]], dim=1)``.
    """
    raise NotImplementedError("exercises/gpt/sampling.py::generate is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")
