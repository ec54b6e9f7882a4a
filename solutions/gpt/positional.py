"""The original transformer's sinusoidal positional encoding (Vaswani et al. 2017, §3.5).

GPT-2 learns its positions instead (``transformer.wpe``); this fixed encoding is the classic
alternative, with no parameters and a built-in notion of relative position.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sinusoidal_positional_encoding(n_positions: int, d_model: int) -> Tensor:
    """The (n_positions, d_model) float32 table of sines and cosines of geometric frequencies.

    Contract: for position ``pos`` and pair index ``i`` (0 <= i < d_model / 2)::

        PE[pos, 2i]     = sin(pos * ω_i)
        PE[pos, 2i + 1] = cos(pos * ω_i),      ω_i = 10000 ** (-2i / d_model)

    ``d_model`` must be even (ValueError otherwise, and for d_model < 2 or n_positions < 0).

    Why it works: each pair (2i, 2i+1) is a point on a circle turning at speed ω_i, so moving k
    positions is a rotation by the angle k·ω_i, the same for every ``pos``: PE[pos + k] is a
    fixed linear map (depending on k only) of PE[pos], and PE[p] · PE[q] depends on p - q only.

    Worked example (d_model = 4, so ω = [1, 0.01])::

        PE[0] = [0, 1, 0, 1]
        PE[1] = [sin 1, cos 1, sin 0.01, cos 0.01] = [0.8415, 0.5403, 0.0100, 0.99995]

        >>> sinusoidal_positional_encoding(2, 4)
        tensor([[0.0000, 1.0000, 0.0000, 1.0000],
                [0.8415, 0.5403, 0.0100, 0.9999]])

    Hint: ``torch.arange(n_positions)[:, None] * omega[None, :]`` is the (T, d_model/2) table of
    angles; write sines into ``pe[:, 0::2]`` and cosines into ``pe[:, 1::2]``.
    """
    # BEGIN SOLUTION
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
    # END SOLUTION
