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

from solutions.trainer.optim import adamw_step
from solutions.trainer.schedule import cosine_lr

from .config import TrainSection

__all__ = ["AdamW", "adamw_step", "clip_grad_norm", "cosine_lr", "make_optimizer", "param_groups"]

AdamW = torch.optim.AdamW  # the reference trains with torch's fused/foreach implementation


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: Linear weights decayed, everything else (biases, norms, embeddings) not.

    Each trainable parameter appears once, even when tied (``named_parameters`` deduplicates).
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay_ids = linear_ids - embedding_ids
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, train: TrainSection, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused into one kernel on CUDA."""
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        eps=train.eps,
        fused=device.type == "cuda",
    )


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Clip by the global L2 norm; return the norm before clipping (torch's foreach kernels)."""
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
