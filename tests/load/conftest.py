"""The abuse and load suites run on demand (``tox -e fuzz``, ``tox -e load``, or
``LLMFS_LOAD=1 pytest tests/load``), not in the default test run: each one trains a tiny chat
model, then serves it with a real uvicorn on 127.0.0.1 for minutes.

The fixtures here build the model (a one-layer char-level GPT, fine-tuned in full on the
``reverse`` task so the chat route has a chat tokenizer) and start the server in a subprocess
(its own process: its memory is measured alone, and a crash shows as a 5xx or a dead process).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reference.tasks import reverse, write_jsonl
from tests.outcomes import ROOT

if not os.environ.get("LLMFS_LOAD"):
    collect_ignore_glob = ["test_*.py"]

KEY = "sk-load-test-5b1e9d"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUIET = ["train.device=cpu", "train.threads=1", "train.progress=false",
         "train.tensorboard=false", "train.plot=false"]
BASE = ["data.source=builtin", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
        "model.block_size=64", "train.batch_size=4", "train.max_steps=3", "train.warmup_steps=1",
        "train.eval_interval=3", "train.eval_steps=1", *QUIET]
TUNE = ["finetune.method=full", "train.batch_size=4", "train.max_steps=2",
        "train.warmup_steps=1", "train.eval_interval=2", "train.eval_steps=1",
        "finetune.eval_examples=2", *QUIET]


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "reference", *args], cwd=ROOT, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny chat model's run directory (block_size 64)."""
    root = tmp_path_factory.mktemp("serve")
    _cli("train", f"train.out_dir={root / 'base'}", *BASE, "--no-sample")
    data = write_jsonl(root / "reverse.jsonl", reverse(16, seed=1))
    _cli("finetune", str(root / "base"), str(data), "--no-sample",
         f"train.out_dir={root / 'chat'}", *TUNE)
    return root / "chat"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path  # its stderr: the JSON log lines (and uvicorn's own)

    def log_lines(self) -> list[dict[str, object]]:
        """The server's JSON log lines so far."""
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def serve(run: Path, **settings: object) -> Iterator[Server]:
    """``uvicorn reference.server.app:app`` on 127.0.0.1 serving ``run``, once ``/health``
    says ready. Settings are ``LLMFS_SERVE_*`` variables; its stderr goes to a file (a pipe
    nobody reads would fill and block the server)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMFS_SERVE_MODEL": str(run),
           "LLMFS_SERVE_API_KEYS": json.dumps([KEY]), "LLMFS_SERVE_THREADS": "1"}
    env.update({f"LLMFS_SERVE_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
                for k, v in settings.items()})
    log = Path(tempfile.mkstemp(prefix="llmfs-serve-", suffix=".log")[1])
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "reference.server.app:app", "--host",
             "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
             # longer than a client pool keeps a connection idle, as behind a load balancer:
             # uvicorn's 5 s default races a client reusing a connection at that moment
             "--timeout-keep-alive", "120"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}): "
                                   f"{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server was not ready within 120 s")
            time.sleep(0.2)
        yield Server(url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)
