"""The Llama model's speed options (reference/llama.py): qk_norm, ReLU², zero-initialised
projections, logit soft-capping; and building the model on the meta device.

Oracles: ``transformers.Qwen3ForCausalLM`` built offline from a config with random weights
(qk_norm is Qwen3's q_norm / k_norm), Gemma 2's soft-capping formula written out by hand
(``logits / cap``, ``tanh``, ``* cap``, as ``Gemma2ForCausalLM.forward`` does), and ReLU² worked
by hand. Tolerances: 1e-5 absolute in float32 (O(1) logits through 2 layers).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import transformers
from pydantic import ValidationError

from reference.arch import model_config_from_dict
from reference.llama import Llama, LlamaConfig, ReLU2

TOL = 1e-5
V, C, NH, L, S = 97, 32, 4, 2, 64


def small(**options: Any) -> LlamaConfig:
    return LlamaConfig(block_size=S, vocab_size=V, n_layer=L, n_head=NH, n_kv_head=2, n_embd=C,
                       intermediate_size=48, rope_theta=500.0, **options)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the norms' too), so a bug in any of them shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return model


def hf_qwen3(seed: int = 0) -> Any:
    config = transformers.Qwen3Config(
        vocab_size=V, hidden_size=C, intermediate_size=48, num_hidden_layers=L,
        num_attention_heads=NH, num_key_value_heads=2, head_dim=C // NH,
        max_position_embeddings=S, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        use_sliding_window=False, attention_bias=False, attn_implementation="eager",
    )
    return randomize(transformers.Qwen3ForCausalLM(config), seed).eval()


def test_qk_norm_matches_hugging_face_qwen3() -> None:
    hf = hf_qwen3()
    ours = Llama(small(qk_norm=True))
    ours.load_state_dict(hf.state_dict(), strict=True)  # Qwen3's names are ours
    ours.eval()
    idx = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, V, (2, 17), generator=torch.Generator().manual_seed(2))
    logits, loss = ours(idx, targets)
    out = hf(input_ids=idx, labels=None)
    torch.testing.assert_close(logits, out.logits, atol=TOL, rtol=0)
    hf_loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V), targets.reshape(-1))
    assert loss is not None
    torch.testing.assert_close(loss, hf_loss, atol=TOL, rtol=0)
    loss.backward()
    hf_loss.backward()
    hf_grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        g, expected = p.grad, hf_grads[name].grad
        assert g is not None and expected is not None, name
        scale = float(expected.abs().max())  # relative to the gradient's largest entry
        torch.testing.assert_close(g, expected, atol=TOL * max(scale, 1e-3), rtol=0, msg=name)


def test_qk_norm_exports_as_qwen3_and_decodes_with_the_cache() -> None:
    ours = randomize(Llama(small(qk_norm=True)), seed=3).eval()
    hf = ours.to_hf()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    idx = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hf(input_ids=idx).logits, ours(idx)[0], atol=TOL, rtol=0)
    # the cached forward normalises k before it is stored: decode equals the full forward
    cache = ours.new_cache(1, 16)
    pos = torch.arange(9).view(1, 9)
    prefill, _ = ours(idx[:, :5], cache=cache, input_pos=pos[:, :5])
    steps = [ours(idx[:, t:t + 1], cache=cache, input_pos=pos[:, t:t + 1])[0]
             for t in range(5, 9)]
    torch.testing.assert_close(torch.cat([prefill, *steps], 1), ours(idx)[0], atol=TOL, rtol=0)


def test_relu2_feed_forward_hand_worked() -> None:
    mlp = ReLU2(n_embd=2, hidden=3)
    with torch.no_grad():
        mlp.up_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        mlp.down_proj.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    # x = (2, -3): up = (2, -3, -1), relu² = (4, 0, 0), down = (4 + 0, 0)
    torch.testing.assert_close(mlp(torch.tensor([[2.0, -3.0]])), torch.tensor([[4.0, 0.0]]),
                               atol=0, rtol=0)
    model = Llama(small(mlp="relu2"))
    names = {n for n, _ in model.named_parameters() if ".mlp." in n}
    assert names == {f"model.layers.{i}.mlp.{p}_proj.weight" for i in range(L)
                     for p in ("up", "down")}
    assert tuple(model(torch.zeros(1, 3, dtype=torch.long))[0].shape) == (1, 3, V)


def test_zero_init_proj_makes_every_block_the_identity() -> None:
    model = Llama(small(zero_init_proj=True, n_experts=2, n_experts_per_tok=1))
    zeroed = [n for n, p in model.named_parameters()
              if n.endswith(("o_proj.weight", "down_proj.weight"))]
    assert len(zeroed) == L * (1 + 2)  # o_proj and each expert's down_proj
    params = dict(model.named_parameters())
    assert all(float(params[n].detach().abs().max()) == 0.0 for n in zeroed)
    x = torch.randn(2, 5, C)
    cos, sin = model.rope_cos[:5], model.rope_sin[:5]
    for block in model.model.layers:
        torch.testing.assert_close(block(x, cos, sin), x, atol=0, rtol=0)
    default = Llama(small())
    assert float(default.model.layers[0].self_attn.o_proj.weight.detach().abs().max()) > 0


def test_logit_softcap_is_gemma2s_formula() -> None:
    capped = randomize(Llama(small(logit_softcap=2.0)), seed=5).eval()
    plain = Llama(small())
    plain.load_state_dict(capped.state_dict())
    idx = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(6))
    raw = plain.eval()(idx)[0]
    assert float(raw.detach().abs().max()) > 2.0  # the cap binds somewhere
    # Gemma2ForCausalLM: logits = logits / cap; logits = tanh(logits); logits = logits * cap
    expected = torch.tanh(raw / 2.0) * 2.0
    logits, loss = capped(idx, idx)
    torch.testing.assert_close(logits, expected, atol=TOL, rtol=0)
    assert float(logits.abs().max()) < 2.0
    assert loss is not None and math.isfinite(float(loss))


@pytest.mark.parametrize("options, named", [
    ({"mlp": "relu2"}, "mlp='relu2'"),
    ({"logit_softcap": 30.0}, "logit_softcap=30.0"),
    ({"qk_norm": True, "rope_layout": "interleaved"}, "qk_norm"),
])
def test_hf_export_refuses_what_hugging_face_cannot_express(
    options: dict[str, Any], named: str
) -> None:
    model = Llama(small(**options))
    with pytest.raises(ValueError, match=f"cannot express .*{named}") as info:
        model.to_hf()
    assert "\n" not in str(info.value)
    assert Llama(small(zero_init_proj=True)).config.hf_unsupported() == []


def test_options_are_validated_and_read_from_a_config_dict() -> None:
    config = model_config_from_dict({"arch": "llama", "block_size": 8, "vocab_size": 10,
                                     "n_layer": 1, "n_head": 2, "n_embd": 8, "qk_norm": True,
                                     "mlp": "relu2", "zero_init_proj": True,
                                     "logit_softcap": 15.0})
    assert isinstance(config, LlamaConfig) and config.mlp == "relu2" and config.qk_norm
    with pytest.raises(ValidationError, match="mlp"):
        small(mlp="gelu")
    with pytest.raises(ValidationError, match="logit_softcap"):
        small(logit_softcap=0.0)
    with pytest.raises(ValidationError, match="experts are SwiGLU"):
        small(mlp="relu2", n_experts=2)


def test_llama_builds_on_the_meta_device_and_loads_a_state_dict() -> None:
    source = randomize(Llama(small(qk_norm=True)), seed=7).eval()
    with torch.device("meta"):
        model = Llama(small(qk_norm=True))
    assert model.lm_head.weight.device.type == "meta" and model.rope_cos.device.type == "meta"
    model.to_empty(device="cpu")  # _apply recomputes the rotary tables on the CPU
    model.load_state_dict(source.state_dict(), strict=True)
    idx = torch.randint(0, V, (1, 11), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(model.eval()(idx)[0], source(idx)[0], atol=0, rtol=0)
