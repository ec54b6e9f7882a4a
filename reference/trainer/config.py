"""Run configuration: four validated sections, YAML files, and ``section.key=value`` overrides.

A config has four sections whose defaults are the main job (a small character-level GPT on the
built-in corpus, a few minutes on two CPU cores)::

    model:   the model's config, by ``arch``: GPTConfig (``gpt2``, the default: n_layer, n_head,
             n_embd, block_size, dropout, bias) or LlamaConfig (``llama``: also n_kv_head,
             rope_theta, n_experts...); vocab_size is the tokenizer's (given, it must equal it)
    data:    source (builtin | shakespeare | text | jsonl | hf | markov), path, tokenizer...
    train:   device, dtype, batch_size, grad_accum, max_steps, lr, warmup_steps...
    sample:  SampleSettings: prompt, max_new_tokens, temperature, top_k, top_p, seed
    finetune: base, data, method (lora | full), lora_r, lora_alpha... (off unless base is set)

The sections are pydantic models (``reference.settings``): the model section *is* the model's
own config class, and the sample section is the inference path's. A YAML file gives any subset,
e.g. ``configs/small_gpt.yaml``; overrides such as ``train.lr=3e-4`` apply on top, each value
read as YAML (``model.bias=true``, ``train.grad_clip=null``, lists as ``[a, b]``) except for
text fields, which take the text as given (a prompt keeps its spaces). An unknown key or a bad
value is a ``ValueError`` of one line naming it (with the closest known key for a typo).

Example::

    >>> cfg = load_config("configs/tiny_cpu.yaml", ["train.max_steps=100", "model.n_layer=2"])
    >>> cfg.train.max_steps, cfg.model.n_layer
    (100, 2)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator

from ..arch import ModelConfig
from ..inference import SampleSettings
from ..llama import LlamaConfig
from ..model import GPTConfig
from ..settings import (
    Bool,
    Fraction,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Settings,
    ValidationError,
    field_annotation,
    one_line,
)
from ..swiglu import swiglu_hidden

Source = Literal["builtin", "shakespeare", "text", "jsonl", "hf", "markov"]
TokenizerKind = Literal["char", "bpe", "gpt2"]
Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["float32", "bfloat16", "float16"]

# The main job's model: what `python -m reference train` trains with no config (0.8M parameters).
MAIN_JOB_MODEL = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0,
                           bias=False)
MODEL_CLASSES: dict[str, type[GPTConfig] | type[LlamaConfig]] = {"gpt2": GPTConfig,
                                                                  "llama": LlamaConfig}


class DataSection(Settings):
    """What to train on and how to tokenize it; the token file goes to ``dir``."""

    source: Source = "builtin"
    path: str | None = None  # the local file for text/jsonl (and optionally shakespeare)
    tokenizer: TokenizerKind = "char"
    tokenizer_path: str | None = None  # gpt2: the tiktoken ranks file (gpt2.tiktoken)
    bpe_vocab_size: Annotated[Int, Field(ge=257)] = 512  # 256 bytes + <|endoftext|> at least
    val_fraction: Fraction = 0.1
    jsonl_field: str = "text"
    hf_name: str = "openwebtext"
    hf_config: str | None = None
    hf_split: str = "train"
    max_documents: PositiveInt | None = None
    markov_vocab_size: PositiveInt = 8
    markov_order: PositiveInt = 2
    markov_concentration: PositiveFloat = 0.3
    markov_tokens: Annotated[Int, Field(ge=1000)] = 1_000_000
    seed: NonNegativeInt = 0
    dir: str | None = None  # default: <train.out_dir>/data

    @model_validator(mode="after")
    def _consistent(self) -> DataSection:
        # A setting the chosen source or tokenizer does not read is an error, not ignored.
        for name, used_by, value in (
            ("path", self.source in ("text", "jsonl", "shakespeare"), self.path),
            ("jsonl_field", self.source == "jsonl", self.jsonl_field),
            ("hf_name", self.source == "hf", self.hf_name),
            ("hf_config", self.source == "hf", self.hf_config),
            ("hf_split", self.source == "hf", self.hf_split),
            ("max_documents", self.source == "hf", self.max_documents),
            ("markov_vocab_size", self.source == "markov", self.markov_vocab_size),
            ("markov_order", self.source == "markov", self.markov_order),
            ("markov_concentration", self.source == "markov", self.markov_concentration),
            ("markov_tokens", self.source == "markov", self.markov_tokens),
            ("seed", self.source == "markov", self.seed),
            ("tokenizer_path", self.tokenizer == "gpt2", self.tokenizer_path),
            ("bpe_vocab_size", self.tokenizer == "bpe", self.bpe_vocab_size),
        ):
            if not used_by and value != type(self).model_fields[name].default:
                what = "tokenizer" if name in ("tokenizer_path", "bpe_vocab_size") else "source"
                raise ValueError(f"data.{name}={value!r} is not used with "
                                 f"data.{what}={getattr(self, what)}: remove it, or choose the "
                                 f"data.{what} that reads it")
        if self.source in ("text", "jsonl") and not self.path:
            raise ValueError(f"data.source={self.source} needs data.path (the local file)")
        if self.tokenizer == "gpt2" and not self.tokenizer_path:
            raise ValueError("data.tokenizer=gpt2 needs data.tokenizer_path (gpt2.tiktoken)")
        if self.source == "markov" and self.tokenizer != "char":
            raise ValueError("data.source=markov makes token ids itself: leave data.tokenizer "
                             f"as 'char', got {self.tokenizer!r}")
        return self


class TrainSection(Settings):
    """The optimisation and everything around it."""

    out_dir: str = "runs/main"
    device: Device = "auto"
    dtype: DType = "float32"  # bfloat16: autocast on CPU and CUDA; float16: CUDA + grad scaler
    compile: Bool = False
    activation_checkpointing: Bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: full copies, or sharded (FSDP2)
    fsdp_reshard_after_forward: Bool = True  # fsdp: free each block's gathered weights after use
    seed: NonNegativeInt = 1337
    batch_size: PositiveInt = 32  # per process and micro-batch
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    max_steps: PositiveInt = 1000
    lr: PositiveFloat = 3e-3
    min_lr: NonNegativeFloat = 3e-4
    warmup_steps: NonNegativeInt = 50
    decay_steps: NonNegativeInt | None = None  # default: max_steps
    weight_decay: NonNegativeFloat = 0.1
    beta1: Annotated[NonNegativeFloat, Field(lt=1)] = 0.9
    beta2: Annotated[NonNegativeFloat, Field(lt=1)] = 0.99
    eps: PositiveFloat = 1e-8
    optimizer: Literal["adamw", "muon"] = "adamw"  # muon: Muon for the blocks' matrices (muon.py)
    muon_lr: PositiveFloat = 0.02  # optimizer=muon: Muon's peak lr (scheduled as lr is)
    grad_clip: PositiveFloat | None = 1.0
    eval_interval: PositiveInt = 250
    eval_steps: PositiveInt = 10
    log_interval: PositiveInt = 10
    checkpoint_interval: PositiveInt | None = None  # default: eval_interval
    keep_checkpoints: PositiveInt = 2
    threads: PositiveInt | None = None  # torch CPU threads; default: torch's choice
    progress: Bool = True
    tensorboard: Bool = True  # when the tensorboard package is installed
    plot: Bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TrainSection:
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr {self.min_lr} must be in [0, train.lr = {self.lr}]")
        if self.decay_steps is None and self.max_steps < self.warmup_steps:
            raise ValueError(f"train.max_steps {self.max_steps} must be >= train.warmup_steps "
                             f"({self.warmup_steps}), or set train.decay_steps")
        if self.strategy == "fsdp" and self.dtype == "float16":
            raise ValueError("train.dtype=float16 is not supported with train.strategy=fsdp (its "
                             "gradient scaler does not shard): use bfloat16")
        if self.optimizer == "muon" and self.strategy == "fsdp":
            raise ValueError("train.optimizer=muon does not shard yet: use train.strategy=ddp")
        if self.optimizer != "muon" and self.muon_lr != type(self).model_fields["muon_lr"].default:
            raise ValueError("train.muon_lr is used only with train.optimizer=muon")
        if self.strategy != "fsdp" and not self.fsdp_reshard_after_forward:
            raise ValueError("train.fsdp_reshard_after_forward is used only with "
                             "train.strategy=fsdp")
        if self.decay_steps is not None and self.decay_steps < self.warmup_steps:
            raise ValueError(f"train.decay_steps {self.decay_steps} must be >= "
                             f"train.warmup_steps ({self.warmup_steps})")
        return self

    @property
    def total_decay_steps(self) -> int:
        return self.max_steps if self.decay_steps is None else self.decay_steps

    @property
    def every_checkpoint(self) -> int:
        return self.checkpoint_interval or self.eval_interval


class FinetuneSection(Settings):
    """Fine-tuning a trained model on conversations (``reference/trainer/sft.py``); off while
    ``base`` is None. The model's shape and tokenizer come from ``base``, the examples from
    ``data``, so the ``data`` section is not used and the ``model`` section may only change
    ``dropout``."""

    base: str | None = None  # a run directory or checkpoint: the model to start from
    data: str | None = None  # JSONL: {"messages": [...]} or Alpaca {"instruction", "output"}
    val_fraction: Fraction = 0.1  # held-out conversations (at least one)
    method: Literal["lora", "full"] = "lora"
    lora_r: PositiveInt = 8
    lora_alpha: PositiveFloat = 16.0
    lora_dropout: Annotated[NonNegativeFloat, Field(lt=1)] = 0.0
    # None: the base's default (GPT-2's four projections, or a Llama's q/k/v/o: reference.lora)
    lora_targets: list[str] | None = None
    rslora: Bool = False  # scale by alpha / sqrt(r) instead of alpha / r
    eval_examples: NonNegativeInt = 200  # held-out answers generated at the end (exact match)
    base_sha256: str | None = None  # recorded when the run starts: resume checks the base

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSection:
        fields = type(self).model_fields
        changed = [n for n in fields if n not in ("base", "base_sha256")
                   and getattr(self, n) != fields[n].get_default(call_default_factory=True)]
        if self.base is None:
            if changed:
                raise ValueError(f"finetune.{changed[0]} is set but finetune.base is not: name "
                                 "the model to fine-tune (finetune.base=RUN_DIR)")
            return self
        if not self.data:
            raise ValueError("finetune.base is set but finetune.data is not: name the JSONL "
                             "file of conversations to fine-tune on")
        lora_only = [n for n in changed if n.startswith("lora_") or n == "rslora"]
        if self.method == "full" and lora_only:
            raise ValueError(f"finetune.{lora_only[0]} is not used with finetune.method=full: "
                             "remove it, or use finetune.method=lora")
        if self.lora_targets is not None and not self.lora_targets:
            raise ValueError("finetune.lora_targets is empty: name at least one module pattern")
        return self

    @property
    def enabled(self) -> bool:
        return self.base is not None


class Config(Settings):
    """A whole run: ``model``, ``data``, ``train``, ``sample`` and ``finetune`` sections."""

    model: ModelConfig = MAIN_JOB_MODEL
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    sample: SampleSettings = SampleSettings()
    finetune: FinetuneSection = FinetuneSection()

    @model_validator(mode="after")
    def _finetune_reads_no_data_section(self) -> Config:
        if self.finetune.enabled and self.data != DataSection():
            changed = [k for k, v in self.data.model_dump().items()
                       if v != DataSection.model_fields[k].default]
            raise ValueError(f"data.{changed[0]} is not used when fine-tuning: finetune.data "
                             "names the examples and finetune.base the tokenizer")
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self.model_dump()

    def with_vocab_size(self, vocab_size: int) -> Config:
        """This config with the tokenizer's vocabulary size in the model section.

        ``model.vocab_size`` comes from the tokenizer; a value given explicitly (in a file, an
        override, or a resumed run's config) must equal it: a ValueError names both.
        """
        given = "vocab_size" in self.model.model_fields_set
        if given and self.model.vocab_size != vocab_size:
            raise ValueError(f"model.vocab_size={self.model.vocab_size} but the tokenizer has "
                             f"{vocab_size} tokens: leave model.vocab_size out (it comes from "
                             "the tokenizer) or make them equal")
        model = type(self.model).model_validate({**self.model.model_dump(),
                                                 "vocab_size": vocab_size})
        return self.model_copy(update={"model": model})


# What ``resume`` may change besides the sample section, and what each change does. Everything
# else is the run's own: the model's shape, the data and its split, the tokenizer, the optimizer
# and its schedule, the batch and seeds. Changing one of those would make the resumed run mean
# something else, so it is refused. ``train.max_steps`` trains longer (or stops sooner) on the
# run's own schedule: the cosine keeps its ``train.decay_steps`` (pinned to the first
# ``max_steps`` when a run starts), so steps past it train at ``train.min_lr``, with no jump in
# the learning rate.
RESUMABLE_TRAIN = ("max_steps", "eval_interval", "eval_steps", "log_interval",
                   "checkpoint_interval", "keep_checkpoints", "threads", "progress", "tensorboard",
                   "plot", "device", "compile", "activation_checkpointing", "strategy",
                   "fsdp_reshard_after_forward")


def check_resume_changes(saved: Config, new: Config) -> None:
    """Raise ValueError naming every setting that differs between the run's config ``saved``
    and ``new`` but may not change on resume: anything but ``sample.*`` and the
    :data:`RESUMABLE_TRAIN` keys of ``train``."""
    if saved.model.arch != new.model.arch:
        raise ValueError(f"cannot change model.arch ({saved.model.arch} -> {new.model.arch}) "
                         "when resuming: the run's weights are a "
                         f"{saved.model.arch} model; start a new run instead")
    old, now = saved.model_dump(), new.model_dump()
    refused = [f"{section}.{key}" for section in now for key in now[section]
               if now[section][key] != old[section][key]
               and section != "sample" and not (section == "train" and key in RESUMABLE_TRAIN)]
    if refused:
        raise ValueError(
            f"cannot change {', '.join(refused)} when resuming: the run would mean something "
            "else (its model, data, optimizer or schedule); start a new run instead. Resume "
            f"may change sample.* and train.{{{', '.join(RESUMABLE_TRAIN)}}}"
        )


def _given(settings: BaseModel) -> dict[str, Any]:
    """The values that were given to ``settings`` (not left at a field's default), nested
    sections included: what a layer of configuration contributes to the next."""
    out: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            if nested := _given(value):
                out[name] = nested
        elif name in settings.model_fields_set:
            out[name] = value
    return out


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(raw: Any, *, base: Config | None = None, origin: str = "config") -> Config:
    """``base`` (default: the defaults) with the sections of ``raw`` applied; validated.

    Raises a one-line ``ValueError`` naming ``origin`` and the bad key or value.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: expected a mapping of sections {sorted(Config.model_fields)}, "
                         f"got {type(raw).__name__}")
    for name, values in raw.items():
        if name in Config.model_fields and values is not None and not isinstance(values, dict):
            raise ValueError(f"{origin}: section {name!r} must be a mapping, got {values!r}")
    raw = {name: values for name, values in raw.items() if values is not None}
    base = base or Config()
    merged = _merge(_given(base), raw)
    merged["model"] = _model_section(base.model, raw.get("model", {}), merged.get("model", {}),
                                     origin)
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        raise ValueError(one_line(e, Config, origin=origin)) from None


def _model_section(base: GPTConfig | LlamaConfig, layer: dict[str, Any],
                   merged: dict[str, Any], origin: str) -> GPTConfig | LlamaConfig:
    """The model section of ``merged`` (``base``'s given fields with ``layer`` on top),
    validated as its ``arch``'s config: a one-line ValueError names a bad field as
    ``model.<field>``, and a field the arch does not have says which arch has it.

    A layer that changes the arch keeps the fields of ``base`` that the new arch has too (the
    shape: n_layer, n_head, n_embd, block_size...) and drops those it lacks only where they are
    the main job's defaults; any other is an error naming it. A Llama's derived sizes
    (``n_kv_head`` = ``n_head``, ``intermediate_size`` from ``n_embd``) follow a new shape
    unless given.
    """
    arch = merged.get("arch", base.arch)
    if arch not in MODEL_CLASSES:
        raise ValueError(f"{origin}: model.arch {arch!r} is not a known architecture "
                         f"({', '.join(MODEL_CLASSES)})")
    cls = MODEL_CLASSES[arch]
    values = {**merged, "arch": arch}
    derived = {}
    if isinstance(base, LlamaConfig):
        derived = {"n_kv_head": base.n_head, "intermediate_size": swiglu_hidden(base.n_embd)}
    for name in list(values):
        if name in layer:
            continue
        if name in derived and values[name] == derived[name]:
            del values[name]  # derived from the base's shape: derive it again from the new one
        elif (arch != base.arch and name not in cls.model_fields
              and values[name] == getattr(MAIN_JOB_MODEL, name, object())):
            del values[name]  # a default of the old arch that the new one has no use for
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ValueError(f"{origin}: {_model_problem(e, cls, arch)}") from None


def _model_problem(error: ValidationError, cls: type[BaseModel], arch: str) -> str:
    """The first problem of a model section's ``error``, in one line naming ``model.<field>``."""
    problem = error.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in problem["loc"])
    more = len(error.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    if problem["type"] == "extra_forbidden":
        owners = [a for a, c in MODEL_CLASSES.items() if a != arch and loc in c.model_fields]
        if owners:
            return (f"model.{loc} is not a field of a model.arch={arch} model (it is "
                    f"{owners[0]}'s: set model.arch={owners[0]}, or remove it){tail}")
        known = sorted(cls.model_fields)
        close = difflib.get_close_matches(loc, known, n=1)
        hint = f" (did you mean 'model.{close[0]}'?)" if close else ""
        return f"unknown key 'model.{loc}'{hint}; known keys of 'model' (arch {arch}): {known}"
    return f"model: {one_line(error, cls)}" if not loc else one_line(error, cls, prefix="model.")


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=3e-4", "model.bias=true"]`` -> ``{"train": {"lr": 3e-4}, ...}``.

    Each value is read as YAML (numbers, ``true``, ``null``, ``[a, b]``), except for a text
    field's, which is kept exactly as given (a prompt keeps its spaces).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ValueError(f"override {item!r} must look like section.key=value "
                             "(e.g. train.lr=3e-4)")
        out.setdefault(section, {})[name] = _override_value(section, name, text)
    return out


def _override_value(section: str, name: str, text: str) -> Any:
    annotation = field_annotation(Config, [section, name])
    if annotation is str:
        return text
    if annotation == str | None and text.strip().lower() not in ("null", "none", "~", ""):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # validation then names the field and the value


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
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        config = config_from_dict(raw, base=config, origin=str(p))
    if overrides:
        config = config_from_dict(parse_overrides(overrides), base=config, origin="override")
    return config


def dump_config(config: Config) -> str:
    """The config as YAML text that :func:`load_config` reads back to an equal config."""
    return str(yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
