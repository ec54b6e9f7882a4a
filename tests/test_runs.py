"""Nothing lost: a run directory holds one run, resume writes where it is told, and every bad
file is one line naming it. Through the command line (``reference.cli.main``), with real files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reference import cli
from reference.checkpoint import find_checkpoint
from reference.trainer.checkpoint import load_training_state
from reference.trainer.monitor import read_metrics
from reference.trainer.schedule import cosine_lr
from tests.outcomes import ROOT

pytestmark = pytest.mark.trainer

TINY = ["data.source=markov", "data.markov_tokens=20000", "train.device=cpu", "train.threads=1",
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.max_steps=8", "train.warmup_steps=2",
        "train.eval_interval=4", "train.eval_steps=1", "train.log_interval=1",
        "train.progress=false", "train.tensorboard=false", "train.plot=false"]


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def train(run: Path, *extra: str, flags: tuple[str, ...] = ()) -> int:
    return cli.main(["train", *flags, f"train.out_dir={run}", *TINY, *extra, "--no-sample"])


def files_of(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (but the lock) and the SHA-256 of its bytes."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_error_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    missing = [w for w in words if w not in lines[0]]
    assert not missing, f"{lines[0]!r} should name {missing}"
    return lines[0]


# ----------------------------------------------------------------------------- one run per dir


def test_training_into_a_run_directory_is_refused_with_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(run) == 0
    before = files_of(run)
    capsys.readouterr()
    assert train(run, "model.n_layer=2") == 2
    one_error_line(capsys.readouterr().err, str(run), "checkpoints/step-000008", "resume",
                   "train.out_dir", "--overwrite")
    assert files_of(run) == before, "a refused run leaves the old one untouched"


def test_overwrite_replaces_the_old_run_and_keeps_the_data_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(run) == 0
    data = files_of(run / "data")
    assert train(run, "train.max_steps=4", flags=("--overwrite",)) == 0
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-000004"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")
            if r["kind"] == "eval"] == [4], "the old run's metrics are gone"
    assert files_of(run / "data") == data


def test_a_second_process_training_into_a_directory_in_use_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # another process holds the run directory, as a training one would
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)",
         str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert train(run) == 2
        one_error_line(capsys.readouterr().err, str(run), "in use", "another process")
        assert not (run / "checkpoints").exists()
        holder.send_signal(signal.SIGKILL)  # a killed process lets go of its lock
        holder.wait(30)
        assert train(run) == 0
    finally:
        holder.kill()
        holder.wait(30)


# ----------------------------------------------------------------------------- resume


def test_resume_writes_into_the_directory_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = tmp_path / "original"
    assert train(original) == 0
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    before = files_of(original)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["resume", str(copy), "train.max_steps=12", "--no-sample"]) == 0
    assert files_of(original) == before, "resuming a copy must not touch the original"
    assert list(elsewhere.iterdir()) == [], "nothing written into the working directory"
    assert find_checkpoint(copy).name == "step-000012"
    state = load_training_state(copy)[1]
    assert Path(state.config["train"]["out_dir"]) == copy.resolve()
    assert cli.main(["resume", str(copy / "checkpoints" / "step-000012"), "train.max_steps=13",
                     "--no-sample"]) == 0, "a checkpoint directory resumes its run too"
    assert find_checkpoint(copy).name == "step-000013"


def test_training_longer_continues_the_runs_schedule_without_a_jump(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "train.lr=1e-2", "train.min_lr=1e-3") == 0
    assert cli.main(["resume", str(run), "train.max_steps=14", "--no-sample"]) == 0
    lrs = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"}
    # a record's lr is the rate of the step that produced it (steps count from 1 here)
    expected = {s: cosine_lr(s - 1, max_lr=1e-2, min_lr=1e-3, warmup_steps=2, decay_steps=8)
                for s in range(1, 15)}
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert all(lrs[s] == pytest.approx(1e-3) for s in range(10, 15)), "past the decay: min_lr"


@pytest.mark.parametrize(("change", "named"), [
    ("data.val_fraction=0.2", "data.val_fraction"),
    ("model.n_layer=2", "model.n_layer"),
    ("train.lr=1.0", "train.lr"),
    ("train.out_dir=/somewhere/else", "train.out_dir"),
])
def test_resume_refuses_changes_that_change_the_runs_meaning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str, named: str
) -> None:
    run = tmp_path / "run"
    assert train(run) == 0
    before = files_of(run)
    capsys.readouterr()
    assert cli.main(["resume", str(run), change, "--no-sample"]) == 2
    one_error_line(capsys.readouterr().err, f"cannot change {named}", "new run")
    assert files_of(run) == before


# ----------------------------------------------------------------------------- bad files


@pytest.fixture
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert train(run, "train.keep_checkpoints=2") == 0  # checkpoints at steps 4 and 8
    return run


def _latest(run: Path) -> Path:
    return run / "checkpoints" / "step-000008"


@pytest.mark.parametrize("command", ["generate", "resume"])
def test_a_truncated_checkpoint_names_the_file_and_the_whole_one_beside_it(
    run: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    weights = _latest(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    assert cli.main([command, str(run), "--no-sample" if command == "resume" else "-n1"]) == 2
    one_error_line(capsys.readouterr().err, str(weights), "truncated",
                   str(run / "checkpoints" / "step-000004"))


def test_a_pickle_is_refused_not_unpickled(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _latest(run) / "model.safetensors"
    torch.save({"transformer.wte.weight": torch.zeros(2)}, weights)
    capsys.readouterr()
    assert cli.main(["generate", str(run)]) == 2
    one_error_line(capsys.readouterr().err, str(weights), "pickle", "never unpickles")


def test_a_missing_latest_falls_back_to_the_newest_whole_checkpoint_saying_so(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(_latest(run))
    capsys.readouterr()
    assert cli.main(["generate", str(run), "-n", "3", "-p", "ab"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "tokens/s" not in line]
    assert len(err) == 1 and err[0].startswith("warning: ") and "step-000008" in err[0]
    assert str(run / "checkpoints" / "step-000004") in err[0]


@pytest.mark.parametrize(("name", "content", "words"), [
    ("config.json", '{"model_type": "llm-from-scratch-gpt", "format_version": 9}',
     ["config.json", "format_version 9"]),
    ("config.json", "{not json", ["config.json", "not valid JSON"]),
    ("meta.json", '{"tokenizer": {"kind": "sentencepiece"}}', ["meta.json", "sentencepiece"]),
    ("trainer.json", '{"format_version": 7}', ["trainer.json", "format_version 7"]),
])
def test_a_malformed_file_of_a_checkpoint_is_one_line_naming_it(
    run: Path, capsys: pytest.CaptureFixture[str], name: str, content: str, words: list[str]
) -> None:
    (_latest(run) / name).write_text(content)
    capsys.readouterr()
    command = ["resume", str(run), "--no-sample"] if name == "trainer.json" else \
        ["generate", str(run)]
    assert cli.main(command) == 2
    one_error_line(capsys.readouterr().err, *words)


def test_a_bpe_tokenizer_file_of_another_format_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    run = tmp_path / "run"
    assert cli.main(["train", f"train.out_dir={run}", *TINY[2:], "data.source=text",
                     f"data.path={text}", "data.tokenizer=bpe", "data.bpe_vocab_size=270",
                     "--no-sample"]) == 0
    tokenizer = find_checkpoint(run) / "tokenizer.json"
    document = json.loads(tokenizer.read_text())
    tokenizer.write_text(json.dumps({**document, "version": 99}))
    capsys.readouterr()
    assert cli.main(["generate", str(run)]) == 2
    one_error_line(capsys.readouterr().err, str(tokenizer), "version")


@pytest.mark.parametrize(("content", "words"), [
    ("héllo wörld\n".encode() * 50 + "café".encode("latin-1") + b"\n", ["byte 703", "0xe9"]),
    (b"\x00\x01\x02\x03" * 100, ["binary"]),
])
def test_data_that_is_not_utf8_text_names_the_file_and_the_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, words: list[str]
) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    assert cli.main(["train", f"train.out_dir={tmp_path / 'run'}", *TINY[2:], "data.source=text",
                     f"data.path={data}", "--no-sample"]) == 2
    one_error_line(capsys.readouterr().err, str(data), *words)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("setting", "named"), [
    ("data.path=notes.txt", "data.path='notes.txt' is not used with data.source=markov"),
    ("data.bpe_vocab_size=300", "data.bpe_vocab_size=300 is not used with data.tokenizer=char"),
    ("data.hf_name=wikitext", "data.hf_name='wikitext' is not used with data.source=markov"),
])
def test_a_setting_the_source_does_not_read_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, named: str
) -> None:
    assert train(tmp_path / "run", setting) == 2
    one_error_line(capsys.readouterr().err, named)


# ----------------------------------------------------------------------------- outputs


def test_run_files_get_the_users_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert train(tmp_path / "run") == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "run").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


def test_progress_in_a_file_is_plain_lines_not_redraws(tmp_path: Path) -> None:
    settings = [s for s in TINY if s != "train.progress=false"]
    command = [sys.executable, "-m", "reference", "train", f"train.out_dir={tmp_path / 'run'}",
               *settings, "train.log_interval=2", "--no-sample"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr, "a redrawn bar in a file"
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines if "/" in line] == [
        "step 2/8", "step 4/8", "step 6/8", "step 8/8"], result.stdout
    assert time.perf_counter() - started < 300


def test_a_prompt_the_tokenizer_cannot_encode_stops_the_run_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["train", f"train.out_dir={tmp_path / 'run'}", *TINY, "sample.prompt=The "]
    assert cli.main(command) == 2
    one_error_line(capsys.readouterr().err, "sample.prompt='The '", "outside 'abcdefgh'")
    assert not (tmp_path / "run" / "checkpoints").exists()
