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
            trainer.json         step, optimizer hyper-parameters, grad-scaler state, the last
                                 evaluation, the run's whole config

Nothing is unpickled on load: tensors come from safetensors, the rest from JSON.

Writing is atomic at the level of the whole checkpoint (``reference/atomic.py``): files go into a
hidden temporary directory, which is renamed to ``step-NNNNNN`` when complete; only then is
``latest`` replaced (itself atomically), and only then are old checkpoints pruned, by step number.
A crash at any point leaves the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_directory, atomic_open, atomic_write_text, write_json
from ..checkpoint import (
    CHECKPOINTS_DIR,
    LATEST_NAME,
    TRAINER_NAME,
    find_checkpoint,
    list_checkpoints,
    read_json,
    read_safetensors,
    save_checkpoint,
    save_safetensors,
)

OPTIMIZER_NAME = "optimizer.safetensors"
RNG_NAME = "rng.safetensors"
FORMAT_VERSION = 2  # 1 also held Python and NumPy RNG states, which training never used
READABLE_VERSIONS = (1, 2)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass(frozen=True)
class TrainingState:
    """What a training checkpoint holds besides the model weights: what resuming uses, no more."""

    step: int
    config: dict[str, Any]  # Config.to_dict()
    optimizer: dict[str, Any]  # an optimizer state_dict
    scaler: dict[str, Any]  # a GradScaler state_dict (empty when not used)
    torch_rng: list[Tensor]  # one per rank: dropout
    cuda_rng: list[Tensor]  # this node's devices (empty on CPU): dropout on CUDA
    batch_rng: Tensor  # the batch generator's state: which windows come next
    last_eval: dict[str, float]  # the last evaluation's losses, reported when the run ends


def capture_rng() -> tuple[Tensor, list[Tensor]]:
    """This process's torch CPU and CUDA RNG states (the only randomness training draws)."""
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda


def restore_rng(state: TrainingState, rank: int = 0) -> None:
    torch.set_rng_state(state.torch_rng[rank % len(state.torch_rng)])
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng[: torch.cuda.device_count()])


def _jsonable(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.item() if x.numel() == 1 else x.tolist()
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
    last_eval: dict[str, float] | None = None,
    extra: Callable[[Path], None] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint of step ``step`` under ``run_dir/checkpoints``; return it.

    ``torch_rng`` lists every rank's torch RNG state (default: this process's). Keeps the
    ``keep`` newest checkpoints (by step number) and deletes older ones, after the new one is
    complete and ``latest`` names it. ``extra(directory)`` writes more files into the checkpoint
    before it is complete (a fine-tuning run's adapter). ``optimizer_state`` replaces
    ``optimizer.state_dict()`` (an FSDP run's state, gathered in the same layout).
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    with atomic_directory(final) as tmp:
        save_checkpoint(model, tmp)  # type: ignore[arg-type]  # config.json + model.safetensors
        for name in ("meta.json", "tokenizer.json"):
            if (data_dir / name).is_file():
                with atomic_open(tmp / name, "wb") as f:
                    f.write((data_dir / name).read_bytes())
        tensors, rest = _split_optimizer_state(
            optimizer.state_dict() if optimizer_state is None else optimizer_state)
        save_safetensors(tmp / OPTIMIZER_NAME, tensors)
        cpu_rng, cuda_rng = capture_rng()
        ranks = torch_rng if torch_rng is not None else [cpu_rng]
        rng = {f"torch.rank{i}": t for i, t in enumerate(ranks)}
        rng |= {f"cuda.{i}": t for i, t in enumerate(cuda_rng)} | {"batch": batch_rng}
        save_safetensors(tmp / RNG_NAME, rng)
        write_json(tmp / TRAINER_NAME, {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": rest,
            "scaler": _jsonable(scaler.state_dict() if scaler is not None else {}),
            "config": config,
            "last_eval": last_eval or {},
        })
        if extra is not None:
            extra(tmp)
    atomic_write_text(root / LATEST_NAME, final.name + "\n")
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, and leftovers of interrupted saves."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_training_state(path: str | os.PathLike[str]) -> tuple[Path, TrainingState]:
    """The checkpoint directory and its :class:`TrainingState` (model weights stay on disk)."""
    directory = find_checkpoint(path)
    trainer_json = directory / TRAINER_NAME
    if not trainer_json.is_file():
        raise FileNotFoundError(f"{directory} is a model checkpoint without training state "
                                f"({TRAINER_NAME}): it can generate but not resume")
    raw = read_json(trainer_json)
    if not isinstance(raw, dict) or raw.get("format_version") not in READABLE_VERSIONS:
        found = raw.get("format_version") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{trainer_json}: format_version {found!r}, expected one of "
                         f"{list(READABLE_VERSIONS)} (written by another version?)")
    tensors = read_safetensors(directory / OPTIMIZER_NAME)
    rng = read_safetensors(directory / RNG_NAME)
    try:
        optimizer = _join_optimizer_state(tensors, raw["optimizer"])
        torch_rng = [rng[k] for k in sorted((k for k in rng if k.startswith("torch.rank")),
                                            key=lambda k: int(k.removeprefix("torch.rank")))]
        cuda_rng = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")),
                                           key=lambda k: int(k.removeprefix("cuda.")))]
        state = TrainingState(
            step=int(raw["step"]), config=raw["config"], optimizer=optimizer,
            scaler=raw["scaler"], torch_rng=torch_rng, cuda_rng=cuda_rng, batch_rng=rng["batch"],
            last_eval={k: float(v) for k, v in raw.get("last_eval", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{trainer_json}: malformed training state (missing or bad {e})") from None
    return directory, state
