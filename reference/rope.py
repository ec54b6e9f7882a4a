"""Rotary position embeddings (RoPE; Su et al. 2021, "RoFormer"), as Llama uses them.

RoPE encodes a token's position by rotating its query and key vectors, pair of channels by pair
of channels: pair i of the token at position p turns by the angle ``p * ω_i``, with
``ω_i = θ ** (-2i / hs)`` (``θ``, the base, 10000 in Llama 1 and 2; ``hs`` the head size). A
dot product of two rotated vectors depends only on their angle difference, so attention sees
the *relative* position ``p_q - p_k``. Values are never rotated.

Two layouts pair the channels differently; both are the same model up to a fixed permutation of
the q and k projection rows (``reference.hf_llama`` converts between them):

* ``"half"`` (the default; Hugging Face's ``rotate_half``, GPT-NeoX): channel i pairs with
  channel ``i + hs/2``;
* ``"interleaved"`` (Meta's original Llama code, the real and imaginary parts of a complex
  number): channel ``2i`` pairs with ``2i + 1``.

Context extension (``scaling``), each equal to Hugging Face's ``rope_type`` of the same name in
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``:

* ``"linear"``: position interpolation (Chen et al. 2023): every frequency divided by ``factor``,
  so ``factor`` times more positions fit in the angles seen in training;
* ``"yarn"`` (Peng et al. 2023): the high frequencies (more than ``beta_fast`` turns over the
  original context) kept, the low ones (fewer than ``beta_slow``) interpolated by ``factor``, a
  linear ramp between, and cos and sin scaled by ``0.1 ln(factor) + 1`` (the attention factor).

Shapes: ``cos`` and ``sin`` tables (max_len, hs/2), float32; per-token angles (T, hs/2) or
(B, T, hs/2) (rows at their own positions, the KV cache's ``input_pos``); q and k (B, nh, T, hs).

Example::

    >>> cos, sin = rope_cache(head_size=2, max_len=3)      # one pair, ω = 1
    >>> x = torch.tensor([[[[1.0, 0.0]] * 3]])              # (B, nh, T, hs) = (1, 1, 3, 2)
    >>> apply_rotary(x, cos, sin)[0, 0]                     # [1, 0] turned by 0, 1, 2 radians
    tensor([[ 1.0000,  0.0000],
            [ 0.5403,  0.8415],
            [-0.4161,  0.9093]])
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor

from .settings import PositiveFloat, PositiveInt, Settings

__all__ = ["RopeLayout", "RopeScaling", "apply_rotary", "attention_factor",
           "parse_rope_scaling", "rope_at", "rope_cache", "rope_frequencies"]

RopeLayout = Literal["half", "interleaved"]


class RopeScaling(Settings):
    """Context extension: Hugging Face's ``rope_parameters`` of ``rope_type`` ``type``.

    ``factor`` > 1 stretches the context by that much. ``"yarn"`` needs
    ``original_max_position_embeddings``, the context the model was trained with, and uses
    ``beta_fast`` / ``beta_slow`` (32 and 1, the paper's) to choose which frequencies to keep.
    """

    type: Literal["linear", "yarn"]
    factor: PositiveFloat
    original_max_position_embeddings: PositiveInt | None = None
    beta_fast: PositiveFloat = 32.0
    beta_slow: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _yarn_needs_the_original_context(self) -> RopeScaling:
        if self.type == "yarn" and self.original_max_position_embeddings is None:
            raise ValueError(
                "rope_scaling type 'yarn' needs original_max_position_embeddings (the context "
                "length the model was trained with)"
            )
        return self


def parse_rope_scaling(text: str, trained_length: int) -> RopeScaling:
    """``"linear:F"`` or ``"yarn:F"`` (the command line's ``--rope-scaling``) for a model
    trained on ``trained_length`` tokens (YaRN's original context). A ValueError, one line,
    names a bad value.

    >>> parse_rope_scaling("yarn:4", 32).original_max_position_embeddings
    32
    """
    kind, _, factor = text.partition(":")
    try:
        value = float(factor)
    except ValueError:
        value = math.nan
    if kind not in ("linear", "yarn") or not math.isfinite(value) or value < 1:
        raise ValueError(f"rope scaling must be linear:F or yarn:F with a factor F >= 1, "
                         f"got {text!r}")
    original = trained_length if kind == "yarn" else None
    return RopeScaling(type=kind, factor=value,  # type: ignore[arg-type]
                       original_max_position_embeddings=original)


def rope_frequencies(head_size: int, theta: float = 10000.0,
                     scaling: RopeScaling | None = None) -> Tensor:
    """The (hs/2,) float32 angular frequencies ``ω_i = θ ** (-2i / hs)``, after ``scaling``.
    Computed in float32 as Hugging Face does, so the angles agree to the last bit.

    >>> rope_frequencies(4, theta=100.0)  # 100 ** -(0/4), 100 ** -(2/4)
    tensor([1.0000, 0.1000])
    """
    if head_size < 2 or head_size % 2:
        raise ValueError(f"rotary embeddings need an even head_size >= 2, got {head_size}")
    exponents = torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size  # 2i / hs
    inv_freq = 1.0 / (theta ** exponents)  # (hs/2,)
    if scaling is None:
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    return _yarn(inv_freq, head_size, theta, scaling)


def attention_factor(scaling: RopeScaling | None) -> float:
    """What cos and sin are multiplied by: YaRN's ``0.1 ln(factor) + 1``, else 1.

    >>> round(attention_factor(RopeScaling(type="yarn", factor=4.0,
    ...                                    original_max_position_embeddings=16)), 4)
    1.1386
    """
    if scaling is None or scaling.type != "yarn" or scaling.factor <= 1:
        return 1.0
    return 0.1 * math.log(scaling.factor) + 1.0


def _yarn(inv_freq: Tensor, head_size: int, theta: float, scaling: RopeScaling) -> Tensor:
    """YaRN's frequencies: keep the fast pairs, interpolate the slow ones, ramp between."""
    assert scaling.original_max_position_embeddings is not None  # validated by RopeScaling
    context, factor = scaling.original_max_position_embeddings, scaling.factor

    def pair_turning(n_turns: float) -> float:  # the pair index that turns n_turns times
        return head_size * math.log(context / (n_turns * 2 * math.pi)) / (2 * math.log(theta))

    low = float(max(math.floor(pair_turning(scaling.beta_fast)), 0))
    high = float(min(math.ceil(pair_turning(scaling.beta_slow)), head_size - 1))
    if low == high:
        high += 0.001  # no division by zero (as Hugging Face)
    ramp = ((torch.arange(head_size // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep ω), 0: interpolate (ω / factor)
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def rope_cache(head_size: int, max_len: int, theta: float = 10000.0,
               scaling: RopeScaling | None = None) -> tuple[Tensor, Tensor]:
    """The (max_len, hs/2) float32 tables ``cos(p * ω_i)`` and ``sin(p * ω_i)`` for positions
    ``p = 0 .. max_len-1`` (YaRN: times its attention factor). Index them with the tokens'
    positions: ``cos[input_pos]`` is (B, T, hs/2).

    >>> cos, sin = rope_cache(head_size=4, max_len=2, theta=100.0)
    >>> sin  # position 1 turns pair 0 by 1 radian, pair 1 by 0.1
    tensor([[0.0000, 0.0000],
            [0.8415, 0.0998]])
    """
    return rope_at(torch.arange(max_len, dtype=torch.int64), head_size, theta, scaling)


def rope_at(positions: Tensor, head_size: int, theta: float = 10000.0,
            scaling: RopeScaling | None = None, *,
            inv_freq: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` (..., hs/2), float32, at any integer ``positions`` (...): the rows of
    :func:`rope_cache` without a table, bit for bit, so a position past every table (a sliding
    KV cache's) costs nothing to precompute. ``inv_freq``: :func:`rope_frequencies`' result for
    these settings, if the caller keeps it.

    >>> cos, sin = rope_at(torch.tensor([[1]]), head_size=4, theta=100.0)
    >>> sin
    tensor([[[0.8415, 0.0998]]])
    """
    if inv_freq is None:  # a model passes its own, kept on its device (no work per step)
        inv_freq = rope_frequencies(head_size, theta, scaling).to(positions.device)
    angles = positions.to(torch.int64).float()[..., None] * inv_freq  # (..., hs/2)
    if scaling is None or scaling.type != "yarn":
        return angles.cos(), angles.sin()
    factor = attention_factor(scaling)
    return angles.cos() * factor, angles.sin() * factor


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, layout: RopeLayout = "half") -> Tensor:
    """Rotate each pair of channels of ``x`` (B, nh, T, hs) by the angles of its token.

    ``cos`` and ``sin`` (T, hs/2), the same for every row, or (B, T, hs/2), each row at its own
    positions (cast to x's dtype, as Hugging Face does). ``layout`` says which channels pair up
    (see the module docstring). Pair (a, b) becomes ``(a cos - b sin, b cos + a sin)``.

    >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    >>> c, s = torch.zeros(1, 2), torch.ones(1, 2)           # a quarter turn for both pairs
    >>> apply_rotary(x, c, s, "half").flatten().tolist()      # pairs (1, 3) and (2, 4)
    [-3.0, -4.0, 1.0, 2.0]
    >>> apply_rotary(x, c, s, "interleaved").flatten().tolist()  # pairs (1, 2) and (3, 4)
    [-2.0, 1.0, -4.0, 3.0]
    """
    if cos.dim() == 3:  # (B, T, hs/2): broadcast over the heads
        cos, sin = cos[:, None], sin[:, None]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if layout == "half":
        # channel i pairs with i + hs/2: x * [cos, cos] + [-b, a] * [sin, sin] (Hugging Face's
        # rotate_half form: the same numbers as (a cos - b sin, b cos + a sin), fewer kernels)
        a, b = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        return x * cos + torch.cat((-b, a), dim=-1) * sin
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]  # channel 2i pairs with 2i + 1
        return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    raise ValueError(f"rope layout must be 'half' or 'interleaved', got {layout!r}")
