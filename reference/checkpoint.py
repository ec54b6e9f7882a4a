"""Saving and loading a model: weights in safetensors, the config in JSON, written atomically.

A checkpoint is a directory::

    config.json         {"model_type": "llm-from-scratch-gpt", "format_version": 1, "config": {...}}
    model.safetensors   the state dict, nn.Linear layout, without a tied ``lm_head.weight``
                        (GPT-2's is ``transformer.wte.weight``; a tied Llama's is
                        ``model.embed_tokens.weight``)

The config's ``arch`` picks the model (``reference.arch``): ``"gpt2"`` (GPT-2's names) or
``"llama"`` (Hugging Face Llama's names, with or without experts). A config without ``arch``
(every checkpoint written before there was a choice) is GPT-2.

A quantized model (``reference/quantization.py``) adds ``"quantization": {"method":
"int8-per-channel", "version": 1}`` to ``config.json``; its file then holds, for each linear
layer of the blocks, an int8 ``weight`` (out, in) and a float32 ``scale`` (out,) beside the
float ``bias``. :func:`load_checkpoint` rebuilds that structure on the meta device, then loads;
a method or version it does not know is refused, naming the file.

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
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .arch import build_model
from .atomic import atomic_path, write_json
from .console import Notice
from .llama import Llama, LlamaConfig
from .model import GPT, GPTConfig
from .quantization import METHOD, VERSION, Int8Linear, quantization_of, quantize
from .settings import ValidationError, one_line

CONFIG_NAME = "config.json"
CHECKPOINTS_DIR = "checkpoints"  # a run directory's checkpoints: checkpoints/step-NNNNNN/
LATEST_NAME = "latest"  # checkpoints/latest: the name of the newest complete checkpoint
TRAINER_NAME = "trainer.json"  # a training checkpoint's state beside the model (the trainer's)
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "llm-from-scratch-gpt"
FORMAT_VERSION = 1
TIED_KEYS = ("lm_head.weight",)  # shares its tensor with transformer.wte.weight

Model = GPT | Llama  # what a checkpoint holds
M = TypeVar("M", bound=GPT | Llama)
ARCHS: dict[str, type[GPTConfig] | type[LlamaConfig]] = {"gpt2": GPTConfig, "llama": LlamaConfig}


def tied_keys(model: Model) -> dict[str, str]:
    """``model``'s tied state-dict keys: the one a checkpoint leaves out -> the one it keeps.

    >>> tied_keys(GPT(GPTConfig(block_size=4, vocab_size=8, n_layer=1, n_head=1, n_embd=8)))
    {'lm_head.weight': 'transformer.wte.weight'}
    """
    if isinstance(model, Llama):
        return {"lm_head.weight": "model.embed_tokens.weight"} \
            if model.config.tie_word_embeddings else {}
    return {"lm_head.weight": "transformer.wte.weight"}


def retie(model: Model) -> Model:
    """Tie ``model``'s head to its embedding again, the head taking the embedding's tensor
    (``to_empty`` or ``assign=True`` loading replace the shared tensor by two, and a checkpoint
    holds the embedding's); a no-op for an untied model."""
    if isinstance(model, Llama):
        if model.config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
    else:
        model.lm_head.weight = model.transformer.wte.weight
    return model


def save_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Tensor]) -> None:
    """Write ``tensors`` (contiguous copies on the CPU) as safetensors, atomically."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(data, str(tmp), metadata={"format": "pt"})
        except SafetensorError as e:  # e.g. a full disk, reported by the Rust writer
            raise OSError(f"could not write {path}: {e}") from None


def read_safetensors(path: str | os.PathLike[str],
                     device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file; a missing, truncated or foreign file is one
    FileNotFoundError/ValueError that names it and says what it is instead.

    A pickle (``torch.save``'s zip or a plain pickle) is refused, never unpickled: loading one
    can run arbitrary code.
    """
    path = Path(path)
    try:
        return load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: {_what_is_wrong(path, e)}{_whole_neighbour(path)}") from None


def _whole_neighbour(path: Path) -> str:
    """For a file of a run's checkpoint: the newest other checkpoint that looks whole."""
    checkpoint = path.parent
    if checkpoint.parent.name != CHECKPOINTS_DIR:
        return ""
    others = [p for p in list_checkpoints(checkpoint.parent) if p != checkpoint and is_complete(p)]
    if not others:
        return ""
    return f"; the checkpoint {others[-1]} looks whole: give that directory instead"


def _what_is_wrong(path: Path, error: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04"):
        return ("a torch.save (pickle) file, not safetensors: this project never unpickles "
                "(loading a pickle can run code); convert it with safetensors.torch.save_file")
    if head[:1] == b"\x80":
        return "a pickle file, not safetensors: this project never unpickles (it can run code)"
    if size < 8:
        return f"truncated: {size} bytes, not even a safetensors header"
    header_length = int.from_bytes(head, "little")
    if header_length > size - 8:
        if header_length > 100_000_000:
            return "not a safetensors file (no valid header)"
        return (f"truncated or corrupt: it declares a {header_length:,}-byte header but holds "
                f"{size:,} bytes ({error})")
    return f"not a valid safetensors file ({error})"


def load_weights(model: M, state_dict: Mapping[str, Tensor]) -> M:
    """Copy ``state_dict`` into ``model``; a ValueError lists missing, unexpected or misshapen keys.

    A tied ``lm_head.weight`` may be absent (GPT-2's is ``transformer.wte.weight``).
    """
    tied = tied_keys(model)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in tied}
    given = {k: v for k, v in state_dict.items() if k not in tied}
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


def save_checkpoint(model: Model, directory: str | os.PathLike[str]) -> Path:
    """Write ``model``'s config and weights into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tied = tied_keys(model)
    weights = {k: v for k, v in model.state_dict().items() if k not in tied}
    save_safetensors(directory / WEIGHTS_NAME, weights)
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "format_version": FORMAT_VERSION,
        "config": model.config.model_dump(),
    }
    if (quantization := quantization_of(model)) is not None:
        config["quantization"] = quantization
    write_json(directory / CONFIG_NAME, config)
    return directory


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document at ``path``; FileNotFoundError or ValueError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def read_config(path: str | os.PathLike[str]) -> GPTConfig | LlamaConfig:
    """The model config in a checkpoint's ``config.json`` (its ``arch``'s, GPT-2's when it
    names none); a ValueError names what is wrong."""
    path = Path(path)
    raw = read_json(path)
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
    arch = cfg.get("arch", "gpt2")
    if arch not in ARCHS:
        raise ValueError(f"{path}: config.arch {arch!r} is not a known architecture "
                         f"({', '.join(ARCHS)})")
    cls = ARCHS[arch]
    if missing := sorted(cls.model_fields.keys() - cfg.keys() - _OPTIONAL[arch]):
        raise ValueError(f"{path}: missing config fields {missing} (arch {arch})")
    try:  # the arch's own class, so that an error names the field without the union's tag
        return cls.model_validate({**cfg, "arch": arch})
    except ValidationError as e:
        raise ValueError(one_line(e, cls, origin=str(path), prefix="config.")) from None


# Fields a checkpoint may lack: the arch (GPT-2 checkpoints from before there was a choice);
# a field added to an architecture later, whose default keeps the old behaviour, goes here too.
_OPTIONAL: dict[str, set[str]] = {"gpt2": {"arch"}, "llama": set()}



def read_quantization(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``quantization`` entry of a checkpoint's ``config.json`` (None for a float model);
    a method or version this code does not know is a ValueError naming the file."""
    path = Path(path)
    raw = read_json(path)
    found = raw.get("quantization") if isinstance(raw, dict) else None
    if found is None:
        return None
    known = {"method": METHOD, "version": VERSION}
    if not isinstance(found, dict) or {k: found.get(k) for k in known} != known:
        raise ValueError(f"{path}: quantization {found!r} is not one this version reads "
                         f"({known!r})")
    return known


def load_checkpoint(directory: str | os.PathLike[str],
                    device: str | torch.device = "cpu") -> Model:
    """The model (GPT or Llama, by its config's arch) saved in ``directory`` by
    :func:`save_checkpoint`, on ``device``, in eval mode; a quantized one with its int8
    layers (weight-only: ``quantize(model, "dynamic")`` switches)."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a checkpoint directory")
    config = read_config(directory / CONFIG_NAME)
    quantized = read_quantization(directory / CONFIG_NAME) is not None
    model = skeleton(config)
    if quantized:
        with torch.device("meta"):
            quantize(model)  # the structure only: int8 weight and scale buffers
    model = retie(model.to_empty(device=device))  # to_empty keeps one tensor per tie
    state = read_safetensors(directory / WEIGHTS_NAME, device=device)
    if quantized:
        _check_int8(model, state, directory / WEIGHTS_NAME)
    load_weights(model, state)
    return model.eval()


def skeleton(config: GPTConfig | LlamaConfig) -> Model:
    """A model of ``config`` whose weights are not initialised (on the meta device, where it
    can be built there): ``to_empty`` then a load fills it."""
    try:
        with torch.device("meta"):
            return build_model(config)
    except NotImplementedError:  # a model that computes tables on the CPU as it is built
        return build_model(config)


def _check_int8(model: Model, state: Mapping[str, Tensor], path: Path) -> None:
    """A quantized checkpoint's int8 weights must be int8 in the file (a float one would be
    cast silently by ``load_state_dict``)."""
    names = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    wrong = sorted(k for k in names if k in state and state[k].dtype != torch.int8)
    if wrong:
        raise ValueError(f"{path}: a quantized checkpoint must hold int8 weights; "
                         f"{wrong[0]} is {state[wrong[0]].dtype}")


def is_complete(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` holds a whole model (its config and weights)."""
    return (checkpoint / CONFIG_NAME).is_file() and (checkpoint / WEIGHTS_NAME).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """The ``step-N`` directories under ``root``, oldest step first (by number, not by name)."""
    steps = {p: _step_of(p) for p in root.glob("step-*") if p.is_dir()}
    return sorted((p for p, n in steps.items() if n is not None), key=lambda p: steps[p] or 0)


def _step_of(path: Path) -> int | None:
    prefix, _, digits = path.name.partition("-")
    return int(digits) if prefix == "step" and digits.isdigit() else None


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory ``path`` names: a checkpoint itself, or a run's newest one.

    A run's newest is the one ``checkpoints/latest`` names. If that one is missing or
    incomplete, the newest complete checkpoint is used instead, with a warning that says so.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if (path / TRAINER_NAME).is_file() or (path / WEIGHTS_NAME).is_file():
        return path
    root = path / CHECKPOINTS_DIR
    pointer = root / LATEST_NAME
    if not root.is_dir():
        raise FileNotFoundError(f"no checkpoint in {path}: neither a checkpoint directory nor "
                                f"a run directory (no {CHECKPOINTS_DIR}/)")
    named = root / pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    if named is not None and is_complete(named):
        return named
    complete = [p for p in list_checkpoints(root) if is_complete(p)]
    if not complete:
        raise FileNotFoundError(f"no complete checkpoint in {root}")
    why = f"{pointer} names {named.name}, which is missing or incomplete" if named else \
        f"{pointer} is missing"
    warnings.warn(f"{why}; using the newest complete checkpoint, {complete[-1]}", Notice,
                  stacklevel=2)
    return complete[-1]
