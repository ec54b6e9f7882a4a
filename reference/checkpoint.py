"""Saving and loading a GPT: weights in safetensors, the config in JSON, written atomically.

A checkpoint is a directory::

    config.json         {"model_type": "llm-from-scratch-gpt", "format_version": 1, "config": {...}}
    model.safetensors   the state dict, GPT-2's names, nn.Linear layout, without the tied
                        ``lm_head.weight`` (it is ``transformer.wte.weight``)

safetensors holds raw tensors and a JSON header, so loading runs no code (unlike pickle, which
``torch.load`` would need). Each file is written atomically (``reference/atomic.py``), so a crash
mid-save leaves the previous file whole.

Example::

    save_checkpoint(model, "out/ckpt")
    model = load_checkpoint("out/ckpt")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .atomic import atomic_path, write_json
from .model import GPT, GPTConfig
from .settings import ValidationError, one_line

CONFIG_NAME = "config.json"
CHECKPOINTS_DIR = "checkpoints"  # a run directory's checkpoints: checkpoints/step-NNNNNN/
LATEST_NAME = "latest"  # checkpoints/latest: the name of the newest complete checkpoint
TRAINER_NAME = "trainer.json"  # a training checkpoint's state beside the model (the trainer's)
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "llm-from-scratch-gpt"
FORMAT_VERSION = 1
TIED_KEYS = ("lm_head.weight",)  # shares its tensor with transformer.wte.weight


def save_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Tensor]) -> None:
    """Write ``tensors`` (contiguous copies on the CPU) as safetensors, atomically."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata={"format": "pt"})


def load_weights(model: GPT, state_dict: Mapping[str, Tensor]) -> GPT:
    """Copy ``state_dict`` into ``model``; a ValueError lists missing, unexpected or misshapen keys.

    The tied ``lm_head.weight`` may be absent (it is ``transformer.wte.weight``).
    """
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in TIED_KEYS}
    given = {k: v for k, v in state_dict.items() if k not in TIED_KEYS}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    wrong = {
        k: (tuple(v.shape), tuple(expected[k])) for k, v in given.items() if v.shape != expected[k]
    }
    if wrong:
        raise ValueError(f"weights have the wrong shapes (given, expected): {wrong}")
    model.load_state_dict(given, strict=False)  # strict=False only for the tied key
    return model


def save_checkpoint(model: GPT, directory: str | os.PathLike[str]) -> Path:
    """Write ``model``'s config and weights into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in model.state_dict().items() if k not in TIED_KEYS}
    save_safetensors(directory / WEIGHTS_NAME, weights)
    write_json(
        directory / CONFIG_NAME,
        {
            "model_type": MODEL_TYPE,
            "format_version": FORMAT_VERSION,
            "config": model.config.model_dump(),
        },
    )
    return directory


def read_config(path: str | os.PathLike[str]) -> GPTConfig:
    """The GPTConfig in a checkpoint's ``config.json``; a ValueError names what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        hint = " (a Hugging Face checkpoint: use reference.hf.load_gpt2)" if found == "gpt2" else ""
        raise ValueError(f"{path}: model_type {found!r} is not {MODEL_TYPE!r}{hint}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    cfg = raw.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: 'config' must be an object, got {cfg!r}")
    if missing := sorted(GPTConfig.model_fields.keys() - cfg.keys()):
        raise ValueError(f"{path}: missing config fields {missing}")
    try:
        return GPTConfig.model_validate(cfg)
    except ValidationError as e:
        raise ValueError(one_line(e, GPTConfig, origin=str(path), prefix="config.")) from None


def load_checkpoint(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> GPT:
    """The GPT saved in ``directory`` by :func:`save_checkpoint`, on ``device``, in eval mode."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a checkpoint directory")
    config = read_config(directory / CONFIG_NAME)
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device=device)
    model.transformer.wte.weight = model.lm_head.weight  # to_empty keeps one tensor per tie
    load_weights(model, load_file(str(directory / WEIGHTS_NAME), device=str(device)))
    return model.eval()


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
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
