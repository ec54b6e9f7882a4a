"""Softmax cross-entropy: the loss of a classifier, and its gradient, stable at any logit size."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .layers import Array


def softmax_cross_entropy(logits: Array, targets: NDArray[np.integer]) -> tuple[float, Array]:
    """Mean cross-entropy of ``softmax(logits)`` against class indices ``targets``, and gradient.

    ``loss = mean_n( logsumexp(logits[n]) - logits[n, targets[n]] )`` and
    ``dlogits = (softmax(logits) - onehot(targets)) / N``.

    Shapes: ``logits`` (N, K) float, ``targets`` (N,) ints in ``[0, K)`` -> ``(loss, dlogits)``
    with ``loss`` a Python float and ``dlogits`` (N, K). Same value as
    ``torch.nn.functional.cross_entropy`` (mean reduction).

    Must stay finite for logits of any size, e.g. ±1e4, where ``exp`` overflows.

    Example: two equal logits give probability 1/2 each::

        >>> loss, dlogits = softmax_cross_entropy(np.array([[0.0, 0.0]]), np.array([0]))
        >>> round(loss, 6), dlogits
        (0.693147, array([[-0.5,  0.5]]))

    Hints: ``softmax`` and ``logsumexp`` do not change if you subtract the same number from every
    logit in a row; subtract the row's max and ``exp`` never sees a positive number. The ``/ N``
    comes from the mean.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, K); got shape {logits.shape}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(
            f"targets must have shape ({logits.shape[0]},) to match logits {logits.shape}; "
            f"got {targets.shape}"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be integer class indices; got dtype {targets.dtype}")
    N, K = logits.shape
    if N == 0 or K == 0:
        raise ValueError(f"logits need at least one row and one class; got shape {logits.shape}")
    if targets.min() < 0 or targets.max() >= K:
        raise ValueError(f"targets must be in [0, {K}); got values in "
                         f"[{targets.min()}, {targets.max()}]")
    raise NotImplementedError("exercises/backprop/losses.py::softmax_cross_entropy is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")
