"""Fault injection for runs: SIGKILL at random moments (checkpoint writes included), a full
disk, and two processes training into one directory.

Each test drives the real command line in subprocesses. The figures (kills tried, resumes
bit-identical, bytes lost) are printed at the end (``-s`` shows them) and asserted: a kill never
loses a checkpoint that ``latest`` named, and every resumed run ends bit-identical to the run
that was never interrupted.
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reference.checkpoint import find_checkpoint, is_complete
from reference.trainer.checkpoint import load_training_state
from tests.outcomes import ROOT

KILLS = int(os.environ.get("LLMFS_FAULT_KILLS", "30"))
STEPS = 40
SETTINGS = [
    "data.source=markov", "data.markov_tokens=50000", "train.device=cpu", "train.threads=1",
    "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=32",
    "model.dropout=0.1", "train.batch_size=8", "train.grad_accum=2", "train.warmup_steps=4",
    f"train.max_steps={STEPS}", "train.eval_interval=10", "train.eval_steps=1",
    "train.checkpoint_interval=1", "train.keep_checkpoints=2", "train.progress=false",
    "train.tensorboard=false", "train.plot=false",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "reference", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # type: ignore[call-overload]


def weights(run: Path) -> dict[str, bytes]:
    tensors = load_file(str(find_checkpoint(run) / "model.safetensors"))
    return {k: v.numpy().tobytes() for k, v in tensors.items()}


def wait_for_a_write(run: Path, proc: subprocess.Popen[str], rng: random.Random) -> None:
    """Return while ``proc`` writes a checkpoint (its temporary directory exists), or once it
    has ended."""
    checkpoints = run / "checkpoints"
    time.sleep(rng.uniform(0.0, 3.0))  # not always the first checkpoint
    while proc.poll() is None:
        if checkpoints.is_dir() and any(e.name.startswith(".step-") for e in
                                        os.scandir(checkpoints)):
            time.sleep(rng.uniform(0.0, 0.003))
            return
        time.sleep(0.0002)


def digest(checkpoint: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(checkpoint.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    run = tmp_path_factory.mktemp("straight") / "run"
    proc = cli("train", f"train.out_dir={run}", *SETTINGS, "--no-sample")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return weights(run)


def test_sigkill_at_random_moments_loses_nothing_and_resumes_bit_identical(
    tmp_path: Path, uninterrupted: dict[str, bytes]
) -> None:
    rng = random.Random(1234)
    tried = lost = identical = mid_write = 0
    for seed in range(KILLS):
        run = tmp_path / f"run{seed}"
        command = ["train", f"train.out_dir={run}", *SETTINGS, "--no-sample"]
        kills_here = 0
        while True:
            proc = cli(*command)
            if tried % 2:  # at a random moment: torch's import, training or a checkpoint
                time.sleep(rng.uniform(2.0, 6.0))
            else:  # aimed at a checkpoint write: as soon as one starts, plus up to 3 ms
                wait_for_a_write(run, proc, rng)
            if proc.poll() is not None:  # it finished before the kill
                assert proc.returncode == 0, proc.communicate()[1]
                break
            named = (run / "checkpoints" / "latest").read_text().strip() \
                if (run / "checkpoints" / "latest").is_file() else None
            try:
                before = digest(run / "checkpoints" / named) if named else None
            except FileNotFoundError:  # pruned in the meantime: a newer one is complete
                named = before = None
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            tried += 1
            # a temporary checkpoint directory or file left behind: the kill landed mid-write
            mid_write += any((run / "checkpoints").glob(".*")) if (run / "checkpoints").is_dir() \
                else 0
            kills_here += 1
            if named:  # the checkpoint latest named before the kill must survive whole
                after = run / "checkpoints" / named
                survived = after.is_dir() and digest(after) == before
                newer = find_checkpoint(run)
                load_training_state(newer)  # whatever latest names now loads completely
                assert is_complete(newer)
                lost += 0 if survived or newer.name > named else 1
            # no checkpoint yet: start again (the killed run left only its logs behind)
            command = ["resume", str(run), "--no-sample"] if named else \
                ["train", "--overwrite", f"train.out_dir={run}", *SETTINGS, "--no-sample"]
            if kills_here == 3:  # three kills per run, then let it finish
                proc = cli(*command)
                _, err = proc.communicate(timeout=600)
                assert proc.returncode == 0, err
                break
        assert load_training_state(run)[1].step == STEPS
        identical += weights(run) == uninterrupted
    print(f"\nfault injection: {tried} SIGKILLs in {KILLS} runs ({mid_write} while a checkpoint "
          f"was being written), {identical}/{KILLS} resumed runs bit-identical to the "
          f"uninterrupted one, checkpoints lost: {lost}")
    assert lost == 0 and identical == KILLS


def _small_disk(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``path`` (root only); False where that is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or os.environ.get("LLMFS_NO_TMPFS"):
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    return result.returncode == 0


def _file_size_limit(limit: int) -> None:  # the fallback: writes past `limit` bytes fail
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_leaves_the_previous_checkpoint_and_says_so(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    settings = [s for s in SETTINGS if not s.startswith(("model.n_embd", "train.max_steps"))]
    settings += ["model.n_embd=256", "train.max_steps=6"]  # checkpoints of about 7 MB
    mounted = _small_disk(disk, "24m")
    try:
        run = disk / "run"
        extra = {} if mounted else {"preexec_fn": lambda: _file_size_limit(4 << 20)}
        proc = cli("train", f"train.out_dir={run}", f"data.dir={tmp_path / 'data'}", *settings,
                   "--no-sample", **extra)
        _, err = proc.communicate(timeout=600)
        lines = err.strip().splitlines()
        print(f"\nfull disk ({'tmpfs 24 MB' if mounted else 'RLIMIT_FSIZE 4 MB'}): "
              f"exit {proc.returncode}: {lines[-1] if lines else ''}")
        assert proc.returncode == 2, err
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
        assert "No space left on device" in err or "File too large" in err
        assert "could not save the checkpoint of step" in err
        if (run / "checkpoints" / "latest").is_file():
            good = find_checkpoint(run)
            load_training_state(good)  # the previous checkpoint is whole
        assert not list((run / "checkpoints").glob(".step-*")), "a partial checkpoint remains"
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


def test_two_processes_training_into_one_directory_one_refuses(tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = [*SETTINGS[:-5], "train.progress=false", "train.tensorboard=false",
                "train.plot=false"]
    procs = [cli("train", f"train.out_dir={run}", *settings, "--no-sample") for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use" in refused or "already holds a run" in refused, refused
    print(f"\ntwo processes, one directory: exit codes {codes}; the refusal: {refused.strip()}")
    assert load_training_state(run)[1].step == STEPS
