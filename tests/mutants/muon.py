"""Classic learner bugs in Muon; specs/test_muon.py must catch every one.

Each mutant replaces ``newton_schulz`` or ``muon_step`` of ``solutions.muon`` (``muon_step``
calls the module's ``newton_schulz``, so a broken one reaches it too).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from solutions import muon as sol

sol_newton_schulz = sol.newton_schulz  # the original, kept before a mutant replaces it
COEFFS = (3.4445, -4.7750, 2.0315)


def _ns(coefficients: tuple[float, float, float] = COEFFS, normalise: bool = True,
        transpose: bool = True, steps: int | None = None, frobenius: bool = True) -> Any:
    def newton_schulz(g: Tensor, steps_: int = 5,
                      coefficients_: tuple[float, float, float] = COEFFS, eps: float = 1e-7,
                      dtype: torch.dtype = torch.bfloat16) -> Tensor:
        sol.check_matrix(g, "newton_schulz's input")
        a, b, c = coefficients
        x = g.to(dtype)
        tall = transpose and g.size(0) > g.size(1)
        if tall:
            x = x.T
        if normalise:
            norm = x.norm() if frobenius else x.abs().max()
            x = x / norm.clamp(min=eps)
        for _ in range(steps if steps is not None else steps_):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return x.T if tall else x

    return newton_schulz


def _step(nesterov_ignored: bool = False, adjust: bool = True, update_buffer: bool = True,
          sum_momentum: bool = False, decay_with_adjusted_lr: bool = False,
          update_from_grad: bool = False) -> Any:
    def muon_step(param: Tensor, grad: Tensor, momentum_buffer: Tensor, *, lr: float,
                  weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
                  ns_steps: int = 5, eps: float = 1e-7) -> None:
        sol.check_matrix(param, "muon_step's param")
        if sum_momentum:  # SGD's buf = m·buf + g instead of an average
            buf = momentum_buffer.mul_(momentum).add_(grad)
        elif update_buffer:
            buf = momentum_buffer.lerp_(grad, 1 - momentum)
        else:  # the new average computed but never stored
            buf = momentum_buffer.lerp(grad, 1 - momentum)
        use_nesterov = nesterov and not nesterov_ignored
        update = grad.lerp(buf, momentum) if use_nesterov else buf
        if update_from_grad:
            update = grad
        update = sol.newton_schulz(update, ns_steps, eps=eps)
        rows, cols = param.shape
        adjusted = lr * math.sqrt(max(1.0, rows / cols)) if adjust else lr
        param.mul_(1 - (adjusted if decay_with_adjusted_lr else lr) * weight_decay)
        param.add_(update, alpha=-adjusted)

    return muon_step


MUTANTS: dict[str, dict[str, Any]] = {
    # Newton–Schulz: the diagonal hand-worked example, torch.optim.Muon
    "ns_cubic_coefficients": {"newton_schulz": _ns(coefficients=(1.5, -0.5, 0.0))},
    "ns_coefficients_b_sign_flipped": {"newton_schulz": _ns(coefficients=(3.4445, 4.7750, 2.0315))},
    "ns_no_normalisation": {"newton_schulz": _ns(normalise=False)},
    "ns_normalised_by_max_entry": {"newton_schulz": _ns(frobenius=False)},
    "ns_one_step_too_few": {"newton_schulz": _ns(steps=4)},
    # the flop count of a tall matrix
    "ns_no_transpose_for_tall": {"newton_schulz": _ns(transpose=False)},
    # the momentum update: torch.optim.Muon over 3 steps
    "nesterov_missing": {"muon_step": _step(nesterov_ignored=True)},
    "lr_adjustment_missing": {"muon_step": _step(adjust=False)},
    "momentum_buffer_not_updated": {"muon_step": _step(update_buffer=False)},
    "momentum_summed_not_averaged": {"muon_step": _step(sum_momentum=True)},
    "weight_decay_with_adjusted_lr": {"muon_step": _step(decay_with_adjusted_lr=True)},
    "update_from_grad_not_momentum": {"muon_step": _step(update_from_grad=True)},
}

# Hints that teach (tests/test_mutants.py): the cause, in a learner's words, that the first spec
# test failing on each of these classic bugs must name (a case-insensitive regex).
HINTS: dict[str, str] = {
    "ns_cubic_coefficients": r"cubic",
    "ns_coefficients_b_sign_flipped": r"coefficients are \(3\.4445, -4\.7750, 2\.0315\)",
    "ns_no_normalisation": r"Frobenius norm",
    "ns_normalised_by_max_entry": r"Frobenius norm",
    "ns_one_step_too_few": r"one Newton.Schulz step too few",
    "ns_no_transpose_for_tall": r"not worked on as its transpose",
    "nesterov_missing": r"nesterov is ignored",
    "lr_adjustment_missing": r"not scaled by sqrt\(max\(1, A/B\)\)",
    "momentum_buffer_not_updated": r"not updated in place",
    "momentum_summed_not_averaged": r"momentum summed",
    "weight_decay_with_adjusted_lr": r"decay uses the adjusted lr",
    "update_from_grad_not_momentum": r"from the gradient, not from the momentum",
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {
    ("newton_schulz", "tall = g.size(0) >= g.size(1)"):
        "a square matrix worked on as its transpose: the same polynomial of the same matrix at "
        "the same cost (its Gram matrix is as large either way); only the bfloat16 roundings of "
        "the products differ, by a few ulps, within the tolerance the spec states for an "
        "implementation that orders its products differently",
}
