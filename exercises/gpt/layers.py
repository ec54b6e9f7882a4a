"""The two elementwise pieces of a GPT-2 block: LayerNorm and GELU (tanh approximation)."""

from __future__ import annotations

import math

from torch import Tensor


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalize the last dimension to mean 0 and variance 1, then scale and shift.

    Contract: ``x`` (..., C); ``weight`` and ``bias`` (C,) or None (no scale / no shift).
    Returns (..., C)::

        y = (x - mean) / sqrt(var + eps) * weight + bias

    where mean and var are over the last dim, and var is the *biased* variance (divide by C, not
    C - 1), as ``torch.nn.functional.layer_norm``. ``eps`` goes inside the square root.

    Worked example (C = 2, no weight or bias, eps = 0): x = [1, 3] has mean 2, var 1, so
    y = [-1, 1]. With eps = 3: y = [-1, 1] / sqrt(1 + 3) = [-0.5, 0.5]::

        >>> import torch
        >>> layer_norm(torch.tensor([[1.0, 3.0]]), None, None, eps=0.0)
        tensor([[-1.,  1.]])
        >>> layer_norm(torch.tensor([[1.0, 3.0]]), None, None, eps=3.0)
        tensor([[-0.5000,  0.5000]])

    Hint: ``x.mean(-1, keepdim=True)``; ``x.var`` is unbiased unless ``unbiased=False``.
    """
    raise NotImplementedError("exercises/gpt/layers.py::layer_norm is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")


def gelu(x: Tensor) -> Tensor:
    """GELU as GPT-2 computes it: the tanh approximation of ``x * Φ(x)``.

    Contract: elementwise, any shape::

        gelu(x) = 0.5 * x * (1 + tanh(sqrt(2 / π) * (x + 0.044715 * x³)))

    This is ``torch.nn.functional.gelu(x, approximate="tanh")``; the exact ``x * Φ(x)`` (with
    ``erf``) differs by up to ~5e-4, enough to make a GPT-2 checkpoint's logits drift.

    Worked example: gelu(0) = 0; gelu(1) = 0.5 * (1 + tanh(0.7979 * 1.0447)) = 0.8412;
    gelu(-1) = -0.1588; large x: gelu(x) ≈ x; very negative x: ≈ 0::

        >>> import torch
        >>> gelu(torch.tensor([0.0, 1.0, -1.0, 30.0, -30.0]))
        tensor([ 0.0000,  0.8412, -0.1588, 30.0000, -0.0000])
    """
    raise NotImplementedError("exercises/gpt/layers.py::gelu is a stub: fill it in (task gpt), then run `pytest exercises -m gpt`")
