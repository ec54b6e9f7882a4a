"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def adamw_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.01,
) -> None:
    """One AdamW update of ``param`` in place; ``exp_avg``/``exp_avg_sq`` are updated in place too.

    ``step`` is this update's number, counted from **1** (the first call has ``step=1``).
    ``exp_avg`` (m) and ``exp_avg_sq`` (v) start as zeros of ``param``'s shape. With
    ``(b1, b2) = betas``::

        param *= 1 - lr * weight_decay           # decoupled decay: shrink the weights directly
        m = b1 * m + (1 - b1) * grad             # running mean of gradients
        v = b2 * v + (1 - b2) * grad ** 2        # running mean of squared gradients
        m_hat = m / (1 - b1 ** step)             # bias corrections: m and v start at 0, so
        v_hat = v / (1 - b2 ** step)             # early averages are too small without them
        param -= lr * m_hat / (sqrt(v_hat) + eps)

    This is what ``torch.optim.AdamW`` does. The decay is *decoupled*: it is not added to
    ``grad`` (that would be Adam with L2, whose decay Adam's scaling then undoes).

    Example (the first step moves each weight by about ``lr`` against its gradient's sign)::

        >>> p, g = torch.tensor([1.0]), torch.tensor([0.5])
        >>> m, v = torch.zeros(1), torch.zeros(1)
        >>> adamw_step(p, g, m, v, step=1, lr=0.1, weight_decay=0.1)
        >>> p            # 1 * (1 - 0.1 * 0.1) - 0.1 * 0.5 / (0.5 + 1e-8)
        tensor([0.8900])

    Hints: the in-place ops ``mul_``, ``add_``, ``addcmul_`` and ``addcdiv_`` keep the caller's
    tensors the ones that change. ``eps`` goes outside the square root.
    """
    raise NotImplementedError("exercises/trainer/optim.py::adamw_step is a stub: fill it in (task trainer), then run `pytest exercises -m trainer`")


class AdamW(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that applies :func:`adamw_step` to every parameter.

    Takes the same arguments and parameter groups as ``torch.optim.AdamW`` (e.g. one group with
    ``weight_decay=0.1`` for matrices and one with ``0.0`` for biases, norms and embeddings), so
    the training loop, the schedule (which sets ``group["lr"]``) and checkpoints work with it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                adamw_step(
                    p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                    lr=group["lr"], betas=group["betas"], eps=group["eps"],
                    weight_decay=group["weight_decay"],
                )
        return loss


