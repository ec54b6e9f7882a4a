"""The SwiGLU feed-forward of Llama-style decoders (Shazeer, "GLU Variants Improve Transformer").

``down_proj(silu(gate_proj(x)) * up_proj(x))``: two projections up to ``hidden`` features, one
gated by SiLU (``x * sigmoid(x)``) multiplying the other elementwise, and one projection back.
Parameter names are Hugging Face Llama's (``mlp.gate_proj``, ``mlp.up_proj``, ``mlp.down_proj``);
no biases, as in Llama. Mixture-of-experts layers use it as their expert.

Shapes: (..., n_embd) -> (..., n_embd).

Example::

    >>> mlp = SwiGLU(n_embd=8, hidden=16)
    >>> tuple(mlp(torch.zeros(2, 3, 8)).shape)
    (2, 3, 8)
    >>> float(mlp(torch.zeros(1, 8)).abs().sum())  # silu(0) = 0
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwiGLU", "swiglu_hidden"]


def swiglu_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """Llama's default hidden width: two thirds of ``4 * n_embd`` (so the three matrices hold
    about as many parameters as GPT-2's two), rounded up to a multiple of ``multiple_of``.

    >>> swiglu_hidden(4096, multiple_of=256)  # Llama 7B's 11008
    11008
    """
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))`` without biases."""

    def __init__(self, n_embd: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(n_embd, hidden, bias=False)
        self.up_proj = nn.Linear(n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out

