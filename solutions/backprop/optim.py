"""Stochastic gradient descent with momentum, with exactly ``torch.optim.SGD``'s update rule."""

from __future__ import annotations

from .layers import Array


def sgd_momentum_step(
    params: dict[str, Array],
    grads: dict[str, Array],
    velocity: dict[str, Array],
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> None:
    """One SGD step, updating ``params`` and ``velocity`` in place (the dicts' entries).

    The rule of ``torch.optim.SGD(params, lr, momentum, weight_decay)`` (no dampening, no
    Nesterov), for each name ``k`` with ``g = grads[k] + weight_decay * params[k]``::

        v = g                    if k is not yet in velocity (the first step), else
        v = momentum * v + g     (velocity[k] = v; skipped entirely when momentum == 0)
        params[k] -= lr * v      (with v = g when momentum == 0)

    Note that ``lr`` multiplies the velocity, it is not folded into it: with a schedule that
    changes ``lr``, ``v = momentum * v - lr * g; p += v`` is a different optimizer.

    Start with ``velocity = {}``. Example, one parameter with a constant gradient 0.5::

        >>> import numpy as np
        >>> params, velocity = {"w": np.array([1.0])}, {}
        >>> sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=0.1, momentum=0.9)
        >>> params["w"], velocity["w"]
        (array([0.95]), array([0.5]))
        >>> sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=0.1, momentum=0.9)
        >>> params["w"], velocity["w"]  # v = 0.9 * 0.5 + 0.5; w = 0.95 - 0.1 * 0.95
        (array([0.855]), array([0.95]))
    """
    if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
        raise ValueError(f"need lr >= 0, 0 <= momentum < 1, weight_decay >= 0; got lr={lr}, "
                         f"momentum={momentum}, weight_decay={weight_decay}")
    if set(grads) != set(params):
        raise ValueError(f"grads and params must have the same names; params has "
                         f"{sorted(params)}, grads has {sorted(grads)}")
    for k in params:
        if grads[k].shape != params[k].shape:
            raise ValueError(f"grads[{k!r}] has shape {grads[k].shape}, "
                             f"but params[{k!r}] has shape {params[k].shape}")
    # BEGIN SOLUTION
    for k, p in params.items():
        g = grads[k] + weight_decay * p if weight_decay else grads[k]
        if momentum:
            v = g.copy() if k not in velocity else momentum * velocity[k] + g
            velocity[k] = v
            g = v
        p -= lr * g  # in place: the caller's array changes
    # END SOLUTION
