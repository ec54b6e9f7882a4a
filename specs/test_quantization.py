# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: int8 weight quantization (issue 11): per-channel quantize, dequantize, quantized linear.

Conventions: symmetric int8, one float32 scale per output channel (row of an (out, in)
weight), ``scale = absmax / 127`` (1 for an all-zero row), ``q = round(w / scale)`` to the
nearest integer with ties to even (``torch.round``), no zero point; ``dequantize`` gives
``q * scale`` in float32; ``quantized_linear(x, q, scale, bias)`` is ``F.linear`` on that
weight, in ``x``'s dtype.

Contract:

| clause | tests | oracle |
|---|---|---|
| hand-worked quantization: exact scales 1 and 2, ties to even, a negative absmax, an all-zero row | `test_quantize_per_channel_hand_worked_example` | hand-worked |
| scales are absmax / 127 per output channel, and q is what torch quantizes with those scales | `test_quantize_per_channel_matches_torch_observer_and_quantize_per_channel` | `torch.ao` `PerChannelMinMaxObserver` (symmetric, [-127, 127]); `torch.quantize_per_channel(...).int_repr()` |
| per-element error at most half a step, every q in [-127, 127], shapes and dtypes | `test_quantization_error_is_at_most_half_a_step` | property, in float64 |
| round to nearest, ties as torch.round (not truncation, floor or half away from zero) | `test_rounding_is_to_nearest_with_ties_to_even` | `torch.round` on exactly representable quotients |
| an all-zero row (or weight) quantizes to zeros with scale 1, no division by zero, no NaN | `test_all_zero_rows_quantize_without_dividing_by_zero` | the documented result |
| q stays in [-127, 127] where a subnormal scale is too coarse to hold absmax / 127 (the clamp) | `test_rows_with_a_subnormal_scale_stay_in_range` | hand-worked in units of 2^-149 |
| any float dtype in (float64, bfloat16, float16): float32 arithmetic, int8 and float32 out | `test_quantize_per_channel_takes_any_float_dtype` | the float32 quantization of the same values |
| dequantize: each row times its own scale, float32 | `test_dequantize_hand_worked_example`, `test_dequantize_matches_torch_dequantize` | hand-worked; torch's per-channel quantized tensor `.dequantize()` |
| quantized_linear: hand-worked, a square weight with distinct scales, the bias added unscaled | `test_quantized_linear_hand_worked_example` | hand-worked |
| quantized_linear equals F.linear on the dequantized weight, 0–3 leading dims, with and without bias, float32 and float64 | `test_quantized_linear_matches_f_linear_on_the_dequantized_weight` | `F.linear` in float64 on torch's dequantized weight |
| bfloat16 in, bfloat16 out, within its rounding; a bias of another dtype does not change the output's | `test_quantized_linear_bfloat16_in_bfloat16_out` | float64 `F.linear` within bfloat16's rounding |
| every output on its inputs' device (meta, and CUDA when present) with the documented dtypes | `test_every_output_is_on_the_inputs_device` | the meta device |
| bad inputs raise ValueError naming the shapes or dtypes | `test_quantization_validates_its_inputs` | the documented errors |

Tolerances: float32 1e-5 (absolute and relative: outputs of size ~10 carry ~1e-6 of rounding),
float64 1e-10; bfloat16: ``BF16_RTOL``. The error bound holds where the scale is a normal float32
(a row's absmax above 127 * 2^-126, about 1.5e-36); a subnormal scale has too few bits. Quantization itself is compared exactly (int8), except
that a quotient ``w / scale`` within 1e-5 of a tie may land on either neighbour: float32 division
and torch's own (which multiplies by the inverse scale) may round it differently.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from specs.hints import likely

COMPONENT = "quantization"
pytestmark = pytest.mark.quantization

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
BF16_RTOL = 2e-2  # bfloat16 keeps 8 bits: x, the scale and the output each round by up to 2^-9
TIE_SLACK = 1e-5  # |w / scale - (k + 0.5)| below this: either neighbour is right (see above)


def torch_quantized(q: Tensor, scale: Tensor) -> Tensor:
    """torch's per-channel qint8 tensor with int values ``q``, scales ``scale``, zero point 0."""
    zero = torch.zeros(q.size(0), dtype=torch.long)
    with warnings.catch_warnings():  # torch >= 2.10 deprecates quantized tensors
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)


def torch_dequantize(q: Tensor, scale: Tensor) -> Tensor:
    return torch_quantized(q, scale).dequantize()


def torch_scales_and_ints(w: Tensor) -> tuple[Tensor, Tensor]:
    """torch.ao's symmetric per-channel observer over [-127, 127], then torch's quantizer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        observer = PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
            quant_min=-127, quant_max=127)
        observer(w)
        scale, zero_point = observer.calculate_qparams()
        q = torch.quantize_per_channel(w, scale.double(), zero_point, 0, torch.qint8)
    return scale, q.int_repr()


def near_tie(w: Tensor, scale: Tensor) -> Tensor:
    """Where ``w / scale`` (in float64) lies within TIE_SLACK of a half-integer."""
    quotient = w.double() / scale.double()[:, None]
    return ((quotient - quotient.floor()) - 0.5).abs() < TIE_SLACK


@dataclass
class WeightCase:
    w: Tensor

    def __repr__(self) -> str:
        absmax = self.w.abs().amax(1).tolist()
        return f"WeightCase(shape={tuple(self.w.shape)}, row absmax={absmax})"


@st.composite
def weights(draw: Any, max_out: int = 8, max_in: int = 12) -> WeightCase:
    """(out, in) float32 weights whose rows differ in size by up to six orders of magnitude,
    some all zero, some whose largest entry is negative."""
    out, n_in = draw(st.integers(1, max_out)), draw(st.integers(1, max_in))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    sizes = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1e-3, 0.07, 1.0, 30.0, 1e3]),
                                       min_size=out, max_size=out)))
    w = torch.randn(out, n_in, generator=g) * 0.5
    peak = torch.randint(0, n_in, (out,), generator=g)  # each row's largest entry: ±1
    sign = torch.where(torch.rand(out, generator=g) < 0.5, -1.0, 1.0)
    w = w.clamp(-0.9, 0.9).scatter(1, peak[:, None], sign[:, None])
    return WeightCase(w * sizes[:, None])


def assert_close(actual: Tensor, expected: Tensor, what: str, rtol: float = 0.0) -> None:
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    tol = TOL[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=tol, rtol=rtol,
                               msg=lambda m: f"{what} differs beyond atol={tol}:\n{m}")


def int8(rows: list[list[int]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.int8)


# --- exact: hand-worked numbers -------------------------------------------------------------
# These come first: with -x (as tests/test_mutants.py runs) most bugs stop the run here.


def test_quantize_per_channel_hand_worked_example(impl: Any) -> None:
    """Row 0: absmax 127, scale exactly 1; 2.5 and -3.5 are ties (to 2 and -4), 1.4 rounds to 1.
    Row 1: absmax |-254|, scale 2; 3 / 2 = 1.5 -> 2, -5 / 2 = -2.5 -> -2. Row 2: zeros."""
    w = torch.tensor([[127.0, 2.5, -3.5, 1.4], [-254.0, 3.0, -5.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    try:
        q, scale = impl.quantize_per_channel(w)
    except NotImplementedError:
        raise
    except RuntimeError as error:  # a (4,) scale against 3 rows: a shape error inside
        raise AssertionError(
            "likely cause: the scales are taken along the wrong axis (per input channel, "
            "amax(dim=0)); one scale per output channel, a row of the (out, in) weight: "
            f"abs().amax(dim=1)\n{error}") from None
    want_q = int8([[127, 2, -4, 1], [-127, 2, -2, 0], [0, 0, 0, 0]])
    want_scale = torch.tensor([1.0, 2.0, 1.0])
    assert q.dtype == torch.int8, f"q must be int8, got {q.dtype}"
    assert scale.dtype == torch.float32, f"scale must be float32, got {scale.dtype}"
    absmax, row_max = w.abs().amax(1), w.amax(1)
    hint = likely(scale, {  # what each classic bug's scale would be, from torch ops on w
        "one scale for the whole tensor (per-tensor); one per output channel, a row: "
        "abs().amax(dim=1) / 127": (w.abs().amax() / 127).expand(3),
        "the scale comes from the max, not the absolute max: a row whose largest entry is "
        "negative needs w.abs().amax(dim=1)": torch.where(row_max > 0, row_max / 127, 1.0),
        "scale = absmax / 128 (the 'full int8 range' [-128, 127]); symmetric int8 uses "
        "[-127, 127]: absmax / 127": torch.where(absmax > 0, absmax / 128, 1.0),
        "scale = absmax / 255 (the uint8 range); symmetric int8 uses absmax / 127":
            torch.where(absmax > 0, absmax / 255, 1.0),
        "an affine scale (max - min) / 255 with a zero point; this format is symmetric, "
        "absmax / 127, no zero point": torch.where(
            absmax > 0, (w.amax(1).clamp(min=0) - w.amin(1).clamp(max=0)) / 255, 1.0),
        "an all-zero row gets scale 0 (absmax / 127 divides by zero later); give it scale 1":
            torch.tensor([1.0, 2.0, 0.0]),
    }, atol=0, rtol=0) or "likely cause: scale is not absmax / 127 per row (1 for an all-zero row)"
    assert torch.equal(scale, want_scale), f"{hint}: scale = {scale}, want {want_scale}"
    quotient = w / want_scale[:, None]
    hint = likely(q, {  # the right scales, rounded the wrong way
        "truncation toward zero (.to(torch.int8) or trunc) instead of round to nearest: "
        "torch.round": torch.trunc(quotient).to(torch.int8),
        "floor instead of round to nearest: torch.round": torch.floor(quotient).to(torch.int8),
        "ties rounded half away from zero; torch.round rounds ties to even (2.5 -> 2, "
        "-2.5 -> -2)": (torch.sign(quotient) * torch.floor(quotient.abs() + 0.5)).to(torch.int8),
    }, atol=0, rtol=0) or "likely cause: q is not round(w / scale) (ties to even), clamped to ±127"
    assert torch.equal(q, want_q), f"{hint}: q = {q}, want {want_q}"


def test_dequantize_hand_worked_example(impl: Any) -> None:
    """Each row by its own scale: [127, -64] * 0.5 and [1, 2] * 3 (a square q, so a scale
    applied along the columns gives the right shape and the wrong numbers)."""
    out = impl.dequantize(int8([[127, -64], [1, 2]]), torch.tensor([0.5, 3.0]))
    want = torch.tensor([[63.5, -32.0], [3.0, 6.0]])
    assert out.dtype == torch.float32, f"dequantize must give float32, got {out.dtype}"
    q, scale = int8([[127, -64], [1, 2]]).float(), torch.tensor([0.5, 3.0])
    hint = likely(out, {
        "the scale is forgotten: q * scale[:, None]": q,
        "each column is multiplied by a scale; the scale is per row (output channel): "
        "scale[:, None], not scale[None, :]": q * scale[None, :],
    }, atol=0, rtol=0) or "likely cause: dequantize is not q * scale, one scale per row"
    assert torch.equal(out, want), f"{hint}: dequantize = {out}, want {want}"


def test_quantized_linear_hand_worked_example(impl: Any) -> None:
    """q = [[2, 0], [0, -1]], scale = [0.5, 2], x = [[1, 3]]: x @ qᵀ = [[2, -3]], times the
    scales [[1, -6]], plus the bias [1, 1]: [[2, -5]]. Then a square q with a full row and
    distinct scales, whose result differs if the scale multiplies the inputs instead."""
    q = int8([[2, 0], [0, -1]])
    x, scale, bias = torch.tensor([[1.0, 3.0]]), torch.tensor([0.5, 2.0]), torch.tensor([1.0, 1.0])
    out = impl.quantized_linear(x, q, scale, bias)
    hint = linear_hint(out, x, q, scale, bias)
    assert torch.equal(out, torch.tensor([[2.0, -5.0]])), f"{hint}got {out}, want [[2, -5]]"
    no_bias = impl.quantized_linear(x, q, scale)
    hint = linear_hint(no_bias, x, q, scale, None)
    assert torch.equal(no_bias, torch.tensor([[1.0, -6.0]])), f"{hint}got {no_bias}, want [[1, -6]]"
    # W = [[1, 2], [12, 4]] (rows [1, 2] * 1 and [3, 1] * 4); x = [1, 10]: [21, 52], + [0, 1]
    q2, scale2 = int8([[1, 2], [3, 1]]), torch.tensor([1.0, 4.0])
    x2, bias2 = torch.tensor([[1.0, 10.0]]), torch.tensor([0.0, 1.0])
    out2 = impl.quantized_linear(x2, q2, scale2, bias2)
    hint = linear_hint(out2, x2, q2, scale2, bias2)
    assert torch.equal(out2, torch.tensor([[21.0, 53.0]])), f"{hint}got {out2}, want [[21, 53]]"


def linear_hint(out: Tensor, x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> str:
    """The likely cause, when ``out`` is what a classic bug of quantized_linear gives."""
    w, b = q.float(), 0.0 if bias is None else bias
    found = likely(out, {
        "the bias is scaled too; add it after the scale: (x @ q.T) * scale + bias":
            (x @ w.T + b) * scale,
        "the weight is not transposed; q is (out, in): x @ q.T": x @ w * scale + b,
        "the scale multiplies the inputs (per input channel); it scales the outputs, one per "
        "output channel: (x @ q.T) * scale": (x * scale) @ w.T + b,
        "the scale is forgotten: (x @ q.T) * scale": x @ w.T + b,
    }, atol=0, rtol=0)
    return f"{found}: " if found else ""


def test_all_zero_rows_quantize_without_dividing_by_zero(impl: Any) -> None:
    """A row of zeros has absmax 0: q is 0 and its scale 1, never NaN or inf; a whole zero
    weight too. Dequantized, it is zeros; the linear layer gives the bias there."""
    w = torch.tensor([[0.0, 0.0, 0.0], [0.5, -1.27, 0.0], [0.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a division by zero either
        q, scale = impl.quantize_per_channel(w)
    assert torch.isfinite(scale).all(), f"scale of an all-zero row must be finite: {scale}"
    assert torch.equal(scale, torch.tensor([1.0, 0.01, 1.0])), f"scale = {scale}"
    assert torch.equal(q, int8([[0, 0, 0], [50, -127, 0], [0, 0, 0]])), f"q = {q}"
    q0, scale0 = impl.quantize_per_channel(torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(q0, torch.zeros(2, 5, dtype=torch.int8)), f"q = {q0}"
    assert torch.equal(scale0, torch.ones(2)), f"scale of all-zero rows = {scale0}, want 1"
    assert torch.equal(impl.dequantize(q0, scale0), torch.zeros(2, 5))
    bias = torch.tensor([0.25, -2.0])
    y = impl.quantized_linear(torch.randn(3, 5), q0, scale0, bias)
    assert torch.equal(y, bias.expand(3, 2)), f"a zero weight gives the bias, got {y}"


def test_rows_with_a_subnormal_scale_stay_in_range(impl: Any) -> None:
    """absmax = 136 * 2^-149: absmax / 127 rounds to the smallest subnormal, 2^-149, so the
    quotient is ±136, beyond int8's 127; q must be clamped to ±127, not wrap around."""
    tiny = 2.0**-149
    w = torch.tensor([[136 * tiny, 3 * tiny], [-136 * tiny, 0.0]])
    q, scale = impl.quantize_per_channel(w)
    assert torch.equal(scale, torch.tensor([tiny, tiny])), f"scale = {scale.tolist()}"
    assert torch.equal(q, int8([[127, 3], [-127, 0]])), f"q = {q.tolist()}, want the clamp"


# --- properties against torch's quantizer ----------------------------------------------------


@given(case=weights())
def test_quantize_per_channel_matches_torch_observer_and_quantize_per_channel(
    impl: Any, case: WeightCase
) -> None:
    """The scales are torch.ao's symmetric per-channel observer's over [-127, 127] (exactly,
    on rows that are not all zero: torch puts float32's eps there, we put 1), and q is what
    torch.quantize_per_channel makes with them."""
    w = case.w
    q, scale = impl.quantize_per_channel(w)
    want_scale, want_q = torch_scales_and_ints(w)
    live = w.abs().amax(1) > 0
    assert scale.shape == (w.size(0),), f"scale shape {tuple(scale.shape)}, want ({w.size(0)},)"
    assert torch.equal(scale[live], want_scale[live]), \
        f"scales {scale.tolist()} != torch's {want_scale.tolist()} on {case}"
    tie = near_tie(w, scale)
    differ = (q != want_q) & ~tie
    assert not differ.any(), (
        f"q differs from torch.quantize_per_channel at {differ.nonzero().tolist()} on {case}: "
        f"{q[differ].tolist()} vs {want_q[differ].tolist()}")
    assert ((q.int() - want_q.int()).abs() <= 1).all(), f"q off by more than 1 near a tie: {case}"


@given(case=weights())
def test_quantization_error_is_at_most_half_a_step(impl: Any, case: WeightCase) -> None:
    """|q * scale - w| <= scale / 2 for every element (in float64; the slack is float32's
    rounding of w / scale, at most 127 * 2^-24 of a step), and |q| <= 127."""
    w = case.w
    q, scale = impl.quantize_per_channel(w)
    assert q.shape == w.shape and q.dtype == torch.int8, f"q: {q.dtype} {tuple(q.shape)}"
    assert scale.dtype == torch.float32, f"scale: {scale.dtype}"
    assert (q.int().abs() <= 127).all(), f"q outside [-127, 127]: {q.int().abs().max()}"
    error = (q.double() * scale.double()[:, None] - w.double()).abs()
    bound = scale.double()[:, None] * (0.5 + 1e-5)  # the slack: see the docstring
    assert (error <= bound).all(), (
        f"error above half a step on {case}: worst error/scale "
        f"{(error / scale.double()[:, None]).max().item():.6f}")


@given(
    out=st.integers(1, 6),
    exponent=st.integers(-8, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_rounding_is_to_nearest_with_ties_to_even(
    impl: Any, out: int, exponent: int, seed: int
) -> None:
    """Each row's scale is a power of two (its first entry ±127 * 2^e), and its other entries
    are (n + f) * 2^e with f in {0, 0.25, 0.5, 0.75}: every quotient is exact, half of them
    ties. q must be torch.round's answer: nearest, ties to even."""
    g = torch.Generator().manual_seed(seed)
    step = 2.0**exponent
    n = torch.randint(-126, 126, (out, 16), generator=g).double()
    f = torch.randint(0, 4, (out, 16), generator=g).double() / 4
    quotient = torch.cat([torch.full((out, 1), 127.0), n + f], dim=1)
    quotient[:, 0] *= torch.where(torch.rand(out, generator=g) < 0.5, -1.0, 1.0).double()
    w = (quotient * step).float()  # exact: at most 10 significant bits times a power of two
    q, scale = impl.quantize_per_channel(w)
    assert torch.equal(scale, torch.full((out,), step)), f"scale {scale}, want {step}"
    want = torch.round(quotient).to(torch.int8)
    wrong = q != want
    assert not wrong.any(), (
        f"w / scale = {quotient[wrong][:6].tolist()} became {q[wrong][:6].tolist()}, want "
        f"{want[wrong][:6].tolist()} (round to nearest, ties to even, as torch.round)")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_quantize_per_channel_takes_any_float_dtype(impl: Any, dtype: torch.dtype) -> None:
    """Any float dtype in: the values, taken to float32, quantize as float32 ones would; q is
    int8 and scale float32 whatever came in."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(6, 10, generator=g) * torch.tensor([[0.1], [1], [10], [0], [3], [0.5]]))
    w = w.to(dtype)
    q, scale = impl.quantize_per_channel(w)
    want_q, want_scale = (torch_scales_and_ints(w.float())[1],
                          torch.where(w.float().abs().amax(1) > 0, w.float().abs().amax(1) / 127,
                                      1.0))
    assert (q.dtype, scale.dtype) == (torch.int8, torch.float32), f"{q.dtype}, {scale.dtype}"
    assert torch.equal(scale, want_scale), f"{dtype}: scale {scale}, want {want_scale}"
    assert torch.equal(q, want_q), f"{dtype}: q {q}, want {want_q}"


@given(case=weights())
def test_dequantize_matches_torch_dequantize(impl: Any, case: WeightCase) -> None:
    """dequantize(q, scale) equals torch's per-channel quantized tensor's ``dequantize()``
    bit for bit (both are one correctly rounded float32 product per element)."""
    q, scale = impl.quantize_per_channel(case.w)
    out = impl.dequantize(q, scale)
    want = torch_dequantize(q, scale)
    assert out.dtype == torch.float32 and out.shape == q.shape, f"{out.dtype} {tuple(out.shape)}"
    assert torch.equal(out, want), f"dequantize differs from torch's on {case}"


@given(
    case=weights(max_out=6, max_in=16),
    batch=st.lists(st.integers(1, 3), max_size=3),
    has_bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantized_linear_matches_f_linear_on_the_dequantized_weight(
    impl: Any, case: WeightCase, batch: list[int], has_bias: bool, dtype: torch.dtype,
    seed: int,
) -> None:
    """x (*batch, in) -> (*batch, out) in x's dtype: F.linear in float64 on the weight torch
    dequantizes (float32 inputs), or on q * scale taken exactly (float64 inputs)."""
    g = torch.Generator().manual_seed(seed)
    w = case.w.clamp(-2, 2)  # outputs of size ~10 keep float32's rounding near 1e-6
    q, scale = impl.quantize_per_channel(w)
    x = torch.randn(*batch, w.size(1), generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(w.size(0), generator=g, dtype=torch.float64).to(dtype) if has_bias else None
    actual = impl.quantized_linear(x, q, scale, bias)
    assert actual.dtype == dtype, (
        f"likely cause: computed in {actual.dtype}, not in x's dtype {dtype} (q.float() where "
        "q.to(x.dtype) is meant); the output keeps x's dtype")
    if dtype == torch.float32:
        weight = torch_dequantize(q, scale).double()
    else:
        weight = q.double() * scale.double()[:, None]  # exact: 8 bits times 24 bits
    want = F.linear(x.double(), weight, None if bias is None else bias.double()).to(dtype)
    assert_close(actual, want,
                 f"quantized_linear(x {tuple(x.shape)}, {case}, bias={has_bias}, {dtype})",
                 rtol=TOL[dtype])


def test_quantized_linear_bfloat16_in_bfloat16_out(impl: Any) -> None:
    """bfloat16 x gives bfloat16 out (no silent upcast), close to float64 within its rounding."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 16, generator=g)
    q, scale = impl.quantize_per_channel(w)
    x = torch.randn(2, 3, 16, generator=g).bfloat16()
    bias = torch.randn(5, generator=g).bfloat16()
    out = impl.quantized_linear(x, q, scale, bias)
    assert out.dtype == torch.bfloat16, f"bfloat16 in, {out.dtype} out"
    want = F.linear(x.double(), q.double() * scale.double()[:, None], bias.double())
    torch.testing.assert_close(out.double(), want, atol=BF16_RTOL, rtol=BF16_RTOL)
    float_bias = impl.quantized_linear(x, q, scale, bias.float())  # the output keeps x's dtype
    assert float_bias.dtype == torch.bfloat16, f"bfloat16 x, float32 bias: {float_bias.dtype} out"
    torch.testing.assert_close(float_bias.double(), want, atol=BF16_RTOL, rtol=BF16_RTOL)


DEVICES = ["meta", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_every_output_is_on_the_inputs_device(impl: Any, device: str) -> None:
    """Every function returns on its inputs' device: a tensor made without ``device=`` (a
    constant 1 for zero rows, a zero point) lands on the CPU and fails to combine with meta."""
    w = torch.randn(6, 4, device=device)
    try:
        q, scale = impl.quantize_per_channel(w)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        if "device" not in str(error):
            raise
        raise AssertionError(
            "likely cause: a tensor made without device= (e.g. torch.ones(n) for the all-zero "
            "rows' scale) lands on the CPU; make it with torch.ones_like(scale) or "
            f"device=weight.device\n{error}") from None
    assert (q.device.type, scale.device.type) == (device, device), f"{q.device}, {scale.device}"
    assert (q.dtype, scale.dtype, q.shape, scale.shape) == (
        torch.int8, torch.float32, (6, 4), (6,)), f"{q.dtype} {scale.dtype}"
    d = impl.dequantize(q, scale)
    assert (d.device.type, d.dtype, d.shape) == (device, torch.float32, (6, 4))
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 3, 4, device=device, dtype=dtype)
        for bias in (None, torch.randn(6, device=device, dtype=dtype)):
            y = impl.quantized_linear(x, q, scale, bias)
            assert (y.device.type, y.dtype, y.shape) == (device, dtype, (2, 3, 6)), \
                f"quantized_linear({dtype}, bias={bias is not None}): {y.device} {y.dtype}"


def test_quantization_validates_its_inputs(impl: Any) -> None:
    q, scale = impl.quantize_per_channel(torch.randn(3, 4))  # valid
    with pytest.raises(ValueError, match=r"2-D float.*\(4,\)"):
        impl.quantize_per_channel(torch.randn(4))
    with pytest.raises(ValueError, match=r"2-D float.*\(2, 3, 4\)"):
        impl.quantize_per_channel(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="int64"):
        impl.quantize_per_channel(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="int8"):
        impl.dequantize(q.float(), scale)
    with pytest.raises(ValueError, match=r"scale must be a float \(3,\).*\(4,\)"):
        impl.dequantize(q, torch.ones(4))
    with pytest.raises(ValueError, match=r"x \(2, 5\) must end in 4 features"):
        impl.quantized_linear(torch.randn(2, 5), q, scale)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), got \(4,\)"):
        impl.quantized_linear(torch.randn(2, 4), q, scale, torch.zeros(4))
    assert math.isfinite(float(scale.sum()))
