"""The training loop: resume equality, atomic checkpoints, early stop on NaN, monitoring, CLI.

Oracles: ``torch.equal`` between runs (bit-identical resume), torch's AdamW group semantics,
the model without activation checkpointing, TensorBoard's own event reader, and the files the
loop writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reference import cli
from reference.checkpoint import load_checkpoint
from reference.model import GPT, GPTConfig
from reference.trainer import checkpoint as ckpt
from reference.trainer.config import Config, load_config
from reference.trainer.loop import Trainer, TrainingDiverged
from reference.trainer.optim import param_groups

pytestmark = pytest.mark.trainer


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """The trainer sets torch's thread count; leave it as it was for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(tmp_path: Path, *overrides: str) -> Config:
    """A 1-layer, 16-wide GPT on 20,000 tokens of the synthetic source: steps take milliseconds."""
    return load_config(overrides=[
        f"train.out_dir={tmp_path / 'run'}", "train.device=cpu", "train.threads=1",
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "data.source=markov", "data.markov_tokens=20000", "train.batch_size=4",
        "train.max_steps=12", "train.warmup_steps=2", "train.eval_interval=4",
        "train.eval_steps=2", "train.log_interval=2", "train.progress=false",
        "train.tensorboard=false", "train.plot=false", *overrides,
    ])


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# ----------------------------------------------------------------------------- optimizer


def test_weight_decay_only_on_linear_weights_not_biases_norms_or_embeddings() -> None:
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n in names.values()
                       if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "transformer.wte.weight" in not_decayed  # the tied head too: it is the embedding
    assert "transformer.wpe.weight" in not_decayed and "transformer.ln_f.weight" in not_decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- checkpoints


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    """2N steps == N steps, save, resume in a fresh trainer, N steps (dropout, accumulation)."""
    extra = ("model.dropout=0.1", "train.grad_accum=2", "train.max_steps=10")
    straight = Trainer(tiny(tmp_path / "a", *extra))
    straight.fit()
    first = Trainer(tiny(tmp_path / "b", *extra))
    first.fit(max_steps=5)
    saved = first.save_checkpoint()
    assert saved is not None and saved.name == "step-000005"
    del first
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG
    resumed = Trainer.resume(tmp_path / "b" / "run")
    assert resumed.step == 5
    resumed.fit()
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ after resume: {differ}"
    for (pa, sa), (pb, sb) in zip(straight.optimizer.state.items(),
                                  resumed.optimizer.state.items(), strict=True):
        assert pa.shape == pb.shape
        assert all(torch.equal(sa[k], sb[k]) for k in sa), "optimizer state differs"
    assert torch.equal(straight.batch_generator.get_state(), resumed.batch_generator.get_state())


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(tiny(tmp_path, "train.max_steps=4"))
    trainer.fit()
    run = tmp_path / "run"
    good = ckpt.find_checkpoint(run)
    assert good.name == "step-000004"
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (simulated)")

    trainer.fit(max_steps=6)  # writes step 6; then a crash while writing step 7
    monkeypatch.setattr(ckpt, "save_safetensors", crash)
    with pytest.raises(OSError, match="simulated"):
        trainer.fit(max_steps=7)
    assert ckpt.find_checkpoint(run).name == "step-000006", "latest must not move on a crash"
    assert not list((run / "checkpoints").glob(".step-*")), "the temporary directory remains"
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    monkeypatch.undo()
    resumed = Trainer.resume(run)
    assert resumed.step == 6


def test_the_checkpoint_is_a_model_checkpoint_and_loads_without_pickle(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, "train.max_steps=2"))
    trainer.fit()
    directory = ckpt.find_checkpoint(tmp_path / "run")
    model = load_checkpoint(directory)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    names = {p.name for p in directory.iterdir()}
    assert names == {"config.json", "model.safetensors", "meta.json", "optimizer.safetensors",
                     "rng.safetensors", "trainer.json"}
    assert not any(n.endswith((".pt", ".pkl", ".bin")) for n in names)
    state = json.loads((directory / "trainer.json").read_text())
    assert state["step"] == 2 and state["config"]["model"]["n_embd"] == 16


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    Trainer(tiny(tmp_path, "train.keep_checkpoints=2")).fit()  # saves at 4, 8, 12
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert names == ["step-000008", "step-000012"]


# ----------------------------------------------------------------------------- early stop


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    def poison(trainer: Trainer) -> None:
        if trainer.step == 6:  # corrupt the weights after step 6: step 7's loss is NaN
            with torch.no_grad():
                trainer.model.transformer.wte.weight.fill_(math.nan)

    trainer = Trainer(tiny(tmp_path))
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(on_step=poison)
    message = str(info.value)
    assert "stopped at step 6: the loss is nan" in message
    assert "step-000004" in message, message
    assert ckpt.find_checkpoint(tmp_path / "run").name == "step-000004"
    model = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-000004")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_cli_reports_divergence_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [f"{o}" for o in _tiny_args(tmp_path)] + ["train.lr=1e30", "train.warmup_steps=0",
                                                      "train.grad_clip=null"]
    code = cli.main(["train", *args])
    err = capsys.readouterr().err
    assert code == 1 and "training diverged" in err and "the loss is" in err


# ----------------------------------------------------------------------------- features


def test_monitor_writes_metrics_tensorboard_events_and_curves(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, "train.plot=true", "train.tensorboard=true"))
    result = trainer.fit()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in evals] == [4, 8, 12]
    assert all(r["tokens_per_s"] > 0 and math.isfinite(r["loss"]) for r in train)
    assert train[0]["lr"] == pytest.approx(trainer.lr_at(1))
    assert evals[-1]["val_loss"] == pytest.approx(result.val_loss)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.peak_memory_mb > 0 and result.tokens_per_s > 0
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/val_loss")] == [4, 8, 12]
    assert acc.Scalars("eval/val_loss")[-1].value == pytest.approx(result.val_loss, rel=1e-6)


def test_bf16_autocast_and_activation_checkpointing_train_on_cpu(tmp_path: Path) -> None:
    trainer = Trainer(tiny(tmp_path, "train.dtype=bfloat16", "train.activation_checkpointing=true",
                           "train.max_steps=4"))
    result = trainer.fit()
    assert math.isfinite(result.val_loss) and result.peak_memory_mb > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp16_without_cuda_is_rejected_with_a_hint(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: fp16 is allowed")
    with pytest.raises(ValueError, match="float16 needs CUDA"):
        Trainer(tiny(tmp_path, "train.dtype=float16"))


def test_training_lowers_the_loss_towards_the_markov_floor(tmp_path: Path) -> None:
    """A 2-layer, 32-wide model learns the order-2 chain: from about its unigram entropy (2.07
    nats) well towards the exact floor (1.28), never below it by more than evaluation noise."""
    trainer = Trainer(tiny(tmp_path, "train.max_steps=300", "train.lr=1e-2", "model.n_embd=32",
                           "train.warmup_steps=10", "train.eval_interval=300",
                           "train.eval_steps=8", "train.batch_size=16"))
    before = trainer.evaluate()["val"]
    after = trainer.fit().val_loss
    floor = trainer.data.meta["entropy_rate"]
    assert after < before - 0.4, f"the loss went from {before:.3f} only to {after:.3f}"
    assert after > floor - 0.1, f"loss {after:.3f} beats the entropy floor {floor:.3f}: a leak?"


# ----------------------------------------------------------------------------- CLI


def _tiny_args(tmp_path: Path) -> list[str]:
    return [f"train.out_dir={tmp_path / 'run'}", "train.device=cpu", "train.threads=1",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "train.max_steps=4", "train.warmup_steps=1",
            "train.eval_interval=2", "train.eval_steps=1", "train.progress=false",
            "train.tensorboard=false", "train.plot=false", "sample.max_new_tokens=20"]


def test_cli_trains_on_the_builtin_corpus_generates_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train", *_tiny_args(tmp_path), "sample.prompt=def "]) == 0
    out = capsys.readouterr().out
    assert "done: step 4" in out and "--- sample 1 (seed 0) ---" in out
    sample = out.split("--- sample 1 (seed 0) ---\n", 1)[1]
    assert sample.startswith("def ") and len(sample.rstrip("\n")) >= len("def ")

    assert cli.main(["generate", str(tmp_path / "run"), "--prompt", "The ", "-n", "30",
                     "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["generate", str(tmp_path / "run"), "--prompt", "The ", "-n", "30",
                     "--seed", "7"]) == 0
    assert capsys.readouterr().out == first, "the same seed must give the same text"
    assert first.startswith("The ") and len(first) > 30

    assert cli.main(["resume", str(tmp_path / "run"), "train.max_steps=6", "--no-sample"]) == 0
    assert "done: step 6" in capsys.readouterr().out


def test_cli_rejects_bad_settings_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train", "train.max_step=5"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'train.max_step' (did you mean 'train.max_steps'?)" in err
    assert cli.main(["generate", str(tmp_path / "nothing")]) == 2
    assert "nothing not found" in capsys.readouterr().err
    assert cli.main(["prepare", f"train.out_dir={tmp_path}", "train.progress=false"]) == 0
    assert "tokens" in capsys.readouterr().out
