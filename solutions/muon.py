"""Muon: momentum, then orthogonalise the update of each hidden matrix (Keller Jordan, 2024).

AdamW scales each entry of an update by its own running size. Muon instead treats a weight
matrix as a matrix: it takes the momentum of the gradient, ``M``, and replaces it by the nearest
semi-orthogonal matrix, ``U Vᵀ`` where ``M = U S Vᵀ`` is the SVD: every direction the update
moves in gets the same step, however small its singular value. An SVD per step is slow; a few
steps of a Newton–Schulz iteration, matrix products only, get close enough (singular values
land in about [0.7, 1.2] rather than exactly 1, which trains as well).

The Newton–Schulz step is an odd polynomial of the matrix, applied to every singular value at
once: ``X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X`` maps each singular value ``s`` to
``a s + b s³ + c s⁵``. With Keller Jordan's coefficients ``(a, b, c) = (3.4445, -4.7750,
2.0315)`` the slope at 0 is 3.4445, so five steps lift even small singular values towards 1.
The iteration only converges for singular values at most about 1: divide by the Frobenius norm
first (it bounds the largest singular value).

Muon is for the 2-D hidden matrices of the blocks; embeddings, the LM head, norms and biases
keep AdamW (``reference/muon.py`` builds the two as one optimizer). This file follows
``torch.optim.Muon`` (torch 2.9+) exactly, so the spec can compare against it.

Shapes: a parameter, its gradient and its momentum buffer are (A, B).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reference.muon import NS_COEFFICIENTS as NS_COEFFICIENTS  # (3.4445, -4.7750, 2.0315)
from reference.muon import check_matrix  # given code: names a tensor that is not 2-D


def newton_schulz(
    g: Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Orthogonalise ``g`` (A, B): about ``U Vᵀ`` of its SVD, in ``dtype``, shape (A, B).

    Contract, in this order (``torch.optim.Muon``'s):

    1. cast ``g`` to ``dtype`` (bfloat16 by default: the products are the cost, and the
       iteration does not need more digits);
    2. if ``g`` is tall (A > B), work on its transpose, so the Gram matrix ``X Xᵀ`` is the
       small (B, B) one, and transpose back at the end;
    3. divide by the Frobenius norm, clamped below at ``eps`` (a zero matrix stays zero);
    4. ``steps`` times: ``A = X Xᵀ``, ``B = b A + c A A``, ``X = a X + B X``.

    Worked example (a diagonal matrix: each diagonal entry is its own singular value, and the
    iteration is the scalar polynomial ``p(s) = a s + b s³ + c s⁵`` on each)::

        g = diag(3, 4):   ‖g‖ = 5,  X = diag(0.6, 0.8)
        step 1:  p(0.6) = 3.4445·0.6 - 4.7750·0.216 + 2.0315·0.07776 = 1.1933
                 p(0.8) = 3.4445·0.8 - 4.7750·0.512 + 2.0315·0.32768 = 0.9765
        0.6 -> 1.1933 -> 0.9119 -> 0.8011 -> 0.9747 -> 0.7229
        0.8 -> 0.9765 -> 0.7211 -> 1.0895 -> 0.6960 -> 1.1192
        Five steps land both near 1 (the iteration oscillates in about [0.7, 1.2]).

    Hints: ``g.to(dtype)``; ``x.norm().clamp(min=eps)``; ``torch.addmm(input, m1, m2, beta=,
    alpha=)`` computes ``beta·input + alpha·m1 @ m2`` in one call (what torch uses, so the
    bfloat16 roundings match).
    """
    check_matrix(g, "newton_schulz's input")
    # BEGIN SOLUTION
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # (B, A): the Gram matrix below is (B, B), the smaller one
    x = x / x.norm().clamp(min=eps)  # singular values now <= 1
    for _ in range(steps):
        gram = x @ x.T  # (n, n)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·A + c·A²
        x = torch.addmm(x, poly, x, beta=a)  # a·X + (b·A + c·A²)·X
    return x.T if tall else x
    # END SOLUTION


def muon_step(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor,
    *,
    lr: float,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    eps: float = 1e-7,
) -> None:
    """One Muon update of the matrix ``param`` (A, B) and of its ``momentum_buffer``, in place.

    Contract (``torch.optim.Muon``'s, ``adjust_lr_fn="original"``):

    1. momentum: ``buf ← momentum·buf + (1 - momentum)·grad`` (an average, ``buf.lerp_``);
    2. the update is ``(1 - momentum)·grad + momentum·buf`` with ``nesterov`` (look one step
       ahead), else ``buf`` itself;
    3. orthogonalise it: :func:`newton_schulz` (bfloat16, ``ns_steps`` steps, ``eps``);
    4. decoupled weight decay: ``param ← param·(1 - lr·weight_decay)``;
    5. ``param ← param - lr·sqrt(max(1, A/B))·update``: a tall matrix gets a larger step, so
       the update's RMS per entry does not shrink with its height (Keller Jordan's rule).

    Worked example: ``param`` (4, 1), a column: ``newton_schulz`` gives ``grad / ‖grad‖`` (a
    unit column scaled by ``p⁵(1) = 0.6964``, the polynomial's fifth iterate at 1), and the
    step is ``lr·sqrt(4/1) = 2·lr`` times that.

    Hints: ``momentum_buffer.lerp_(grad, 1 - momentum)``; ``grad.lerp(buf, momentum)``;
    ``param.mul_(...)``, ``param.add_(update, alpha=-adjusted_lr)``.
    """
    check_matrix(param, "muon_step's param")
    # BEGIN SOLUTION
    momentum_buffer.lerp_(grad, 1 - momentum)  # buf = m·buf + (1 - m)·grad
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    update = newton_schulz(update, ns_steps, eps=eps)
    rows, cols = param.shape
    adjusted_lr = lr * math.sqrt(max(1.0, rows / cols))
    param.mul_(1 - lr * weight_decay)  # decay with the plain lr
    param.add_(update, alpha=-adjusted_lr)
    # END SOLUTION
