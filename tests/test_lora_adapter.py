"""The library's LoRA beyond the spec: adapter files, loading onto a base checkpoint, unwrapping,
parameter counts, the optimizer's weight-decay groups, and the errors at the edges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reference.checkpoint import WEIGHTS_NAME, load_checkpoint, save_checkpoint
from reference.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    find_targets,
    load_adapter,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    save_adapter,
    trainable_parameters,
    unwrap_lora,
)
from reference.model import GPT, GPTConfig
from reference.trainer.optim import param_groups

pytestmark = pytest.mark.lora

CONFIG = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)


def lora_gpt(seed: int = 0, **settings: object) -> GPT:
    """A GPT with LoRA on the default targets and random B (so the adapter changes the output)."""
    torch.manual_seed(seed)
    model = GPT(CONFIG).eval()
    apply_lora(model, **{"r": 4, "alpha": 8, **settings})  # type: ignore[arg-type]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
    return model


def ids() -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))


def base_and_adapter(tmp_path: Path) -> tuple[GPT, Path, Path]:
    """A LoRA model, its base saved as a checkpoint and its adapter saved alone."""
    model = lora_gpt()
    base = GPT(CONFIG)
    base.load_state_dict({k.replace(".base.", "."): v for k, v in model.state_dict().items()
                          if ".lora_" not in k})
    save_checkpoint(base, tmp_path / "base")
    save_adapter(model, tmp_path / "adapter", base=str(tmp_path / "base"),
                 extra={"new_rows": torch.arange(6.0).view(2, 3)})
    return model, tmp_path / "base", tmp_path / "adapter"


def test_an_adapter_on_its_base_checkpoint_gives_the_same_logits(tmp_path: Path) -> None:
    model, base_dir, adapter_dir = base_and_adapter(tmp_path)
    loaded = load_checkpoint(base_dir)
    extra = load_adapter(loaded, adapter_dir)
    assert torch.equal(extra["new_rows"], torch.arange(6.0).view(2, 3))
    with torch.no_grad():
        assert torch.equal(loaded(ids())[0], model(ids())[0])
    assert lora_state_dict(loaded).keys() == lora_state_dict(model).keys()
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == \
        set(lora_state_dict(model)), "only the loaded A and B are trainable"
    assert all(not m.training for m in loaded.modules()), "the eval model stays in eval mode"


def test_the_adapter_files_hold_a_and_b_and_the_settings(tmp_path: Path) -> None:
    model, base_dir, adapter_dir = base_and_adapter(tmp_path)
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    assert tensors.keys() == lora_state_dict(model).keys() | {"new_rows"}
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    assert config == {
        "adapter_type": "lora", "format_version": 1, "r": 4, "alpha": 8, "dropout": 0.0,
        "rslora": False, "targets": [f"transformer.h.*.{t}" for t in DEFAULT_TARGETS],
        "extra": ["new_rows"], "base_config": CONFIG.model_dump(), "base": str(base_dir),
    }
    small = (adapter_dir / ADAPTER_WEIGHTS).stat().st_size
    full = (base_dir / WEIGHTS_NAME).stat().st_size
    assert small < full / 4, f"adapter {small} bytes vs checkpoint {full}"
    assert not [p for p in adapter_dir.iterdir() if p.name.startswith(".")], "temporary files left"


def test_load_adapter_with_rslora_and_dropout_keeps_the_settings(tmp_path: Path) -> None:
    model = lora_gpt(rslora=True, dropout=0.1, targets=["mlp.c_fc"])
    save_adapter(model, tmp_path / "a")
    fresh = GPT(CONFIG).eval()
    fresh.load_state_dict({k.replace(".base.", "."): v for k, v in model.state_dict().items()
                           if ".lora_" not in k})
    assert load_adapter(fresh, tmp_path / "a") == {}
    layer = fresh.transformer.h[1].mlp.c_fc
    assert isinstance(layer, LoRALinear)
    assert (layer.r, layer.alpha, layer.rslora, layer.dropout.p) == (4, 8, True, 0.1)
    assert isinstance(fresh.transformer.h[0].attn.c_attn, nn.Linear)
    with torch.no_grad():
        assert torch.equal(fresh(ids())[0], model(ids())[0])


def test_load_adapter_refuses_a_mismatch_naming_the_file(tmp_path: Path) -> None:
    _, base_dir, adapter_dir = base_and_adapter(tmp_path)
    config_path = adapter_dir / ADAPTER_CONFIG
    saved = json.loads(config_path.read_text())

    other = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match=rf"{config_path}.*n_embd=32, this model has n_embd=16"):
        load_adapter(other, adapter_dir)
    assert not any(isinstance(m, LoRALinear) for m in other.modules())

    config_path.write_text(json.dumps({**saved, "format_version": 2}))
    with pytest.raises(ValueError, match=rf"{config_path}: format_version 2, expected 1"):
        load_adapter(load_checkpoint(base_dir), adapter_dir)
    config_path.write_text(json.dumps({**saved, "r": 0}))
    with pytest.raises(ValueError, match=rf"{config_path}: .*r must"):
        load_adapter(load_checkpoint(base_dir), adapter_dir)
    config_path.write_text(json.dumps(saved))

    weights = adapter_dir / ADAPTER_WEIGHTS
    tensors = load_file(str(weights))
    save_file({k: v for k, v in tensors.items() if not k.startswith("transformer.h.1.mlp.c_fc")},
              str(weights))
    plain = load_checkpoint(base_dir)
    with pytest.raises(ValueError, match=rf"{weights}: .*missing \['transformer\.h\.1\.mlp\.c_fc"):
        load_adapter(plain, adapter_dir)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules()), "left half-wrapped"
    assert all(p.requires_grad for p in plain.parameters()), "requires_grad not restored"

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_adapter(plain, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="already has LoRA layers"):
        load_adapter(lora_gpt(), adapter_dir)


def test_lora_state_dict_loads_strictly() -> None:
    model, other = lora_gpt(seed=0), lora_gpt(seed=1)
    state = lora_state_dict(model)
    assert all(k.endswith((".lora_A", ".lora_B")) for k in state) and len(state) == 16
    load_lora_state_dict(other, state)
    assert all(torch.equal(v, lora_state_dict(other)[k]) for k, v in state.items())
    key = "transformer.h.0.attn.c_attn.lora_A"
    with pytest.raises(ValueError, match=rf"missing \['{key}'\]"):
        load_lora_state_dict(other, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected \['stray'\]"):
        load_lora_state_dict(other, {**state, "stray": torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"{key}.*\(\(3, 32\), \(4, 32\)\)"):
        load_lora_state_dict(other, {**state, key: torch.zeros(3, 32)})
    merge_lora(other)
    with pytest.raises(ValueError, match="merged"):
        load_lora_state_dict(other, state)


def test_unwrap_lora_gives_a_plain_gpt_with_the_delta_merged(tmp_path: Path) -> None:
    model = lora_gpt()
    with torch.no_grad():
        before = model(ids())[0]
    plain = unwrap_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert plain.state_dict().keys() == GPT(CONFIG).state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids())[0], before, atol=1e-5, rtol=0)
    save_checkpoint(plain, tmp_path / "merged")  # an ordinary checkpoint again
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "merged")(ids())[0], plain(ids())[0])


def test_trainable_parameters_counts_the_tied_head_once() -> None:
    model = lora_gpt()
    lora = sum(t.numel() for t in lora_state_dict(model).values())
    assert trainable_parameters(model) == (lora, GPT(CONFIG).num_parameters() + lora)


def test_find_targets_refuses_the_tied_head_a_second_wrap_and_bad_patterns() -> None:
    with pytest.raises(ValueError, match=r"'lm_head' shares its weight with 'transformer\.wte'"):
        apply_lora(GPT(CONFIG), targets=["lm_head"])
    with pytest.raises(TypeError, match="already has LoRA"):
        apply_lora(lora_gpt(), targets=["attn.c_attn"])
    with pytest.raises(TypeError, match=r"is a LayerNorm, not an nn\.Linear"):
        apply_lora(GPT(CONFIG), targets=["ln_1"])
    with pytest.raises(TypeError, match="list of module-name patterns"):
        find_targets(GPT(CONFIG), "attn.c_attn")
    with pytest.raises(ValueError, match="targets is empty"):
        find_targets(GPT(CONFIG), [])
    names = [n for n, _, _ in find_targets(GPT(CONFIG), ["h.*.mlp.c_proj", "h.0.mlp.c_proj"])]
    assert names == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]


def test_weight_decay_groups_leave_out_the_frozen_weights() -> None:
    model = lora_gpt()
    groups = param_groups(model, weight_decay=0.1)
    grouped = [p for g in groups for p in g["params"]]
    assert all(p.requires_grad for p in grouped), "a frozen parameter went to the optimizer"
    lora = {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    assert {id(p) for p in grouped} == lora, "the optimizer must get exactly A and B"


def test_weight_decay_applies_to_lora_a_and_b() -> None:
    model = lora_gpt()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    lora = {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    assert decay["weight_decay"] == 0.1 and {id(p) for p in decay["params"]} == lora
    assert no_decay["params"] == []
