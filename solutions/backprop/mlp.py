"""A multi-layer perceptron in NumPy with a hand-written backward pass.

The parameters are a dict of named arrays with PyTorch's names and layouts, so the same dict loads
into ``TorchMLP`` (see ``torch_mlp.py``)::

    {"fc1.weight": (H1, D), "fc1.bias": (H1,), "fc2.weight": (H2, H1), ..., "fcL.bias": (K,)}

The network is ``fc1 -> act -> fc2 -> act -> ... -> fcL``: an activation after every layer but
the last, whose outputs are the logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .layers import (
    Array,
    LinearCache,
    gelu_backward,
    gelu_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    tanh_backward,
    tanh_forward,
)
from .losses import softmax_cross_entropy

Params = dict[str, Array]
ACTIVATIONS = ("relu", "gelu", "tanh")


@dataclass(frozen=True)
class MLPCache:
    """What ``mlp_forward`` keeps for ``mlp_backward``: one entry per layer, in forward order."""

    activation: str
    linear: list[LinearCache]  # L entries: cache of fc1 .. fcL
    act: list[Array]  # L - 1 entries: cache of the activation after fc1 .. fc(L-1)


def init_mlp_params(sizes: Sequence[int], seed: int = 0) -> Params:
    """Random parameters for an MLP with layer widths ``sizes = [D, H1, ..., K]``.

    Weights are He-normal (std ``sqrt(2 / fan_in)``, which keeps ReLU activations at a steady
    scale through the layers); biases start at zero. Deterministic given ``seed``.

    Example::

        >>> p = init_mlp_params([2, 16, 3])
        >>> {k: v.shape for k, v in p.items()}
        {'fc1.weight': (16, 2), 'fc1.bias': (16,), 'fc2.weight': (3, 16), 'fc2.bias': (3,)}
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 2 positive ints [in, hidden..., out]; got {sizes}")
    rng = np.random.default_rng(seed)
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes), start=1):
        params[f"fc{i}.weight"] = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
        params[f"fc{i}.bias"] = np.zeros(fan_out)
    return params


def num_layers(params: Params) -> int:
    """How many linear layers ``params`` holds (``fc1`` .. ``fcL``), checking names and shapes."""
    L = sum(1 for name in params if name.endswith(".weight"))
    expected = {f"fc{i}.{kind}" for i in range(1, L + 1) for kind in ("weight", "bias")}
    if L == 0 or set(params) != expected:
        raise ValueError(f"params must be named fc1.weight, fc1.bias, ..., fcL.bias; "
                         f"got {sorted(params)}")
    for i in range(1, L + 1):
        W, b = params[f"fc{i}.weight"], params[f"fc{i}.bias"]
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise ValueError(f"fc{i}: weight must be (out, in) and bias (out,); "
                             f"got {W.shape} and {b.shape}")
        if i > 1 and W.shape[1] != params[f"fc{i - 1}.weight"].shape[0]:
            raise ValueError(f"fc{i}.weight has {W.shape[1]} inputs but fc{i - 1} has "
                             f"{params[f'fc{i - 1}.weight'].shape[0]} outputs")
    return L


def activation_forward(name: str, x: Array) -> tuple[Array, Array]:
    """Dispatch to ``relu_forward``, ``gelu_forward`` or ``tanh_forward``."""
    if name == "relu":
        return relu_forward(x)
    if name == "gelu":
        return gelu_forward(x)
    if name == "tanh":
        return tanh_forward(x)
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {name!r}")


def activation_backward(name: str, dy: Array, cache: Array) -> Array:
    """Dispatch to ``relu_backward``, ``gelu_backward`` or ``tanh_backward``."""
    if name == "relu":
        return relu_backward(dy, cache)
    if name == "gelu":
        return gelu_backward(dy, cache)
    if name == "tanh":
        return tanh_backward(dy, cache)
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {name!r}")


def mlp_forward(params: Params, x: Array, activation: str = "relu") -> tuple[Array, MLPCache]:
    """Logits of the MLP for a batch ``x``, and the cache ``mlp_backward`` needs.

    Shapes: ``x`` (N, D) -> logits (N, K). ``activation``: ``"relu"``, ``"gelu"`` or ``"tanh"``.

    Example: one hidden layer, identity weights, so the ReLU zeroes the negative input::

        >>> params = {"fc1.weight": np.eye(2), "fc1.bias": np.zeros(2),
        ...           "fc2.weight": np.array([[1.0, 2.0], [3.0, 4.0]]), "fc2.bias": np.zeros(2)}
        >>> logits, cache = mlp_forward(params, np.array([[1.0, -1.0]]))
        >>> logits
        array([[1., 3.]])

    Hints: loop over ``i = 1 .. L``; apply ``linear_forward`` with ``fc{i}``, then the activation
    unless it is the last layer; append each cache to the lists of an ``MLPCache``.
    """
    L = num_layers(params)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != params["fc1.weight"].shape[1]:
        raise ValueError(f"x must be (N, {params['fc1.weight'].shape[1]}); got {x.shape}")
    # BEGIN SOLUTION
    cache = MLPCache(activation, linear=[], act=[])
    h = x  # (N, D)
    for i in range(1, L + 1):
        h, lin = linear_forward(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"])  # (N, H_i)
        cache.linear.append(lin)
        if i < L:  # no activation on the logits
            h, act = activation_forward(activation, h)
            cache.act.append(act)
    return h, cache
    # END SOLUTION


def mlp_backward(cache: MLPCache, dlogits: Array) -> Params:
    """Gradients of the loss with respect to every parameter, given ``dlogits = dL/dlogits``.

    Returns a dict with the same names and shapes as the params, e.g. ``grads["fc1.weight"]``.

    Example (the network of ``mlp_forward``'s example)::

        >>> params = {"fc1.weight": np.eye(2), "fc1.bias": np.zeros(2),
        ...           "fc2.weight": np.array([[1.0, 2.0], [3.0, 4.0]]), "fc2.bias": np.zeros(2)}
        >>> _, cache = mlp_forward(params, np.array([[1.0, -1.0]]))
        >>> grads = mlp_backward(cache, np.array([[1.0, 1.0]]))
        >>> grads["fc2.weight"]
        array([[1., 0.],
               [1., 0.]])
        >>> grads["fc1.bias"]  # the ReLU blocked the second unit
        array([4., 0.])

    Hints: walk the layers in reverse. For layer ``i`` (from ``L`` down to 1): if it is not the
    last, first send the gradient back through the activation that followed it; then through
    ``linear_backward``, storing ``dW`` and ``db`` under ``fc{i}.weight`` and ``fc{i}.bias``; the
    ``dx`` it returns is the gradient flowing into the layer below.
    """
    # BEGIN SOLUTION
    grads: Params = {}
    L = len(cache.linear)
    dh = dlogits  # (N, K)
    for i in range(L, 0, -1):
        if i < L:
            dh = activation_backward(cache.activation, dh, cache.act[i - 1])
        dh, grads[f"fc{i}.weight"], grads[f"fc{i}.bias"] = linear_backward(dh, cache.linear[i - 1])
    return grads
    # END SOLUTION


def mlp_loss_and_grads(
    params: Params, x: Array, targets: NDArray[np.integer], activation: str = "relu"
) -> tuple[float, Params]:
    """Mean softmax cross-entropy of the MLP on ``(x, targets)`` and its gradients: one step's work.

    Example::

        >>> p = init_mlp_params([2, 4, 3])
        >>> loss, grads = mlp_loss_and_grads(p, np.zeros((5, 2)), np.array([0, 1, 2, 0, 1]))
        >>> sorted(grads) == sorted(p)
        True
    """
    logits, cache = mlp_forward(params, x, activation)
    loss, dlogits = softmax_cross_entropy(logits, targets)
    return loss, mlp_backward(cache, dlogits)
