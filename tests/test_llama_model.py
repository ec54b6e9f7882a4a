"""The library's Llama-style model (reference/llama.py) against Hugging Face, built offline.

The oracles are ``transformers.LlamaForCausalLM`` and ``MixtralForCausalLM`` built from a config
written here with Hugging Face's own names, with random weights (every parameter, the norms'
included, so a bug in any of them shows), in float32 and eager attention. Our model takes
their weights through ``Llama.from_hf``. Tolerances: logits and losses 1e-5 absolute (O(1)
values through 2 layers: about a hundred float32 ulps); gradients 1e-5 relative to each
gradient's largest entry (their scales differ by orders of magnitude between parameters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from pydantic import ValidationError

from reference.arch import build_model, model_config_from_dict
from reference.hf_llama import (
    from_hf_state_dict,
    llama_config_from_hf,
    llama_config_to_hf,
    load_hf_llama,
    save_hf_llama,
    to_hf_state_dict,
)
from reference.llama import Llama, LlamaConfig
from reference.model import GPT, GPTConfig
from reference.rope import RopeScaling

TOL = 1e-5
V, C, NH, L, S = 97, 32, 4, 2, 64  # vocab, width, query heads, layers, max positions


def hf_llama(n_kv: int = NH, tied: bool = False, rope: dict[str, Any] | None = None,
             seed: int = 0) -> Any:
    """A LlamaForCausalLM from Hugging Face's own config names, every weight random."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=48, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=n_kv, max_position_embeddings=S,
        rms_norm_eps=1e-5, tie_word_embeddings=tied,
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 500.0},
        attn_implementation="eager",
    )
    return randomize(transformers.LlamaForCausalLM(config))


def hf_mixtral(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        vocab_size=V, hidden_size=C, intermediate_size=24, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=2, max_position_embeddings=S,
        rms_norm_eps=1e-5, num_local_experts=4, num_experts_per_tok=2,
        router_aux_loss_coef=0.02, output_router_logits=True, sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
    )
    return randomize(transformers.MixtralForCausalLM(config))


def randomize(model: Any) -> Any:
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.15 if "norm" not in name else 0.3
            p.copy_(torch.randn_like(p) * scale + (1.0 if "norm" in name else 0.0))
    return model.eval()


def batch(B: int = 2, T: int = 13, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, atol=TOL, rtol=0,
                               msg=lambda m: f"{what} differs from Hugging Face:\n{m}")

def assert_grads_equal_hf(ours: Llama, hf: Any, case: str) -> None:
    """Every parameter's gradient, after ``backward`` on both, equals Hugging Face's (in its
    layout), within ``TOL`` of the gradient's largest entry."""
    ours_grads = to_hf_state_dict({n: p.grad for n, p in ours.named_parameters()
                                   if p.grad is not None}, ours.config)
    for name, p in hf.named_parameters():
        want = p.grad
        torch.testing.assert_close(
            ours_grads[name], want, atol=TOL * float(want.abs().max()), rtol=0,
            msg=lambda m, name=name: f"{case}: grad of {name}:\n{m}")


CASES = {
    "mha": {},
    "gqa": {"n_kv": 2},
    "mqa": {"n_kv": 1},
    "gqa_tied": {"n_kv": 2, "tied": True},
    "linear_scaling": {"n_kv": 2, "rope": {"rope_type": "linear", "rope_theta": 500.0,
                                           "factor": 4.0}},
    "yarn": {"n_kv": 2, "rope": {"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0,
                                 "original_max_position_embeddings": 16}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_loss_and_gradients_match_hf_llama(case: str) -> None:
    hf = hf_llama(**CASES[case])
    ours = Llama.from_hf(hf).eval()
    idx = batch(T=40)  # past yarn's original 16 positions
    targets = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)  # we do not shift
    out = hf(input_ids=idx, labels=idx)  # Hugging Face shifts the labels itself
    logits, loss = ours(idx, targets)
    assert_close(logits, out.logits, f"{case}: logits")
    assert loss is not None
    assert_close(loss, out.loss, f"{case}: loss")
    loss.backward()
    out.loss.backward()
    assert_grads_equal_hf(ours, hf, case)


def test_config_round_trips_through_the_hf_layout() -> None:
    for case in CASES.values():
        cfg = Llama.from_hf(hf_llama(**case)).config
        assert llama_config_from_hf(llama_config_to_hf(cfg)) == cfg
    assert Llama.from_hf(hf_llama(n_kv=2)).config.n_kv_head == 2
    scaling = Llama.from_hf(hf_llama(**CASES["yarn"])).config.rope_scaling
    assert scaling == RopeScaling(type="yarn", factor=4.0, original_max_position_embeddings=16)


def test_state_dict_round_trip_is_exact_both_ways() -> None:
    hf = hf_mixtral()
    hf_state = hf.state_dict()
    ours = Llama.from_hf(hf)
    back = to_hf_state_dict(ours.state_dict(), ours.config)
    assert back.keys() == hf_state.keys()
    for k, v in hf_state.items():
        assert torch.equal(back[k], v), k
    again = from_hf_state_dict(back, ours.config)
    for k, v in ours.state_dict().items():
        assert torch.equal(again[k], v), k


def test_interleaved_layout_exports_to_the_same_hf_logits() -> None:
    """Meta's pairing (2i, 2i+1) is Hugging Face's (i, i+hs/2) with q, k rows permuted."""
    torch.manual_seed(0)
    ours = randomize(Llama(LlamaConfig(block_size=S, vocab_size=V, n_layer=L, n_head=NH,
                                       n_kv_head=2, n_embd=C, rope_layout="interleaved")))
    hf = ours.to_hf().eval()
    idx = batch()
    assert_close(ours(idx)[0], hf(input_ids=idx).logits, "interleaved model exported")
    half = Llama(ours.config.model_copy(update={"rope_layout": "half"})).eval()
    half.load_state_dict(ours.state_dict())  # the same weights, the other pairing: differs
    assert not torch.allclose(half(idx)[0], ours(idx)[0], atol=1e-3)
    back = Llama.from_hf(hf)  # Hugging Face has no layout field: it comes back half-split
    assert_close(back(idx)[0], ours(idx)[0], "interleaved -> HF -> half-split")


def test_mixtral_logits_loss_and_expert_counts_match_hf() -> None:
    hf = hf_mixtral()
    ours = Llama.from_hf(hf).eval()
    assert ours.config.n_experts == 4 and ours.config.router_aux_loss_coef == 0.02
    idx = batch(T=11)
    targets = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)
    out = hf(input_ids=idx, labels=idx)
    logits, loss = ours(idx, targets)
    assert_close(logits, out.logits, "mixtral logits")
    assert loss is not None
    assert_close(loss, out.loss, "mixtral loss with the auxiliary loss")  # HF: ce + coef * aux
    counts = ours.last_expert_counts
    assert counts is not None and counts.shape == (L, 4)
    assert counts.sum(dim=1).tolist() == [2 * 11 * 2] * L  # every token to 2 experts per layer
    loss.backward()
    out.loss.backward()
    assert_grads_equal_hf(ours, hf, "mixtral")


def test_save_and_load_in_the_hf_layout(tmp_path: Path) -> None:
    for name, hf in (("llama_tied", hf_llama(n_kv=2, tied=True)), ("mixtral", hf_mixtral())):
        ours = Llama.from_hf(hf).eval()
        save_hf_llama(ours, tmp_path / name)
        cls = (transformers.MixtralForCausalLM if ours.config.n_experts
               else transformers.LlamaForCausalLM)
        loaded = cls.from_pretrained(tmp_path / name).eval()
        idx = batch()
        assert_close(loaded(input_ids=idx).logits, hf(input_ids=idx).logits, f"{name} saved")
        assert_close(load_hf_llama(tmp_path / name)(idx)[0], ours(idx)[0], f"{name} loaded")


@pytest.mark.parametrize("n_experts", [0, 4])
def test_kv_cache_decode_equals_the_full_forward(n_experts: int) -> None:
    """GQA (n_kv_head 2): prefill 5 tokens, then one at a time, rows at their own positions."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=S, vocab_size=V, n_layer=L, n_head=NH, n_kv_head=2,
                              n_embd=C, n_experts=n_experts)).eval()
    idx = batch(T=12)
    full = model(idx)[0]
    cache = model.new_cache(batch_size=2, max_len=16)
    assert cache.k[0].shape == (2, 2, 16, C // NH)  # n_kv_head heads, not n_head
    pos = torch.arange(12).expand(2, 12)
    steps = [model(idx[:, :5], cache=cache, input_pos=pos[:, :5])[0]]
    steps += [model(idx[:, t:t + 1], cache=cache, input_pos=pos[:, t:t + 1])[0]
              for t in range(5, 12)]
    assert_close(torch.cat(steps, dim=1), full, "prefill + decode vs the full forward")
    # a row at other slots: row 1 alone, shifted by 3 in a fresh cache, sees the same positions?
    # no: its rotary positions change, and so do its logits (positions are input_pos)
    cache = model.new_cache(batch_size=1, max_len=16)
    shifted = model(idx[1:, :5], cache=cache, input_pos=torch.arange(3, 8)[None])[0]
    assert not torch.allclose(shifted, full[1:, :5], atol=1e-3)


def test_bfloat16_model_keeps_float32_rotary_tables() -> None:
    model = Llama(LlamaConfig(block_size=S, vocab_size=V, n_layer=1, n_head=NH, n_embd=C))
    reference = model.rope_cos.clone()
    model = model.to(torch.bfloat16)
    assert model.rope_cos.dtype == torch.float32 and torch.equal(model.rope_cos, reference)
    assert model(batch())[0].dtype == torch.bfloat16


def test_meta_construction_then_to_empty_computes_the_rotary_tables() -> None:
    """How checkpoints are loaded without initialising twice: build on meta, to_empty, load."""
    config = LlamaConfig(block_size=S, vocab_size=V, n_layer=1, n_head=NH, n_embd=C)
    with torch.device("meta"):
        model = Llama(config)
    model = model.to_empty(device="cpu")
    assert torch.equal(model.rope_cos, Llama(config).rope_cos)


@pytest.mark.parametrize("n_experts", [0, 4])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(n_experts: int) -> None:
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=S, vocab_size=V, n_layer=L, n_head=NH, n_kv_head=2,
                              n_embd=C, n_experts=n_experts)).train()
    idx = batch()
    grads = []
    for enabled in (False, True):
        model.set_activation_checkpointing(enabled).zero_grad()
        loss = model(idx, idx)[1]
        assert loss is not None
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_num_parameters_counts_a_tied_head_once() -> None:
    untied = Llama(LlamaConfig(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_embd=8))
    tied = Llama(untied.config.model_copy(update={"tie_word_embeddings": True}))
    assert untied.num_parameters() - tied.num_parameters() == V * 8
    # untied: the lookup table is left out, the head stays; tied: the one matrix is the head
    assert untied.num_parameters(non_embedding=True) == tied.num_parameters(non_embedding=True)
    assert tied.num_parameters(non_embedding=True) == tied.num_parameters()


def test_build_model_and_config_dicts() -> None:
    old = GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8).model_dump()
    old.pop("arch")  # a checkpoint written before there was a choice
    cfg = model_config_from_dict(old)
    assert isinstance(cfg, GPTConfig) and isinstance(build_model(cfg), GPT)
    without_bias = {k: v for k, v in old.items() if k != "bias"}  # not a Llama field
    llama = model_config_from_dict({**without_bias, "arch": "llama", "n_kv_head": 1})
    assert isinstance(llama, LlamaConfig) and isinstance(build_model(llama), Llama)
    assert model_config_from_dict(llama.model_dump()) == llama  # dumps round-trip
    with pytest.raises(ValidationError, match="arch"):
        model_config_from_dict({**old, "arch": "mamba"})
    with pytest.raises(ValidationError, match="n_kv_head 3 must divide n_head 4"):
        LlamaConfig(n_head=4, n_kv_head=3, n_embd=32)
    with pytest.raises(ValidationError, match="even"):
        LlamaConfig(n_head=4, n_embd=12)
    with pytest.raises(ValidationError, match="original_max_position_embeddings"):
        RopeScaling(type="yarn", factor=2.0)


def test_forward_checks_its_inputs_as_gpt_does() -> None:
    model = Llama(LlamaConfig(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match="exceeds block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="cache and input_pos go together"):
        model(torch.zeros(1, 4, dtype=torch.long), cache=model.new_cache(1))


# ---------------------------------------------------------------- sliding window (Mistral)

W = 5  # the sliding window: each query sees itself and the 4 tokens before it


def hf_mistral(n_kv: int = 2, seed: int = 0, max_positions: int = S) -> Any:
    """A MistralForCausalLM (Llama with a sliding-window mask), every weight random."""
    torch.manual_seed(seed)
    config = transformers.MistralConfig(
        vocab_size=V, hidden_size=C, intermediate_size=48, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=n_kv, max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, sliding_window=W,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        attn_implementation="eager",
    )
    return randomize(transformers.MistralForCausalLM(config))


@pytest.mark.parametrize("n_kv", [NH, 2])
def test_sliding_window_logits_loss_and_gradients_match_hf_mistral(n_kv: int) -> None:
    """T = 30 > W = 5: the window masks; Hugging Face's convention (key j seen by query i when
    i - W < j <= i) is ours."""
    hf = hf_mistral(n_kv)
    ours = Llama.from_hf(hf).eval()
    assert ours.config.sliding_window == W and ours.config.n_kv_head == n_kv
    idx = batch(T=30)
    targets = torch.cat([idx[:, 1:], torch.full_like(idx[:, :1], -1)], dim=1)
    out = hf(input_ids=idx, labels=idx)
    logits, loss = ours(idx, targets)
    assert_close(logits, out.logits, "sliding-window logits")
    assert loss is not None
    assert_close(loss, out.loss, "sliding-window loss")
    full = Llama(ours.config.model_copy(update={"sliding_window": None})).eval()
    full.load_state_dict(ours.state_dict())  # the same weights without the window: differs
    assert not torch.allclose(full(idx)[0][:, W:], logits[:, W:], atol=1e-3)
    assert_close(full(idx)[0][:, :W], logits[:, :W], "the first W tokens, window or not")
    loss.backward()
    out.loss.backward()
    assert_grads_equal_hf(ours, hf, "sliding window")


def test_sliding_window_exports_and_saves_as_mistral(tmp_path: Path) -> None:
    hf = hf_mistral()
    ours = Llama.from_hf(hf).eval()
    hf_dict = {"model_type": "mistral", **llama_config_to_hf(ours.config)}
    assert llama_config_from_hf(hf_dict) == ours.config
    back = ours.to_hf().eval()
    assert isinstance(back, transformers.MistralForCausalLM)
    idx = batch(T=20)
    assert_close(back(input_ids=idx).logits, ours(idx)[0], "exported to Mistral")
    save_hf_llama(ours, tmp_path / "mistral")
    loaded = transformers.MistralForCausalLM.from_pretrained(tmp_path / "mistral").eval()
    assert loaded.config.sliding_window == W
    assert_close(loaded(input_ids=idx).logits, hf(input_ids=idx).logits, "mistral saved")
    assert_close(load_hf_llama(tmp_path / "mistral")(idx)[0], ours(idx)[0], "mistral loaded")
    with pytest.raises(ValueError, match="sliding_window"):  # Llama's layout has no window
        llama_config_from_hf({**llama_config_to_hf(ours.config), "model_type": "llama"})
    biased = ours.config.model_copy(update={"attention_bias": True})
    with pytest.raises(ValueError, match="sliding_window=5 with qk_norm or attention_bias"):
        biased.check_hf_expressible()


def test_mixtral_with_a_sliding_window_matches_hf() -> None:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=V, hidden_size=C, intermediate_size=24, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=2, max_position_embeddings=S,
        rms_norm_eps=1e-5, num_local_experts=4, num_experts_per_tok=2, sliding_window=W,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attn_implementation="eager",
    )
    hf = randomize(transformers.MixtralForCausalLM(config))
    ours = Llama.from_hf(hf).eval()
    assert ours.config.sliding_window == W and ours.config.n_experts == 4
    idx = batch(T=20)
    assert_close(ours(idx)[0], hf(input_ids=idx).logits, "mixtral with a sliding window")


@pytest.mark.parametrize("ring", [False, True])
def test_sliding_window_cache_decode_equals_hf_mistral(ring: bool) -> None:
    """Prefill 7 tokens, then one at a time: the plain cache (a window mask over S slots) and
    the ring of W slots, which goes on past block_size (16 here, 40 positions), both equal
    Mistral's full forward. The ring's rotary angles come from the positions, not the tables."""
    hf = hf_mistral(max_positions=64)
    ours = Llama.from_hf(hf).eval()
    block = 16 if ring else 64
    ours = Llama(ours.config.model_copy(update={"block_size": block})).eval()
    ours.load_state_dict(Llama.from_hf(hf).state_dict())
    idx = batch(T=40)
    cache = ours.new_cache(2, ring=ring)
    assert cache.max_len == (W if ring else 64)
    pos = torch.arange(40).expand(2, 40)
    steps = [ours(idx[:, :7], cache=cache, input_pos=pos[:, :7])[0]]
    steps += [ours(idx[:, t:t + 1], cache=cache, input_pos=pos[:, t:t + 1])[0]
              for t in range(7, 40)]
    assert_close(torch.cat(steps, dim=1), hf(input_ids=idx).logits, "cached decode vs HF")


def test_a_ring_cache_takes_a_prompt_longer_than_itself() -> None:
    """A 23-token prefill into 5 slots, then decoding: the block attends to its own keys
    before its last 5 are written."""
    hf = hf_mistral()
    ours = Llama.from_hf(hf).eval()
    idx = batch(T=30)
    cache = ours.new_cache(2, ring=True)
    pos = torch.arange(30).expand(2, 30)
    steps = [ours(idx[:, :23], cache=cache, input_pos=pos[:, :23])[0]]
    steps += [ours(idx[:, t:t + 1], cache=cache, input_pos=pos[:, t:t + 1])[0]
              for t in range(23, 30)]
    assert_close(torch.cat(steps, dim=1), hf(input_ids=idx).logits, "long prefill into a ring")
    assert cache.pos is not None and sorted(cache.pos[0].tolist()) == list(range(25, 30))
