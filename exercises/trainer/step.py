"""One optimizer step over several micro-batches (gradient accumulation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reference.trainer.step import StepStats  # given: what a step reports

from .clip import clip_grad_norm
from .loss import cross_entropy


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[Tensor, Tensor]],
    *,
    grad_clip: float | None = 1.0,
) -> StepStats:
    """One optimizer step whose gradient is that of all ``micro_batches`` taken as one batch.

    ``micro_batches`` is a list of k pairs ``(x, y)`` of equal shape ``(B, T)``; ``model(x)``
    returns logits ``(B, T, V)`` (or a tuple whose first item is the logits, like ``GPT``).
    A batch of k·B rows may not fit in memory, but its gradient is the mean of the k micro-batch
    gradients, and ``backward()`` *adds* into ``.grad``. So::

        zero the gradients (optimizer.zero_grad())
        for each (x, y):  loss = cross_entropy(model(x), y) / k;  loss.backward()
        clip the gradients' global norm to grad_clip (unless None)
        optimizer.step()

    Returns :class:`StepStats` with the mean loss over the k micro-batches (a float, equal to
    the loss of the one big batch) and the gradient norm before clipping (``nan`` if
    ``grad_clip`` is None, when it is not computed).

    Example::

        >>> stats = train_step(model, optimizer, [get_batch(...), get_batch(...)], grad_clip=1.0)
        >>> stats.loss, stats.grad_norm
        (4.17, 0.83)

    Hints: without the ``/ k`` the gradient is k times too large. ``loss.item()`` (the
    divided loss) summed over the micro-batches is the big batch's mean loss. Zero the
    gradients once, before the loop: zeroing inside would keep only the last micro-batch.
    """
    raise NotImplementedError("exercises/trainer/step.py::train_step is a stub: fill it in (task trainer), then run `pytest exercises -m trainer`")


def _logits(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A model's logits, whether it returns them alone or first in a tuple ``(logits, loss)``."""
    return output[0] if isinstance(output, tuple) else output
