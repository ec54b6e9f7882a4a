"""Autoregressive sampling from a GPT: temperature, top-k, top-p, seeds, end-of-text, cropping.

:func:`stream` yields the new tokens step by step (what a server streams); :func:`generate` is
:func:`stream` collected into one tensor. Neither changes the model's mode.

Each step feeds the last ``block_size`` tokens (the context is cropped when it grows longer),
takes the logits of the last position, and picks the next token:

* ``temperature == 0``: greedy, the most likely token (argmax);
* else the logits are divided by ``temperature``, filtered by ``top_k`` then ``top_p``, and a
  token is drawn from their softmax with ``generator`` (or a fresh one seeded with ``seed``).

Example::

    >>> from reference.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=1, n_embd=8))
    >>> out = generate(model.eval(), torch.tensor([[1, 2, 3]]), max_new_tokens=4, seed=0)
    >>> tuple(out.shape)
    (1, 7)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .model import GPT, check_idx, check_token_ids


def _check_top_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be a positive int, got {k!r}")


def _check_top_p(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if not 0.0 <= temperature < float("inf"):  # also rejects NaN
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Set all but the ``k`` largest logits of the last dimension to -inf (ties at the k-th stay).

    ``k`` larger than the vocabulary keeps everything.
    """
    _check_top_k(k)
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the fewest most-likely tokens whose probabilities sum to >= ``p``.

    A token stays when the probability mass of the tokens more likely than it is below ``p``, so
    the token that crosses the threshold is kept, and the most likely token always is.
    """
    _check_top_p(p)
    if p >= 1.0:
        return logits
    # Ascending order: a token goes when it and all less likely ones hold at most 1 - p.
    sorted_logits, order = torch.sort(logits, dim=-1)
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = tail_mass <= 1.0 - p
    remove_sorted[..., -1] = False  # the most likely token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row of ``logits`` (..., V) -> (...,) int64.

    ``temperature == 0`` is greedy (argmax; ``top_k``/``top_p`` then change nothing).
    """
    _check_temperature(temperature)
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))  # multinomial takes 1-D or 2-D
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _check_generation_args(
    model: GPT, idx: Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
    top_p: float | None, seed: int | None, generator: torch.Generator | None, eos_id: int | None,
) -> None:
    """Validation at the edge, once per call: the ids' range is read here (one device sync),
    never inside the model's forward pass."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    _check_temperature(temperature)
    if top_k is not None:
        _check_top_k(top_k)
    if top_p is not None:
        _check_top_p(top_p)
    cfg = model.config
    if eos_id is not None and not 0 <= eos_id < cfg.vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {cfg.vocab_size})")
    check_idx(idx[:, -cfg.block_size :] if idx.ndim == 2 else idx, cfg.block_size)
    check_token_ids(idx, cfg.vocab_size)


def stream(
    model: GPT,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Iterator[Tensor]:
    """Yield the next token of every row of ``idx`` (B, T), one (B,) int64 tensor per step.

    At most ``max_new_tokens`` steps. With ``eos_id``, a row that has produced it continues
    with ``eos_id`` only, and the stream ends once every row has. The same ``seed`` (or a
    generator in the same state) gives the same tokens. The arguments are checked when the
    stream is created, before the first step.

    The model runs as it is: its mode is not touched (call ``model.eval()`` first, as
    :func:`reference.inference.load` does, for generation without dropout), so one model can
    serve several streams at once.

    Example::

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=1, n_embd=8))
        >>> steps = stream(model.eval(), torch.tensor([[1, 2, 3]]), 4, seed=0)
        >>> [tuple(t.shape) for t in steps]
        [(1,), (1,), (1,), (1,)]
    """
    _check_generation_args(model, idx, max_new_tokens, temperature, top_k, top_p, seed, generator,
                           eos_id)
    return _stream(model, idx, max_new_tokens, temperature, top_k, top_p, seed, generator, eos_id)


def _stream(
    model: GPT, idx: Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
    top_p: float | None, seed: int | None, generator: torch.Generator | None, eos_id: int | None,
) -> Iterator[Tensor]:
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    block_size = model.config.block_size
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        with torch.no_grad():  # a generator resumes outside the decorator's context
            idx_cond = idx[:, -block_size:]  # crop: positions beyond block_size don't exist
            logits, _ = model(idx_cond)  # (B, T, V)
            nxt = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = nxt.masked_fill(done, eos_id)  # finished rows only pad
            done |= nxt == eos_id
        idx = torch.cat([idx, nxt.unsqueeze(1).to(idx.dtype)], dim=1)
        yield nxt
        if eos_id is not None and bool(done.all()):  # one device sync per step: needed to stop
            return


def generate(
    model: GPT,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` sampled tokens -> (B, T + n).

    :func:`stream` collected: n < ``max_new_tokens`` when every row has produced ``eos_id``.
    The model's mode is left alone (see :func:`stream`).
    """
    steps = list(stream(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, generator=generator, eos_id=eos_id))
    return torch.cat([idx, *(t.unsqueeze(1).to(idx.dtype) for t in steps)], dim=1)
