# ruff: noqa: E501
"""Spec for the KV cache: the cache update, attention over the cache, the cached forward pass
and prefill/decode generation, for prompts of one length or padded ones of several.

Oracles: Hugging Face ``transformers``' GPT2LMHeadModel (random weights from a config, built
offline, eager attention) for the full forward, its own ``past_key_values`` path and its greedy
``generate``; ``torch.Tensor.index_copy_`` for the cache update; ``F.scaled_dot_product_attention``
with an explicitly built mask for the attention; HF's logits warpers + ``torch.multinomial`` for
sampled generation; hand-worked examples. Generation tests compare tokens exactly, so they use
float64 models (float32 logits computed in a different order may flip a near-tie).

Contract:

| clause | tests | oracle |
|---|---|---|
| cache_update writes token t of row b at slot input_pos[b, t], per row, and nothing else | `test_cache_update_hand_worked_example`, `test_cache_update_matches_index_copy` | hand-worked; `index_copy_` per row |
| cache_update keeps the cache's dtype and device | `test_cache_update_and_attention_keep_dtype_and_device` | the meta device; a float64 cache |
| a cache in another dtype than the queries: attention computes in the queries' dtype | `test_attention_over_a_cache_of_another_dtype` | the same call on the cache converted |
| generation makes every tensor on the prompt's device, none on the default device | `test_generation_makes_nothing_on_the_default_device` | a meta default device |
| attention over the cache is bottom-right aligned: the query at slot p sees slots <= p | `test_cached_attention_hand_worked_example`, `test_cached_attention_matches_sdpa_with_an_explicit_mask` | hand-worked; SDPA with a mask built here |
| what the cache holds past a query's slot never changes its output | `test_slots_past_the_query_never_matter` | the same call on a cache of zeros there |
| a prefill at slots 0..T-1 is causal attention | `test_cached_attention_of_a_prefill_is_causal_attention` | SDPA(is_causal=True) |
| prefill + one token per step gives the logits of one full forward | `test_prefill_then_steps_equal_one_full_forward` | HF's full forward |
| the cached forward equals HF's own past_key_values path | `test_cached_forward_matches_hf_past_key_values` | HF with use_cache |
| padded prompts of different lengths: each row's logits are those of the row alone | `test_padded_rows_equal_each_row_alone` | HF's forward on each row |
| greedy generation with the cache equals greedy generation without it, per row, any lengths | `test_greedy_generate_cached_matches_hf_generate` | HF generate(use_cache=False) |
| sampled generation with a generator equals a loop over the full forward with the same draws | `test_sampled_generate_cached_matches_a_sampling_loop` | HF forward + HF warpers + multinomial |
| a request past block_size is refused, naming the position; zero new tokens returns an empty (B, 0) | `test_past_block_size_is_refused_and_zero_steps_are_empty` | the limit itself |
"""

from __future__ import annotations

import math
import warnings
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from specs.hints import assert_close, likely

COMPONENT = "kvcache"
pytestmark = pytest.mark.kvcache

ATOL = 1e-5  # float32 forward passes against Hugging Face
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
SHAPE = dict(n_layer=2, n_head=2, n_embd=16, vocab_size=40, block_size=24)


# ---------------------------------------------------------------- the Hugging Face oracle


@cache
def hf_model(dtype: torch.dtype = torch.float32, std: float = 0.5) -> Any:
    """A GPT2LMHeadModel with random weights (std 0.5: its choices depend on the context)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"],
        vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["block_size"],
        attn_implementation="eager", initializer_range=std,  # eos 50256: never drawn here
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval().to(dtype)
    with torch.no_grad():  # non-trivial biases and LayerNorm affines
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours(model: Any) -> dict[str, Tensor]:
    """HF's weights with GPT-2's names in nn.Linear layout (Conv1D transposed), no lm_head."""
    return {k: (v.t().contiguous() if k.endswith(CONV1D) else v).detach().clone()
            for k, v in model.state_dict().items() if k != "lm_head.weight"}


def config_for(impl: Any) -> Any:
    from reference.model import GPTConfig

    return GPTConfig(**SHAPE)


def new_cache(impl: Any, batch: int, dtype: torch.dtype = torch.float32,
              device: str | None = None, max_len: int = SHAPE["block_size"]) -> Any:
    hs = SHAPE["n_embd"] // SHAPE["n_head"]
    return impl.KVCache.empty(n_layer=SHAPE["n_layer"], batch_size=batch,
                              n_head=SHAPE["n_head"], max_len=max_len, head_size=hs,
                              dtype=dtype, device=device)


# ---------------------------------------------------------------- the cache update


def test_cache_update_hand_worked_example(impl: Any) -> None:
    k_cache, v_cache = torch.zeros(1, 1, 4, 1), torch.zeros(1, 1, 4, 1)
    k = torch.tensor([[[[5.0], [6.0]]]])  # (B=1, nh=1, T=2, hs=1)
    impl.cache_update(k_cache, v_cache, k, -k, torch.tensor([[2, 3]]))
    keys, values = k_cache[0, 0, :, 0].tolist(), v_cache[0, 0, :, 0].tolist()
    assert keys == [0, 0, 5, 6], (
        "likely cause: the block is written at slots 0..T-1 (positions restart at zero each "
        "step); write token t at slot input_pos[b, t]" if keys == [5, 6, 0, 0]
        else "keys at slots 2 and 3") + f", got {keys}"
    assert values == [0, 0, -5, -6], (
        "likely cause: the values are never written to v_cache (only the keys are cached, or "
        "the values go into a copy); write both in place" if values == [0, 0, 0, 0]
        else "values beside the keys") + f", got {values}"


@given(data=st.data())
def test_cache_update_matches_index_copy(impl: Any, data: st.DataObject) -> None:
    """Per-row slots (rows at different positions), anywhere in the cache; other slots keep
    whatever they held."""
    B, nh = data.draw(st.integers(1, 3), label="B"), data.draw(st.integers(1, 3), label="nh")
    hs, S = data.draw(st.integers(1, 4), label="hs"), data.draw(st.integers(1, 8), label="S")
    T = data.draw(st.integers(1, S), label="T")
    slots = [data.draw(st.permutations(range(S)), label=f"slots row {b}")[:T] for b in range(B)]
    input_pos = torch.tensor(slots)  # (B, T), distinct within a row
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    k_cache, v_cache = torch.randn(B, nh, S, hs, generator=g), torch.randn(B, nh, S, hs, generator=g)
    k, v = torch.randn(B, nh, T, hs, generator=g), torch.randn(B, nh, T, hs, generator=g)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    for b in range(B):
        want_k[b].index_copy_(1, input_pos[b], k[b])
        want_v[b].index_copy_(1, input_pos[b], v[b])
    before = k_cache.clone()
    impl.cache_update(k_cache, v_cache, k, v, input_pos)
    row0 = before.clone()  # the bug's answer: every row written at row 0's slots
    for b in range(B):
        row0[b].index_copy_(1, input_pos[0], k[b])
    hint = likely(k_cache, {"every row is written at row 0's slots; input_pos is (B, T), one "
                            "row of slots per batch row": row0}, atol=0, rtol=0)
    assert torch.equal(k_cache, want_k), f"{hint or 'keys'} at {slots}"
    assert torch.equal(v_cache, want_v), f"values at {slots}"


def test_cache_update_and_attention_keep_dtype_and_device(impl: Any) -> None:
    k_cache = torch.zeros(2, 2, 5, 3, device="meta")
    v_cache = torch.zeros(2, 2, 5, 3, device="meta")
    k = torch.zeros(2, 2, 1, 3, device="meta")
    pos = torch.tensor([[1], [4]], device="meta")
    impl.cache_update(k_cache, v_cache, k, k, pos)
    out = impl.cached_attention(k, k_cache, v_cache, pos)
    assert out.device.type == "meta" and out.shape == (2, 2, 1, 3)
    k64 = torch.zeros(1, 1, 3, 2, dtype=torch.float64)
    impl.cache_update(k64, k64.clone(), torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2),
                      torch.tensor([[0]]))
    assert k64.dtype == torch.float64 and k64[0, 0, 0].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- attention over the cache


@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.float64])
def test_attention_over_a_cache_of_another_dtype(impl: Any, cache_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 2, 3, 4, generator=g)
    k_cache = torch.randn(2, 2, 6, 4, generator=g).to(cache_dtype)
    v_cache = torch.randn(2, 2, 6, 4, generator=g).to(cache_dtype)
    pos = torch.tensor([[1, 2, 3], [3, 4, 5]])
    out = impl.cached_attention(q, k_cache, v_cache, pos)
    want = impl.cached_attention(q, k_cache.float(), v_cache.float(), pos)
    assert out.dtype == torch.float32, f"attention in the queries' dtype, got {out.dtype}"
    torch.testing.assert_close(out, want)


def test_cached_attention_hand_worked_example(impl: Any) -> None:
    """One query at slot 1, q = [1, 0]; keys [1, 0], [0, 0], [9, 9] at slots 0, 1, 2: slot 2 is
    hidden, the scores are [1, 0] / sqrt(2), the weights softmax of that."""
    q = torch.tensor([[[[1.0, 0.0]]]])
    k_cache = torch.tensor([[[[1.0, 0.0], [0.0, 0.0], [9.0, 9.0]]]])
    v_cache = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]]])
    out = impl.cached_attention(q, k_cache, v_cache, torch.tensor([[1]]))
    w0 = 1.0 / (1.0 + math.exp(-1.0 / math.sqrt(2.0)))  # 0.6698
    unscaled = 1.0 / (1.0 + math.exp(-1.0))  # the scores without the 1/sqrt(hs)
    assert_close(out, torch.tensor([[[[w0, 1.0 - w0]]]]), atol=1e-6, rtol=0,
                 what="one query at slot 1", wrong={
        "the query sees slot 0 alone: the mask hides the query's own slot (s < p where s <= p "
        "is meant) or is top-left aligned (the query's index in the block, not its slot "
        "input_pos)": torch.tensor([[[[1.0, 0.0]]]]),
        "the query sees only its own new key, not the cache: attend over k_cache and v_cache "
        "up to its slot": torch.tensor([[[[0.0, 1.0]]]]),
        "the scores are not scaled by 1/sqrt(head_size)": torch.tensor([[[[unscaled, 1.0 - unscaled]]]]),
        "no mask: slot 2, past the query, is visible": lambda: F.scaled_dot_product_attention(
            q, k_cache, v_cache)}, hint="the mask is bottom-right aligned: slot s is visible to "
        "the query at slot p iff s <= p; the scores are q @ k^T / sqrt(head_size)")


def _mask(input_pos: Tensor, S: int) -> Tensor:
    """(B, 1, T, S): slot s visible to the token at slot p iff s <= p."""
    B, T = input_pos.shape
    mask = torch.zeros(B, 1, T, S, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            mask[b, 0, t, : int(input_pos[b, t]) + 1] = True
    return mask


@given(data=st.data())
def test_cached_attention_matches_sdpa_with_an_explicit_mask(impl: Any, data: st.DataObject) -> None:
    B, nh, hs, S = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)),
                    data.draw(st.integers(1, 8)), data.draw(st.integers(1, 12)))
    T = data.draw(st.integers(1, S), label="T")
    input_pos = torch.tensor([sorted(data.draw(st.permutations(range(S)))[:T]) for _ in range(B)])
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 999)))
    q = torch.randn(B, nh, T, hs, generator=g, dtype=torch.float64)
    k_cache = torch.randn(B, nh, S, hs, generator=g, dtype=torch.float64)
    v_cache = torch.randn(B, nh, S, hs, generator=g, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=_mask(input_pos, S))
    got = impl.cached_attention(q, k_cache, v_cache, input_pos)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_slots_past_the_query_never_matter(impl: Any) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 2, 4, generator=g)
    k_cache, v_cache = torch.randn(2, 2, 9, 4, generator=g), torch.randn(2, 2, 9, 4, generator=g)
    input_pos = torch.tensor([[2, 3], [5, 6]])
    cleared_k, cleared_v = k_cache.clone(), v_cache.clone()
    cleared_k[0, :, 4:] = cleared_v[0, :, 4:] = 0.0  # row 0 sees up to slot 3
    cleared_k[1, :, 7:] = cleared_v[1, :, 7:] = 1e6  # row 1 up to slot 6
    got = impl.cached_attention(q, cleared_k, cleared_v, input_pos)
    torch.testing.assert_close(got, impl.cached_attention(q, k_cache, v_cache, input_pos))


def test_cached_attention_of_a_prefill_is_causal_attention(impl: Any) -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    k_cache, v_cache = torch.randn(2, 3, 8, 4, generator=g), torch.randn(2, 3, 8, 4, generator=g)
    k_cache[:, :, :5], v_cache[:, :, :5] = k, v
    got = impl.cached_attention(q, k_cache, v_cache, torch.arange(5).expand(2, 5))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- the cached forward pass


def test_prefill_then_steps_equal_one_full_forward(impl: Any) -> None:
    hf = hf_model()
    idx = torch.randint(0, SHAPE["vocab_size"], (3, 20), generator=torch.Generator().manual_seed(2))
    cache = new_cache(impl, 3)
    prefill = impl.gpt_forward_cached(idx[:, :8], ours(hf), config_for(impl), cache,
                                      torch.arange(8).expand(3, 8))
    steps = [impl.gpt_forward_cached(idx[:, t : t + 1], ours(hf), config_for(impl), cache,
                                     torch.full((3, 1), t)) for t in range(8, 20)]
    with torch.no_grad():
        want = hf(idx).logits
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), want, atol=ATOL, rtol=0)


def test_cached_forward_matches_hf_past_key_values(impl: Any) -> None:
    hf = hf_model()
    idx = torch.randint(0, SHAPE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(3))
    cache = new_cache(impl, 2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # HF renames past_key_values
        out = hf(idx[:, :5], use_cache=True)
        past, want = out.past_key_values, [out.logits]
        for t in range(5, 12):
            out = hf(idx[:, t : t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            want.append(out.logits)
    got = [impl.gpt_forward_cached(idx[:, :5], ours(hf), config_for(impl), cache,
                                   torch.arange(5).expand(2, 5))]
    got += [impl.gpt_forward_cached(idx[:, t : t + 1], ours(hf), config_for(impl), cache,
                                    torch.full((2, 1), t)) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), atol=ATOL, rtol=0)


def test_padded_rows_equal_each_row_alone(impl: Any) -> None:
    """Right-padded prompts of lengths 7, 3, 5 prefilled as one batch, then two steps with each
    row at its own next slot: every real position's logits are those of the row alone."""
    hf = hf_model()
    g = torch.Generator().manual_seed(4)
    lengths = [7, 3, 5]
    rows = [torch.randint(0, SHAPE["vocab_size"], (n + 2,), generator=g) for n in lengths]
    idx = torch.full((3, 7), 39)  # padding: any id
    for b, n in enumerate(lengths):
        idx[b, :n] = rows[b][:n]
    cache = new_cache(impl, 3)
    prefill = impl.gpt_forward_cached(idx, ours(hf), config_for(impl), cache,
                                      torch.arange(7).expand(3, 7))
    nxt = [impl.gpt_forward_cached(torch.stack([r[n + i] for r, n in zip(rows, lengths, strict=True)])[:, None],
                                   ours(hf), config_for(impl), cache,
                                   torch.tensor(lengths)[:, None] + i) for i in range(2)]
    for b, n in enumerate(lengths):
        with torch.no_grad():
            want = hf(rows[b][None]).logits[0]  # (n + 2, V)
        got = torch.cat([prefill[b, :n], nxt[0][b], nxt[1][b]])
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=f"row {b} (length {n})")


# ---------------------------------------------------------------- generation


@given(
    lengths=st.lists(st.integers(1, 10), min_size=1, max_size=3),
    max_new=st.integers(1, 12),
    seed=st.integers(0, 999),
)
def test_greedy_generate_cached_matches_hf_generate(
    impl: Any, lengths: list[int], max_new: int, seed: int
) -> None:
    hf = hf_model(torch.float64)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, SHAPE["vocab_size"], (n,), generator=g) for n in lengths]
    idx = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):
        idx[b, : len(p)] = p
    out = impl.generate_cached(idx, ours(hf), config_for(impl), max_new, temperature=0.0,
                               lengths=torch.tensor(lengths))
    assert out.shape == (len(lengths), max_new)
    for b, p in enumerate(prompts):
        with torch.no_grad():
            want = hf.generate(p[None], max_new_tokens=max_new, do_sample=False,
                               use_cache=False, pad_token_id=0,
                               attention_mask=torch.ones(1, len(p), dtype=torch.long))
        if out[b].tolist() != want[0, len(p):].tolist() and len(p) < idx.shape[1]:
            with torch.no_grad():  # the bug's answer: the padded row read as the prompt
                padded = hf.generate(idx[b : b + 1], max_new_tokens=max_new, do_sample=False,
                                     use_cache=False, pad_token_id=0,
                                     attention_mask=torch.ones_like(idx[b : b + 1]))
            hint = likely(out[b], {"row b's first token is read at the padded width's end, not "
                                   "at its own last position lengths[b] - 1 (and its next "
                                   "tokens go at slots lengths[b], ...)": padded[0, idx.shape[1]:]},
                          atol=0, rtol=0)
        else:
            hint = ""
        assert out[b].tolist() == want[0, len(p):].tolist(), (
            f"{hint or 'greedy tokens'}: row {b}, prompt {p.tolist()} padded to {idx.shape[1]}")


def test_sampled_generate_cached_matches_a_sampling_loop(impl: Any) -> None:
    """temperature 0.8, top-k 10, top-p 0.9: the same tokens as a loop over HF's full forward
    with HF's warpers and ``torch.multinomial`` on the same generator."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    hf = hf_model(torch.float64)
    warp = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(10),
                                TopPLogitsWarper(0.9)])
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, 4), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    seq = prompt
    with torch.no_grad():
        for _ in range(15):
            scores = warp(seq, hf(seq).logits[:, -1])
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=g)
            seq = torch.cat([seq, nxt], dim=1)
    out = impl.generate_cached(prompt, ours(hf), config_for(impl), 15, temperature=0.8,
                               top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(6))
    assert out[0].tolist() == seq[0, 4:].tolist(), (
        "likely cause: the draws do not use `generator` (torch.multinomial(probs, 1, "
        "generator=generator)), or temperature, top-k and top-p are not applied in that order: "
        f"got {out[0].tolist()}, want {seq[0, 4:].tolist()}")


def test_generation_makes_nothing_on_the_default_device(impl: Any) -> None:
    """With a meta default device, CPU inputs must still give CPU results: every tensor made
    on the way names the prompt's device."""
    hf = hf_model(torch.float64)
    params, config = ours(hf), config_for(impl)
    idx = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    want = impl.generate_cached(idx, params, config, 3, temperature=0.0,
                                lengths=torch.tensor([3, 2]))
    with torch.device("meta"):
        out = impl.generate_cached(idx, params, config, 3, temperature=0.0,
                                   lengths=torch.tensor([3, 2], device="cpu"))
    assert out.device.type == "cpu" and torch.equal(out, want)


def test_past_block_size_is_refused_and_zero_steps_are_empty(impl: Any) -> None:
    hf = hf_model()
    params, config = ours(hf), config_for(impl)
    idx = torch.zeros(2, 20, dtype=torch.long)
    with pytest.raises(ValueError) as info:
        impl.generate_cached(idx, params, config, 6, temperature=0.0)  # needs position 24
    assert "24" in str(info.value) and "block_size" in str(info.value), str(info.value)
    ok = impl.generate_cached(idx, params, config, 5, temperature=0.0)  # up to position 23
    assert ok.shape == (2, 5)
    empty = impl.generate_cached(idx, params, config, 0)
    assert empty.shape == (2, 0) and empty.dtype == idx.dtype
