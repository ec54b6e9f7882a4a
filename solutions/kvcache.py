"""The key/value cache: compute each token's keys and values once, then reuse them.

Generating without a cache runs the whole context through the model at every step, although the
keys and values of the tokens already seen never change (attention is causal: a token's k and v
depend only on the tokens before it). The cache keeps them, one preallocated tensor of keys and
one of values per layer, each (B, nh, S, hs) with S slots. Generation then runs in two phases:

* **prefill**: the prompt goes through the model in one pass; its keys and values are written at
  slots 0..T-1 and the last position's logits give the first new token;
* **decode**: one token per step, at the next slot: its query attends to every cached key up to
  its own slot, so a step costs one token's worth of work instead of the whole context's.

``input_pos`` (B, T) gives each token's slot, which is also its position (the learned position
embedding's index). Rows may be at different positions: prompts of different lengths are
right-padded, and each row's next token goes to the slot after *its own* last real token,
overwriting the padding there (padding at later slots is never seen: the mask hides it).

The mask is **bottom-right aligned**: the query at slot p sees the keys at slots <= p. A prefill
block at slots 0..T-1 gets the familiar causal mask; a decode step sees the whole cache up to
itself. (``is_causal`` in the attention chapter is top-left aligned: query i sees keys j <= i
counted from the first key. The two agree only when the keys start where the queries do.)

With learned absolute positions the window cannot slide: the model has no position past
``block_size - 1``. :func:`generate_cached` refuses a request that would go past it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from reference.kvcache import KVCache  # given: the cache's storage
from reference.model import GPTConfig  # given: the library's model config

from .attention import merge_heads, softmax, split_heads
from .gpt.block import linear, mlp_forward
from .gpt.layers import layer_norm
from .gpt.sampling import sample_next_token

__all__ = ["KVCache", "cache_update", "cached_attention", "generate_cached",
           "gpt_forward_cached"]


def cache_update(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                 input_pos: Tensor) -> None:
    """Write a block's keys ``k`` and values ``v`` (B, nh, T, hs) into the caches (B, nh, S, hs)
    in place: token t of row b goes to slot ``input_pos[b, t]``; every other slot is untouched.

    Worked example (B = 1, nh = 1, hs = 1, S = 4): writing k = [[[[5], [6]]]] at slots [[2, 3]]
    leaves ``k_cache[0, 0, :, 0]`` as [0, 0, 5, 6].

    Hint: loop over the rows (``for b in range(B)``) and index the slot axis (dim 2 of the
    cache, dim 1 of ``k[b]``) with ``input_pos[b]``.
    """
    # BEGIN SOLUTION
    for b in range(k.shape[0]):
        k_cache[b, :, input_pos[b]] = k[b].to(k_cache.dtype)  # (nh, T, hs) at T slots
        v_cache[b, :, input_pos[b]] = v[b].to(v_cache.dtype)
    # END SOLUTION


def cached_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, input_pos: Tensor) -> Tensor:
    """Attention of queries ``q`` (B, nh, T, hs) at slots ``input_pos`` (B, T) over the whole
    cache (B, nh, S, hs) -> (B, nh, T, hs), bottom-right aligned: the query at slot p sees the
    keys at slots 0..p (its own included) and nothing after, whatever the cache holds there.

    ``softmax(q @ kᵀ / sqrt(hs))`` over the visible slots, then the weighted sum of the values.

    Worked example: one query at slot 1 with q = [1, 0] (hs = 2), keys [1, 0], [0, 0], [9, 9]
    at slots 0, 1, 2: slot 2 is hidden, the scores are [1, 0] / sqrt(2), and the weights
    [0.6698, 0.3302].

    Hint: ``torch.arange(S)[None, None, None, :] <= input_pos[:, None, :, None]`` is the mask;
    fill hidden scores with ``-inf`` and use the attention chapter's :func:`softmax`.
    """
    # BEGIN SOLUTION
    S = k_cache.shape[2]
    scores = q @ k_cache.to(q.dtype).transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    slots = torch.arange(S, device=q.device)
    visible = slots[None, None, None, :] <= input_pos[:, None, :, None]  # (B, 1, T, S)
    scores = scores.masked_fill(~visible, -math.inf)
    return softmax(scores, dim=-1) @ v_cache.to(q.dtype)  # (B, nh, T, hs)
    # END SOLUTION


def gpt_forward_cached(idx: Tensor, params: Mapping[str, Tensor], config: GPTConfig,
                       cache: KVCache, input_pos: Tensor) -> Tensor:
    """The GPT forward pass for a block of tokens ``idx`` (B, T) at slots ``input_pos`` (B, T),
    reading and writing ``cache`` -> logits (B, T, V). Given (not an exercise): it is the GPT
    chapter's forward pass with :func:`cache_update` and :func:`cached_attention` in each
    block's attention."""
    wte, wpe = params["transformer.wte.weight"], params["transformer.wpe.weight"]
    x = wte[idx] + wpe[input_pos]  # (B, T, C): each token at its own position
    for i in range(config.n_layer):
        p = {k.removeprefix(f"transformer.h.{i}."): v for k, v in params.items()
             if k.startswith(f"transformer.h.{i}.")}
        h = layer_norm(x, p.get("ln_1.weight"), p.get("ln_1.bias"))
        q, k, v = linear(h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias")).chunk(3, dim=-1)
        q, k, v = (split_heads(t, config.n_head) for t in (q, k, v))  # (B, nh, T, hs)
        cache_update(cache.k[i], cache.v[i], k, v, input_pos)
        y = merge_heads(cached_attention(q, cache.k[i], cache.v[i], input_pos))  # (B, T, C)
        x = x + linear(y, p["attn.c_proj.weight"], p.get("attn.c_proj.bias"))
        h = layer_norm(x, p.get("ln_2.weight"), p.get("ln_2.bias"))
        x = x + mlp_forward(h, p)
    x = layer_norm(x, params.get("transformer.ln_f.weight"), params.get("transformer.ln_f.bias"))
    return x @ wte.T  # (B, T, V): the tied head


def generate_cached(
    idx: Tensor,
    params: Mapping[str, Tensor],
    config: GPTConfig,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """Sample ``max_new_tokens`` tokens per row with a KV cache -> (B, max_new_tokens).

    ``idx`` (B, T) holds the prompts, right-padded; ``lengths`` (B,) their lengths (default: T
    for every row). Prefill: one :func:`gpt_forward_cached` over ``idx`` at slots 0..T-1; the
    first new token of row b comes from the logits at position ``lengths[b] - 1``. Decode: each
    step feeds every row's last new token at its own next slot (row b's i-th new token is at
    slot ``lengths[b] + i``) and samples from the logits with :func:`sample_next_token`. The
    tokens equal those of the GPT chapter's ``generate`` on each prompt alone (greedy, or with
    the same generator for a single row). ValueError if a row would need a position past
    ``block_size - 1``; the cache is created here, in ``idx``'s device and the weights' dtype.

    Hint: ``KVCache.empty(...)``; ``logits[torch.arange(B), lengths - 1]`` picks each row's last
    real position; ``pos = lengths + i`` is a (B,) vector, ``pos[:, None]`` the decode slots.
    """
    B, T = idx.shape
    lengths = torch.full((B,), T, device=idx.device) if lengths is None else lengths.to(idx.device)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    longest = max(int(lengths.max()) + max(max_new_tokens - 1, 0), T)
    if longest > config.block_size:
        raise ValueError(f"a row would reach position {longest - 1}, past block_size "
                         f"{config.block_size}: the cache cannot slide with learned positions")
    wte = params["transformer.wte.weight"]
    cache = KVCache.empty(n_layer=config.n_layer, batch_size=B, n_head=config.n_head,
                          max_len=config.block_size, head_size=config.n_embd // config.n_head,
                          dtype=wte.dtype, device=idx.device)
    out = torch.empty(B, max_new_tokens, dtype=idx.dtype, device=idx.device)
    if max_new_tokens == 0:
        return out
    # BEGIN SOLUTION
    with torch.no_grad():
        slots = torch.arange(T, device=idx.device).expand(B, T)
        logits = gpt_forward_cached(idx, params, config, cache, slots)  # prefill: (B, T, V)
        last = logits[torch.arange(B, device=idx.device), lengths - 1]  # (B, V)
        for i in range(max_new_tokens):
            nxt = sample_next_token(last, temperature, top_k, top_p, generator)  # (B,)
            out[:, i] = nxt
            if i + 1 < max_new_tokens:
                pos = (lengths + i)[:, None]  # (B, 1): each row's next slot
                last = gpt_forward_cached(nxt[:, None], params, config, cache, pos)[:, -1]
    return out
    # END SOLUTION
