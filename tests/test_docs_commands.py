"""Every command the docs show is checked against the code it names, without running long jobs.

The convention (every page under ``docs/`` follows it): commands are shown in fenced blocks
labelled ``console``, each command on a line that starts with ``$ `` (a line ending in ``\\``
continues on the next); the other lines of the block are what the command prints. Blocks
labelled ``bash``, ``sh`` or ``shell`` hold only commands. Errors, logs and other output go in
``text`` blocks. A line of an unlabelled or ``text`` block that starts like a command is checked
too (so no command escapes), and is an error unless its page is listed in ``NOT_YET_CONSOLE``.

Each command is checked by what it runs:

* ``python -m reference CMD ...``: parsed by the real command-line parser
  (``reference.cli._parser``, with ``main``'s rule for overrides after a flag); ``train``,
  ``prepare`` and ``finetune`` then run with ``--dry-run`` (the real config, its YAML file and
  every ``section.key=value`` validated; nothing is read or written); ``resume``'s overrides are
  validated by the config and by ``check_resume_changes``; ``serve`` builds its
  ``ServerSettings`` from the command's environment and arguments;
* ``torchrun ...`` and ``python -m torch.distributed.run ...``: the launcher's options parsed by
  torch's own parser, then the module's command as above;
* other ``python -m MODULE``: the module exists; an argparse ``main`` parses the arguments;
  ``sphinx``'s source folder exists; ``pytest`` as below;
* ``pytest``: its paths exist and its ``-m`` markers are registered in ``pyproject.toml``;
* ``tox -e ENV``: the environment is in ``tox.ini``;
* ``uvicorn MODULE:ATTR``: uvicorn's own parser takes the options, ``ATTR`` imports, and the
  ``LLMFS_SERVE_*`` environment makes valid settings;
* ``curl``: the method and path are a route of the server app, with an API key unless public,
  and a ``-d`` body is JSON;
* ``docker build``: the Dockerfile and the context exist; ``docker run``: the image is one that a
  ``docker build -t`` in the docs makes and each ``-e LLMFS_SERVE_*`` is a setting;
* ``pip install -e '.[extra]'``: the extras exist;
* an ``LLMFS_SERVE_*`` variable anywhere is a field of ``ServerSettings``;
* anything else must match ``ALLOWED`` (a pattern and the reason it is not checked).

A few cheap commands run for real (``--help``, ``task reverse`` to a temporary file), and
``test_a_typo_in_a_doc_command_fails`` proves that the checks reject broken commands.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

COMMAND_BLOCKS = ("console", "bash", "sh", "shell")
PROGRAMS = ("python", "python3", "torchrun", "uvicorn", "tox", "pytest", "curl", "docker", "pip")
STARTS_LIKE_A_COMMAND = re.compile(
    r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:\.venv/bin/|(?:" + "|".join(PROGRAMS) + r")\b)")
ENV_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)

# Pages whose commands are still in unlabelled blocks: checked all the same, not yet in the
# console convention (a page's author converts it; then it leaves this list).
NOT_YET_CONSOLE: dict[str, str] = {}

# Commands that are shown but not checked, each with the reason (a pattern over the whole line).
ALLOWED: dict[str, str] = {
    r"^nvidia-smi\b": "the NVIDIA driver's tool: nothing of this project's to check",
}


class CommandError(AssertionError):
    """A documented command that does not match the code it names."""


@dataclass(frozen=True)
class Command:
    page: str  # relative to docs/
    line: int
    text: str
    labelled: bool  # in a console/bash block, as the convention asks

    def __str__(self) -> str:
        return f"docs/{self.page}:{self.line}: {self.text}"


# ---------------------------------------------------------------- extraction


def fenced_blocks(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced block of a Markdown text.

    >>> list(fenced_blocks("a\\n```console\\n$ ls\\n```\\n~~~\\nx\\n~~~\\n"))
    [('console', 3, ['$ ls']), ('', 6, ['x'])]
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)", lines[i])
        if not opening:
            i += 1
            continue
        fence, language = opening.group(2), opening.group(3)
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$",
                                              lines[j]):
            body.append(lines[j])
            j += 1
        yield language, i + 2, body
        i = j + 1


def _joined(lines: list[str], start: int) -> Iterator[tuple[int, str]]:
    """(line number, command) with ``\\`` continuations joined."""
    pending: list[str] = []
    first = start
    for offset, line in enumerate(lines):
        if not pending:
            first = start + offset
        pending.append(line.rstrip().removesuffix("\\").strip())
        if not line.rstrip().endswith("\\"):
            yield first, " ".join(pending)
            pending = []
    if pending:
        yield first, " ".join(pending)


def commands_in(text: str, page: str) -> list[Command]:
    """The commands of one page, by the convention in the module docstring.

    >>> [c.text for c in commands_in("```console\\n$ tox -e a \\\\\\n  -- x\\nout\\n```\\n", "p")]
    ['tox -e a -- x']
    """
    found: list[Command] = []
    for language, start, body in fenced_blocks(text):
        if language.startswith("{"):
            continue  # a directive (eval-rst, toctree, contract-table...)
        if language == "console":
            current: list[str] | None = None
            for n, line in enumerate(body):
                if current is not None and current[-1].endswith("\\"):
                    current.append(line.strip())
                elif line.startswith("$ "):
                    current = [line[2:].rstrip()]
                    found.append(Command(page, start + n, "", True))
                else:
                    current = None
                    continue
                text = " ".join(part.removesuffix("\\").strip() for part in current)
                found[-1] = Command(page, found[-1].line, text, True)
            continue
        if language in COMMAND_BLOCKS:
            lines = [ln for ln in body if ln.strip() and not ln.lstrip().startswith("#")]
            found += [Command(page, start + n, c, True) for n, c in _joined(lines, 0)]
            continue
        for n, line in enumerate(body):  # unlabelled or text: a command must not hide here
            if STARTS_LIKE_A_COMMAND.match(line.strip()):
                found.append(Command(page, start + n, line.strip(), False))
    return found


def doc_commands() -> list[Command]:
    out: list[Command] = []
    for path in sorted(DOCS.rglob("*.md")):
        if "_build" in path.parts:
            continue
        out += commands_in(path.read_text(encoding="utf-8"), path.relative_to(DOCS).as_posix())
    return out


# ---------------------------------------------------------------- what the code offers


@cache
def pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text(encoding="utf-8")


@cache
def tox_envs() -> frozenset[str]:
    text = (ROOT / "tox.ini").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^\[testenv:([\w-]+)\]", text, flags=re.M))


@cache
def settings_fields() -> frozenset[str]:
    from reference.server.settings import ServerSettings

    return frozenset(ServerSettings.model_fields)


@cache
def routes() -> frozenset[tuple[str, str]]:
    """(method, path) of every route of the server app (built, never started)."""
    from reference.server.app import create_app
    from reference.server.settings import ServerSettings

    app = create_app(ServerSettings(model="runs/main", allow_anonymous=True))
    out = set()
    for route in app.routes:
        for method in getattr(route, "methods", None) or {"GET"}:
            out.add((method, getattr(route, "path", "")))
    return frozenset(out)


@cache
def built_images() -> frozenset[str]:
    """The image names that a ``docker build -t NAME`` in the docs makes."""
    names: set[str] = set()
    for command in doc_commands():
        words = shlex.split(command.text)
        if words[:2] == ["docker", "build"]:
            names.update(words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-t", "--tag"))
    return frozenset(names)


# ---------------------------------------------------------------- the checks


def fail(message: str) -> None:
    raise CommandError(message)


def check(text: str) -> None:
    """Raise CommandError when the command ``text`` does not match the code it names."""
    for pattern in ALLOWED:
        if re.search(pattern, text):
            return
    try:
        words = shlex.split(text)
    except ValueError as e:
        fail(f"not a shell command line ({e})")
    env: dict[str, str] = {}
    while words and (m := ENV_ASSIGNMENT.match(words[0])):
        env[m.group(1)] = m.group(2)
        words.pop(0)
    check_env_names(env)
    if not words:
        fail("no command after the environment")
    program, args = words[0].removeprefix(".venv/bin/"), words[1:]
    if program in ("python", "python3"):
        if len(args) < 2 or args[0] != "-m":
            fail("a python command must run a module: python -m MODULE ...")
        check_module(args[1], args[2:], env)
    elif program == "torchrun":
        check_launcher(args, env)
    elif program == "uvicorn":
        check_uvicorn(args, env)
    elif program == "pytest":
        check_pytest(args)
    elif program == "tox":
        check_tox(args)
    elif program == "curl":
        check_curl(args)
    elif program == "docker":
        check_docker(args)
    elif program == "pip":
        check_pip(args)
    else:
        fail(f"{program}: not a program these checks know; add it to ALLOWED with the reason")


def check_env_names(env: dict[str, str]) -> None:
    for name in env:
        if name.startswith("LLMFS_SERVE_") and \
                name.removeprefix("LLMFS_SERVE_").lower() not in settings_fields():
            fail(f"{name}: not a server setting (reference/server/settings.py)")


def check_module(module: str, args: list[str], env: dict[str, str]) -> None:
    import importlib.util

    if module == "reference":
        check_reference(args, env)
    elif module == "torch.distributed.run":
        check_launcher(args, env)
    elif module == "pytest":
        check_pytest(args)
    elif module == "uvicorn":
        check_uvicorn(args, env)
    elif module == "sphinx":
        from sphinx.cmd.build import get_parser

        parsed = parse_or_fail(get_parser(), args)
        if not (ROOT / parsed.sourcedir).is_dir():
            fail(f"sphinx: no source folder {parsed.sourcedir}")
    else:
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            fail(f"no module {module}")
        if module.startswith("reference.") and args:
            check_argparse_main(module, args)


def parse_or_fail(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(args)
    except SystemExit as e:
        if e.code:
            fail(err.getvalue().strip().splitlines()[-1] if err.getvalue() else f"exit {e.code}")
        raise _Helped() from None


class _Helped(Exception):
    """``--help``: the parser printed its help and would exit 0."""


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


def check_argparse_main(module: str, args: list[str]) -> None:
    """Run ``module``'s ``main(args)`` up to the end of its argparse parsing, no further."""
    import importlib

    target = importlib.import_module(module)
    if not hasattr(target, "main"):
        target = importlib.import_module(module + ".__main__")
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        raise _Parsed(original(self, *a, **k))

    err = io.StringIO()
    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            target.main(args)
    except _Parsed:
        return
    except SystemExit as e:
        if e.code:
            fail(err.getvalue().strip().splitlines()[-1] if err.getvalue() else f"exit {e.code}")
        return
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    fail(f"{module}: main() returned without parsing its arguments")


def check_reference(args: list[str], env: dict[str, str]) -> None:
    from reference import cli

    parser = cli._parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parsed, extra = parser.parse_known_args(args)
    except SystemExit as e:
        if e.code:
            fail(err.getvalue().strip().splitlines()[-1])
        return  # --help
    if extra and not (hasattr(parsed, "overrides")
                      and all("=" in e and not e.startswith("-") for e in extra)):
        fail(f"unrecognized arguments: {' '.join(extra)}")
    if parsed.command is None:
        fail("no command: python -m reference COMMAND ...")
    if parsed.command in ("train", "prepare", "finetune"):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*args, "--dry-run"])
        if code != 0:
            fail(f"--dry-run exits {code}: {err.getvalue().strip()}")
    elif parsed.command == "resume":
        from reference.trainer.config import (
            Config,
            check_resume_changes,
            config_from_dict,
            parse_overrides,
        )

        try:
            config = config_from_dict(parse_overrides(parsed.overrides), origin="override")
            check_resume_changes(Config(), config)
        except ValueError as e:
            fail(str(e))
    elif parsed.command == "serve":
        given = {"model": parsed.run_dir, "host": parsed.host, "port": parsed.port}
        check_settings(env, {k: v for k, v in given.items() if v is not None})


def check_settings(env: dict[str, str], given: dict[str, Any]) -> None:
    """``ServerSettings`` from exactly ``env`` (and ``given``) must validate."""
    from pydantic import ValidationError

    from reference.server.settings import ServerSettings

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(env)
        if "LLMFS_SERVE_API_KEYS_FILE" in env:  # a secret mounted at run time: stand one in
            keys = Path(tmp, "keys")
            keys.write_text("k\n", encoding="utf-8")
            env["LLMFS_SERVE_API_KEYS_FILE"] = str(keys)
        try:
            os.environ.clear()
            os.environ.update({k: v for k, v in saved.items()
                               if not k.startswith("LLMFS_SERVE_")}, **env)
            ServerSettings(**given)
        except ValidationError as e:
            fail(f"server settings: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}")
        finally:
            os.environ.clear()
            os.environ.update(saved)


def check_launcher(args: list[str], env: dict[str, str]) -> None:
    from torch.distributed.run import get_args_parser

    parsed = parse_or_fail(get_args_parser(), args)
    if parsed.module:
        check_module(parsed.training_script, parsed.training_script_args, env)
    elif not (ROOT / parsed.training_script).is_file():
        fail(f"torchrun: no script {parsed.training_script}")


def check_uvicorn(args: list[str], env: dict[str, str]) -> None:
    import importlib

    import click
    import uvicorn

    try:
        context = uvicorn.main.make_context("uvicorn", list(args))
    except click.ClickException as e:
        fail(f"uvicorn: {e.format_message()}")
    module, _, attr = str(context.params["app"]).partition(":")
    try:
        target = importlib.import_module(module)
    except ImportError:
        fail(f"uvicorn: no module {module}")
    if not hasattr(target, attr):
        fail(f"uvicorn: {module} has no {attr}")
    check_settings(env, {})


def check_pytest(args: list[str]) -> None:
    takes_value = {"-m", "-k", "--impl", "--mutant", "-p", "-n", "--benchmark-columns"}
    i = 0
    while i < len(args):
        word = args[i]
        if word in takes_value:
            if i + 1 >= len(args):
                fail(f"pytest: {word} needs a value")
            value = args[i + 1]
            if word == "-m":
                for marker in re.findall(r"[A-Za-z_]\w*", value):
                    if marker not in ("and", "or", "not") and f'"{marker}:' not in pyproject():
                        fail(f"pytest: the marker {marker} is not registered in pyproject.toml")
            i += 2
            continue
        if not word.startswith("-") and not (ROOT / word.split("::")[0]).exists():
            fail(f"pytest: no path {word}")
        i += 1


def check_tox(args: list[str]) -> None:
    if "-e" not in args or args.index("-e") + 1 >= len(args):
        fail("tox: name the environment with -e ENV")
    for name in args[args.index("-e") + 1].split(","):
        if name not in tox_envs():
            fail(f"tox: no environment {name} in tox.ini (there are {sorted(tox_envs())})")


def check_curl(args: list[str]) -> None:
    from reference.server.guard import is_public

    urls = [a for a in args if a.startswith(("http://", "https://"))]
    if len(urls) != 1:
        fail("curl: give exactly one http(s) URL")
    method = args[args.index("-X") + 1] if "-X" in args else \
        "POST" if any(a in ("-d", "--data", "--data-raw") for a in args) else "GET"
    path = urlparse(urls[0]).path or "/"
    if (method, path) not in routes():
        fail(f"curl: the server has no route {method} {path}")
    headers = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-H", "--header")]
    if not is_public(path) and not any(h.lower().startswith("authorization: bearer ")
                                       for h in headers):
        fail(f"curl: {path} needs 'Authorization: Bearer <key>'")
    for i, a in enumerate(args[:-1]):
        if a in ("-d", "--data", "--data-raw"):
            try:
                json.loads(args[i + 1])
            except json.JSONDecodeError as e:
                fail(f"curl: the body is not JSON ({e})")


def _docker_options(args: list[str], takes_value: set[str]) -> tuple[dict[str, list[str]],
                                                                     list[str]]:
    options: dict[str, list[str]] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word in takes_value:
            options.setdefault(word, []).append(args[i + 1] if i + 1 < len(args) else "")
            i += 2
        elif word.startswith("-"):
            options.setdefault(word, []).append("")
            i += 1
        else:
            positional.append(word)
            i += 1
    return options, positional


def check_docker(args: list[str]) -> None:
    if args[:1] == ["build"]:
        options, positional = _docker_options(args[1:], {"-f", "-t", "--tag", "--build-arg"})
        dockerfile = options.get("-f", ["Dockerfile"])[0]
        if not (ROOT / dockerfile).is_file():
            fail(f"docker build: no {dockerfile}")
        if len(positional) != 1 or not (ROOT / positional[0]).is_dir():
            fail("docker build: give the context folder (.)")
    elif args[:1] == ["run"]:
        options, positional = _docker_options(
            args[1:], {"-p", "-v", "-e", "--env", "--gpus", "--name", "--env-file", "-w"})
        env = dict(e.partition("=")[::2] for e in options.get("-e", []) + options.get("--env", []))
        check_env_names(env)
        if not positional or positional[0] not in built_images():
            fail(f"docker run: the image {positional[:1]} is not one a `docker build -t` in the "
                 f"docs makes ({sorted(built_images())})")
    else:
        fail(f"docker {args[:1]}: only build and run are checked; add it to ALLOWED")


def check_pip(args: list[str]) -> None:
    for word in args:
        if word.startswith(".[") and word.endswith("]"):
            for extra in word[2:-1].split(","):
                if not re.search(rf"^{re.escape(extra)}\s*=", pyproject(), flags=re.M):
                    fail(f"pip: the project has no extra {extra!r}")


# ---------------------------------------------------------------- the tests

COMMANDS = doc_commands()


def test_the_docs_show_commands_for_every_guide() -> None:
    pages = {c.page for c in COMMANDS}
    for page in ("guides/training.md", "guides/finetuning.md", "guides/evaluation.md",
                 "guides/serving.md", "guides/troubleshooting.md", "index.md"):
        assert page in pages, f"docs/{page} shows no command"
    assert len(COMMANDS) >= 40, len(COMMANDS)


def test_the_extraction_examples_hold() -> None:
    import doctest

    failures, tried = doctest.testmod(sys.modules[__name__])
    assert failures == 0 and tried >= 3


def test_commands_are_shown_in_console_blocks() -> None:
    hidden = [str(c) for c in COMMANDS if not c.labelled and c.page not in NOT_YET_CONSOLE]
    assert not hidden, "commands outside a ```console block (lines starting with '$ '):\n" + \
        "\n".join(hidden)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_command_the_docs_show_matches_the_code(command: Command) -> None:
    try:
        check(command.text)
    except CommandError as e:
        pytest.fail(f"{command}\n  {e}")


BROKEN = [
    (".venv/bin/python -m reference trian", "invalid choice"),
    (".venv/bin/python -m reference train train.lrr=1e-3", "did you mean 'train.lr'"),
    (".venv/bin/python -m reference train --config configs/tiny_gpu.yaml", "not found"),
    (".venv/bin/python -m reference finetune runs/main d.jsonl finetune.lora_rank=4",
     "finetune.lora_rank"),
    (".venv/bin/python -m reference resume runs/main model.n_layer=6", "cannot change"),
    (".venv/bin/python -m reference generate runs/main --temprature 0.8", "--temprature"),
    (".venv/bin/python -m reference serve runs/main --port 8000", "API_KEYS"),
    ("LLMFS_SERVE_API_KEY='[\"k\"]' .venv/bin/python -m reference serve", "not a server setting"),
    (".venv/bin/torchrun --procs-per-node=2 -m reference train", "--procs-per-node"),
    (".venv/bin/python -m torch.distributed.run --standalone -m reference trian", "trian"),
    (".venv/bin/python -m reference.bpe trian x --out y", "trian"),
    (".venv/bin/python -m reference.evalution.harness runs/main --tasks x", "no module"),
    (".venv/bin/python -m pytest exercises -m atention", "atention"),
    (".venv/bin/python -m pytest specs/test_attenton.py", "no path"),
    ("tox -e dcos", "no environment dcos"),
    ("LLMFS_SERVE_ALLOW_ANONYMOUS=true .venv/bin/uvicorn reference.server.ap:app", "no module"),
    ("LLMFS_SERVE_ALLOW_ANONYMOUS=true .venv/bin/uvicorn reference.server.app:ap", "has no ap"),
    ("curl -s http://127.0.0.1:8000/v1/complete -H 'Authorization: Bearer k'", "no route"),
    ("curl -s http://127.0.0.1:8000/v1/models", "Authorization"),
    ("curl -s http://127.0.0.1:8000/generate -H 'Authorization: Bearer k' -d '{\"prompt\": }'",
     "not JSON"),
    ("docker build -f Dockerfile.gpu -t x .", "no Dockerfile.gpu"),
    ("docker run --rm llm-from-scrach", "not one a `docker build -t`"),
    ("pip install -e '.[srve]'", "no extra"),
    ("rm -rf runs", "not a program these checks know"),
]


@pytest.mark.parametrize(("command", "why"), BROKEN, ids=[c for c, _ in BROKEN])
def test_a_typo_in_a_doc_command_fails(command: str, why: str) -> None:
    with pytest.raises(CommandError, match=re.escape(why)):
        check(command)


def test_a_typo_in_a_page_is_found_by_the_extraction() -> None:
    page = "Text.\n\n```console\n$ .venv/bin/python -m reference train \\\n    train.lrr=1\n" \
           "what it prints\n```\n\n```\n.venv/bin/python -m reference trian\n```\n"
    found = commands_in(page, "p.md")
    assert [(c.text, c.labelled) for c in found] == [
        (".venv/bin/python -m reference train train.lrr=1", True),
        (".venv/bin/python -m reference trian", False)]
    for command in found:
        with pytest.raises(CommandError):
            check(command.text)


def test_dry_run_prints_the_resolved_config_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from reference import cli
    from reference.trainer.config import load_config

    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "small_gpt.yaml"
    code = cli.main(["train", "--dry-run", "--config", str(config), "model.n_layer=2",
                     "sample.prompt=Once upon"])
    out, err = capsys.readouterr()
    assert code == 0, err
    shown = yaml.safe_load(out)
    expected = load_config(config, ["model.n_layer=2", "sample.prompt=Once upon"]).to_dict()
    assert shown == expected
    assert "dry run" in err
    assert list(tmp_path.iterdir()) == []  # no run directory, no data, no download
    assert cli.main(["finetune", "runs/main", "d.jsonl", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["finetune"]["base"] == "runs/main"
    assert cli.main(["prepare", "--dry-run", "train.lrr=1"]) == 2
    assert "did you mean 'train.lr'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cheap_commands_run_for_real(tmp_path: Path) -> None:
    helped = _run("-m", "reference", "train", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--dry-run" in helped.stdout, helped.stderr
    out = tmp_path / "data" / "reverse.jsonl"
    task = _run("-m", "reference", "task", "reverse", str(out), "--n", "20", cwd=tmp_path)
    assert task.returncode == 0, task.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 20 and records[0]["messages"][0]["role"] == "user"
    assert "task reverse data/reverse.jsonl" in (DOCS / "guides" / "finetuning.md").read_text()


VALUE = re.compile(  # paths, quoted text, numbers, dotted names, environment variables
    r"\S*/\S*|'[^']*'|\"[^\"]*\"|`[^`]*`|\(|\)|\b\d[\d,.]*\b|\b\w+\.\w+\b|\b[A-Z][A-Z0-9_]{3,}\b")


def literal_parts(line: str) -> list[str]:
    """The parts of an error line that are the message's own text, not values filled in.

    >>> literal_parts("config file configs/nope.yaml not found")
    ['config file', 'not found']
    """
    return [part.strip(" :;,") for part in VALUE.split(line) if len(part.strip(" :;,")) >= 8]


def test_the_error_lines_the_troubleshooting_page_shows_are_in_the_code() -> None:
    """Every ``error: ...`` line has a part of its text, besides the values, in the library's
    source (or pydantic's own message, for a value of the wrong type)."""
    source = " ".join(" ".join(p.read_text(encoding="utf-8").split())
                      for p in (ROOT / "reference").rglob("*.py"))
    source += " input should be a valid integer"  # pydantic's message, which one_line shows
    page = (DOCS / "guides" / "troubleshooting.md").read_text(encoding="utf-8")
    shown = [line.removeprefix("error: ") for language, _, body in fenced_blocks(page)
             if language == "text" for line in body if line.startswith("error: ")]
    assert len(shown) >= 10, shown
    unknown = [line for line in shown
               if not any(part.lower() in source.lower() for part in literal_parts(line))]
    assert not unknown, "error lines not found in reference/:\n" + "\n".join(unknown)
