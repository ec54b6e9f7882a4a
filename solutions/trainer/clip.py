"""Gradient clipping by the global L2 norm of all gradients together."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients down together so that their global L2 norm is at most ``max_norm``.

    The global norm treats every gradient as one long vector::

        total_norm = sqrt(sum over parameters p of sum(p.grad ** 2))
        coef       = min(1, max_norm / (total_norm + 1e-6))
        p.grad    *= coef    (in place, for every p that has a gradient)

    Parameters whose ``.grad`` is ``None`` (frozen ones, or ones the loss did not reach) are
    skipped. Returns ``total_norm`` *before* clipping, as a 0-dim tensor (worth logging: spikes
    mean trouble). Matches ``torch.nn.utils.clip_grad_norm_(parameters, max_norm)``.

    Example::

        >>> a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        >>> a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
        >>> clip_grad_norm([a, b], max_norm=1.0)     # the norm of (3, 4) is 5
        tensor(5.)
        >>> a.grad, b.grad                            # both scaled by 1/5: the direction is kept
        (tensor([0.6000]), tensor([0.8000]))

    Hints: never scale *up* (the ``min(1, ...)``); the ``1e-6`` avoids dividing by zero. One
    norm for all, not one per tensor: clipping each tensor alone changes the update's direction.
    """
    # BEGIN SOLUTION
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    per_tensor = torch.stack([torch.linalg.vector_norm(g) for g in grads])  # (n,)
    total_norm: Tensor = torch.linalg.vector_norm(per_tensor)  # sqrt of the sum of squares
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return total_norm
    # END SOLUTION
