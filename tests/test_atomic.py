"""Atomic writes (``reference/atomic.py``), the one helper every file the project writes uses.

Real files in ``tmp_path``; failures are injected at the rename (the step that publishes the
new file) and mid-write.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from reference import atomic
from reference.atomic import (
    atomic_directory,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    write_json,
)
from reference.model import GPT, GPTConfig
from reference.trainer.checkpoint import list_checkpoints, save_training_checkpoint


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_directories_get_the_users_permissions_not_mkstemps(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_directory(tmp_path / "d") as d:
        (d / "inside").write_text("y")
    assert _mode(tmp_path / "a.txt") == atomic.FILE_MODE == 0o666 & ~atomic._UMASK
    assert _mode(tmp_path / "d") == atomic.DIR_MODE
    assert atomic.FILE_MODE != 0o600, "mkstemp's private mode would leak through"


def test_the_umask_is_read_once_without_changing_it(umask_027: None) -> None:
    assert atomic._umask() == 0o027
    assert os.umask(0o027) == 0o027, "reading the umask must leave it as it was"


@pytest.mark.parametrize("writer", ["text", "bytes", "json", "open", "path"])
def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    target = tmp_path / "f"
    target.write_text("old")

    def no_space(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(OSError, match="No space left"):
        if writer == "text":
            atomic_write_text(target, "new")
        elif writer == "bytes":
            atomic_write_bytes(target, b"new")
        elif writer == "json":
            write_json(target, {"new": 1})
        elif writer == "open":
            with atomic_open(target, "w") as f:
                f.write("new")
        else:
            with atomic_path(target) as tmp:
                tmp.write_text("new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_an_error_while_writing_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target, "wb") as f:
        f.write(b"half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_the_file_and_then_its_directory_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic_write_text(tmp_path / "f", "x")
    assert synced == ["file", "dir"], "data before the rename, the rename itself after"


def test_a_directory_is_replaced_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt"
    with atomic_directory(target) as d:
        (d / "a").write_text("1")
    with atomic_directory(target) as d:  # replacing an existing one
        (d / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "c").write_text("3")
        raise RuntimeError("crash while filling it")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no temporary left behind"


def test_atomic_open_refuses_modes_that_are_not_a_new_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), \
            atomic_open(tmp_path / "f", "a"):
        pass


# ----------------------------------------------------------------------------- pruning


def test_pruning_keeps_the_newest_by_step_number_past_one_million(tmp_path: Path) -> None:
    """Names compared as strings put step-1000000 before step-999999: the newest checkpoint
    (the one ``latest`` names) would be the one deleted."""
    model = GPT(GPTConfig(block_size=4, vocab_size=5, n_layer=1, n_head=1, n_embd=4))
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        final = save_training_checkpoint(
            tmp_path, model=model, optimizer=optimizer, step=step, config={},
            data_dir=tmp_path, batch_rng=torch.Generator().get_state(), keep=2)
        assert final.name == f"step-{step:06d}"
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-1000000", "step-1000001"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-1000001"
