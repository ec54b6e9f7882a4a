"""The learning-rate schedule: linear warm-up, then a cosine decay to a floor."""

from __future__ import annotations

import math


def cosine_lr(
    step: int, *, max_lr: float, min_lr: float, warmup_steps: int, decay_steps: int
) -> float:
    """The learning rate to use for optimizer step ``step`` (counted from 0).

    Three phases (``0 <= warmup_steps <= decay_steps``)::

        step < warmup_steps:                  max_lr * (step + 1) / warmup_steps
        warmup_steps <= step <= decay_steps:  min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr)
                                              with r = (step - warmup_steps) / (decay_steps - warmup_steps)
        step > decay_steps:                   min_lr

    Warm-up counts from ``step + 1`` so that the very first step already learns (``lr > 0``)
    and the last warm-up step reaches ``max_lr``. The cosine starts at ``max_lr`` (``r = 0``) and
    ends at ``min_lr`` at ``step == decay_steps`` (``r = 1``). With ``decay_steps ==
    warmup_steps`` the cosine phase is that single step, at ``max_lr``.

    Example (``max_lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=8``)::

        step:  0     1     2     3     4     5       6     7       8     9
        lr:    0.25  0.5   0.75  1.0   1.0   0.8682  0.55  0.2318  0.1   0.1

    Hint: guard the division when ``decay_steps == warmup_steps``.
    """  # noqa: E501
    # BEGIN SOLUTION
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step > decay_steps:
        return min_lr
    span = decay_steps - warmup_steps
    ratio = (step - warmup_steps) / span if span > 0 else 0.0  # 0 -> 1 over the decay phase
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)
    # END SOLUTION
