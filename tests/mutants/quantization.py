"""Classic learner bugs in int8 quantization; specs/test_quantization.py must catch every one.

Each mutant replaces functions of ``solutions.quantization`` (patched everywhere they are
referenced). Named for the bug; grouped by what they break, each group commented with the spec
tests expected to catch it.

A clamp to [-128, 127] instead of [-127, 127] on its own cannot be seen: with scale = absmax /
127 no quotient goes below -127 (up to float rounding, which ``round`` absorbs). It shows with
the scale that goes with it, absmax / 128 (the "full int8 range" bug), which is the mutant below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reference.quantization import check_quantized, check_weight

QMAX = 127

Scale = Callable[[Tensor], Tensor]
Round = Callable[[Tensor], Tensor]


def _absmax_rows(w: Tensor) -> Tensor:
    return w.abs().amax(dim=1)


def _quantize(
    scale_of: Scale = lambda w: _absmax_rows(w) / QMAX,
    round_: Round = torch.round,
    lo: int = -QMAX,
    hi: int = QMAX,
    zero_row_guard: bool = True,
    ones_on_cpu: bool = False,
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """quantize_per_channel with one knob turned the wrong way."""

    def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
        check_weight(weight)
        w = weight.float()
        scale = scale_of(w)
        if zero_row_guard:
            one = torch.ones(scale.shape) if ones_on_cpu else torch.ones_like(scale)
            scale = torch.where(scale > 0, scale, one)
        q = round_(w / scale[:, None]).clamp(lo, hi).to(torch.int8)
        return q, scale

    return quantize_per_channel


def _asymmetric_with_zero_point(weight: Tensor) -> tuple[Tensor, Tensor]:
    """uint8-style affine quantization squeezed into int8: a zero point the format has no
    room for, so the stored q are shifted."""
    check_weight(weight)
    w = weight.float()
    lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    scale = torch.where(hi > lo, (hi - lo) / 255, 1.0)
    zero_point = torch.round(-lo / scale) - 128  # maps lo to -128
    q = (torch.round(w / scale[:, None]) + zero_point[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale


def _half_away_from_zero(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _dequantize(axis: str = "rows", scaled: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
    def dequantize(q: Tensor, scale: Tensor) -> Tensor:
        check_quantized(q, scale)
        if not scaled:
            return q.float()  # forgot the scale
        s = scale.float()[:, None] if axis == "rows" else scale.float()[None, :]
        return q.float() * s

    return dequantize


def _linear(
    scale_inputs: bool = False, scale_bias: bool = False, upcast: bool = False,
    no_transpose: bool = False,
) -> Callable[..., Tensor]:
    def quantized_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
        check_quantized(q, scale, x, bias)
        dtype = torch.float32 if upcast else x.dtype
        w = q.to(dtype)
        w = w if no_transpose else w.T
        if scale_inputs:  # the scale applied per input channel: the wrong axis
            y = (x.to(dtype) * scale.to(dtype)) @ w
        else:
            y = x.to(dtype) @ w
            if scale_bias:
                return (y + bias.to(dtype)) * scale.to(dtype) if bias is not None else \
                    y * scale.to(dtype)
            y = y * scale.to(dtype)
        return y + bias.to(dtype) if bias is not None else y

    return quantized_linear


MUTANTS: dict[str, dict[str, Any]] = {
    # scales: the hand-worked example, torch's observer
    "per_tensor_scale": {
        "quantize_per_channel": _quantize(
            scale_of=lambda w: (w.abs().amax() / QMAX).expand(w.size(0)))
    },
    "per_input_channel_scale": {
        "quantize_per_channel": _quantize(scale_of=lambda w: w.abs().amax(dim=0) / QMAX)
    },
    "scale_from_max_not_absmax": {
        "quantize_per_channel": _quantize(scale_of=lambda w: w.amax(dim=1) / QMAX)
    },
    "scale_absmax_over_128_clamp_minus_128": {  # the "full int8 range" bug
        "quantize_per_channel": _quantize(scale_of=lambda w: _absmax_rows(w) / 128, lo=-128)
    },
    "scale_absmax_over_255": {
        "quantize_per_channel": _quantize(scale_of=lambda w: _absmax_rows(w) / 255)
    },
    "zero_point": {"quantize_per_channel": _asymmetric_with_zero_point},
    # rounding: the hand-worked ties, the exact-quotient test, the error bound
    "truncation_instead_of_rounding": {"quantize_per_channel": _quantize(round_=torch.trunc)},
    "floor_instead_of_rounding": {"quantize_per_channel": _quantize(round_=torch.floor)},
    "round_half_away_from_zero": {"quantize_per_channel": _quantize(round_=_half_away_from_zero)},
    # all-zero rows: test_all_zero_rows_quantize_without_dividing_by_zero
    "zero_row_divides_by_zero": {"quantize_per_channel": _quantize(zero_row_guard=False)},
    # device: test_every_output_is_on_the_inputs_device (meta)
    "zero_row_scale_made_on_the_cpu": {"quantize_per_channel": _quantize(ones_on_cpu=True)},
    # dequantize: the hand-worked example, torch's dequantize
    "dequantize_forgets_the_scale": {"dequantize": _dequantize(scaled=False)},
    "dequantize_scales_columns": {"dequantize": _dequantize(axis="columns")},
    # quantized_linear: the hand-worked examples, F.linear, bfloat16 and float64
    "linear_scale_per_input_channel": {"quantized_linear": _linear(scale_inputs=True)},
    "linear_bias_scaled": {"quantized_linear": _linear(scale_bias=True)},
    "linear_upcasts_to_float32": {"quantized_linear": _linear(upcast=True)},
    "linear_weight_not_transposed": {"quantized_linear": _linear(no_transpose=True)},
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {}

# Hints that teach: the cause the first failing spec test must name for each classic bug
# (a regex, case-insensitive; tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "per_tensor_scale": r"one scale for the whole tensor|per-tensor",
    "per_input_channel_scale": r"wrong axis|per input channel",
    "scale_from_max_not_absmax": r"not the absolute max",
    "scale_absmax_over_128_clamp_minus_128": r"absmax / 128",
    "scale_absmax_over_255": r"absmax / 255",
    "zero_point": r"zero point",
    "truncation_instead_of_rounding": r"truncation",
    "floor_instead_of_rounding": r"floor instead of round",
    "round_half_away_from_zero": r"half away from zero|ties to even",
    "zero_row_divides_by_zero": r"all-zero row gets scale 0",
    "zero_row_scale_made_on_the_cpu": r"without device=",
    "dequantize_forgets_the_scale": r"scale is forgotten",
    "dequantize_scales_columns": r"per row|scale\[:, None\]",
    "linear_scale_per_input_channel": r"scale multiplies the inputs",
    "linear_bias_scaled": r"bias is scaled",
    "linear_upcasts_to_float32": r"x's dtype",
    "linear_weight_not_transposed": r"not transposed",
}
