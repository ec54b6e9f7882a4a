"""The reference GPT against Hugging Face transformers: weights both ways, files both ways.

Oracle: ``transformers.GPT2LMHeadModel`` built offline from a ``GPT2Config`` with random weights
(biases and LayerNorms perturbed so none is trivial), eager attention, eval mode, float32.
Tolerance: 1e-5 max abs difference of the logits (the issue's bar; measured ~2e-7).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from reference.checkpoint import load_weights
from reference.hf import (
    config_from_hf,
    config_to_hf,
    from_hf_state_dict,
    infer_config,
    load_gpt2,
    save_hf,
    to_hf_state_dict,
)
from reference.model import GPT, GPTConfig

pytestmark = pytest.mark.gpt
ATOL = 1e-5

transformers = pytest.importorskip("transformers")


def hf_model(n_layer: int = 2, n_head: int = 4, n_embd: int = 32, vocab: int = 100, block: int = 16,
             attn: str = "eager") -> Any:  # fmt: skip
    config = transformers.GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab, n_positions=block,
        bos_token_id=0, eos_token_id=0, attn_implementation=attn,
    )  # fmt: skip
    torch.manual_seed(n_layer * 1000 + n_embd)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours_from(model: Any) -> GPT:
    return load_weights(
        GPT(config_from_hf(model.config.to_dict())), from_hf_state_dict(model.state_dict())
    ).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.mark.parametrize(
    ("shape", "batch", "length"),
    [
        ((2, 4, 32, 100, 16), 1, 1),
        ((2, 4, 32, 100, 16), 3, 16),
        ((1, 1, 16, 50, 8), 2, 5),  # one head
        ((4, 2, 48, 257, 32), 2, 32),
        ((3, 8, 64, 300, 24), 4, 19),
    ],
)
def test_reference_model_matches_hf_gpt2(
    shape: tuple[int, int, int, int, int], batch: int, length: int
) -> None:
    hf = hf_model(*shape)
    model = ours_from(hf)
    idx = torch.randint(0, shape[3], (batch, length))
    with torch.no_grad():
        diff = max_diff(model(idx)[0], hf(idx).logits)
    assert diff <= ATOL, f"logits differ from HF by {diff:.3g} for {shape}, B={batch}, T={length}"


def test_reference_model_matches_hf_sdpa_attention() -> None:
    hf = hf_model(attn="sdpa")
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert max_diff(ours_from(hf)(idx)[0], hf(idx).logits) <= ATOL


def perturbed_gpt(config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_export_to_hf_state_dict_loads_strictly_and_agrees() -> None:
    config = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32)
    model = perturbed_gpt(config)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(config))).eval()
    hf.load_state_dict(to_hf_state_dict(model.state_dict()), strict=True)
    idx = torch.randint(0, 100, (3, 16))
    with torch.no_grad():
        assert max_diff(model(idx)[0], hf(idx).logits) <= ATOL
    back = from_hf_state_dict(to_hf_state_dict(model.state_dict()))
    ours = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


def test_save_hf_is_read_by_transformers_from_pretrained(tmp_path: Path) -> None:
    config = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32)
    model = perturbed_gpt(config)
    save_hf(model, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert max_diff(model(idx)[0], hf(idx).logits) <= ATOL
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr(), "HF untied it"


def test_load_gpt2_reads_a_hf_save_pretrained_directory(tmp_path: Path) -> None:
    hf = hf_model(3, 2, 48, 257, 32)
    hf.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    model = load_gpt2(tmp_path / "ckpt")
    assert model.config == GPTConfig(
        block_size=32, vocab_size=257, n_layer=3, n_head=2, n_embd=48, dropout=0.1
    )
    assert not model.training, "a loaded model is in eval mode"
    assert model.lm_head.weight is model.transformer.wte.weight, "the head must stay tied"
    idx = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        assert max_diff(model(idx)[0], hf(idx).logits) <= ATOL


def test_load_gpt2_reads_a_bare_hub_layout_safetensors_file(tmp_path: Path) -> None:
    """The hub's gpt2 file: GPT2Model keys (no 'transformer.'), mask buffers, GPT-2 widths."""
    hf = hf_model(1, 12, 768, 64, 8)  # n_embd 768: n_head 12 is inferred
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
             if k != "lm_head.weight"}  # fmt: skip
    state["h.0.attn.bias"] = torch.ones(1, 1, 8, 8).tril()  # what older transformers saved
    save_file(state, str(tmp_path / "gpt2.safetensors"))
    model = load_gpt2(tmp_path / "gpt2.safetensors")
    assert (model.config.n_head, model.config.n_layer, model.config.block_size) == (12, 1, 8)
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert max_diff(model(idx)[0], hf(idx).logits) <= ATOL


def test_load_gpt2_needs_n_head_for_a_width_gpt2_never_had(tmp_path: Path) -> None:
    hf = hf_model()
    save_file({k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "m.safetensors"))  # fmt: skip
    with pytest.raises(ValueError, match=r"n_embd 32.*pass n_head"):
        load_gpt2(tmp_path / "m.safetensors")
    model = load_gpt2(tmp_path / "m.safetensors", n_head=4)
    idx = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        assert max_diff(model(idx)[0], hf(idx).logits) <= ATOL


class _Boom:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, ("raise SystemExit('pickle executed')",))


def test_load_gpt2_refuses_a_pickle_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(GPTConfig())))
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*pickle"):
        load_gpt2(tmp_path)


def test_load_gpt2_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gpt2(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("activation_function", "relu"),
        ("layer_norm_epsilon", 1e-6),
        ("n_inner", 100),
        ("scale_attn_by_inverse_layer_idx", True),
        ("tie_word_embeddings", False),
        ("model_type", "llama"),
    ],
)
def test_config_from_hf_names_an_unsupported_setting(setting: str, value: Any) -> None:
    hf = {**config_to_hf(GPTConfig()), setting: value}
    with pytest.raises(ValueError, match=setting if setting != "model_type" else "llama"):
        config_from_hf(hf)


def test_config_round_trips_through_hf_format() -> None:
    config = GPTConfig(block_size=64, vocab_size=300, n_layer=3, n_head=2, n_embd=48, dropout=0.1)
    assert config_from_hf(config_to_hf(config)) == config
    assert config_from_hf(transformers.GPT2Config().to_dict()) == GPTConfig(dropout=0.1)


def test_an_untied_or_bias_free_model_is_rejected() -> None:
    state = to_hf_state_dict(
        GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=1, n_embd=8)).state_dict()
    )
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="untied"):
        from_hf_state_dict(state)
    with pytest.raises(ValueError, match="bias=False"):
        config_to_hf(GPTConfig(bias=False))


def test_infer_config_reads_the_shapes() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=3, n_head=2, n_embd=8, bias=False))
    assert infer_config(model.state_dict(), n_head=2) == model.config
