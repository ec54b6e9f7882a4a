"""LoRA (Hu et al. 2021): fine-tune a frozen model through small low-rank updates of its weights.

A linear layer ``y = x Wᵀ + b`` (W: (out, in)) gets a trainable low-rank update ``ΔW = s · B A``
with ``A`` (r, in), ``B`` (out, r), ``r`` much smaller than in and out, and ``W`` frozen::

    y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ        s = alpha / r   (rsLoRA: alpha / sqrt(r))

``A`` starts Kaiming-uniform (peft's default: bound 1/sqrt(in)) and ``B`` at zero, so a freshly
wrapped model computes exactly what the base model does and training starts from it. Dropout is
on the LoRA path's input only, in training mode only; the base path never sees it.

:func:`apply_lora` wraps the linear layers whose names end with one of ``targets``, in place,
and leaves only the LoRA parameters trainable. The default targets depend on the model
(:func:`default_targets`): GPT-2's four projections (the fused qkv, the attention output, both
MLP layers: :data:`DEFAULT_TARGETS`); for a Llama-style model (``reference.llama``) the four
attention projections ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (:data:`LLAMA_TARGETS`).
That is more than peft's default for Llama (``q_proj`` and ``v_proj`` only, the LoRA paper's
choice) and fewer than QLoRA's "all linear layers": the attention projections are where GPT-2's
default puts half its adapters too, and for a mixture of experts they are shared by every token
(an adapter on an expert trains on only the tokens routed to it). Add ``gate_proj``,
``up_proj``, ``down_proj`` (:data:`LLAMA_MLP_TARGETS`) for the feed-forward, every expert's
included; a mixture of experts' router (``mlp.gate``) matches none of these names.
:func:`check_lora_targets` checks a configuration's targets against an ``arch`` before any
model is built.

:func:`merge_lora` folds ``ΔW`` into the base weights (one matmul per layer at inference, as
fast as the base model) and :func:`unmerge_lora` takes it out again; :func:`unwrap_lora` merges
and puts the plain ``nn.Linear`` back (peft's ``merge_and_unload``), so the model's state dict
has its plain names again (GPT-2's, or Hugging Face Llama's: ``reference.hf_llama`` exports it).
A Llama with ``rope_layout="interleaved"`` keeps its q and k adapters in that layout (the
export permutes only the merged weights).

How exact is unmerge: ``W + ΔW`` is rounded once when merged and ``(W + ΔW) - ΔW`` once more
when unmerged, so each weight comes back within ``eps · (|W| + |W + ΔW|)`` (float32's eps,
2^-23; two roundings of half an ulp each) and bit for bit where ``W + ΔW`` is exact (B = 0,
or values on a common binary grid). No copy of ``W`` is kept: peft does the same.

Adapters are saved alone (:func:`save_adapter`): ``adapter.safetensors`` holds the A and B of
every wrapped layer (kilobytes to megabytes, where the model is hundreds of megabytes) and
``adapter_config.json`` the settings and the base model's config. :func:`load_adapter` puts them
on a plain base model loaded with ``reference.checkpoint.load_checkpoint``.

The parameters are plain ``nn.Parameter``s ``lora_A`` and ``lora_B`` on the wrapping module, so
the LoRA state dict's names are ``transformer.h.0.attn.c_attn.lora_A``; the base layer's are
``transformer.h.0.attn.c_attn.base.weight`` while it is wrapped.

Example::

    >>> from reference.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    >>> names = apply_lora(model, r=4, alpha=8)
    >>> names[:2]
    ['transformer.h.0.attn.c_attn', 'transformer.h.0.attn.c_proj']
    >>> trainable_parameters(model)   # (trainable, total): 8 layers' A and B
    (2048, 9568)
    >>> sorted(lora_state_dict(model))[0]
    'transformer.h.0.attn.c_attn.lora_A'
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .atomic import write_json
from .checkpoint import read_json, read_safetensors, save_safetensors
from .llama import LlamaConfig
from .model import GPTConfig

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "DEFAULT_TARGETS",
    "FORMAT_VERSION",
    "LLAMA_MLP_TARGETS",
    "LLAMA_TARGETS",
    "LoRALinear",
    "apply_lora",
    "check_lora_settings",
    "check_lora_targets",
    "default_targets",
    "find_targets",
    "load_adapter",
    "load_lora_state_dict",
    "lora_scaling",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "merge_lora",
    "save_adapter",
    "trainable_parameters",
    "unmerge_lora",
    "unwrap_lora",
]

DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2's
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # a Llama's default: the attention
LLAMA_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")  # the SwiGLU (and each expert's)
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_TYPE = "lora"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- checks at the edges


def check_lora_settings(r: int, alpha: float, dropout: float) -> None:
    """Raise ValueError naming the bad value unless r >= 1 (an int), alpha > 0 and
    0 <= dropout < 1."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a number > 0, got {alpha!r}")
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def default_targets(model_or_arch: nn.Module | str) -> tuple[str, ...]:
    """The LoRA targets :func:`apply_lora` uses when given none: :data:`LLAMA_TARGETS` for a
    Llama-style model (or ``arch`` ``"llama"``), else GPT-2's :data:`DEFAULT_TARGETS`.

        >>> default_targets("llama")
        ('q_proj', 'k_proj', 'v_proj', 'o_proj')
    """
    arch = (model_or_arch if isinstance(model_or_arch, str)
            else getattr(getattr(model_or_arch, "config", None), "arch", "gpt2"))
    return LLAMA_TARGETS if arch == "llama" else DEFAULT_TARGETS


# the last name component of every linear layer LoRA may wrap, per architecture
_ARCH_LINEARS = {"gpt2": ("c_attn", "c_proj", "c_fc"),
                 "llama": LLAMA_TARGETS + LLAMA_MLP_TARGETS}


def check_lora_targets(targets: Sequence[str], arch: str) -> None:
    """Raise ValueError naming the first target pattern that names no linear layer of the
    blocks of an ``arch`` model (``"gpt2"`` or ``"llama"``), and the ones there are: for a
    configuration, before any model is built (:func:`find_targets` checks against the model
    itself). A pattern is judged by its last name component (``transformer.h.*.attn.c_attn``
    by ``c_attn``).

        >>> check_lora_targets(["q_proj", "mlp.down_proj"], "llama")
        >>> check_lora_targets(["attn.c_attn"], "llama")
        Traceback (most recent call last):
        ...
        ValueError: LoRA target 'attn.c_attn' names no linear layer of a llama model; its...
    """
    if arch not in _ARCH_LINEARS:
        raise ValueError(f"unknown arch {arch!r}: one of {sorted(_ARCH_LINEARS)}")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"LoRA targets must be a non-empty list of module-name patterns, got "
                         f"{targets!r}")
    names = _ARCH_LINEARS[arch]
    for pattern in targets:
        if not isinstance(pattern, str) or pattern.rpartition(".")[2] not in names:
            raise ValueError(f"LoRA target {pattern!r} names no linear layer of a {arch} "
                             f"model; its layers are {list(names)}")


def _pattern_of(name: str) -> str:
    """A module name with its layer indices starred: ``transformer.h.*.attn.c_attn``."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", name)


def _matches(name: str, pattern: str) -> bool:
    """Whether ``name`` is ``pattern`` or ends with ``"." + pattern``; ``*`` in the pattern
    stands for one name component (``transformer.h.*.mlp.c_fc``)."""
    regex = r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in pattern.split("."))
    return re.fullmatch(rf"(?:.*\.)?{regex}", name) is not None


def find_targets(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Module, str]]:
    """(name, parent, attribute) of every module of ``model`` whose name is a pattern of
    ``targets`` or ends with ``"." + pattern`` (``*`` stands for one name component), in the
    model's order.

    A pattern that matches nothing is a ValueError naming it and the linear layers there are;
    a match that is not an ``nn.Linear`` (already wrapped, or another kind of layer) is a
    TypeError naming it; a linear layer whose weight is shared with another module (GPT-2's
    tied head) is a ValueError, since merging into it would change the other one too.

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
        >>> [name for name, _, _ in find_targets(model, ["mlp.c_fc"])]
        ['transformer.h.0.mlp.c_fc', 'transformer.h.1.mlp.c_fc']
    """
    if isinstance(targets, str):
        raise TypeError(f"targets must be a list of module-name patterns, got the string "
                        f"{targets!r}")
    if not targets:
        raise ValueError("targets is empty: name at least one module pattern, e.g. "
                         f"{list(default_targets(model))}")
    modules = dict(model.named_modules())
    found: list[tuple[str, nn.Module, str]] = []
    for pattern in targets:
        names = [n for n in modules if n and _matches(n, pattern)]
        if not names:
            linears = sorted({_pattern_of(n) for n, m in modules.items()
                              if isinstance(m, nn.Linear)})
            raise ValueError(f"LoRA target {pattern!r} matches no module; the linear layers "
                             f"are {linears}")
        for name in names:
            if not isinstance(modules[name], nn.Linear):
                what = ("already has LoRA (merge or unwrap it first)"
                        if isinstance(modules[name], LoRALinear)
                        else f"is a {type(modules[name]).__name__}, not an nn.Linear")
                raise TypeError(f"LoRA target {pattern!r} matches {name!r}, which {what}")
            parent_name, _, attribute = name.rpartition(".")
            found.append((name, modules[parent_name], attribute))
    shared = _tied_weights(model)
    for name, _, _ in found:
        if (other := shared.get(id(modules[name].weight), name)) != name:
            raise ValueError(f"LoRA target {name!r} shares its weight with {other!r} (tied): "
                             "merging into it would change both")
    order = list(modules)
    return sorted({n: (n, p, a) for n, p, a in found}.values(), key=lambda t: order.index(t[0]))


def _tied_weights(model: nn.Module) -> dict[int, str]:
    """id(weight) -> the first module holding it, for weights held by more than one module."""
    first: dict[int, str] = {}
    shared: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor):
            if id(weight) in first and first[id(weight)] != name:
                shared[id(weight)] = first[id(weight)]
            first.setdefault(id(weight), name)
    return shared


# ---------------------------------------------------------------- the layer


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """The factor ``s`` of ``ΔW = s · B A``: ``alpha / r``, or rsLoRA's ``alpha / sqrt(r)``.

        >>> lora_scaling(8, 16), lora_scaling(16, 16, rslora=True)
        (2.0, 4.0)
    """
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (``base``, frozen) plus a trainable low-rank update ``s · B A``.

    ``lora_A`` (r, in) and ``lora_B`` (out, r) are created on the base layer's device in its
    dtype; ``scaling`` is :func:`lora_scaling`; ``dropout`` (an ``nn.Dropout``) acts on the
    LoRA path's input in training mode only. While ``merged`` the delta is inside
    ``base.weight`` and the forward pass is the base layer's alone (for inference: unmerge
    before training).

        >>> torch.manual_seed(0) and None
        >>> layer = LoRALinear(nn.Linear(4, 3), r=2, alpha=4)
        >>> tuple(layer.lora_A.shape), tuple(layer.lora_B.shape), layer.scaling
        ((2, 4), (3, 2), 2.0)
        >>> x = torch.randn(5, 4)
        >>> torch.equal(layer(x), layer.base(x))   # B = 0: the base layer's output
        True
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        check_lora_settings(r, alpha, dropout)
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = lora_scaling(r, alpha, rslora)
        self.dropout = nn.Dropout(dropout)
        factory: dict[str, Any] = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))  # (r, in)
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, **factory))  # (out, r)
        self.merged = False
        self.reset_lora_parameters()
        self.train(base.training)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_lora_parameters(self) -> None:
        """A Kaiming-uniform (peft's default, bound 1/sqrt(in)), B zero: ΔW = 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """``ΔW = s · B A``, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.base(x)  # (..., out)
        if self.merged:
            return y
        # peft's order: B(A(dropout(x))) * s; (..., in) -> (..., r) -> (..., out)
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into ``base.weight`` (a no-op when already merged)."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take ΔW out of ``base.weight`` again (a no-op when not merged)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, "
                f"rslora={self.rslora}, merged={self.merged}")


# ---------------------------------------------------------------- the model


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def mark_only_lora_trainable(model: nn.Module) -> None:
    """``requires_grad`` True for every LoRA A and B of ``model``, False for everything else."""
    lora = {id(p) for _, m in _lora_layers(model) for p in (m.lora_A, m.lora_B)}
    for p in model.parameters():
        p.requires_grad_(id(p) in lora)


def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               targets: Sequence[str] | None = None, rslora: bool = False) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` matched by ``targets`` (see :func:`find_targets`;
    None: :func:`default_targets` of the model) in a :class:`LoRALinear`, in place, and leave
    only the LoRA parameters trainable; returns the wrapped modules' names. Each new layer
    takes the training mode of the one it wraps."""
    check_lora_settings(r, alpha, dropout)
    found = find_targets(model, default_targets(model) if targets is None else targets)
    for name, parent, attribute in found:
        base = parent.get_submodule(attribute)
        assert isinstance(base, nn.Linear), name
        setattr(parent, attribute, LoRALinear(base, r=r, alpha=alpha, dropout=dropout,
                                              rslora=rslora))
    mark_only_lora_trainable(model)
    return [name for name, _, _ in found]


def merge_lora(model: nn.Module) -> None:
    """Merge every :class:`LoRALinear` of ``model`` (see :meth:`LoRALinear.merge`)."""
    for _, layer in _lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Unmerge every :class:`LoRALinear` of ``model`` (see :meth:`LoRALinear.unmerge`)."""
    for _, layer in _lora_layers(model):
        layer.unmerge()


def _replace_with_base(model: nn.Module, merge: bool) -> nn.Module:
    for name, layer in list(_lora_layers(model)):
        if merge:
            layer.merge()
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attribute, layer.base)
    return model


def unwrap_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by its base ``nn.Linear`` with ΔW merged in, in
    place (peft's ``merge_and_unload``); returns ``model``, whose state dict has the plain
    names again. ``requires_grad`` is left as it is (``model.requires_grad_(True)`` to train
    every weight)."""
    return _replace_with_base(model, merge=True)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied parameter counts once."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ---------------------------------------------------------------- adapters


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The A and B of every :class:`LoRALinear` (detached), as ``<module>.lora_A`` /
    ``<module>.lora_B``."""
    out: dict[str, Tensor] = {}
    for name, layer in _lora_layers(model):
        out[f"{name}.lora_A"] = layer.lora_A.detach()
        out[f"{name}.lora_B"] = layer.lora_B.detach()
    return out


def load_lora_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy A and B tensors into ``model``'s LoRA layers; strict: a missing, unexpected or
    misshapen key is a ValueError naming it. Refused while a layer is merged (its ΔW is in the
    base weight)."""
    expected = lora_state_dict(model)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"LoRA tensors do not fit the model: missing {missing}, unexpected "
                         f"{unexpected}")
    wrong = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
             if v.shape != expected[k].shape}
    if wrong:
        raise ValueError(f"LoRA tensors have the wrong shapes (given, expected): {wrong}")
    if merged := [name for name, layer in _lora_layers(model) if layer.merged]:
        raise ValueError(f"{merged[0]} is merged: unmerge before loading new LoRA weights")
    with torch.no_grad():
        for key, value in state.items():
            expected[key].copy_(value)  # the detached parameter: same storage


def _base_config(model: nn.Module) -> GPTConfig | LlamaConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, GPTConfig | LlamaConfig):
        raise TypeError(f"an adapter goes with a GPT or a Llama (a model with a GPTConfig or "
                        f"LlamaConfig .config); got {type(model).__name__}")
    return config


def save_adapter(model: nn.Module, directory: str | os.PathLike[str], *,
                 extra: Mapping[str, Tensor] | None = None, base: str | None = None) -> Path:
    """Write ``model``'s LoRA weights alone into ``directory`` (created if needed); returns it.

    ``adapter.safetensors`` holds every A and B (:func:`lora_state_dict`) and the ``extra``
    tensors under their own names (e.g. new embedding rows trained beside LoRA);
    ``adapter_config.json`` holds ``format_version``, ``r``, ``alpha``, ``dropout``,
    ``rslora``, ``targets`` (the wrapped modules' names with the layer index starred),
    ``extra`` (the extra tensors' names), ``base_config`` (the model's config, with its
    ``arch``) and ``base`` (where the base checkpoint is: informational). Each file is written
    atomically, the weights first.
    """
    config = _base_config(model)
    layers = list(_lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers: apply_lora first")
    settings = {(m.r, m.alpha, m.dropout.p, m.rslora) for _, m in layers}
    if len(settings) > 1:
        raise ValueError(f"the LoRA layers have different settings (r, alpha, dropout, "
                         f"rslora): {sorted(settings)}; an adapter file holds one")
    (r, alpha, dropout, rslora), = settings
    tensors = lora_state_dict(model)
    extra = dict(extra or {})
    if clash := sorted(tensors.keys() & extra.keys()):
        raise ValueError(f"extra tensors may not take LoRA names: {clash}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(directory / ADAPTER_WEIGHTS, {**tensors, **extra})
    write_json(directory / ADAPTER_CONFIG, {
        "adapter_type": ADAPTER_TYPE,
        "format_version": FORMAT_VERSION,
        "r": r,
        "alpha": alpha,
        "dropout": dropout,
        "rslora": rslora,
        "targets": list(dict.fromkeys(_pattern_of(name) for name, _ in layers)),
        "extra": sorted(extra),
        "base_config": config.model_dump(mode="json"),
        "base": base,
    })
    return directory


def _read_adapter_config(path: Path, model_config: GPTConfig | LlamaConfig) -> dict[str, Any]:
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("adapter_type") != ADAPTER_TYPE:
        found = raw.get("adapter_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: adapter_type {found!r} is not {ADAPTER_TYPE!r}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {raw.get('format_version')!r}, expected "
                         f"{FORMAT_VERSION}")
    fields = {"r": int, "alpha": int | float, "dropout": int | float, "rslora": bool,
              "targets": list, "extra": list, "base_config": dict}
    for key, kind in fields.items():
        if not isinstance(raw.get(key), kind):
            raise ValueError(f"{path}: {key} is {raw.get(key)!r}, not a {kind}")
    try:
        check_lora_settings(raw["r"], raw["alpha"], raw["dropout"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    ours = model_config.model_dump(mode="json")
    saved = {"arch": "gpt2", **raw["base_config"]}  # adapters of GPT-2 from before arch
    # dropout is a training setting, not the model's shape: a fine-tuning run may change it
    differ = {k: (saved.get(k), v) for k, v in ours.items() if k != "dropout" and saved.get(k) != v}
    if differ:
        key, (theirs, mine) = next(iter(differ.items()))
        raise ValueError(f"{path}: the adapter was trained on a base model with {key}={theirs}, "
                         f"this model has {key}={mine}" + (f" (and {len(differ) - 1} more)"
                                                           if len(differ) > 1 else ""))
    return raw


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Apply the adapter in ``directory`` (written by :func:`save_adapter`) to ``model``, a
    plain base GPT or Llama (e.g. from ``reference.checkpoint.load_checkpoint``), in place:
    LoRA with the saved settings, then the saved A and B. Returns the ``extra`` tensors (on
    the model's device). A different base config (dropout aside), an unknown format version or
    tensors that do not fit are refused with a ValueError naming the file; the model is then left
    as it was."""
    directory = Path(directory)
    config = _read_adapter_config(directory / ADAPTER_CONFIG, _base_config(model))
    if wrapped := [name for name, _ in _lora_layers(model)]:
        raise ValueError(f"the model already has LoRA layers ({wrapped[0]}...): load an "
                         "adapter onto a plain base model")
    device = next(model.parameters()).device
    weights = directory / ADAPTER_WEIGHTS
    tensors = read_safetensors(weights, device=device)
    if missing := sorted(set(config["extra"]) - tensors.keys()):
        raise ValueError(f"{weights}: extra tensors {missing} are missing")
    extra = {k: tensors.pop(k) for k in config["extra"]}
    trainable = {id(p): p.requires_grad for p in model.parameters()}
    try:
        apply_lora(model, r=config["r"], alpha=config["alpha"], dropout=config["dropout"],
                   targets=config["targets"], rslora=config["rslora"])
        load_lora_state_dict(model, tensors)
    except (ValueError, TypeError) as e:
        _replace_with_base(model, merge=False)  # as it was: the plain linears, their flags
        for p in model.parameters():
            p.requires_grad_(trainable.get(id(p), p.requires_grad))
        raise ValueError(f"{weights}: {e}") from None
    return extra
