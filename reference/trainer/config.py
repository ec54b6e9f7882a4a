"""Run configuration: frozen dataclasses, YAML files, and ``key=value`` overrides.

A config has four sections, each a frozen dataclass whose defaults are the main job (a small
character-level GPT on the built-in corpus, a few minutes on two CPU cores)::

    model:  n_layer, n_head, n_embd, block_size, dropout, bias
    data:   source (builtin | shakespeare | text | jsonl | hf | markov), path, tokenizer...
    train:  device, dtype, batch_size, grad_accum, max_steps, lr, warmup_steps...
    sample: prompt, max_new_tokens, temperature, top_k, top_p, seed

A YAML file gives any subset, e.g. ``configs/small_gpt.yaml``; overrides such as
``train.lr=3e-4`` are applied on top. An unknown key or a bad value is a ``ValueError`` that names
it (with the closest known key for a typo).

Example::

    >>> cfg = load_config("configs/tiny_cpu.yaml", ["train.max_steps=100", "model.n_layer=2"])
    >>> cfg.train.max_steps, cfg.model.n_layer
    (100, 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

Source = Literal["builtin", "shakespeare", "text", "jsonl", "hf", "markov"]
TokenizerKind = Literal["char", "bpe", "gpt2"]
Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["float32", "bfloat16", "float16"]


def _check(ok: bool, path: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{path} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class ModelSection:
    """The GPT's shape (the vocabulary size comes from the data)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), ">= 1")
        _check(self.n_embd % self.n_head == 0, "model.n_embd", self.n_embd,
               f"divisible by model.n_head ({self.n_head})")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "in [0, 1)")


@dataclass(frozen=True)
class DataSection:
    """What to train on and how to tokenize it; the token file goes to ``dir``."""

    source: Source = "builtin"
    path: str | None = None  # the local file for text/jsonl (and optionally shakespeare)
    tokenizer: TokenizerKind = "char"
    tokenizer_path: str | None = None  # gpt2: the tiktoken ranks file (gpt2.tiktoken)
    bpe_vocab_size: int = 512  # bpe: trained on the corpus with this many ids
    val_fraction: float = 0.1
    jsonl_field: str = "text"
    hf_name: str = "openwebtext"
    hf_config: str | None = None
    hf_split: str = "train"
    max_documents: int | None = None
    markov_vocab_size: int = 8
    markov_order: int = 2
    markov_concentration: float = 0.3
    markov_tokens: int = 1_000_000
    seed: int = 0
    dir: str | None = None  # default: <train.out_dir>/data

    def __post_init__(self) -> None:
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        _check(self.bpe_vocab_size >= 257, "data.bpe_vocab_size", self.bpe_vocab_size,
               ">= 257 (256 bytes + <|endoftext|>)")
        _check(self.markov_tokens >= 1000, "data.markov_tokens", self.markov_tokens, ">= 1000")
        _check(self.max_documents is None or self.max_documents >= 1, "data.max_documents",
               self.max_documents, ">= 1 or null")
        if self.source in ("text", "jsonl") and not self.path:
            raise ValueError(f"data.source={self.source} needs data.path (the local file)")
        if self.tokenizer == "gpt2" and not self.tokenizer_path:
            raise ValueError("data.tokenizer=gpt2 needs data.tokenizer_path (gpt2.tiktoken)")
        if self.source == "markov" and self.tokenizer != "char":
            raise ValueError("data.source=markov makes token ids itself: leave data.tokenizer "
                             f"as 'char', got {self.tokenizer!r}")


@dataclass(frozen=True)
class TrainSection:
    """The optimisation and everything around it."""

    out_dir: str = "runs/main"
    device: Device = "auto"
    dtype: DType = "float32"  # bfloat16: autocast on CPU and CUDA; float16: CUDA + grad scaler
    compile: bool = False
    activation_checkpointing: bool = False
    seed: int = 1337
    batch_size: int = 32  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    decay_steps: int | None = None  # default: max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    eval_steps: int = 10
    log_interval: int = 10
    checkpoint_interval: int | None = None  # default: eval_interval
    keep_checkpoints: int = 2
    threads: int | None = None  # torch CPU threads; default: torch's choice
    progress: bool = True
    tensorboard: bool = True  # when the tensorboard package is installed
    plot: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_steps",
                     "log_interval", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name}", getattr(self, name), ">= 1")
        for name in ("checkpoint_interval", "threads"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"train.{name}", value, ">= 1 or null")
        _check(self.lr > 0, "train.lr", self.lr, "> 0")
        _check(0 <= self.min_lr <= self.lr, "train.min_lr", self.min_lr,
               f"in [0, train.lr = {self.lr}]")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, ">= 0")
        if self.decay_steps is None:  # the cosine ends at max_steps
            _check(self.max_steps >= self.warmup_steps, "train.max_steps", self.max_steps,
                   f">= train.warmup_steps ({self.warmup_steps}), or set train.decay_steps")
        else:
            _check(self.decay_steps >= self.warmup_steps, "train.decay_steps",
                   self.decay_steps, f">= train.warmup_steps ({self.warmup_steps})")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        for name in ("beta1", "beta2"):
            _check(0 <= getattr(self, name) < 1, f"train.{name}", getattr(self, name), "in [0, 1)")
        _check(self.eps > 0, "train.eps", self.eps, "> 0")
        _check(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", self.grad_clip,
               "> 0 or null")
        _check(self.seed >= 0, "train.seed", self.seed, ">= 0")

    @property
    def total_decay_steps(self) -> int:
        return self.max_steps if self.decay_steps is None else self.decay_steps

    @property
    def every_checkpoint(self) -> int:
        return self.checkpoint_interval or self.eval_interval


@dataclass(frozen=True)
class SampleSection:
    """Text generated from the trained model (after ``train``, and by ``generate``)."""

    prompt: str = "The "
    max_new_tokens: int = 400
    num_samples: int = 1
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 0, "sample.max_new_tokens", self.max_new_tokens, ">= 0")
        _check(self.num_samples >= 1, "sample.num_samples", self.num_samples, ">= 1")
        _check(self.temperature >= 0, "sample.temperature", self.temperature, ">= 0")
        _check(self.top_k is None or self.top_k >= 1, "sample.top_k", self.top_k, ">= 1 or null")
        _check(self.top_p is None or 0 < self.top_p <= 1, "sample.top_p", self.top_p,
               "in (0, 1] or null")


@dataclass(frozen=True)
class Config:
    """A whole run: ``model``, ``data``, ``train`` and ``sample`` sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type[Any]] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def config_from_dict(raw: Any, *, base: Config | None = None, origin: str = "config") -> Config:
    """``base`` (default: the defaults) with the sections of ``raw`` applied; validated."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: expected a mapping of sections {sorted(SECTIONS)}, "
                         f"got {type(raw).__name__}")
    base = base or Config()
    sections: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ValueError(f"{origin}: unknown section {name!r}{_suggest(name, SECTIONS)}; "
                             f"known: {sorted(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{origin}: section {name!r} must be a mapping, got {values!r}")
        sections[name] = _section(name, getattr(base, name), values, origin)
    return dataclasses.replace(base, **sections)


def _section(name: str, current: Any, values: dict[str, Any], origin: str) -> Any:
    cls = type(current)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    changes = {}
    for key, value in values.items():
        path = f"{name}.{key}"
        if key not in known:
            raise ValueError(f"{origin}: unknown key {path!r}{_suggest(key, known, name)}; "
                             f"known keys of {name!r}: {known}")
        changes[key] = coerce(value, hints[key], path)
    try:
        return dataclasses.replace(current, **changes)
    except ValueError as e:
        raise ValueError(f"{origin}: {e}") from None


def _suggest(key: str, known: Any, section: str | None = None) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    if not close:
        return ""
    return f" (did you mean {(f'{section}.' if section else '') + close[0]!r}?)"


def coerce(value: Any, annotation: Any, path: str) -> Any:
    """``value`` as the annotated type, or a ValueError naming ``path``, the value and the type.

    Ints are accepted for floats; text for numbers and booleans (``"3e-4"``, which YAML also
    reads as text, ``"true"``); ``null``/``none`` for optional fields; never a bool for a number
    or a float for an int.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, path)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of "
                         f"{annotation}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ValueError(f"{path} must be one of {list(choices)}, got {value!r}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{path} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value.replace("_", ""))
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{path} must be a string, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported annotation {annotation!r}")  # a bug in this module


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=3e-4", "model.bias=true"]`` -> ``{"train": {"lr": "3e-4"}, ...}``.

    Values stay text, exactly as given (a prompt keeps its spaces); :func:`coerce` turns them
    into the field's type.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ValueError(f"override {item!r} must look like section.key=value "
                             "(e.g. train.lr=3e-4)")
        out.setdefault(section, {})[name] = text
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    *,
    base: Config | None = None,
) -> Config:
    """The defaults (or ``base``), then the YAML file at ``path``, then ``overrides``."""
    config = base or Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} not found")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        config = config_from_dict(raw, base=config, origin=str(p))
    if overrides:
        config = config_from_dict(parse_overrides(overrides), base=config, origin="override")
    return config


def dump_config(config: Config) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config."""
    return str(yaml.safe_dump(config.to_dict(), sort_keys=False))
