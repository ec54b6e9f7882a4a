"""Layers as pairs of functions: ``*_forward`` returns (output, cache), ``*_backward`` uses it.

Weights are plain arrays passed in, never attributes, so any caller (the MLP, a spec, a learner's
notebook) can hand in its own. The weight layout is PyTorch's ``nn.Linear`` one: ``W`` is
``(out_features, in_features)`` and ``y = x @ W.T + b``, so a ``W`` here loads into
``torch.nn.Linear.weight`` unchanged.

The rule every backward follows: given ``dy = dL/dy`` (same shape as ``y``), return ``dL/d(input)``
(same shape as the input) and, for layers with weights, ``dL/dW`` and ``dL/db`` (same shapes as
``W`` and ``b``). A gradient always has the shape of the thing it is the gradient of.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
LinearCache = tuple[Array, Array]  # (x, W): what linear_backward needs

# GPT-2's GELU is the tanh approximation (Hendrycks & Gimpel 2016), not the exact erf form.
GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


def linear_forward(x: Array, W: Array, b: Array) -> tuple[Array, LinearCache]:
    """An affine map ``y = x @ W.T + b``.

    Shapes: ``x`` (N, in), ``W`` (out, in), ``b`` (out,) -> ``y`` (N, out).

    Example::

        >>> x = np.array([[1.0, 2.0]])
        >>> W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> y, _ = linear_forward(x, W, np.array([0.5, -0.5, 0.0]))
        >>> y
        array([[1.5, 1.5, 3. ]])
    """
    # BEGIN SOLUTION
    y = x @ W.T + b  # (N, in) @ (in, out) -> (N, out); b broadcasts over the N rows
    return y, (x, W)
    # END SOLUTION


def linear_backward(dy: Array, cache: LinearCache) -> tuple[Array, Array, Array]:
    """Gradients of ``y = x @ W.T + b``: returns ``(dx, dW, db)``.

    Shapes: ``dy`` (N, out) -> ``dx`` (N, in), ``dW`` (out, in), ``db`` (out,).

    Example (one row, so no sum over the batch is visible)::

        >>> x, W = np.array([[1.0, 2.0]]), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> _, cache = linear_forward(x, W, np.zeros(3))
        >>> dx, dW, db = linear_backward(np.array([[1.0, 2.0, 3.0]]), cache)
        >>> dx, db
        (array([[4., 5.]]), array([1., 2., 3.]))
        >>> dW
        array([[1., 2.],
               [2., 4.],
               [3., 6.]])

    Hints: ``y[n, o] = sum_i x[n, i] * W[o, i] + b[o]``. Each ``W[o, i]`` and ``b[o]`` is used by
    every row ``n`` of the batch, so their gradients sum over ``n``. Check shapes: ``dW`` must be
    ``(out, in)`` like ``W``.
    """
    # BEGIN SOLUTION
    x, W = cache
    dx = dy @ W  # (N, out) @ (out, in) -> (N, in)
    dW = dy.T @ x  # (out, N) @ (N, in) -> (out, in): sums over the batch
    db = dy.sum(axis=0)  # (out,): b was broadcast to every row, so its gradient sums them
    return dx, dW, db
    # END SOLUTION


def relu_forward(x: Array) -> tuple[Array, Array]:
    """``max(x, 0)`` elementwise; the cache is ``x``. Any shape.

    Example::

        >>> relu_forward(np.array([-2.0, 0.0, 3.0]))[0]
        array([0., 0., 3.])
    """
    # BEGIN SOLUTION
    return np.maximum(x, 0.0), x
    # END SOLUTION


def relu_backward(dy: Array, cache: Array) -> Array:
    """Gradient of ReLU: ``dy`` where the input was > 0, else 0 (0 at exactly 0, as PyTorch).

    Example::

        >>> _, cache = relu_forward(np.array([-2.0, 0.0, 3.0]))
        >>> relu_backward(np.array([5.0, 5.0, 5.0]), cache)
        array([0., 0., 5.])
    """
    # BEGIN SOLUTION
    x = cache
    return dy * (x > 0)
    # END SOLUTION


def gelu_forward(x: Array) -> tuple[Array, Array]:
    """GELU, tanh approximation (as GPT-2 and ``F.gelu(x, approximate="tanh")``).

    ``gelu(x) = 0.5 * x * (1 + tanh(c * (x + k * x**3)))`` with ``c = sqrt(2/pi)``,
    ``k = 0.044715`` (``GELU_C``, ``GELU_K``). The cache is ``x``. Any shape.

    Example::

        >>> gelu_forward(np.array([0.0, 1.0]))[0]
        array([0.        , 0.84119199])
    """
    # BEGIN SOLUTION
    # x * x * x, not x**3: NumPy's generic power is ~50x slower than two multiplications
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + GELU_K * x * x * x))), x
    # END SOLUTION


def gelu_backward(dy: Array, cache: Array) -> Array:
    """Gradient of the tanh-approximate GELU.

    With ``u = c * (x + k * x**3)`` and ``t = tanh(u)``, ``gelu = 0.5 * x * (1 + t)``, so by the
    product rule ``d gelu/dx = 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * c * (1 + 3 * k * x**2)``.

    Example: at ``x = 0`` the slope is exactly 0.5::

        >>> _, cache = gelu_forward(np.array([0.0]))
        >>> gelu_backward(np.array([2.0]), cache)
        array([1.])
    """
    # BEGIN SOLUTION
    x = cache
    t = np.tanh(GELU_C * (x + GELU_K * x * x * x))
    dgelu = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_K * x * x)
    return dy * dgelu
    # END SOLUTION


def tanh_forward(x: Array) -> tuple[Array, Array]:
    """``tanh(x)`` elementwise; the cache is the OUTPUT ``y`` (the derivative needs only ``y``).

    Example::

        >>> tanh_forward(np.array([0.0]))[0]
        array([0.])
    """
    # BEGIN SOLUTION
    y = np.tanh(x)
    return y, y
    # END SOLUTION


def tanh_backward(dy: Array, cache: Array) -> Array:
    """Gradient of tanh: ``dy * (1 - y**2)`` where ``y = tanh(x)`` is the cache.

    Example: ``tanh(atanh(0.5)) = 0.5``, so the slope there is ``1 - 0.25 = 0.75``::

        >>> _, cache = tanh_forward(np.array([np.arctanh(0.5)]))
        >>> tanh_backward(np.array([2.0]), cache)
        array([1.5])
    """
    # BEGIN SOLUTION
    y = cache
    return dy * (1.0 - y**2)
    # END SOLUTION
