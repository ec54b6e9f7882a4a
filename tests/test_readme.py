"""The README's commands, run in the order shown, leave every run usable.

The commands are read from the README itself (between its ``main-command`` and ``usage-commands``
markers) and run in a fresh working directory as a new user would, with changes that keep
the test fast and offline: every ``train`` gets a tiny model and a few steps appended (later
settings win), ``resume``'s ``train.max_steps`` is cut to a few more steps, and ``task`` and
``finetune`` get a small dataset and a few steps. Tiny Shakespeare
comes from the shared test data (never the network). Afterwards every run directory the
commands made still loads and generates, and each holds only its own run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reference.checkpoint import find_checkpoint
from reference.trainer.checkpoint import load_training_state
from tests.outcomes import ROOT

pytestmark = pytest.mark.slow

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "train.batch_size=4", "train.max_steps=4", "train.warmup_steps=1",
        "train.eval_interval=2", "train.eval_steps=1", "train.tensorboard=false",
        "train.threads=1", "sample.max_new_tokens=20"]


FINETUNE = ["train.max_steps=4", "train.warmup_steps=1", "train.batch_size=4",
            "train.eval_interval=2", "train.eval_steps=1", "train.threads=1",
            "train.tensorboard=false", "finetune.eval_examples=4", "sample.max_new_tokens=10"]


def readme_commands() -> list[str]:
    """The main job, then the usage commands, as the README shows them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for marker in ("main-command", "usage-commands"):
        block = re.search(rf"<!-- {marker} -->\n```\n(.*?)```\n<!-- /{marker} -->", text, re.S)
        assert block, f"README.md has no {marker} block"
        for line in block[1].splitlines():
            for part in line.split("&&"):
                part = shlex.join(shlex.split(part, comments=True))
                if part.startswith((".venv/bin/python -m reference", ".venv/bin/torchrun")):
                    commands.append(part)
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def runnable(command: str) -> list[str]:
    """The README's command as this test runs it (see the module docstring)."""
    words = shlex.split(command)
    command_word = words[words.index("reference") + 1] if "reference" in words else None
    if words[0] == ".venv/bin/torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", "--master_addr=127.0.0.1",
                 f"--master_port={_free_port()}", *words[1:]]
    else:
        words = [sys.executable, *words[1:]]
    if command_word == "train":
        words += TINY
    if command_word == "resume":
        words = [re.sub(r"^train\.max_steps=\d+$", "train.max_steps=6", w) for w in words]
    if command_word == "finetune":
        words += FINETUNE
    if command_word == "task":
        words += ["--n", "60"]
    return words


def test_the_readme_commands_in_order_leave_every_run_usable(
    tmp_path: Path, shared_data: Path
) -> None:
    shutil.copy(shared_data / "tinyshakespeare" / "input.txt", tmp_path / "input.txt")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLMFS_DATA": str(shared_data),
           "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    commands = readme_commands()
    assert any(" resume " in c for c in commands) and any("torchrun" in c for c in commands)
    for command in commands:
        result = subprocess.run(runnable(command), cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)
        output = f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert result.returncode == 0, output
        assert "Traceback" not in result.stderr, command

    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["ddp", "main", "reverse", "shakespeare_char_fast",
                                      "shakespeare_local", "six_layers"]
    for run in runs:
        generate = [sys.executable, "-m", "reference", "generate", str(run), "-n", "5"]
        result = subprocess.run(generate, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"{run.name} no longer generates: {result.stderr}"
        checkpoint, state = load_training_state(run)
        assert checkpoint == find_checkpoint(run)
        assert (tmp_path / state.config["train"]["out_dir"]).resolve() == run.resolve(), (
            f"{run.name} holds a checkpoint of another run")
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
        assert steps == sorted(steps), f"{run.name}'s metrics splice two runs: {steps}"
    assert load_training_state(tmp_path / "runs" / "main")[1].step == 6, "resumed to step 6"


def test_the_readme_serve_commands_start_a_server(tmp_path: Path) -> None:
    """Each command of the README's ``serve-commands`` block, as written but for the port (a
    free one) and the interpreter (this one), serves the main job's run: /health turns 200 and
    the key in the command opens /v1/models."""
    import time
    import urllib.error
    import urllib.request

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- serve-commands -->\n```\n(.*?)```\n<!-- /serve-commands -->", text,
                      re.S)
    assert block, "README.md has no serve-commands block"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "reference", "train", "--no-sample", *TINY]
    subprocess.run(train, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    for line in block[1].strip().splitlines():
        words = shlex.split(line)
        settings = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
        command = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
        port = _free_port()
        command = [str(port) if w == "8000" else w for w in command]
        if command[0] == ".venv/bin/python":
            command = [sys.executable, *command[1:]]
        elif command[0] == ".venv/bin/uvicorn":
            command = [sys.executable, "-m", "uvicorn", *command[1:]]
        key = json.loads(settings["LLMFS_SERVE_API_KEYS"])[0]
        server = subprocess.Popen(command, cwd=tmp_path, env={**env, **settings},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline, status = time.monotonic() + 120, 0
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                        status = r.status
                except (urllib.error.URLError, ConnectionError):
                    status = 0
                if status == 200:
                    break
                time.sleep(0.5)
            assert status == 200, f"{line}: /health never answered 200"
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                             headers={"Authorization": f"Bearer {key}"})
            with urllib.request.urlopen(request, timeout=10) as r:
                assert json.load(r)["data"][0]["id"] == "main", line
        finally:
            server.terminate()
            _, err = server.communicate(timeout=30)
        assert "Traceback" not in err, err[-2000:]
