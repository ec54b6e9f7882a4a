"""LoRA: fine-tune a big frozen model by training a small low-rank update of its weights.

Full fine-tuning updates every weight, and AdamW keeps two more numbers per weight: for a model
of N parameters, 4N numbers in memory and a new N-sized checkpoint per task. LoRA (Hu et al.
2021) freezes the pretrained weight ``W`` (out, in) of a linear layer and learns its change as
a product of two thin matrices::

    ΔW = s · B @ A        A: (r, in)   B: (out, r)   r ≪ min(in, out)
    y  = x @ Wᵀ + b + s · (dropout(x) @ Aᵀ) @ Bᵀ      # = x @ (W + ΔW)ᵀ + b without dropout

Only ``A`` and ``B`` train: r · (in + out) numbers per layer instead of in · out (for GPT-2
small's qkv projection at r = 8: 30,720 instead of 1,769,472).

Three details make it work:

* **Initialisation**: ``A`` random (Kaiming-uniform, as ``nn.Linear`` initialises its weight)
  and ``B`` zero, so ``ΔW = 0`` and the wrapped model starts exactly at the pretrained one. Not
  both zero: then neither gets a gradient (dL/dA has a factor B, dL/dB a factor A) and nothing
  ever trains.
* **Scaling** ``s = alpha / r``: the update's size does not change when you try another rank,
  so the learning rate found at one r works at another. rsLoRA (Kalajdzievski 2023) uses
  ``alpha / sqrt(r)``, which keeps learning stable at large ranks.
* **Merging**: after training, ``W + ΔW`` is one matrix again, so inference costs nothing
  extra; subtracting ``ΔW`` (unmerge) gives back ``W`` up to float rounding, to train on or to
  swap in another task's adapter.

Dropout, if any, acts on the LoRA path's input in training mode only; the frozen base path
never sees it (the base model was trained without it being re-drawn here).

Shapes: x (..., in) -> y (..., out). Weights use ``nn.Linear``'s layout, (out, in). The library
version, ``reference/lora.py``, adds saving and loading adapters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Given code from the library: the checks at the edges (r >= 1, alpha > 0, 0 <= dropout < 1,
# naming the bad value), and finding the layers to wrap by name: find_targets(model,
# ["mlp.c_fc"]) gives (name, parent, attribute) of every module named "...mlp.c_fc", an error
# naming a pattern that matches nothing. DEFAULT_TARGETS are GPT-2's four projections.
from reference.lora import DEFAULT_TARGETS, check_lora_settings, find_targets


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """The factor ``s`` in ``ΔW = s · B A``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA.

    Example::

        >>> lora_scaling(8, 16)     # alpha / r
        2.0
        >>> lora_scaling(16, 16, rslora=True)   # alpha / sqrt(r)
        4.0

    Hint: not ``alpha`` alone: the update would grow with the rank.
    """
    raise NotImplementedError("exercises/lora.py::lora_scaling is a stub: fill it in (task lora), then run `pytest exercises -m lora`")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` (``base``) plus the trainable low-rank update ``s · B A``.

    Attributes: ``base`` (the wrapped layer, its parameters frozen), ``lora_A`` (r, in) and
    ``lora_B`` (out, r) (``nn.Parameter``s on the base layer's device, in its dtype), ``r``,
    ``alpha``, ``rslora``, ``scaling`` (:func:`lora_scaling`), ``dropout`` (an ``nn.Dropout``
    for the LoRA path) and ``merged`` (whether ΔW is inside ``base.weight``).

    Worked example (in = out = 2, r = 1, alpha = 2, so s = 2)::

        W = [[1, 0], [0, 1]]   b = [1, 0]   A = [[1, 2]]   B = [[1], [0]]   x = [[1, 1]]
        base:  x Wᵀ + b                 = [[2, 1]]
        LoRA:  s · (x Aᵀ) Bᵀ = 2 · [[3]] @ [[1, 0]] = [[6, 0]]
        y                               = [[8, 1]]
        ΔW = s · B A = [[2, 4], [0, 0]]; merged: W + ΔW = [[3, 4], [0, 1]], and x (W + ΔW)ᵀ + b
        = [[8, 1]] again.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        check_lora_settings(r, alpha, dropout)
        self.base = base.requires_grad_(False)  # frozen: the pretrained weights stay as they are
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = lora_scaling(r, alpha, rslora)
        self.dropout = nn.Dropout(dropout)
        # made where the base layer lives, in its dtype: never on the default device
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r, device=w.device,
                                               dtype=w.dtype))
        self.merged = False
        self.reset_lora_parameters()
        self.train(base.training)

    def reset_lora_parameters(self) -> None:
        """Initialise ``lora_A`` Kaiming-uniform and ``lora_B`` to zero, in place: ΔW = 0.

        Kaiming-uniform as ``nn.Linear`` (and peft) do it: uniform on [-1/sqrt(in), 1/sqrt(in)].

        Hints: ``nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))`` is exactly that bound;
        ``nn.init.zeros_``. B random would change the model's output before any training.
        """
        raise NotImplementedError("exercises/lora.py::LoRALinear.reset_lora_parameters is a stub: fill it in (task lora), then run `pytest exercises -m lora`")

    def delta_weight(self) -> Tensor:
        """``ΔW = s · B @ A``, (out, in): what merging adds to ``base.weight``.

        Hint: (out, r) @ (r, in) is (out, in), the shape of the base weight; ``A @ B`` would not
        even have the right shape unless in = out.
        """
        raise NotImplementedError("exercises/lora.py::LoRALinear.delta_weight is a stub: fill it in (task lora), then run `pytest exercises -m lora`")

    def forward(self, x: Tensor) -> Tensor:
        """``base(x) + s · (dropout(x) @ Aᵀ) @ Bᵀ``: x (..., in) -> (..., out).

        While ``merged``, ΔW is already inside ``base.weight``: the base layer alone.

        Hints: dropout on the LoRA path's input only (``self.dropout(x)``; the module drops only
        in training mode); multiply by A first, (..., in) -> (..., r), which never builds the
        (out, in) matrix ΔW.
        """
        raise NotImplementedError("exercises/lora.py::LoRALinear.forward is a stub: fill it in (task lora), then run `pytest exercises -m lora`")

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into ``base.weight`` in place and set ``merged``; merging a merged layer
        does nothing (adding ΔW twice would double the update).

        Hint: under ``torch.no_grad()`` (the decorator) ``self.base.weight += ...`` changes the
        frozen weight without autograd; cast ΔW to the weight's dtype.
        """
        raise NotImplementedError("exercises/lora.py::LoRALinear.merge is a stub: fill it in (task lora), then run `pytest exercises -m lora`")

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ΔW from ``base.weight`` in place and clear ``merged``; a no-op when not
        merged. Gives back ``W`` up to two float roundings (bit for bit when ``W + ΔW`` is
        exact)."""
        raise NotImplementedError("exercises/lora.py::LoRALinear.unmerge is a stub: fill it in (task lora), then run `pytest exercises -m lora`")


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Set ``requires_grad`` True on every ``lora_A`` and ``lora_B`` of ``model``'s
    :class:`LoRALinear` layers and False on every other parameter (embeddings, LayerNorms,
    the base weights, any other layer).

    Hint: collect the LoRA parameters' ``id``s from ``model.modules()``, then walk
    ``model.parameters()`` (a tied parameter comes once) and ``requires_grad_`` each.
    """
    raise NotImplementedError("exercises/lora.py::mark_only_lora_trainable is a stub: fill it in (task lora), then run `pytest exercises -m lora`")


def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16, dropout: float = 0.0,
               targets: Sequence[str] = DEFAULT_TARGETS, rslora: bool = False) -> list[str]:
    """Wrap each ``nn.Linear`` that ``targets`` names in a :class:`LoRALinear`, in place, then
    leave only the LoRA parameters trainable. Returns the wrapped modules' names in the
    model's order. At first the model computes exactly what it did (B = 0).

    ``targets`` are module-name patterns: a module is wrapped when its name is a pattern or
    ends with ``"." + pattern``; GPT-2's defaults are ``("attn.c_attn", "attn.c_proj",
    "mlp.c_fc", "mlp.c_proj")``, which wrap 4 layers per block. A pattern that matches nothing
    is an error naming it (``find_targets`` raises it).

    Example: for a 2-layer GPT, ``apply_lora(model, targets=["mlp.c_fc"])`` returns
    ``["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]``.

    Hints: ``for name, parent, attribute in find_targets(model, targets)``: the layer is
    ``getattr(parent, attribute)``, and ``setattr(parent, attribute, LoRALinear(...))`` puts the
    wrapper in its place; then :func:`mark_only_lora_trainable`.
    """
    check_lora_settings(r, alpha, dropout)
    raise NotImplementedError("exercises/lora.py::apply_lora is a stub: fill it in (task lora), then run `pytest exercises -m lora`")


def merge_lora(model: nn.Module) -> None:
    """:meth:`LoRALinear.merge` on every LoRA layer of ``model``."""
    raise NotImplementedError("exercises/lora.py::merge_lora is a stub: fill it in (task lora), then run `pytest exercises -m lora`")


def unmerge_lora(model: nn.Module) -> None:
    """:meth:`LoRALinear.unmerge` on every LoRA layer of ``model``."""
    raise NotImplementedError("exercises/lora.py::unmerge_lora is a stub: fill it in (task lora), then run `pytest exercises -m lora`")
