"""Checkpoints of the reference GPT: safetensors + JSON, exact round trip, atomic, no pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from reference import checkpoint
from reference.checkpoint import load_checkpoint, load_weights, save_checkpoint
from reference.model import GPT, GPTConfig

pytestmark = pytest.mark.gpt

TINY = GPTConfig(block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32, dropout=0.1)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(TINY)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight, "the head must stay tied"
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    idx = torch.randint(0, 100, (2, 16))
    assert torch.equal(model.eval()(idx)[0], loaded(idx)[0])


def test_files_are_safetensors_and_json_without_temporaries(tmp_path: Path) -> None:
    save_checkpoint(GPT(TINY), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "llm-from-scratch-gpt" and raw["config"]["n_embd"] == 32
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys, "tied: stored once"


def test_a_failed_save_leaves_the_previous_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(GPT(TINY), tmp_path)
    good = (tmp_path / "model.safetensors").read_bytes()

    def crash(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(GPT(TINY), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    load_checkpoint(tmp_path)


class _Boom:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, ("open(__import__('os').environ['BOOM_FILE'], 'w').close()",))


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle dressed up as model.safetensors is rejected without running its payload."""
    save_checkpoint(GPT(TINY), tmp_path)
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("BOOM_FILE", str(marker))
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type for a bad header)
        load_checkpoint(tmp_path)
    assert not marker.exists(), "the pickle payload ran"


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda raw: {**raw, "model_type": "gpt2"}, ["gpt2", "reference.hf.load_gpt2"]),
        (lambda raw: {**raw, "format_version": 9}, ["format_version 9"]),
        (lambda raw: {**raw, "config": {**raw["config"], "n_heads": 4}}, ["unknown", "n_heads"]),
        (lambda raw: {**raw, "config": without(raw["config"], "bias")}, ["missing", "bias"]),
        (lambda raw: {**raw, "config": {**raw["config"], "n_head": 5}}, ["32", "5"]),
    ],
)  # fmt: skip
def test_bad_config_is_a_clear_error(tmp_path: Path, edit: Any, words: list[str]) -> None:
    save_checkpoint(GPT(TINY), tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(edit(raw)))
    with pytest.raises(ValueError) as info:
        load_checkpoint(tmp_path)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_not_json_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(GPT(TINY), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path)


def test_load_weights_lists_what_does_not_fit() -> None:
    model = GPT(TINY)
    state = {k: v for k, v in model.state_dict().items() if k != "transformer.ln_f.bias"}
    state["transformer.extra"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing \['transformer.ln_f.bias'\].*unexpected \['transformer.extra'\]"
    ):
        load_weights(model, state)
    state = dict(model.state_dict())
    state["transformer.wpe.weight"] = torch.zeros(8, 32)
    with pytest.raises(ValueError, match=r"wpe.weight.*\(8, 32\), \(16, 32\)"):
        load_weights(model, state)
