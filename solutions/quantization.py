"""Int8 weight quantization: store each weight in one byte instead of four.

Decoding one token at a time reads every weight of the model once per token, so its speed is
bound by memory, not arithmetic, and the weights are most of the memory. Weight-only int8 keeps
the activations in floating point and stores each linear layer's weight ``W`` (out_features,
in_features) as int8 values ``q`` and one float scale per output channel (row)::

    scale[o] = max_i |W[o, i]| / 127          # symmetric: no zero point
    q[o, i]  = round(W[o, i] / scale[o])      # round to nearest, in [-127, 127]
    W[o, i] ≈ q[o, i] * scale[o]              # the error is at most scale[o] / 2

Symmetric: the range is [-absmax, absmax] mapped onto [-127, 127], so 0 is exactly 0 and no
zero point is stored (weights are centred on 0; an asymmetric range would buy little). -128 is
left out so that every q has its negative.

Per output channel, not per tensor: the rows of a weight matrix differ in size, and one scale
for the whole matrix, set by its largest entry, would round the small rows to a few levels (or
to zero). A row of zeros has absmax 0: it quantizes to zeros, never dividing by zero, and its
scale is stored as 1.

Round to nearest, not truncation: ``int(2.9)`` is 2, an error of 0.9 steps instead of at most
half a step, and always towards zero, a bias that adds up over a dot product of 768 terms.

The quantized linear layer computes ``x @ Wᵀ + b`` from ``q`` and ``scale``; since the scale is
per output channel it factors out of the sum over the inputs::

    y[..., o] = Σ_i x[..., i] * q[o, i] * scale[o] + b[o] = (x @ qᵀ)[..., o] * scale[o] + b[o]

Shapes: W and q (out, in); scale (out,); x (..., in) -> (..., out). The library version,
``reference/quantization.py``, adds the module that swaps a model's linear layers and the fast
int8 kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Given code from the library: the checks at the edges (messages naming the bad shape or dtype)
# and the int8 range. QMAX = 127.
from reference.quantization import QMAX, check_quantized, check_weight


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8 quantization of a 2-D float ``weight`` (out, in).

    Contract: returns ``(q, scale)`` on ``weight``'s device: ``scale`` float32 (out,) with
    ``scale[o] = max_i |weight[o, i]| / 127`` (1.0 for an all-zero row), and ``q`` int8
    (out, in) with ``q[o, i] = round(weight[o, i] / scale[o])``, rounding to the nearest integer
    (ties to even, as ``torch.round``), so ``|q * scale - weight| <= scale / 2`` everywhere and
    every ``q`` lies in [-127, 127]. Any float dtype in; the arithmetic is float32.

    Worked example (the first row's absmax is 127, so its scale is exactly 1; the second row's
    is |-254|, scale 2)::

        >>> w = torch.tensor([[127.0, 2.5, -3.5, 1.4], [-254.0, 3.0, -5.0, 0.0],
        ...                   [0.0, 0.0, 0.0, 0.0]])
        >>> q, scale = quantize_per_channel(w)
        >>> q
        tensor([[ 127,    2,   -4,    1],
                [-127,    2,   -2,    0],
                [   0,    0,    0,    0]], dtype=torch.int8)
        >>> scale  # an all-zero row gets 1
        tensor([1., 2., 1.])

    2.5 and -3.5 are ties: they go to the even neighbours 2 and -4; 3.0 / 2 = 1.5 goes to 2 and
    -5.0 / 2 = -2.5 to -2. Truncation would give 2, -3, 1, -2; rounding half away from zero 3,
    -4, 2, -3.

    Hints: ``weight.abs().amax(dim=1)`` (the largest magnitude, negative entries included);
    ``torch.where`` to put 1 where the scale is 0, before dividing; divide each row by its scale
    with ``scale[:, None]``; ``torch.round``, then ``clamp`` to [-127, 127] (a subnormal scale
    can push a quotient past 127) and ``.to(torch.int8)`` (a bare ``.to`` truncates).
    """
    check_weight(weight)
    # BEGIN SOLUTION
    w = weight.float()
    scale = w.abs().amax(dim=1) / QMAX  # (out,): one scale per output channel (row)
    scale = torch.where(scale > 0, scale, 1.0)  # an all-zero row: never divide by 0
    q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)  # (out, in)
    return q, scale
    # END SOLUTION


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """The float32 weight ``q * scale`` that int8 ``q`` (out, in) and ``scale`` (out,) stand for.

    Contract: ``dequantize(q, scale)[o, i] = q[o, i] * scale[o]``, float32 (out, in), on
    ``q``'s device: each row by its own scale.

    Example::

        >>> dequantize(torch.tensor([[127, -64], [1, 2]], dtype=torch.int8),
        ...            torch.tensor([0.5, 3.0]))
        tensor([[ 63.5000, -32.0000],
                [  3.0000,   6.0000]])

    Hint: int8 values are exact in float32: ``q.float()``; ``scale[:, None]`` broadcasts along
    the rows (``scale[None, :]`` would scale the columns).
    """
    check_quantized(q, scale)
    # BEGIN SOLUTION
    return q.float() * scale.float()[:, None]  # (out, in): each row by its own scale
    # END SOLUTION


def quantized_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ Wᵀ + bias`` for the weight ``W = q * scale`` that int8 ``q`` (out, in) and
    ``scale`` (out,) stand for.

    Contract: x (..., in), any number of leading dims -> (..., out), in ``x``'s dtype and on its
    device; equals ``F.linear(x, dequantize(q, scale), bias)`` up to float rounding. The
    per-channel scale factors out of the sum over ``in``: compute ``x @ qᵀ`` first, then
    multiply each output channel by its scale, then add the bias (which is not quantized and
    must not be scaled).

    Worked example: ``q = [[2, 0], [0, -1]]``, ``scale = [0.5, 2.0]``, ``x = [[1, 3]]``,
    ``bias = [1, 1]``: ``x @ qᵀ = [[2, -3]]``, times the scales ``[[1, -6]]``, plus the bias
    ``[[2, -5]]``::

        >>> q = torch.tensor([[2, 0], [0, -1]], dtype=torch.int8)
        >>> quantized_linear(torch.tensor([[1.0, 3.0]]), q, torch.tensor([0.5, 2.0]),
        ...                  torch.tensor([1.0, 1.0]))
        tensor([[ 2., -5.]])

    Hint: ``q.to(x.dtype)`` (int8 values are exact in any float dtype); ``.T``; the scale
    broadcasts over the last dim as it is, (out,).
    """
    check_quantized(q, scale, x, bias)
    # BEGIN SOLUTION
    y = (x @ q.to(x.dtype).T) * scale.to(x.dtype)  # (..., out): the scale factors out
    return y + bias.to(x.dtype) if bias is not None else y
    # END SOLUTION
