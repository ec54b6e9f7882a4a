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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor

from .llama import Llama
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


TINY_TEMPERATURE = 1e-30  # below this, sampling divides the logits' gaps to the max (see below)


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
    if temperature < TINY_TEMPERATURE:  # logits / T would overflow float32 (T may even round
        # to 0 there): divide each row's gaps to its max, in float64; softmax is shift-invariant
        wide = logits.double()
        logits = (wide - wide.amax(dim=-1, keepdim=True)) / temperature
    else:
        logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)
    flat = probs.reshape(-1, probs.size(-1))  # multinomial takes 1-D or 2-D
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


Overflow = Literal["recompute", "stop", "error", "slide"]
OVERFLOWS = ("recompute", "stop", "error", "slide")


@dataclass(frozen=True)
class _Options:
    temperature: float
    top_k: int | None
    top_p: float | None
    eos_id: int | None
    use_cache: bool
    overflow: Overflow


def _check_generation_args(
    model: GPT | Llama, idx: Tensor, max_new_tokens: int, options: _Options, seed: int | None,
    generator: torch.Generator | None, lengths: Tensor | None,
) -> None:
    """Validation at the edge, once per call: the ids' range is read here (one device sync),
    never inside the model's forward pass."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    _check_temperature(options.temperature)
    if options.top_k is not None:
        _check_top_k(options.top_k)
    if options.top_p is not None:
        _check_top_p(options.top_p)
    if options.overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be 'recompute', 'stop', 'error' or 'slide', got "
                         f"{options.overflow!r}")
    cfg = model.config
    limit = cfg.block_size  # the widest prompt prefilled at once
    if options.overflow == "slide":
        if not isinstance(model, Llama):
            raise ValueError(f"overflow='slide' needs rotary positions (a Llama-style model): "
                             f"{type(model).__name__}'s learned position embeddings end at "
                             f"block_size {cfg.block_size}; use overflow='recompute'")
        if not options.use_cache:
            raise ValueError("overflow='slide' slides the KV cache: it needs use_cache=True")
        limit = model.config.sliding_window or cfg.block_size  # the ring's slots
    eos_id = options.eos_id
    if eos_id is not None and not 0 <= eos_id < cfg.vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {cfg.vocab_size})")
    check_idx(idx[:, -cfg.block_size :] if idx.ndim == 2 else idx, cfg.block_size)
    check_token_ids(idx, cfg.vocab_size)
    if lengths is not None:
        T = idx.shape[1]
        if lengths.shape != (idx.shape[0],) or lengths.is_floating_point():
            raise ValueError(f"lengths must be a ({idx.shape[0]},) integer tensor, one length "
                             f"per row, got {lengths.dtype} {tuple(lengths.shape)}")
        if limit < T or int(lengths.min()) < 1 or int(lengths.max()) > T:
            what = "the ring's slots" if options.overflow == "slide" else "block_size"
            raise ValueError(f"lengths must lie in [1, {T}] (the padded width, at most "
                             f"{what} {limit}), got {lengths.tolist()}")


def stream(
    model: GPT | Llama,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    lengths: Tensor | None = None,
    use_cache: bool = True,
    overflow: Overflow = "recompute",
) -> Iterator[Tensor]:
    """Yield the next token of every row of ``idx`` (B, T), one (B,) int64 tensor per step.

    At most ``max_new_tokens`` steps. With ``eos_id``, a row that has produced it continues
    with ``eos_id`` only, and the stream ends once every row has. The same ``seed`` (or a
    generator in the same state) gives the same tokens. The arguments are checked when the
    stream is created, before the first step.

    With ``use_cache`` (the default) the prompt is prefilled into a KV cache in one pass and
    each step then runs one token (``reference.kvcache``); without it every step runs the last
    ``block_size`` tokens again. The tokens are the same either way. Past ``block_size`` a GPT's
    cache cannot slide (positions are learned): ``overflow="recompute"`` continues by running
    the last ``block_size`` tokens each step, exactly as without a cache; ``"stop"`` ends the
    stream there; ``"error"`` raises ValueError. ``"slide"`` (Llama-style models only: rotary
    positions) prefills the whole prompt into a ring cache (``Llama.new_cache(ring=True)``)
    and decodes at positions past ``block_size``, each key keeping its own position's
    rotation: *exact* for a model with ``sliding_window`` (its ring holds the W keys a query
    sees: the tokens equal greedy decoding by the full forward); for a full-attention model, an
    approximation (each query sees only the last ``block_size`` keys, and positions past the
    trained ones are extrapolated).

    ``lengths`` (B,): the rows of ``idx`` are prompts of these lengths, right-padded (the
    padding's ids do not matter); each row continues after its own last real token. Needs the
    cache, and a row that would pass ``block_size`` stops the stream or raises (``"recompute"``
    does not apply to padded rows: ValueError).

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
    options = _Options(temperature, top_k, top_p, eos_id, use_cache, overflow)
    _check_generation_args(model, idx, max_new_tokens, options, seed, generator, lengths)
    if lengths is not None and not use_cache:
        raise ValueError("lengths (padded prompts) need use_cache=True")
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    return _stream(model, idx, max_new_tokens, options, generator, lengths)


def _stream(
    model: GPT | Llama, idx: Tensor, max_new_tokens: int, o: _Options,
    generator: torch.Generator | None, lengths: Tensor | None,
) -> Iterator[Tensor]:
    block_size = model.config.block_size
    B = idx.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    rows = torch.arange(B, device=idx.device)
    # next_slot: where each row's next token goes in the cache (host ints: no sync per step)
    slide = o.overflow == "slide"
    width = idx.shape[1] if slide else min(idx.shape[1], block_size)  # the prompt prefilled
    cache, next_slot = None, [width] * B
    if lengths is not None:
        next_slot = [int(n) for n in lengths.tolist()]
    last_logits: Tensor | None = None
    for step in range(max_new_tokens):
        with torch.no_grad():  # a generator resumes outside any decorator's context
            if step == 0 and o.use_cache:  # prefill the prompt (its last block_size tokens)
                prompt = idx[:, -width:]
                if slide:  # a ring (Llama only: checked); any prompt length, no length
                    cache = cast(Llama, model).new_cache(B, ring=True)
                else:
                    cache = model.new_cache(B)
                    cache.length = prompt.shape[1]  # attention reads only the slots in use
                slots = torch.arange(prompt.shape[1], device=idx.device).expand(B, -1)
                logits = model(prompt, cache=cache, input_pos=slots)[0]  # (B, T, V)
                at = torch.tensor(next_slot, device=idx.device) - 1
                last_logits = logits[rows, at]  # (B, V): each row's last real token
            elif cache is not None and (slide or max(next_slot) < block_size):  # decode one
                pos = torch.tensor(next_slot, device=idx.device)[:, None]  # (B, 1)
                if not slide:
                    cache.length = max(next_slot) + 1
                last_logits = model(idx[:, -1:], cache=cache, input_pos=pos)[0][:, -1]
                next_slot = [n + 1 for n in next_slot]
            else:  # no cache, or past block_size: run the last block_size tokens
                if cache is not None and (o.overflow != "recompute" or lengths is not None):
                    if o.overflow == "stop":
                        return
                    why = ("padded rows cannot be recomputed, use overflow='stop'"
                           if lengths is not None else "overflow='error'")
                    raise ValueError(f"generation reached block_size {block_size}: the KV "
                                     f"cache cannot slide with learned positions ({why})")
                last_logits = model(idx[:, -block_size:])[0][:, -1]
            assert last_logits is not None
            nxt = sample_next_token(last_logits, o.temperature, o.top_k, o.top_p, generator)
        if o.eos_id is not None:
            nxt = nxt.masked_fill(done, o.eos_id)  # finished rows only pad
            done |= nxt == o.eos_id
        idx = torch.cat([idx, nxt.unsqueeze(1).to(idx.dtype)], dim=1)
        yield nxt
        if o.eos_id is not None and bool(done.all()):  # one device sync per step: needed to stop
            return


def generate(
    model: GPT | Llama,
    idx: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    overflow: Overflow = "recompute",
) -> Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` sampled tokens -> (B, T + n).

    :func:`stream` collected: n < ``max_new_tokens`` when every row has produced ``eos_id``
    (or the stream stopped at ``block_size``). The model's mode is left alone.
    """
    steps = list(stream(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, generator=generator, eos_id=eos_id,
                        use_cache=use_cache, overflow=overflow))
    return torch.cat([idx, *(t.unsqueeze(1).to(idx.dtype) for t in steps)], dim=1)


def generate_batch(
    model: GPT | Llama,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    **options: Any,
) -> list[list[int]]:
    """The new tokens of each prompt, prompts of different lengths decoded as one batch
    (right-padded, each row at its own positions); ``options`` as for :func:`stream`. A row
    that produced ``eos_id`` ends with it."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("give at least one prompt, each of at least one token")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        idx[row, : len(p)] = torch.as_tensor(list(p), dtype=torch.long)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    steps = list(stream(model, idx, max_new_tokens, lengths=lengths, **options))
    if not steps:
        return [[] for _ in prompts]
    rows = torch.stack(steps, dim=1).tolist()
    eos = options.get("eos_id")
    return [row[: row.index(eos) + 1] if eos is not None and eos in row else row for row in rows]
