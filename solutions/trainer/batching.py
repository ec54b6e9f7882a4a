"""Batches for next-token prediction: random contiguous windows of one long token array."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor


def get_batch(
    data: npt.NDArray[np.integer] | Tensor,
    block_size: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Draw ``batch_size`` random windows of ``block_size`` tokens, and their next tokens.

    ``data`` is the whole split as one 1-D array of token ids (a NumPy array, often a
    ``np.memmap`` of a token file, or a tensor). Each row ``b`` starts at a random index ``i``
    drawn uniformly from ``0 .. len(data) - block_size - 1`` (every start whose window *and* its
    next token fit), using ``torch.randint`` with ``generator`` so that a seeded generator gives
    the same batches every run. Then::

        x[b] = data[i     : i + block_size]        # the inputs
        y[b] = data[i + 1 : i + block_size + 1]    # the targets: the same window shifted by one

    Returns ``(x, y)``, both ``int64`` (what ``nn.Embedding`` and the loss expect) of shape
    ``(batch_size, block_size)``, placed on ``device``.

    Example::

        >>> data = np.arange(10, dtype=np.uint16)      # tokens 0, 1, ..., 9
        >>> x, y = get_batch(data, block_size=3, batch_size=2, generator=torch.Generator().manual_seed(0))
        >>> x.tolist(), y.tolist()                      # starts 4 and 3 were drawn
        ([[4, 5, 6], [3, 4, 5]], [[5, 6, 7], [4, 5, 6]])

    Hints: there are ``len(data) - block_size`` valid starts (``torch.randint``'s upper bound is
    exclusive). Convert each window with ``torch.from_numpy(window.astype(np.int64))`` — a
    memmap slice is read from disk only then, and uint16 is not a tensor dtype you can embed.
    """  # noqa: E501
    # BEGIN SOLUTION
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([_window(data, int(i), block_size) for i in starts])  # (B, T)
    y = torch.stack([_window(data, int(i) + 1, block_size) for i in starts])  # (B, T)
    return x.to(device), y.to(device)
    # END SOLUTION


def _window(data: npt.NDArray[np.integer] | Tensor, start: int, length: int) -> Tensor:
    """``data[start : start + length]`` as an int64 tensor (copies a memmap slice into memory)."""
    window = data[start : start + length]
    if isinstance(window, Tensor):
        return window.to(torch.int64)
    return torch.from_numpy(np.asarray(window).astype(np.int64))
