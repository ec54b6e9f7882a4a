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
    ``grad_clip`` is None, when it is not computed). A parameter the step's loss does not reach
    ends the step with no gradient (``None``), so that the optimizer leaves it alone.

    Example, a bigram model (a table of logits, one row per token) that predicts uniformly, over
    two micro-batches of two positions each::

        >>> import torch
        >>> model = torch.nn.Embedding(3, 3)         # logits (B, T, 3) = the rows of x's tokens
        >>> _ = torch.nn.init.zeros_(model.weight)   # uniform: every position's loss is log 3
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        >>> micro_batches = [(torch.tensor([[0, 1]]), torch.tensor([[1, 2]])),
        ...                  (torch.tensor([[2, 0]]), torch.tensor([[0, 1]]))]
        >>> stats = train_step(model, optimizer, micro_batches, grad_clip=1.0)
        >>> round(stats.loss, 4), round(stats.grad_norm, 4)       # log 3, and under the clip
        (1.0986, 0.5)
        >>> model.weight[0]    # row 0 saw target 1 twice among 4 positions: -2 * (1/3 - e_1) / 4
        tensor([-0.1667,  0.3333, -0.1667], grad_fn=<SelectBackward0>)

    (Each of the 4 positions adds ``(softmax - one_hot(y)) / 4`` to its token's row of the
    gradient; the squared norms of the three rows are 1/6, 1/24 and 1/24: a norm of 0.5.)

    Hints: without the ``/ k`` the gradient is k times too large. ``loss.item()`` (the
    divided loss) summed over the micro-batches is the big batch's mean loss. Zero the
    gradients once, before the loop: zeroing inside would keep only the last micro-batch.
    """
    raise NotImplementedError("exercises/trainer/step.py::train_step is a stub: fill it in (task trainer), then run `pytest exercises -m trainer`")


def _logits(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """A model's logits, whether it returns them alone or first in a tuple ``(logits, loss)``."""
    return output[0] if isinstance(output, tuple) else output
