"""The learning-rate schedule of a run: linear warm-up, then a cosine decay to a floor.

The library's own copy of the clear version (the course derives it in
``solutions/trainer/schedule.py``; the trainer spec keeps both honest).
"""

from __future__ import annotations

import math

__all__ = ["cosine_lr"]


def cosine_lr(
    step: int, *, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int
) -> float:
    """The learning rate of optimizer step ``step`` (from 0), for ``0 <= warmup_steps <=
    decay_steps``: ``max_lr * (step + 1) / warmup_steps`` while warming up, then a cosine from
    ``max_lr`` down to ``min_lr`` at ``step == decay_steps``, then ``min_lr``.

    Example::

        >>> [round(cosine_lr(s, max_lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=8), 4)
        ...  for s in range(10)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 0.8682, 0.55, 0.2318, 0.1, 0.1]
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step > decay_steps:
        return min_lr
    span = decay_steps - warmup_steps
    ratio = (step - warmup_steps) / span if span > 0 else 0.0  # 0 -> 1 over the decay phase
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
