"""Position encodings that have no learned parameters.

GPT-2 learns its positions (``transformer.wpe`` in ``reference/model.py``); the original
transformer's fixed sinusoids (Vaswani et al. 2017, §3.5) are the classic alternative. The
course's worked solution (``solutions/gpt/positional.py``) derives them step by step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sinusoidal_positional_encoding"]


def sinusoidal_positional_encoding(n_positions: int, d_model: int) -> Tensor:
    """The (n_positions, d_model) float32 table ``PE[pos, 2i] = sin(pos * ω_i)``,
    ``PE[pos, 2i + 1] = cos(pos * ω_i)``, ``ω_i = 10000 ** (-2i / d_model)``.

    ``d_model`` must be even and >= 2, ``n_positions >= 0`` (ValueError otherwise).

    Example::

        >>> sinusoidal_positional_encoding(2, 4)
        tensor([[0.0000, 1.0000, 0.0000, 1.0000],
                [0.8415, 0.5403, 0.0100, 0.9999]])
    """
    if n_positions < 0 or d_model < 2 or d_model % 2:
        raise ValueError(
            f"need n_positions >= 0 and an even d_model >= 2, got {n_positions}, {d_model}"
        )
    # Angles in float64: pos * ω for pos in the thousands loses digits in float32.
    i = torch.arange(0, d_model, 2, dtype=torch.float64)  # 2i
    omega = 10000.0 ** (-i / d_model)  # (d_model / 2,)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * omega[None, :]  # (T, d/2)
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()
    pe[:, 1::2] = angles.cos()
    return pe.float()
