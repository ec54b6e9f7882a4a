"""FSDP2 training for real: two CPU processes under torchrun (gloo), ``train.strategy=fsdp``.

Oracles: the same trainer as DDP under torchrun, and in a single process on the combined batch
(2 x batch_size rows per micro-batch), with gradient accumulation (2 micro-batches) and gradient
clipping that bites (the norm is above ``train.grad_clip`` at every step, so a clip by one
rank's slice of the gradient instead of the whole one would take a different step). Sharding
only splits who holds which slice; the steps agree to 1e-5 after 4 AdamW steps (the order of
floating-point sums differs from one process's).

Three torchrun jobs (about 10 s each on two busy cores):
  A. DDP for 2 of 4 steps (its schedule pinned to 4);
  B. FSDP for 4 steps uninterrupted, with activation checkpointing, checkpoints at 2 and 4;
  C. A resumed under FSDP to step 4 (a DDP checkpoint continued by FSDP: the same file format).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reference.checkpoint import find_checkpoint, load_checkpoint
from reference.trainer.config import (
    check_resume_changes,
    config_from_dict,
    load_config,
    parse_overrides,
)
from reference.trainer.loop import Trainer, prepare_data

pytestmark = pytest.mark.trainer
ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _settings(tmp_path: Path, out: str, batch_size: int, max_steps: int = 4) -> list[str]:
    return [
        f"train.out_dir={tmp_path / out}", f"data.dir={tmp_path / 'data'}", "data.source=markov",
        "data.markov_tokens=20000", "train.device=cpu", "train.threads=1", "model.n_layer=2",
        "model.n_head=2", "model.n_embd=16", "model.block_size=16", "model.dropout=0.0",
        f"train.batch_size={batch_size}", "train.grad_accum=2", f"train.max_steps={max_steps}",
        "train.decay_steps=4", "train.warmup_steps=1", "train.lr=1e-2", "train.grad_clip=0.3",
        "train.eval_interval=2", "train.eval_steps=2", "train.log_interval=1",
        "train.progress=false", "train.tensorboard=false", "train.plot=false",
    ]


def _start(*args: str) -> subprocess.Popen[str]:
    """``torchrun --nproc_per_node=2 -m reference ARGS``, started (not waited for)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "reference", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> str:
    """The job's stdout; it must have succeeded."""
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, f"torchrun failed:\n{out[-3000:]}\n{err[-3000:]}"
    return out


def _train_records(run: Path) -> dict[int, dict[str, float]]:
    """step -> the train record of metrics.jsonl (the last one, when a resume rewrote it)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == "train"}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor],
                         what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: {sorted(got.keys() ^ want.keys())}"
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=TOL, msg=f"{what}: {name}")


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three torchrun jobs (A, B, C in the module docstring), run once for the module."""
    tmp = tmp_path_factory.mktemp("fsdp")
    prepare_data(load_config(overrides=_settings(tmp, "single", 4)), progress=False)
    ddp = _start("train", *_settings(tmp, "ddp", 2, max_steps=2), "--no-sample")
    fsdp = _start("train", *_settings(tmp, "fsdp", 2), "train.strategy=fsdp",
                  "train.activation_checkpointing=true", "train.checkpoint_interval=2",
                  "--no-sample")  # A and B side by side: most of a job is starting Python
    _finish(ddp)
    out = _finish(fsdp)
    assert "2 process(es) (FSDP" in out, out[-2000:]
    assert out.count("done: step 4") == 1, "only rank 0 reports"
    _finish(_start("resume", str(tmp / "ddp"), "train.max_steps=4", "train.strategy=fsdp",
                   "--no-sample"))
    return tmp


@pytest.mark.slow
def test_fsdp_takes_the_steps_of_one_process_on_the_combined_batch(runs: Path) -> None:
    single = Trainer(load_config(overrides=_settings(runs, "single", 4)))
    single.fit()
    fsdp = _train_records(runs / "fsdp")
    ddp_first = _train_records(runs / "ddp")  # steps 1-2 by DDP, 3-4 by the FSDP resume
    one = _train_records(runs / "single")
    assert sorted(fsdp) == sorted(one) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in ("loss", "grad_norm"):
            assert abs(fsdp[step][key] - one[step][key]) <= TOL, (step, key, fsdp[step], one[step])
            assert abs(ddp_first[step][key] - one[step][key]) <= TOL, (step, key)
        assert fsdp[step]["grad_norm"] > 0.3, "the clip must bite for the test to mean anything"
    weights = _weights(find_checkpoint(runs / "fsdp"))
    want = {k: v for k, v in single.model.state_dict().items() if k != "lm_head.weight"}
    _assert_same_weights(weights, want, "FSDP vs 1 process")
    start = _weights(find_checkpoint(runs / "fsdp").parent / "step-000002")
    moved = (weights["transformer.wpe.weight"] - start["transformer.wpe.weight"]).abs().max()
    assert moved > 1e-3, "the weights barely moved: the comparison would prove nothing"


@pytest.mark.slow
def test_fsdp_checkpoint_is_one_full_state_dict_in_the_single_process_format(runs: Path) -> None:
    fsdp = runs / "fsdp" / "checkpoints" / "step-000002"
    ddp = runs / "ddp" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in fsdp.iterdir()) == sorted(p.name for p in ddp.iterdir())
    _assert_same_weights(_weights(fsdp), _weights(ddp), "FSDP vs DDP checkpoint")
    _assert_same_weights(load_file(str(fsdp / "optimizer.safetensors")),
                         load_file(str(ddp / "optimizer.safetensors")), "AdamW state")
    trainer_fsdp = json.loads((fsdp / "trainer.json").read_text())
    trainer_ddp = json.loads((ddp / "trainer.json").read_text())
    assert trainer_fsdp["optimizer"] == trainer_ddp["optimizer"]  # groups by index, hyper-params
    model = load_checkpoint(fsdp)  # one process, no process group: what generate/serve load
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model.transformer.wpe.weight,
                               _weights(ddp)["transformer.wpe.weight"], rtol=0, atol=TOL)
    # ... and one process resumes it with DDP: the AdamW state is the file's, by index.
    resumed = Trainer.resume(fsdp, ["train.strategy=ddp"], progress=False)
    state = resumed.optimizer.state_dict()["state"]
    file_state = load_file(str(fsdp / "optimizer.safetensors"))
    for name, tensor in file_state.items():
        _, index, key = name.split(".", 2)
        torch.testing.assert_close(state[int(index)][key], tensor, rtol=0, atol=0)
    resumed.release()


@pytest.mark.slow
def test_resume_under_fsdp_continues_the_uninterrupted_run(runs: Path) -> None:
    resumed = _train_records(runs / "ddp")  # DDP's steps 1-2, then FSDP's 3-4
    uninterrupted = _train_records(runs / "fsdp")
    for step in (3, 4):
        assert abs(resumed[step]["loss"] - uninterrupted[step]["loss"]) <= TOL, step
    _assert_same_weights(_weights(find_checkpoint(runs / "ddp")),
                         _weights(find_checkpoint(runs / "fsdp")), "resumed vs uninterrupted")
    assert find_checkpoint(runs / "ddp").name == "step-000004"


def test_fsdp_without_torchrun_is_refused_in_one_line(tmp_path: Path) -> None:
    config = load_config(overrides=[*_settings(tmp_path, "one", 2), "train.strategy=fsdp"])
    with pytest.raises(ValueError, match=r"^train\.strategy=fsdp .* under torchrun") as e:
        Trainer(config)
    assert "\n" not in str(e.value)


def test_fsdp_with_float16_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.dtype=float16 .*train\.strategy=fsdp") as e:
        load_config(overrides=[*_settings(tmp_path, "x", 2), "train.strategy=fsdp",
                               "train.dtype=float16"])
    assert "\n" not in str(e.value)


def test_fsdp_only_setting_without_fsdp_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.fsdp_reshard_after_forward"):
        load_config(overrides=[*_settings(tmp_path, "x", 2),
                               "train.fsdp_reshard_after_forward=false"])


GUIDE = ROOT / "docs" / "guides" / "distributed.md"


def _guide_torchrun_commands() -> list[list[str]]:
    """The torchrun command lines of docs/guides/distributed.md, as argv (env settings dropped)."""
    blocks = re.findall(r"^```[^\n{]*\n(.*?)^```", GUIDE.read_text(encoding="utf-8"),
                        flags=re.S | re.M)
    lines = [line.strip().removeprefix("$ ") for block in blocks for line in block.splitlines()
             if "torch.distributed.run" in line]
    argvs = []
    for line in lines:
        words = shlex.split(line)
        while "=" in words[0] and not words[0].startswith("."):
            words.pop(0)  # NCCL_SOCKET_IFNAME=eth0 ...
        assert words[:3] == [".venv/bin/python", "-m", "torch.distributed.run"], line
        argvs.append(words[3:])
    return argvs


def test_the_distributed_guide_commands_parse_as_torchrun_and_as_the_trainer() -> None:
    """Every torchrun line of the guide: torchrun's own parser accepts its flags, it runs
    ``-m reference train|resume``, and its overrides are settings the trainer accepts (a
    resume's, ones resume may change)."""
    from torch.distributed.run import get_args_parser

    argvs = _guide_torchrun_commands()
    assert len(argvs) >= 6, argvs
    strategies = set()
    for argv in argvs:
        args = get_args_parser().parse_args(argv)
        assert args.module and args.training_script == "reference", argv
        command, *rest = args.training_script_args
        overrides = [w for w in rest if "=" in w and not w.startswith("-")]
        strategies.add("fsdp" if "train.strategy=fsdp" in overrides else "ddp")
        if command == "train":
            load_config(overrides=overrides)
        else:
            assert command == "resume" and Path(rest[0]).parts[0] == "runs", argv
            base = load_config()
            check_resume_changes(base, config_from_dict(parse_overrides(overrides), base=base))
        if args.nnodes == "2":  # another machine must find the rendezvous: HOST:PORT
            assert args.rdzv_endpoint == "HOST:29500" or (
                args.master_addr == "HOST" and args.node_rank in (0, 1)), argv
    assert strategies == {"ddp", "fsdp"}
