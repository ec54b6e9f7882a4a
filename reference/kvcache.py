"""The key/value cache: generation that computes each token's keys and values once.

Without a cache, every generation step runs the whole context through the model again, although
the keys and values of the tokens already seen do not change (attention is causal). The cache
keeps them: one preallocated (B, nh, S, hs) tensor of keys and one of values per layer, written
at explicit slots. Generation then *prefills* the prompt in one pass, writing its keys and values
at slots 0..T-1, and *decodes* one token per step, writing at the next slot.

Positions, per row: ``input_pos`` (B, T) gives the slot of every token of a block. It is also
the token's position (the learned position embedding's index), so rows of one batch may be at
different positions: prompts of different lengths (right-padded; each row's next token goes to
the slot after its own last real token, overwriting the padding), and the requests of a
continuous batch, each at its own point.

The attention mask over the cache, *bottom-right aligned*: the query of the token at slot p sees
every cached key at a slot <= p, its own included. A prefill block of T tokens at slots 0..T-1
gives the usual causal mask; a decode step (T = 1) sees the whole cache up to itself. Compare the
top-left convention of ``is_causal`` in ``reference.attention`` (query i sees keys j <= i counted
from the start of the key block): the two agree when the keys start at slot 0 and the block is
the whole sequence, and differ as soon as the cache holds keys before the block.

With learned absolute positions the window cannot slide: past ``block_size`` the cached keys would
need new positions. Generation then recomputes (see ``reference.generate``). Rotary positions
(``reference.llama``) can: a *ring* cache (``KVCache.empty(..., ring=True)``) of S slots writes
the token at position p into slot ``p % S`` and keeps each slot's absolute position in ``pos``;
a key keeps the rotation of its own position, so nothing is recomputed. A block attends to the
ring's keys (the positions before the block) and to its own keys (:func:`ring_attention_mask`),
then its last S tokens are written (:func:`ring_update`). With a window W <= S (each query sees
itself and the W-1 keys before it, Mistral's sliding window) the ring is exact.

Example::

    >>> cache = KVCache.empty(n_layer=1, batch_size=1, n_head=1, max_len=4, head_size=2)
    >>> k = torch.ones(1, 1, 2, 2)                       # two tokens' keys (B, nh, T, hs)
    >>> cache_update(cache.k[0], cache.v[0], k, k, torch.tensor([[0, 1]]))
    >>> cache.k[0][0, 0]                                 # slots 0 and 1 written
    tensor([[1., 1.],
            [1., 1.],
            [0., 0.],
            [0., 0.]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SDPA_GQA", "KVCache", "cache_update", "cached_attention", "cached_attention_mask",
           "masked_attention", "ring_attention", "ring_attention_mask", "ring_update"]

# torch >= 2.5's scaled_dot_product_attention takes fewer key/value heads (enable_gqa=True)
SDPA_GQA = torch.torch_version.TorchVersion(torch.__version__) >= "2.5"


@dataclass
class KVCache:
    """One key and one value tensor (B, nh, S, hs) per layer, preallocated; S = ``max_len``.

    ``length``: how many leading slots are in use, when the caller knows it (e.g. on the host,
    without reading the positions from the device): attention then reads only those slots.
    None reads all S (static shapes, for CUDA graphs); the mask hides the unused ones either
    way.
    """

    k: list[Tensor]
    v: list[Tensor]
    length: int | None = None
    pos: Tensor | None = None  # a ring cache's (B, S) int64 position per slot, -1 when empty

    @classmethod
    def empty(cls, *, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
              dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None, ring: bool = False) -> KVCache:
        """Zeros; ``ring=True``: a ring cache (see the module's docstring), every slot empty."""
        shape = (batch_size, n_head, max_len, head_size)
        pos = torch.full((batch_size, max_len), -1, device=device) if ring else None
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
                   pos=pos)

    @property
    def ring(self) -> bool:
        return self.pos is not None

    def advance(self, input_pos: Tensor) -> None:
        """A ring cache: record the positions ``input_pos`` (B, T) of the block just written
        (its last S tokens, as :func:`ring_update` writes them)."""
        assert self.pos is not None, "advance() is for ring caches"
        S = self.pos.shape[1]
        kept = input_pos[:, -S:]  # (B, <= S)
        rows = torch.arange(kept.shape[0], device=kept.device)[:, None]
        self.pos[rows, kept % S] = kept

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows ``start:stop`` of every layer, as views: writing to them writes to this cache."""
        pos = self.pos[start:stop] if self.pos is not None else None
        return KVCache([k[start:stop] for k in self.k], [v[start:stop] for v in self.v],
                       self.length, pos)

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer ``i``'s keys and values, the first :attr:`length` slots (views; a ring
        cache's are all its slots)."""
        if self.length is None or self.pos is not None:
            return self.k[i], self.v[i]
        return self.k[i][:, :, : self.length], self.v[i][:, :, : self.length]

    def copy_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` of every layer onto row ``dst`` (a continuous batch compacting)."""
        for t in (*self.k, *self.v, *([self.pos] if self.pos is not None else [])):
            t[dst].copy_(t[src])


def cache_update(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                 input_pos: Tensor) -> None:
    """Write the keys ``k`` and values ``v`` (B, nh, T, hs) of a block of T tokens into the
    caches (B, nh, S, hs), in place: token t of row b goes to slot ``input_pos[b, t]``."""
    rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1)
    # k.transpose(1, 2) is (B, T, nh, hs): index [row, slot] picks a (nh, hs) per token
    k_cache.transpose(1, 2)[rows, input_pos] = k.transpose(1, 2).to(k_cache.dtype)
    v_cache.transpose(1, 2)[rows, input_pos] = v.transpose(1, 2).to(v_cache.dtype)


def cached_attention_mask(input_pos: Tensor, max_len: int, window: int | None = None) -> Tensor:
    """The bottom-right aligned mask (B, 1, T, S): the query at slot p sees the slots <= p
    (with a sliding ``window`` W, only the slots p-W+1 .. p)."""
    slots = torch.arange(max_len, device=input_pos.device)[None, None, None, :]  # (1, 1, 1, S)
    p = input_pos[:, None, :, None]  # (B, 1, T, 1)
    mask = slots <= p  # (B, 1, T, S)
    if window is not None:
        mask &= slots > p - window
    return mask


def cached_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, input_pos: Tensor,
                     window: int | None = None) -> Tensor:
    """Attention of the queries ``q`` (B, nh, T, hs) at slots ``input_pos`` (B, T) over the
    cache (B, nh, S, hs), bottom-right aligned -> (B, nh, T, hs); with a sliding ``window``
    W, each query sees only its own slot and the W-1 before it.

    A cache with fewer heads than ``q`` (grouped-query attention, n_kv dividing nh) serves each
    of its heads to ``nh // n_kv`` consecutive query heads, without copying the cache."""
    mask = cached_attention_mask(input_pos, k_cache.shape[2], window)
    return masked_attention(q, k_cache, v_cache, mask)


def ring_attention_mask(cache_pos: Tensor, input_pos: Tensor, window: int) -> Tensor:
    """(B, 1, T, S + T): which of the ring's S slots, then which of the block's own T keys,
    the block's queries at positions ``input_pos`` (B, T) see. A query at p sees the keys at
    positions p-window+1 .. p; of the ring, only the positions before the block's first (a slot
    at or past it is stale: padding of a shorter row, about to be overwritten).

    >>> ring = torch.tensor([[4, 1, 2, 3]])  # positions 1..4 in a ring of 4 slots
    >>> ring_attention_mask(ring, torch.tensor([[5]]), window=3).int()  # 5 sees 3, 4 and 5
    tensor([[[[1, 0, 0, 1, 1]]]], dtype=torch.int32)
    """
    q = input_pos[:, :, None]  # (B, T, 1)
    old = cache_pos[:, None, :]  # (B, 1, S)
    fresh = (old >= 0) & (old < input_pos[:, :1, None]) & (old > q - window)  # (B, T, S)
    new = input_pos[:, None, :]  # (B, 1, T)
    own = (new <= q) & (new > q - window)  # (B, T, T)
    return torch.cat([fresh, own], dim=-1)[:, None]  # (B, 1, T, S + T)


def ring_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor,
                   mask: Tensor) -> Tensor:
    """Attention of the block's queries ``q`` (B, nh, T, hs) over the ring (B, n_kv, S, hs)
    and the block's own keys and values ``k``, ``v`` (B, n_kv, T, hs), under ``mask``
    (:func:`ring_attention_mask`) -> (B, nh, T, hs). Call before :func:`ring_update`."""
    keys = torch.cat([k_cache.to(q.dtype), k.to(q.dtype)], dim=2)  # (B, n_kv, S + T, hs)
    values = torch.cat([v_cache.to(q.dtype), v.to(q.dtype)], dim=2)
    return masked_attention(q, keys, values, mask)


def ring_update(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                input_pos: Tensor) -> None:
    """Write the block's last S tokens (B, n_kv, T, hs) into the ring (B, n_kv, S, hs): the
    token at position p goes to slot ``p % S``."""
    S = k_cache.shape[2]
    cache_update(k_cache, v_cache, k[:, :, -S:], v[:, :, -S:], input_pos[:, -S:] % S)


def masked_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, mask: Tensor) -> Tensor:
    """Softmax attention of q (B, nh, T, hs) over keys and values (B, n_kv, S, hs), n_kv
    dividing nh, where the boolean ``mask`` (B, 1, T, S) is True."""
    k, v = k_cache.to(q.dtype), v_cache.to(q.dtype)
    scale = 1.0 / math.sqrt(q.size(-1))
    if k.shape[1] == q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if SDPA_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=True)
    n_rep = q.shape[1] // k.shape[1]  # torch < 2.5: repeat the heads (a copy)
    return F.scaled_dot_product_attention(q, k.repeat_interleave(n_rep, dim=1),
                                          v.repeat_interleave(n_rep, dim=1), attn_mask=mask,
                                          scale=scale)


# ---------------------------------------------------------------- the spec's functional API
# (weights as a dict of GPT-2's names, as in reference/gpt.py; the model module imports this
# one, so these import it when called)


def gpt_forward_cached(idx: Tensor, params: dict[str, Tensor], config: Any, cache: KVCache,
                       input_pos: Tensor) -> Tensor:
    """The library model's cached forward with ``params``: logits (B, T, V) of the block
    ``idx`` (B, T) at slots ``input_pos`` (B, T), reading and writing ``cache``."""
    from .gpt import run_model

    logits: Tensor = run_model(params, config, idx, cache=cache, input_pos=input_pos)[0]
    return logits


def generate_cached(
    idx: Tensor,
    params: dict[str, Tensor],
    config: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """``max_new_tokens`` new tokens per row (B, n) of the right-padded prompts ``idx`` with
    ``lengths`` (default: all of ``idx``), through the library's cached generation; a row that
    would pass ``block_size`` is a ValueError."""
    from .generate import stream
    from .gpt import model_with

    B, T = idx.shape
    if lengths is None:
        lengths = torch.full((B,), T, device=idx.device)
    longest = int(lengths.max()) + max(max_new_tokens - 1, 0)
    if max_new_tokens >= 0 and (longest > config.block_size or config.block_size < T):
        raise ValueError(f"a row would reach position {max(longest, T) - 1}, past block_size "
                         f"{config.block_size}: the cache cannot slide with learned positions")
    steps = list(stream(model_with(params, config), idx, max_new_tokens,
                        temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                        lengths=lengths, overflow="error"))
    if not steps:
        return torch.empty(B, 0, dtype=idx.dtype, device=idx.device)
    return torch.stack(steps, dim=1).to(idx.dtype)
