"""The language-modelling loss: mean cross-entropy of next-token predictions."""

from __future__ import annotations

import torch
from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -1) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    ``logits`` has shape ``(..., V)`` (e.g. ``(B, T, V)``: a score per vocabulary entry at each
    position) and ``targets`` the matching ``(...)`` of class ids in ``[0, V)``. For one position
    with scores ``z`` and target ``t``::

        loss = -log softmax(z)[t] = logsumexp(z) - z[t]

    A position whose target is ``ignore_index`` (any integer: ``-1`` by default, or e.g. the id
    of a padding token) counts neither in the sum nor in the mean. Returns the mean over the
    other positions: a scalar tensor, on the logits' device, that autograd can differentiate
    (``nan`` when every position is ignored: 0 / 0). It equals
    ``torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1),
    ignore_index=ignore_index)`` and stays finite however large the logits are (1e4, 1e30...).

    Example::

        >>> import torch
        >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))   # uniform over 4: log 4
        tensor(1.3863)
        >>> cross_entropy(torch.tensor([[0.0, 0.0], [9.0, 0.0]]), torch.tensor([1, -1]))
        tensor(0.6931)

    The second row is ignored: the mean is over the first alone, ``log 2``.

    Hints: ``exp(1000.)`` is ``inf`` in float32, but softmax does not change when a constant is
    subtracted from every score: subtract each row's maximum (``.detach()``-ed or not) before
    ``exp``. ``Tensor.gather`` picks each row's target score; give it a valid id (say 0) where
    the target is ignored, then leave those positions out of the sum and the count.
    """
    raise NotImplementedError("exercises/trainer/loss.py::cross_entropy is a stub: fill it in (task trainer), then run `pytest exercises -m trainer`")
