"""Data-parallel training for real: two CPU processes under torchrun (gloo) against one process.

Oracle: the same trainer in a single process on the combined batch (2 x batch_size rows per
micro-batch). With DDP averaging the gradients, the two runs take the same optimizer steps; they
differ only by the order of floating-point sums, so the weights agree to 1e-5 after 3 AdamW
steps (a lost gradient average, a wrong data shard or a skipped sync is off by far more).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reference.checkpoint import find_checkpoint
from reference.trainer.config import load_config
from reference.trainer.loop import Trainer, prepare_data

pytestmark = pytest.mark.trainer
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _settings(tmp_path: Path, out: str, batch_size: int) -> list[str]:
    return [
        f"train.out_dir={tmp_path / out}", f"data.dir={tmp_path / 'data'}", "data.source=markov",
        "data.markov_tokens=20000", "train.device=cpu", "train.threads=1", "model.n_layer=1",
        "model.n_head=2", "model.n_embd=16", "model.block_size=16", "model.dropout=0.0",
        f"train.batch_size={batch_size}", "train.grad_accum=2", "train.max_steps=3",
        "train.warmup_steps=1", "train.lr=1e-2", "train.eval_interval=3", "train.eval_steps=2",
        "train.progress=false", "train.tensorboard=false", "train.plot=false",
    ]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    single_config = load_config(overrides=_settings(tmp_path, "single", batch_size=4))
    prepare_data(single_config, progress=False)  # both runs read the same token file

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "reference", "train", *_settings(tmp_path, "ddp", batch_size=2), "--no-sample"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "2 process(es)" in proc.stdout + proc.stderr
    assert proc.stdout.count("done: step 3") == 1, "only rank 0 reports"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode != 0, "a second run into the same directory must be refused"
    refusals = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(refusals) == 1 and "already holds a run" in refusals[0], again.stderr[-3000:]

    single = Trainer(single_config)
    result = single.fit()
    ddp_weights = load_file(str(find_checkpoint(tmp_path / "ddp") / "model.safetensors"))
    for name, tensor in single.model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight, stored once
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=0, atol=1e-5,
                                   msg=f"{name}: 2 DDP processes differ from 1 process")
    fresh = Trainer(load_config(overrides=_settings(tmp_path, "fresh", batch_size=4)))
    moved = (ddp_weights["transformer.wpe.weight"]
             - fresh.model.state_dict()["transformer.wpe.weight"]).abs().max()
    assert moved > 1e-3, "the weights barely moved: the comparison would prove nothing"
    ddp_val = float(proc.stdout.split("val loss ")[-1].split(",")[0])
    assert abs(ddp_val - result.val_loss) < 1e-3, (ddp_val, result.val_loss)
