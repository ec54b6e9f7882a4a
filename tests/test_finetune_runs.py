"""Fine-tuning through the trainer and its command line (``reference/trainer/sft.py``): a real
base run, real JSONL files, real checkpoints.

What must hold: the fine-tuned run is a run like any other (``load`` and ``generate`` read it,
with the chat tokenizer); LoRA leaves every base weight as it was (the merged checkpoint differs
from the base only by the adapters' delta) and the base's embedding rows bit for bit; the adapter
alone rebuilds the model on the base; resume is bit-identical; bad input is one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reference import cli
from reference.chat import SPECIALS, ChatTokenizer
from reference.checkpoint import find_checkpoint, read_safetensors
from reference.inference import load, prompt_ids
from reference.lora import load_adapter
from reference.model import GPT
from reference.tasks import reverse, write_jsonl
from reference.trainer.sft import NEW_ROWS

pytestmark = pytest.mark.finetune

QUIET = ["train.device=cpu", "train.threads=1", "train.progress=false",
         "train.tensorboard=false", "train.plot=false"]
BASE = ["data.source=builtin", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
        "model.block_size=32", "train.batch_size=4", "train.max_steps=3", "train.warmup_steps=1",
        "train.eval_interval=3", "train.eval_steps=1", *QUIET]
TUNE = ["train.batch_size=4", "train.max_steps=4", "train.warmup_steps=1", "train.lr=1e-2",
        "train.eval_interval=2", "train.eval_steps=1", "finetune.eval_examples=4", *QUIET]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    assert cli.main(["train", f"train.out_dir={run}", *BASE, "--no-sample"]) == 0
    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "reverse.jsonl", reverse(40, seed=1))


def finetune(base: Path, data: Path, run: Path, *extra: str) -> int:
    rank = [] if "finetune.method=full" in extra else ["finetune.lora_r=2"]
    # the flag before the overrides: argparse alone would refuse the overrides after it
    return cli.main(["finetune", str(base), str(data), "--no-sample", f"train.out_dir={run}",
                     *TUNE, *rank, *extra])


def one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    missing = [w for w in words if w not in lines[0]]
    assert not missing, f"{lines[0]!r} should name {missing}"


@pytest.fixture(scope="module")
def lora_run(base: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("lora") / "run"
    assert finetune(base, data, run) == 0
    return run


def test_a_lora_run_is_a_run_with_the_chat_tokenizer_and_the_base_weights_kept(
        base: Path, lora_run: Path) -> None:
    """The run loads like any other: a chat tokenizer (the base's ids, then the 4 specials), a
    plain GPT whose embedding rows of the base's ids, position embeddings and LayerNorms are the
    base's bit for bit; the linear layers differ from the base's by the adapters' delta only."""
    before, after = load(base), load(lora_run)
    assert isinstance(after.tokenizer, ChatTokenizer)
    n = before.model.config.vocab_size
    assert after.model.config.vocab_size == n + len(SPECIALS)
    assert after.tokenizer.special_ids == {s: n + i for i, s in enumerate(SPECIALS)}
    old, new = before.model.state_dict(), after.model.state_dict()
    assert torch.equal(new["transformer.wte.weight"][:n], old["transformer.wte.weight"])
    for name in ("transformer.wpe.weight", "transformer.ln_f.weight",
                 "transformer.h.0.ln_1.weight"):
        assert torch.equal(new[name], old[name]), name
    assert not torch.equal(new["transformer.h.0.attn.c_attn.weight"],
                           old["transformer.h.0.attn.c_attn.weight"]), "the adapter did not train"


def test_the_adapter_alone_on_the_base_gives_the_runs_model(base: Path, lora_run: Path) -> None:
    """``load_adapter`` on the base grown by the saved chat rows: the same logits as the
    checkpoint's merged model (fp32, 1e-5: merging reorders the sums)."""
    checkpoint = find_checkpoint(lora_run)
    tuned = load(lora_run).model
    plain = load(base).model
    grown = GPT(tuned.config)
    state = {k: v for k, v in plain.state_dict().items() if k != "lm_head.weight"}
    extra = read_safetensors(checkpoint / "adapter.safetensors")[NEW_ROWS]
    state["transformer.wte.weight"] = torch.cat([state["transformer.wte.weight"], extra])
    grown.load_state_dict(state, strict=False)
    load_adapter(grown, checkpoint)
    grown.eval()
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(tuned.config.vocab_size, (2, 12), generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(grown(idx)[0], tuned(idx)[0], atol=1e-5, rtol=1e-5)


def test_the_adapter_file_is_small_beside_the_checkpoint(lora_run: Path) -> None:
    checkpoint = find_checkpoint(lora_run)
    adapter = (checkpoint / "adapter.safetensors").stat().st_size
    assert adapter < (checkpoint / "model.safetensors").stat().st_size / 2
    settings = json.loads((checkpoint / "adapter_config.json").read_text())
    assert settings["r"] == 2 and NEW_ROWS in settings["extra"]


def test_generate_writes_the_user_turn_in_the_chat_template(lora_run: Path) -> None:
    """The inference path renders a chat model's prompt as in training: <|user|>...<|end|>
    <|assistant|>, and the command line generates from it."""
    run = load(lora_run)
    ids = prompt_ids(run.tokenizer, "reverse: abc", run.model.config.block_size)
    chat = run.tokenizer
    assert isinstance(chat, ChatTokenizer)
    assert ids == [chat.special_ids["<|user|>"], *chat.base.encode("reverse: abc"),
                   chat.eot_id, chat.special_ids["<|assistant|>"]]
    assert cli.main(["generate", str(lora_run), "-p", "reverse: abc", "-n", "4"]) == 0


def test_resuming_a_lora_run_is_bit_identical(base: Path, data: Path, tmp_path: Path) -> None:
    """4 steps straight, or 2 then ``resume`` to 4: the same adapter and the same weights."""
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert finetune(base, data, straight) == 0
    assert finetune(base, data, halves, "train.max_steps=2", "train.decay_steps=4") == 0
    assert cli.main(["resume", str(halves), "train.max_steps=4", "--no-sample"]) == 0
    for name in ("adapter.safetensors", "model.safetensors"):
        a = read_safetensors(find_checkpoint(straight) / name)
        b = read_safetensors(find_checkpoint(halves) / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resume"


def test_full_fine_tuning_trains_every_weight_and_writes_no_adapter(
        base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "full"
    assert finetune(base, data, run, "finetune.method=full") == 0
    assert not (find_checkpoint(run) / "adapter.safetensors").exists()
    old, new = load(base).model.state_dict(), load(run).model.state_dict()
    n = old["transformer.wte.weight"].size(0)
    assert not torch.equal(new["transformer.wte.weight"][:n], old["transformer.wte.weight"])
    assert "held-out exact match" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "words"), [
    (["data.source=shakespeare"], ["data.source", "not used when fine-tuning"]),
    (["model.n_layer=3"], ["model.n_layer=3", "base model", "1"]),
    (["finetune.method=full", "finetune.rslora=true"], ["finetune.rslora", "method=full"]),
    (["finetune.lora_targets=[attn.nothing]"], ["attn.nothing"]),
])
def test_bad_fine_tuning_settings_are_one_line(
        base: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], words: list[str]) -> None:
    capsys.readouterr()
    assert finetune(base, data, tmp_path / "run", *extra) == 2
    one_error_line(capsys.readouterr().err, *words)


def test_bad_data_names_the_file_and_line(base: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, '
                   '{"role": "assistant", "content": "yo"}]}\n{"prompt": 1}\n')
    capsys.readouterr()
    assert finetune(base, bad, tmp_path / "run") == 2
    one_error_line(capsys.readouterr().err, f"{bad}:2")
    assert finetune(base, tmp_path / "missing.jsonl", tmp_path / "run2") == 2
    one_error_line(capsys.readouterr().err, "missing.jsonl")


def test_resume_refuses_a_base_that_changed(base: Path, data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "base"
    shutil.copytree(base, copy)
    run = tmp_path / "run"
    assert finetune(copy, data, run, "train.max_steps=2", "train.decay_steps=4") == 0
    weights = find_checkpoint(copy) / "model.safetensors"
    other = read_safetensors(weights)
    other["transformer.ln_f.weight"] = other["transformer.ln_f.weight"] + 1
    from reference.checkpoint import save_safetensors
    save_safetensors(weights, other)
    capsys.readouterr()
    assert cli.main(["resume", str(run), "train.max_steps=4", "--no-sample"]) == 2
    one_error_line(capsys.readouterr().err, "base model", "changed")
