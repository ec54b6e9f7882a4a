"""Quantized checkpoints: int8 weights and float32 scales in safetensors, recorded in config.json
as ``"quantization": {"method": "int8-per-channel", "version": 1}``, loaded back into the
quantized structure (also through ``reference.inference.load``, the one inference path).

Oracles: the saved model itself (the loaded one gives the same logits and tokens, bit for bit),
the safetensors file read back raw, and the documented one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reference.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_checkpoint,
    read_config,
    read_safetensors,
    save_checkpoint,
)
from reference.generate import generate
from reference.inference import load
from reference.model import GPT, GPTConfig
from reference.quantization import Int8Linear, quantize
from reference.tokenizers import META_NAME, CharTokenizer

pytestmark = pytest.mark.quantization

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"
CONFIG = GPTConfig(block_size=24, vocab_size=len(ALPHABET), n_layer=2, n_head=2, n_embd=32)


def model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CONFIG).eval()


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / CONFIG_NAME
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_a_quantized_checkpoint_round_trips(tmp_path: Path) -> None:
    """config.json records the method and its version; the file holds int8 weights and
    float32 scales (and no copy of the tied head); the loaded model is the saved one."""
    saved = quantize(model())
    save_checkpoint(saved, tmp_path)
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert raw["quantization"] == {"method": "int8-per-channel", "version": 1}
    assert raw["format_version"] == 1 and read_config(tmp_path / CONFIG_NAME) == CONFIG
    tensors = read_safetensors(tmp_path / WEIGHTS_NAME)
    assert tensors["transformer.h.0.mlp.c_fc.weight"].dtype == torch.int8
    assert tensors["transformer.h.0.mlp.c_fc.scale"].dtype == torch.float32
    assert tensors["transformer.h.0.mlp.c_fc.bias"].dtype == torch.float32
    assert tensors["transformer.wte.weight"].dtype == torch.float32
    assert "lm_head.weight" not in tensors
    assert sum(t.dtype == torch.int8 for t in tensors.values()) == 4 * CONFIG.n_layer
    loaded = load_checkpoint(tmp_path)
    assert isinstance(loaded.transformer.h[1].attn.c_attn, Int8Linear)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert not loaded.training
    want = saved.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    x = torch.randint(0, CONFIG.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], saved(x)[0])


def test_the_quantized_file_is_smaller(tmp_path: Path) -> None:
    """With n_embd 32 the blocks are half of this small model's weights; the file shrinks by
    about three quarters of that half."""
    float_model = model()
    save_checkpoint(float_model, tmp_path / "float")
    save_checkpoint(quantize(float_model), tmp_path / "int8")
    fp32 = (tmp_path / "float" / WEIGHTS_NAME).stat().st_size
    int8 = (tmp_path / "int8" / WEIGHTS_NAME).stat().st_size
    assert int8 < 0.75 * fp32, (int8, fp32)


def test_the_dynamic_mode_saves_the_same_file(tmp_path: Path) -> None:
    save_checkpoint(quantize(model()), tmp_path / "float")
    save_checkpoint(quantize(model(), activations="dynamic"), tmp_path / "dynamic")
    a = read_safetensors(tmp_path / "float" / WEIGHTS_NAME)
    b = read_safetensors(tmp_path / "dynamic" / WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loaded = quantize(load_checkpoint(tmp_path / "dynamic"), activations="dynamic")
    x = torch.randint(0, CONFIG.vocab_size, (1, 7))
    with torch.no_grad():
        assert torch.isfinite(loaded(x)[0]).all()


@pytest.mark.parametrize("quantization", [
    {"method": "int4-group-32", "version": 1},
    {"method": "int8-per-channel", "version": 2},
    {"method": "int8-per-channel"},
    "int8",
])
def test_an_unknown_quantization_is_refused_naming_the_file(
    tmp_path: Path, quantization: object
) -> None:
    save_checkpoint(quantize(model()), tmp_path)
    edit_config(tmp_path, quantization=quantization)
    with pytest.raises(ValueError, match="quantization") as error:
        load_checkpoint(tmp_path)
    message = str(error.value)
    assert str(tmp_path / CONFIG_NAME) in message and "\n" not in message, message


def test_float_weights_under_a_quantized_config_are_refused(tmp_path: Path) -> None:
    """A float file labelled quantized: one line naming the file and the first float weight,
    never a silent cast of float weights into int8."""
    save_checkpoint(model(), tmp_path)
    edit_config(tmp_path, quantization={"method": "int8-per-channel", "version": 1})
    with pytest.raises(ValueError, match=r"must hold int8 weights; transformer\.h\.0\.attn"
                                         r"\.c_attn\.weight is torch\.float32") as error:
        load_checkpoint(tmp_path)
    assert str(tmp_path / WEIGHTS_NAME) in str(error.value)


def test_a_float_checkpoint_still_loads_as_float(tmp_path: Path) -> None:
    save_checkpoint(model(), tmp_path)
    assert "quantization" not in json.loads((tmp_path / CONFIG_NAME).read_text())
    loaded = load_checkpoint(tmp_path)
    assert not any(isinstance(m, Int8Linear) for m in loaded.modules())


def test_the_inference_path_loads_a_quantized_run_and_generates(tmp_path: Path) -> None:
    """``reference.inference.load`` of a run directory whose newest checkpoint is quantized:
    the int8 model, its tokenizer, and the same greedy tokens as the model that was saved."""
    saved = quantize(model(3))
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000010"
    save_checkpoint(saved, checkpoint)
    tokenizer = CharTokenizer(ALPHABET)
    (checkpoint / META_NAME).write_text(json.dumps({"tokenizer": tokenizer.to_dict()}))
    (checkpoint.parent / "latest").write_text(checkpoint.name)
    run = load(tmp_path / "run")
    assert run.checkpoint == checkpoint
    assert isinstance(run.model.transformer.h[0].mlp.c_proj, Int8Linear)
    prompt = torch.tensor([tokenizer.encode("the cat")])
    with torch.no_grad():
        got = generate(run.model, prompt, 12, temperature=0.0)
        want = generate(saved, prompt, 12, temperature=0.0)
    assert torch.equal(got, want)
    assert len(tokenizer.decode(got[0].tolist())) == len("the cat") + 12


def test_the_quantize_command_writes_an_int8_copy_and_refuses_to_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m reference quantize SRC OUT``: OUT holds the int8 model (the same greedy
    tokens as quantizing in memory) and the tokenizer; ``generate --int8`` on the float
    checkpoint gives those tokens too; an OUT that is not empty is refused in one line."""
    from reference import cli

    source = tmp_path / "float"
    save_checkpoint(model(4), source)
    tokenizer = CharTokenizer(ALPHABET)
    (source / META_NAME).write_text(json.dumps({"tokenizer": tokenizer.to_dict()}))
    out = tmp_path / "int8"
    assert cli.main(["quantize", str(source), str(out)]) == 0
    assert "0.2" in capsys.readouterr().out  # the ratio of bytes, about 0.26x
    loaded = load(out)
    assert isinstance(loaded.model.transformer.h[1].attn.c_attn, Int8Linear)
    prompt = torch.tensor([tokenizer.encode("the cat")])
    with torch.no_grad():
        want = generate(quantize(model(4)), prompt, 10, temperature=0.0)
        assert torch.equal(generate(loaded.model, prompt, 10, temperature=0.0), want)
    args = ["generate", str(source), "-p", "the cat", "-n", "10", "-t", "0", "--int8", "float"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == tokenizer.decode(want[0].tolist())
    assert "int8 (float activations)" in captured.err
    assert cli.main(["quantize", str(source), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not an empty directory" in err[0]
