"""The language-modelling loss: mean cross-entropy of next-token predictions."""

from __future__ import annotations

from torch import Tensor


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    ``logits`` has shape ``(..., V)`` (e.g. ``(B, T, V)``: a score per vocabulary entry at each
    position) and ``targets`` the matching ``(...)`` of class ids in ``[0, V)``. For one position
    with scores ``z`` and target ``t``::

        loss = -log softmax(z)[t] = logsumexp(z) - z[t]

    Returns the mean over all positions: a scalar tensor that autograd can differentiate. It
    equals ``torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1))`` and stays
    finite however large the logits are (1e4, 1e30...).

    Example::

        >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))   # uniform over 4: log 4
        tensor(1.3863)

    Hints: ``exp(1000.)`` is ``inf`` in float32, but softmax does not change when a constant is
    subtracted from every score: subtract each row's maximum (``.detach()``-ed or not) before
    ``exp``. ``Tensor.gather`` picks each row's target score.
    """
    # BEGIN SOLUTION
    z = logits.reshape(-1, logits.shape[-1])  # (N, V)
    t = targets.reshape(-1, 1)  # (N, 1)
    z_max = z.max(dim=-1, keepdim=True).values.detach()  # (N, 1): constant shift, no gradient
    shifted = z - z_max  # every row's largest entry is 0, so exp() cannot overflow
    log_sum_exp = shifted.exp().sum(dim=-1, keepdim=True).log()  # (N, 1), in [0, log V]
    target_score = shifted.gather(-1, t)  # (N, 1)
    return (log_sum_exp - target_score).mean()
    # END SOLUTION
