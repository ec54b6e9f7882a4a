"""Classic learner bugs in LoRA; specs/test_lora.py must catch every one.

Each mutant replaces functions or methods of ``solutions.lora`` (a method is patched on the class,
a function everywhere it is referenced). Named for the bug; grouped by what they break, each group
commented with the spec tests expected to catch it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solutions import lora as sol


def _is_lora(m: nn.Module) -> bool:
    return isinstance(m, sol.LoRALinear)


# ---------------------------------------------------------------- scaling


def _scaling_alpha(r: int, alpha: float, rslora: bool = False) -> float:
    return float(alpha)  # forgot to divide by r


def _scaling_ignores_rslora(r: int, alpha: float, rslora: bool = False) -> float:
    return alpha / r


def _scaling_r_over_alpha(r: int, alpha: float, rslora: bool = False) -> float:
    return r / math.sqrt(alpha) if rslora else r / alpha


# ---------------------------------------------------------------- initialisation


def _init(a: str = "kaiming", b: str = "zeros") -> Callable[[Any], None]:
    def init(t: Tensor, how: str) -> None:
        if how == "kaiming":
            nn.init.kaiming_uniform_(t, a=math.sqrt(5))
        elif how == "normal":
            nn.init.normal_(t)  # std 1: far past Kaiming's bound
        else:
            nn.init.zeros_(t)

    def reset_lora_parameters(self: Any) -> None:
        init(self.lora_A, a)
        init(self.lora_B, b)

    return reset_lora_parameters


# ---------------------------------------------------------------- forward


def _forward(
    dropout_on_base: bool = False, dropout_always: bool = False, dropout_after_b: bool = False,
    transposed: bool = False, no_scaling: bool = False, ignores_merged: bool = False,
) -> Callable[[Any, Tensor], Tensor]:
    def forward(self: Any, x: Tensor) -> Tensor:
        # dropout_always: drops in eval mode too
        d = F.dropout(x, self.dropout.p, training=True) if dropout_always else self.dropout(x)
        y = self.base(d if dropout_on_base else x)
        if self.merged and not ignores_merged:
            return y
        if transposed:  # (x Bᵀ...) in the wrong order: runs when in = out
            h = (d @ self.lora_B) @ self.lora_A
        else:
            h = (x if dropout_after_b else d) @ self.lora_A.T @ self.lora_B.T
            if dropout_after_b:
                h = self.dropout(h)
        return y + (h if no_scaling else h * self.scaling)

    return forward


# ---------------------------------------------------------------- merge / unmerge


def _delta_transposed(self: Any) -> Tensor:
    return (self.lora_A.T @ self.lora_B.T) * self.scaling  # (in, out): ΔWᵀ


def _delta_unscaled(self: Any) -> Tensor:
    return self.lora_B @ self.lora_A


@torch.no_grad()
def _merge_not_idempotent(self: Any) -> None:
    self.base.weight += self.delta_weight()  # no check of merged: a second merge adds ΔW again
    self.merged = True


@torch.no_grad()
def _merge_forgets_flag(self: Any) -> None:
    if not self.merged:
        self.base.weight += self.delta_weight()  # merged stays False: forward adds ΔW twice


@torch.no_grad()
def _unmerge_wrong_sign(self: Any) -> None:
    if self.merged:
        self.base.weight += self.delta_weight()
        self.merged = False


@torch.no_grad()
def _unmerge_forgets_flag(self: Any) -> None:
    if self.merged:
        self.base.weight -= self.delta_weight()


@torch.no_grad()
def _unmerge_ignores_flag(self: Any) -> None:
    self.base.weight -= self.delta_weight()
    self.merged = False


# ---------------------------------------------------------------- trainable parameters


def _mark_lora_only_sets_lora(model: nn.Module) -> None:
    for m in model.modules():
        if _is_lora(m):
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)  # but every other parameter left as it was


def _mark_by_name_lora_b_only(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("lora_B"))


def _apply(mark: bool = True, keep_mode: bool = True) -> Callable[..., list[str]]:
    def apply_lora(model: nn.Module, *, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                   targets: Any = sol.DEFAULT_TARGETS, rslora: bool = False) -> list[str]:
        names = []
        for name, parent, attribute in sol.find_targets(model, targets):
            wrapped = sol.LoRALinear(getattr(parent, attribute), r=r, alpha=alpha,
                                     dropout=dropout, rslora=rslora)
            if not keep_mode:
                wrapped.train()  # a fresh module is in training mode: dropout in an eval model
            setattr(parent, attribute, wrapped)
            names.append(name)
        if mark:
            sol.mark_only_lora_trainable(model)
        return names

    return apply_lora


def _merge_lora_top_level_only(model: nn.Module) -> None:
    for m in model.children():  # never reaches the blocks' layers
        if _is_lora(m):
            m.merge()


MUTANTS: dict[str, dict[str, Any]] = {
    # scaling: hand-worked example, peft's scaling and outputs
    "scaling_by_alpha_not_alpha_over_r": {"lora_scaling": _scaling_alpha},
    "rslora_ignored": {"lora_scaling": _scaling_ignores_rslora},
    "scaling_r_over_alpha": {"lora_scaling": _scaling_r_over_alpha},
    # init: test_b_zero_leaves_the_output_unchanged, test_init_a_is_kaiming_uniform_and_b_is_zero
    "b_random_at_init": {"LoRALinear.reset_lora_parameters": _init(b="kaiming")},
    "a_zero_b_random_at_init": {"LoRALinear.reset_lora_parameters": _init(a="zeros", b="kaiming")},
    "both_zero_at_init": {"LoRALinear.reset_lora_parameters": _init(a="zeros")},
    "a_standard_normal": {"LoRALinear.reset_lora_parameters": _init(a="normal")},
    # forward: hand-worked, peft's layer, the dropout property
    "a_and_b_transposed": {"LoRALinear.forward": _forward(transposed=True)},
    "forward_without_scaling": {"LoRALinear.forward": _forward(no_scaling=True)},
    "dropout_on_the_base_path": {"LoRALinear.forward": _forward(dropout_on_base=True)},
    "dropout_in_eval_mode": {"LoRALinear.forward": _forward(dropout_always=True)},
    "dropout_after_b": {"LoRALinear.forward": _forward(dropout_after_b=True)},
    "merged_forward_adds_the_delta_again": {"LoRALinear.forward": _forward(ignores_merged=True)},
    # merge / unmerge: hand-worked, peft's delta, the round trip
    "delta_weight_transposed": {"LoRALinear.delta_weight": _delta_transposed},
    "delta_weight_unscaled": {"LoRALinear.delta_weight": _delta_unscaled},
    "merging_the_delta_twice": {"LoRALinear.merge": _merge_not_idempotent},
    "merge_leaves_merged_false": {"LoRALinear.merge": _merge_forgets_flag},
    "unmerge_adds_instead_of_subtracting": {"LoRALinear.unmerge": _unmerge_wrong_sign},
    "unmerge_leaves_merged_true": {"LoRALinear.unmerge": _unmerge_forgets_flag},
    "unmerge_when_not_merged": {"LoRALinear.unmerge": _unmerge_ignores_flag},
    "merge_lora_misses_nested_layers": {"merge_lora": _merge_lora_top_level_only},
    # trainable parameters: test_mark_only_lora_trainable_freezes_everything_else,
    # test_only_lora_parameters_get_gradients
    "base_weights_left_trainable": {"mark_only_lora_trainable": _mark_lora_only_sets_lora},
    "only_b_trainable": {"mark_only_lora_trainable": _mark_by_name_lora_b_only},
    "apply_lora_does_not_freeze": {"apply_lora": _apply(mark=False)},
    # apply_lora: the mode of the wrapped model
    "apply_lora_leaves_layers_in_training_mode": {"apply_lora": _apply(keep_mode=False)},
}

# Hints that teach: for each classic bug, a regex of the cause the first spec test that catches
# it must name in its failure message (tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "scaling_by_alpha_not_alpha_over_r": r"alpha alone: divide it by r",
    "rslora_ignored": r"rslora ignored",
    "scaling_r_over_alpha": r"r and alpha swapped",
    "b_random_at_init": r"B initiali[sz]ed at random|B must start at zero",
    "a_zero_b_random_at_init": r"A and B swapped",
    "both_zero_at_init": r"A and B both zero",
    "a_standard_normal": r"standard normal",
    "a_and_b_transposed": r"A and B in the wrong order",
    "forward_without_scaling": r"LoRA term is not multiplied by the scaling",
    "dropout_on_the_base_path": r"dropout on the base path",
    "dropout_in_eval_mode": r"dropout in eval mode",
    "dropout_after_b": r"dropout after B",
    "merged_forward_adds_the_delta_again": r"adds the LoRA term while merged",
    "delta_weight_transposed": r"ΔW transposed",
    "delta_weight_unscaled": r"ΔW is not multiplied by the scaling",
    "merging_the_delta_twice": r"merge does not check merged",
    "merge_leaves_merged_false": r"merge does not set merged = True",
    "unmerge_adds_instead_of_subtracting": r"unmerge adds ΔW instead of subtracting",
    "unmerge_leaves_merged_true": r"unmerge does not set merged = False",
    "unmerge_when_not_merged": r"unmerge does not check merged",
    "merge_lora_misses_nested_layers": r"misses nested layers|model\.modules\(\)",
    "base_weights_left_trainable": r"not frozen",
    "only_b_trainable": r"not every lora_A and lora_B is left trainable",
    "apply_lora_does_not_freeze": r"not frozen|mark_only_lora_trainable",
    "apply_lora_leaves_layers_in_training_mode": r"starts in training mode",
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {}
