"""A run directory belongs to one run.

Training into a directory that already holds a run (a checkpoint, a metrics log) is refused with
one line naming it and the choices: ``resume`` it, pick another ``train.out_dir``, or replace it
with ``--overwrite``. While a run trains, it holds a lock on its directory (``.lock``, an OS file
lock that a killed process releases), so a second process training into the same directory is
refused instead of interleaving its checkpoints with the first one's.

What a run writes: ``checkpoints/``, ``metrics.jsonl``, ``tb/``, ``curves.png``. The tokenized
data (``data/`` by default) is a cache keyed by its content, shared by runs that ask for the same
data, and is never deleted here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from filelock import FileLock, Timeout

from ..checkpoint import CHECKPOINTS_DIR, LATEST_NAME
from .monitor import CURVES_NAME, METRICS_NAME, TENSORBOARD_DIR

LOCK_NAME = ".lock"
RUN_OUTPUTS = (CHECKPOINTS_DIR, METRICS_NAME, TENSORBOARD_DIR, CURVES_NAME)


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (it holds another run, or is in use)."""


def existing_run(run_dir: str | os.PathLike[str]) -> str | None:
    """What shows that ``run_dir`` already holds a run (e.g. ``checkpoints/step-000500``), or
    None when it holds none."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        steps = sorted(p.name for p in checkpoints.glob("step-*") if p.is_dir())
        if steps:
            return f"{CHECKPOINTS_DIR}/{steps[-1]}"
        if (checkpoints / LATEST_NAME).exists():
            return f"{CHECKPOINTS_DIR}/{LATEST_NAME}"
    for name in (METRICS_NAME, TENSORBOARD_DIR, CURVES_NAME):
        if (run_dir / name).exists():
            return name
    return None


def run_directory_of(checkpoint: str | os.PathLike[str]) -> Path:
    """The run directory a training checkpoint lies in (``RUN/checkpoints/step-N`` -> ``RUN``)."""
    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name != CHECKPOINTS_DIR:
        raise RunDirectoryError(
            f"{checkpoint} is not inside a run directory (RUN/{CHECKPOINTS_DIR}/step-N): "
            "resume needs the run it continues"
        )
    return checkpoint.parent.parent


def claim(run_dir: str | os.PathLike[str], *, resume: bool = False,
          overwrite: bool = False) -> FileLock:
    """Lock ``run_dir`` for one run and return the held lock (release it when the run ends).

    A new run (``resume=False``) refuses a directory that holds a run, unless ``overwrite``,
    which first deletes that run's outputs. Raises :class:`RunDirectoryError` with one line.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirectoryError(
            f"{run_dir} is in use: another process is training into it right now "
            f"(it holds {run_dir / LOCK_NAME}); wait for it, or choose another train.out_dir"
        ) from None
    if resume:
        return lock
    found = existing_run(run_dir)
    if found is not None and not overwrite:
        lock.release()
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({found}): continue it with `python -m reference "
            f"resume {run_dir}`, train into another directory (train.out_dir=...), or replace "
            "it with --overwrite"
        )
    if found is not None:
        for name in RUN_OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    return lock
