"""RMSNorm (Zhang & Sennrich 2019): LayerNorm without the mean, as Llama normalises.

``y = x / sqrt(mean(x²) + eps) * weight``, over the last dim. Unlike LayerNorm it does not
subtract the mean and has no bias: only the scale of the vector is normalised. Computed in
float32 whatever the input's dtype, and cast back before the weight multiplies it, exactly as
Hugging Face's ``LlamaRMSNorm``.

Example::

    >>> rms_norm(torch.tensor([3.0, 4.0]), torch.ones(2), eps=0.0)  # rms = sqrt(12.5)
    tensor([0.8485, 1.1314])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RMSNorm", "rms_norm"]


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x², -1) + eps) * weight``: x (..., C), weight (C,) -> (..., C)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # eps inside the root
    return weight * h.to(x.dtype)


class RMSNorm(nn.Module):
    """:func:`rms_norm` with a learned ``weight`` (C,), initialised to ones."""

    def __init__(self, ndim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
