"""The optimizer as the training loop uses it: torch's AdamW with the right parameter groups.

Weight decay pulls weights towards zero, which regularises the matrices that mix features. It
is not applied to biases, LayerNorm gains and biases (they set scales and offsets; decaying
them only fights the model) nor to embeddings (a row of a rarely seen token would decay to zero
between the updates it gets). The tied GPT head is the token embedding, so it is not decayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .config import TrainSection
from .schedule import cosine_lr

__all__ = ["AdamW", "adamw_step", "clip_grad_norm", "cosine_lr", "make_optimizer", "param_groups"]

AdamW = torch.optim.AdamW  # the reference trains with torch's fused/foreach implementation


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, nanoGPT's rule: every trainable matrix (2-D or more: the Linear
    weights, LoRA's A and B) decayed, everything else (biases, norms, embeddings) not.

    Frozen parameters (``requires_grad`` False, e.g. a LoRA run's base weights) are left out.
    A matrix whose leading rows are frozen by a gradient hook (``frozen_rows`` set on it, as a
    LoRA run does to an untied LM head that grew chat-token rows) is not decayed either: decay
    would move the frozen rows. Each trainable parameter appears once, even when tied
    (``named_parameters`` deduplicates).
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            plain = id(p) not in embedding_ids and getattr(p, "frozen_rows", None) is None
            (decay if p.dim() >= 2 and plain else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, train: TrainSection, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`, fused into one kernel on CUDA; with
    ``train.optimizer=muon``, Muon for the blocks' matrices and AdamW for the rest
    (:func:`reference.muon.make_muon_optimizer`)."""
    if train.optimizer == "muon":
        from ..muon import make_muon_optimizer

        return make_muon_optimizer(model, lr=train.lr, muon_lr=train.muon_lr,
                                   weight_decay=train.weight_decay,
                                   betas=(train.beta1, train.beta2), eps=train.eps,
                                   fused=device.type == "cuda")
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        eps=train.eps,
        fused=device.type == "cuda",
    )


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
    """One AdamW update of ``param`` (and of its moments ``exp_avg``, ``exp_avg_sq``) in place;
    ``step`` counts from 1. ``torch.optim.AdamW``'s rule, for one tensor.

    The trainer uses ``torch.optim.AdamW`` itself (foreach/fused kernels); this is the library's
    copy of the clear one-tensor version (derived in ``solutions/trainer/optim.py``).

    Example::

        >>> p, m, v = torch.tensor([1.0]), torch.zeros(1), torch.zeros(1)
        >>> adamw_step(p, torch.tensor([0.5]), m, v, step=1, lr=0.1, weight_decay=0.1)
        >>> p
        tensor([0.8900])
    """
    beta1, beta2 = betas
    param.mul_(1 - lr * weight_decay)  # decoupled decay: not through the gradient
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)  # sqrt(v_hat) + eps
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # - lr * m_hat / denom


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip by the global L2 norm; return the norm before clipping (torch's foreach kernels)."""
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
