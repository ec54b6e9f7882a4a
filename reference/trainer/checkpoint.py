"""Full training checkpoints: everything needed to continue a run bit for bit.

Built on the model checkpoint of ``reference/checkpoint.py`` (safetensors + JSON config), so any
training checkpoint is also a model checkpoint that ``generate`` loads. A run directory holds::

    checkpoints/
        latest                   the name of the newest complete checkpoint (one line)
        step-000500/
            config.json          the model's config          } reference.checkpoint
            model.safetensors    the model's weights         }
            meta.json            the dataset's metadata, with its tokenizer (for generation)
            tokenizer.json       the BPE tokenizer, when there is one
            optimizer.safetensors  AdamW's moment tensors and step counts, flattened by name
            rng.safetensors      the torch RNG state of every rank, the batch generator's state
            trainer.json         step, optimizer hyper-parameters, grad-scaler state, Python
                                 and NumPy RNG states, the run's whole config

Nothing is unpickled on load: tensors come from safetensors, the rest from JSON.

Writing is atomic at the level of the whole checkpoint: files go into a hidden temporary
directory, which is renamed to ``step-NNNNNN`` when complete; only then is ``latest`` replaced
(itself atomically). A crash at any point leaves the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ..checkpoint import atomic_path, save_checkpoint, save_safetensors, write_json

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
TRAINER_NAME = "trainer.json"
OPTIMIZER_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
FORMAT_VERSION = 1


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass(frozen=True)
class TrainingState:
    """What a training checkpoint holds besides the model weights."""

    step: int
    config: dict[str, Any]  # Config.to_dict()
    optimizer: dict[str, Any]  # an optimizer state_dict
    scaler: dict[str, Any]  # a GradScaler state_dict (empty when not used)
    torch_rng: list[Tensor]  # one per rank
    cuda_rng: list[Tensor]  # this node's devices (empty on CPU)
    batch_rng: Tensor  # the batch generator's state
    python_rng: Any
    numpy_rng: Any
    extra: dict[str, Any]


def capture_rng() -> tuple[Tensor, list[Tensor], Any, Any]:
    """This process's torch CPU, CUDA, Python and NumPy RNG states."""
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    legacy_numpy = np.random.get_state()  # noqa: NPY002  (the global RNG is what we save)
    return torch.get_rng_state(), cuda, random.getstate(), legacy_numpy


def restore_rng(state: TrainingState, rank: int = 0) -> None:
    torch.set_rng_state(state.torch_rng[rank % len(state.torch_rng)])
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng[: torch.cuda.device_count()])
    random.setstate(_tuplify(state.python_rng))
    kind, keys, pos, has_gauss, cached = state.numpy_rng
    np.random.set_state(  # noqa: NPY002
        (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    )


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def _jsonable(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _split_optimizer_state(sd: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer state_dict as (tensors for safetensors, everything else for JSON)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def _join_optimizer_state(tensors: Mapping[str, Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_training_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
    data_dir: Path,
    batch_rng: Tensor,
    torch_rng: list[Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    keep: int = 2,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint of step ``step`` under ``run_dir/checkpoints``; return it.

    ``torch_rng`` lists every rank's torch RNG state (default: this process's). Keeps the
    ``keep`` newest checkpoints and deletes older ones (after the new one is complete).
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        save_checkpoint(model, tmp)  # type: ignore[arg-type]  # config.json + model.safetensors
        for name in ("meta.json", "tokenizer.json"):
            if (data_dir / name).is_file():
                shutil.copyfile(data_dir / name, tmp / name)
        tensors, rest = _split_optimizer_state(optimizer.state_dict())
        save_safetensors(tmp / OPTIMIZER_NAME, tensors)
        cpu_rng, cuda_rng, py_rng, np_rng = capture_rng()
        ranks = torch_rng if torch_rng is not None else [cpu_rng]
        rng = {f"torch.rank{i}": t for i, t in enumerate(ranks)}
        rng |= {f"cuda.{i}": t for i, t in enumerate(cuda_rng)} | {"batch": batch_rng}
        save_safetensors(tmp / RNG_NAME, rng)
        write_json(tmp / TRAINER_NAME, {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": rest,
            "scaler": _jsonable(scaler.state_dict() if scaler is not None else {}),
            "python_rng": _jsonable(py_rng),
            "numpy_rng": _jsonable(np_rng),
            "config": config,
            "extra": extra or {},
        })
        if final.exists():  # the same step saved again (after a resume): swap it out
            trash = root / f".{final.name}.old"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)  # a directory rename: atomic on one filesystem
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with atomic_path(root / LATEST_NAME) as pointer:
        pointer.write_text(final.name + "\n")
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, and leftovers of interrupted saves."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def latest_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``path`` names: a checkpoint itself, or a run's newest one."""
    path = Path(path)
    if (path / TRAINER_NAME).is_file() or (path / "model.safetensors").is_file():
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        pointer = root / LATEST_NAME
        if pointer.is_file():
            found = root / pointer.read_text().strip()
            if found.is_dir():
                return found
            raise FileNotFoundError(f"{pointer} names {found.name}, which does not exist")
    expected = path / CHECKPOINTS_DIR / LATEST_NAME
    raise FileNotFoundError(f"no checkpoint in {path} (expected {expected})")


def load_training_state(path: str | os.PathLike[str]) -> tuple[Path, TrainingState]:
    """The checkpoint directory and its :class:`TrainingState` (model weights stay on disk)."""
    directory = latest_checkpoint(path)
    trainer_json = directory / TRAINER_NAME
    if not trainer_json.is_file():
        raise FileNotFoundError(f"{directory} is a model checkpoint without training state "
                                f"({TRAINER_NAME}): it can generate but not resume")
    raw = json.loads(trainer_json.read_text())
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{trainer_json}: format_version {raw.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION}")
    optimizer = _join_optimizer_state(load_file(str(directory / OPTIMIZER_NAME)), raw["optimizer"])
    rng = load_file(str(directory / RNG_NAME))
    torch_rng = [rng[k] for k in sorted((k for k in rng if k.startswith("torch.rank")),
                                        key=lambda k: int(k.removeprefix("torch.rank")))]
    cuda_rng = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")),
                                       key=lambda k: int(k.removeprefix("cuda.")))]
    state = TrainingState(
        step=int(raw["step"]), config=raw["config"], optimizer=optimizer, scaler=raw["scaler"],
        torch_rng=torch_rng, cuda_rng=cuda_rng, batch_rng=rng["batch"],
        python_rng=raw["python_rng"], numpy_rng=raw["numpy_rng"], extra=raw.get("extra", {}),
    )
    return directory, state
