"""Classic learner bugs in the KV cache; specs/test_kvcache.py must catch every one.

Each mutant replaces functions of ``solutions.kvcache`` (every reference to the replaced
function is patched). Named for the bug.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from solutions import kvcache as sol
from solutions.attention import softmax

_cache_update = sol.cache_update
_cached_attention = sol.cached_attention
_generate_cached = sol.generate_cached


def _update_row0_slots_for_all(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                               input_pos: Tensor) -> None:
    """Every row written at row 0's slots: rows at different positions clobber each other."""
    _cache_update(k_cache, v_cache, k, v, input_pos[:1].expand_as(input_pos))


def _update_from_slot_zero(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                           input_pos: Tensor) -> None:
    """Positions restarting at 0 each step: every block written at slots 0..T-1."""
    T = k.shape[2]
    _cache_update(k_cache, v_cache, k, v, torch.arange(T, device=k.device).expand_as(input_pos))


def _update_keys_only(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor,
                      input_pos: Tensor) -> None:
    _cache_update(k_cache, v_cache.clone(), k, v, input_pos)


def _attention(strict: bool = False, top_left: bool = False, new_only: bool = False) -> Any:
    def attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, input_pos: Tensor) -> Tensor:
        # the cache in the queries' dtype and slots on their device, as the solution has them:
        # each mutant is its one bug
        k_cache, v_cache = k_cache.to(q.dtype), v_cache.to(q.dtype)
        S, T = k_cache.shape[2], q.shape[2]
        if new_only:  # a cache that attention ignores: only the block's own slots
            rows = torch.arange(q.shape[0], device=q.device)[:, None]
            k = k_cache.transpose(1, 2)[rows, input_pos].transpose(1, 2)
            v = v_cache.transpose(1, 2)[rows, input_pos].transpose(1, 2)
            pos = torch.arange(T, device=q.device).expand_as(input_pos)
            return _cached_attention(q, k, v, pos)
        scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.size(-1))
        slots = torch.arange(S, device=q.device)[None, None, None, :]
        if top_left:  # the query's index in the block, not its slot
            pos = torch.arange(T, device=q.device)[None, None, :, None]
            pos = pos.expand(q.shape[0], 1, T, 1)
        else:
            pos = input_pos[:, None, :, None]
        visible = slots < pos if strict else slots <= pos
        scores = scores.masked_fill(~visible, -math.inf)
        return softmax(scores, dim=-1) @ v_cache
    return attention


def _no_scale(q: Tensor, k_cache: Tensor, v_cache: Tensor, input_pos: Tensor) -> Tensor:
    return _cached_attention(q * math.sqrt(q.size(-1)), k_cache, v_cache, input_pos)


def _generate(mode: str) -> Any:
    def generate_cached(idx: Tensor, params: Mapping[str, Tensor], config: Any,
                        max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None,
                        lengths: Tensor | None = None) -> Tensor:
        if mode == "ignore_lengths":  # every row's first token from the padded width's end
            lengths = None
        if mode == "no_generator":
            generator = None
        return _generate_cached(idx, params, config, max_new_tokens, temperature, top_k, top_p,
                                generator, lengths)
    return generate_cached


MUTANTS: dict[str, dict[str, Any]] = {
    "positions_restart_at_zero_each_step": {"cache_update": _update_from_slot_zero},
    "all_rows_written_at_row_0s_slots": {"cache_update": _update_row0_slots_for_all},
    "values_never_cached": {"cache_update": _update_keys_only},
    "attention_ignores_the_cache": {"cached_attention": _attention(new_only=True)},
    "mask_hides_the_querys_own_slot": {"cached_attention": _attention(strict=True)},
    "mask_top_left_aligned": {"cached_attention": _attention(top_left=True)},
    "attention_without_the_scale": {"cached_attention": _no_scale},
    "padded_rows_read_at_the_padded_end": {"generate_cached": _generate("ignore_lengths")},
    "sampling_ignores_the_generator": {"generate_cached": _generate("no_generator")},
}

# Hints that teach: the cause the first failing spec test must name for each classic bug
# (a regex, case-insensitive; tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "positions_restart_at_zero_each_step": r"slots 0\.\.T-1|restart at zero",
    "all_rows_written_at_row_0s_slots": r"row 0's slots",
    "values_never_cached": r"values are never written",
    "attention_ignores_the_cache": r"only its own new key, not the cache",
    "mask_hides_the_querys_own_slot": r"hides the query's own slot|s <= p",
    "mask_top_left_aligned": r"top-left aligned",
    "attention_without_the_scale": r"1/sqrt\(head_size\)",
    "padded_rows_read_at_the_padded_end": r"padded width's end|lengths\[b\] - 1",
    "sampling_ignores_the_generator": r"do not use `generator`",
}

EQUIVALENT: dict[tuple[str, str], str] = {
    ("cached_attention",
     "scores = q @ k_cache.to(q.dtype).transpose(+2, -1) / math.sqrt(q.size(-1))"):
        "the cache is 4-D by contract, so dim +2 is dim -2: the same transpose",
    ("cached_attention", "return softmax(scores, ) @ v_cache.to(q.dtype)"):
        "softmax's default dim is -1, the keys' axis: the same call",
}
