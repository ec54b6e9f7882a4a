"""Int8 weight quantization of the model's linear layers: one byte per weight instead of four.

Decoding one token at a time reads every weight once per token, so it is bound by memory, not
arithmetic. Each ``nn.Linear`` of the transformer blocks becomes an :class:`Int8Linear` that
stores its weight ``W`` (out, in) as int8 ``q`` and one float32 scale per output channel::

    scale[o] = max_i |W[o, i]| / 127          # symmetric: no zero point (1 for an all-zero row)
    q[o, i]  = round(W[o, i] / scale[o])      # to nearest, ties to even; in [-127, 127]
    W[o, i] ≈ q[o, i] * scale[o]              # off by at most scale[o] / 2

The course derives this in ``solutions/quantization.py``; the spec is
``specs/test_quantization.py``. The bias stays float.

**What stays float (a stated choice).** The token embedding and the LM head are one tied
matrix (a lookup and the head's matmul); quantizing it would untie it or make every lookup
dequantize rows. It is 31% of GPT-2 small's parameters; the blocks' linear layers are the other
69% and all the per-token matmul work but the head, so they are what :func:`quantize` swaps.
LayerNorms and position embeddings stay float too.

**A Llama-style model** (``reference.llama``, dense or a mixture of experts) gets the same
treatment: the blocks' linear layers (``self_attn.{q,k,v,o}_proj``, the SwiGLU
``mlp.{gate,up,down}_proj``, and every expert's three) become int8. Float stay: the RMSNorm
weights; the embedding and the LM head, tied or not, as for GPT-2 (one rule for both
architectures: the head writes the logits themselves, with no later layer to average its
rounding out, and an untied Llama's head is a plain lookup-sized matrix read once per token);
and the router of a mixture of experts (``mlp.gate``, n_embd x n_experts: a few hundred bytes
per block), whose logits *choose* the experts: rounding there would move tokens to another
expert, a jump in the output where every other int8 layer makes a small, bounded error.

**Two ways to run the matmul** (``activations``), never changing the numerics silently:

* ``"float"`` (the default): weight-only. The activations stay in floating point and the
  result is ``x @ (q * scale)ᵀ + b`` up to float rounding. On the hot path, a decode step (at
  most ``KERNEL_MAX_ROWS`` rows), the float weight is never rebuilt: on the CPU (float32
  activations), CUDA and MPS it calls torch's weight-only int8 kernel
  ``torch._weight_int8pack_mm``, which reads the int8 weight and applies the scales inside the
  matmul. A call with more rows (a prefill, an evaluation batch) is compute-bound: it
  dequantizes the layer's weight for that call, ``F.linear(x, q.to(x.dtype)) * scale``, out*in
  conversions against rows*out*in multiply-adds (the kernel's time grows with the rows: 3.7 s
  against 0.24 s of float32 for 64 rows through 12 of GPT-2 small's layers). So does every
  call the kernel cannot take: the meta device, float64, bfloat16/float16 on the CPU (where
  the kernel crashes on some shapes, e.g. 3 input features), or an input that needs a
  gradient (the kernel has no backward).
* ``"dynamic"`` (opt-in, CPU only): int8 activations too (w8a8 dynamic). Each call quantizes
  its input per tensor (unsigned, 7-bit range as torch.ao's x86 default) and runs fbgemm's
  int8 GEMM (``torch.ops.quantized.linear_dynamic`` on a prepacked weight): exactly what
  ``torch.ao.quantization.quantize_dynamic`` runs, bit for bit. The prepacked weight replaces
  the plain int8 one in memory (the state dict unpacks it, so the checkpoint is the same).

Measured on the 2-core AMD EPYC (AVX2, no AVX-512) this project is tested on, torch 2.13,
one thread, batch 1, the 48 linear layers of GPT-2 small (85M weights, out of cache):
float32 ``F.linear`` 22 ms; weight-only ``_weight_int8pack_mm`` 84 ms (3.8x slower: its CPU
kernel is not tuned for float32 on AVX2; with bfloat16 activations it is about as fast as
float32, 8x slower with two threads); dequantizing every call is slower still; ``"dynamic"``
(fbgemm) 7.9 ms (2.8x faster). Dequantizing into a reused cache-sized buffer tile by tile runs
at 1.15x float32's time, but rebuilds the weight every call. So on this CPU weight-only int8
saves memory (0.25x) and costs decode time; ``"dynamic"`` saves both, at the price of
quantized activations (``benchmarks/test_quantization_bench.py`` measures perplexity and
tokens/s of each, beside torch.ao's and torchao's int8).
On a GPU, weight-only is the usual choice (no GPU has run it here yet).

Example::

    >>> from reference.model import GPT, GPTConfig
    >>> model = quantize(GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2,
    ...                                n_embd=16)))
    >>> model.transformer.h[0].attn.c_attn
    Int8Linear(in_features=16, out_features=48, bias=True, activations=float)
    >>> type(model.lm_head).__name__  # the tied embedding / head stays float
    'Linear'
    >>> from reference.llama import Llama, LlamaConfig
    >>> moe = quantize(Llama(LlamaConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2,
    ...                                  n_embd=16, n_experts=2, n_experts_per_tok=1)))
    >>> mlp = moe.model.layers[0].mlp   # each expert's projections int8, the router float
    >>> type(mlp.experts[1].down_proj).__name__, type(mlp.gate).__name__
    ('Int8Linear', 'Linear')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .llama import Llama
from .model import GPT
from .moe import MoE

__all__ = [
    "KERNEL_MAX_ROWS",
    "METHOD",
    "QMAX",
    "VERSION",
    "Activations",
    "Int8Linear",
    "check_quantized",
    "check_weight",
    "dequantize",
    "int8_linear",
    "linear_weight_bytes",
    "quantization_of",
    "quantize",
    "quantize_per_channel",
    "quantized_linear",
]

QMAX = 127  # symmetric int8: [-127, 127], so that -q is representable for every q
METHOD = "int8-per-channel"  # what a quantized checkpoint's config.json records
VERSION = 1  # of the quantized checkpoint format (int8 `weight` + float32 `scale` per layer)
Activations = Literal["float", "dynamic"]
ACTIVATIONS: tuple[Activations, ...] = ("float", "dynamic")
KERNEL_MAX_ROWS = 4  # weight-only: more rows than this dequantize per call (compute-bound)
M = TypeVar("M", bound=GPT | Llama)  # quantize returns the model it was given


# ---------------------------------------------------------------- checks at the edges


def check_weight(weight: Tensor) -> None:
    """Raise ValueError, naming the shape and dtype, unless ``weight`` is a 2-D float tensor."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        what = (f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, Tensor)
                else type(weight).__name__)
        raise ValueError(f"weight must be a 2-D float tensor (out, in), got {what}")


def check_quantized(q: Tensor, scale: Tensor, x: Tensor | None = None,
                    bias: Tensor | None = None) -> None:
    """Raise ValueError, naming the shapes and dtypes, unless ``q`` is int8 (out, in),
    ``scale`` float (out,), and ``x`` (..., in) and ``bias`` (out,) fit them."""
    if q.dtype != torch.int8 or q.dim() != 2:
        raise ValueError(f"q must be an int8 (out, in) tensor, got {q.dtype} {tuple(q.shape)}")
    if scale.shape != (q.size(0),) or not scale.is_floating_point():
        raise ValueError(f"scale must be a float ({q.size(0)},) tensor, one per output "
                         f"channel of q {tuple(q.shape)}, got {scale.dtype} {tuple(scale.shape)}")
    if x is not None and (x.dim() == 0 or x.size(-1) != q.size(1)):
        raise ValueError(f"x {tuple(x.shape)} must end in {q.size(1)} features, the in_features "
                         f"of q {tuple(q.shape)}")
    if x is not None and not x.is_floating_point():
        raise ValueError(f"x must be a float tensor, got {x.dtype}")
    if bias is not None and bias.shape != (q.size(0),):
        raise ValueError(f"bias must have shape ({q.size(0)},), got {tuple(bias.shape)}")


# ---------------------------------------------------------------- the spec's functions


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(q, scale)``: int8 ``q`` (out, in) = round(weight / scale), ties to even, and float32
    ``scale`` (out,) = absmax / 127 per output channel (1.0 for an all-zero row), on
    ``weight``'s device; ``|q * scale - weight| <= scale / 2``.

        >>> quantize_per_channel(torch.tensor([[127.0, 2.5, -3.5], [0.0, 0.0, 0.0]]))
        (tensor([[127,   2,  -4],
                [  0,   0,   0]], dtype=torch.int8), tensor([1., 1.]))
    """
    check_weight(weight)
    w = weight.float()
    scale = w.abs().amax(dim=1) / QMAX  # (out,)
    scale = torch.where(scale > 0, scale, 1.0)  # an all-zero row: never divide by 0
    q = torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)  # (out, in)
    return q, scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """The float32 weight ``q * scale`` that int8 ``q`` (out, in) and ``scale`` (out,) stand
    for, row by row.

        >>> dequantize(torch.tensor([[127, -64]], dtype=torch.int8), torch.tensor([0.5]))
        tensor([[ 63.5000, -32.0000]])
    """
    check_quantized(q, scale)
    return q.float() * scale.float()[:, None]


def quantized_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ (q * scale)ᵀ + bias``, x (..., in) -> (..., out) in ``x``'s dtype and device,
    through :func:`int8_linear` (no float weight built on the hot path).

        >>> q = torch.tensor([[2, 0], [0, -1]], dtype=torch.int8)
        >>> quantized_linear(torch.tensor([[1.0, 3.0]]), q, torch.tensor([0.5, 2.0]))
        tensor([[ 1., -6.]])
    """
    check_quantized(q, scale, x, bias)
    return int8_linear(x, q, scale, bias)


# ---------------------------------------------------------------- the hot path


def _has_kernel(x: Tensor) -> bool:
    """Whether torch's weight-only int8 kernel serves ``x`` (see the module docstring)."""
    if x.requires_grad and torch.is_grad_enabled():
        return False  # the kernel has no backward
    if x.device.type == "cpu":
        return x.dtype == torch.float32  # bf16/fp16: crashes on some shapes (in_features 3)
    return x.device.type in ("cuda", "mps") and x.dtype in (
        torch.float32, torch.bfloat16, torch.float16)


def int8_linear(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None = None) -> Tensor:
    """Weight-only int8 matmul ``x @ (q * scale)ᵀ + bias``, inputs trusted (no checks).

    A decode step (at most ``KERNEL_MAX_ROWS`` rows): torch's int8 kernel where it runs, which
    reads the int8 weight and scales inside the matmul, never building the float weight.
    Otherwise the plain formula, which dequantizes for this call (see the module docstring).
    """
    if math.prod(x.shape[:-1]) <= KERNEL_MAX_ROWS and _has_kernel(x):
        flat = x.reshape(-1, x.size(-1))  # the kernel takes (M, in)
        y = torch._weight_int8pack_mm(flat, q, scale.to(x.dtype))  # (M, out)
        y = y.view(*x.shape[:-1], q.size(0))
    else:
        y = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)  # the scale factors out of the sum
    return y + bias.to(y.dtype) if bias is not None else y


def _prepack(q: Tensor, scale: Tensor, bias: Tensor | None) -> Any:
    """fbgemm's prepacked int8 weight (for ``torch.ops.quantized.linear_dynamic``)."""
    if q.device.type != "cpu":
        raise ValueError(f"activations='dynamic' runs on the CPU only; the weight is on "
                         f"{q.device}: use activations='float' there")
    with warnings.catch_warnings():  # torch >= 2.10 deprecates quantized tensors
        warnings.simplefilter("ignore", UserWarning)
        zero = torch.zeros(q.size(0), dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(
            qweight, None if bias is None else bias.detach().float())


# ---------------------------------------------------------------- the module


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight (out, in) and float32 per-channel scales (out,).

    Built from an ``nn.Linear`` (:meth:`from_linear`), or empty (zeros) to load a quantized
    state dict into. The state dict holds ``weight`` (int8), ``scale`` (float32) and, if any,
    ``bias`` in either mode; ``activations`` (see the module docstring) is a runtime choice,
    switched with :meth:`set_activations`.
    """

    weight: Tensor | None
    scale: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8,
                                                   device=device))
        self.register_buffer("scale", torch.ones(out_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self.activations: Activations = "float"
        self._packed: Any = None  # "dynamic": fbgemm's packed weight, in place of `weight`

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """The quantized copy of ``linear`` (on its device)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device)
        if linear.weight.is_meta:
            return layer  # structure only: a quantized checkpoint fills it
        q, scale = quantize_per_channel(linear.weight.detach())
        layer.int8_weight().copy_(q)
        layer.scale.copy_(scale)  # buffers: no autograd to bypass
        if linear.bias is not None and layer.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    def int8_weight(self) -> Tensor:
        """The int8 weight (out, in), unpacked from fbgemm's copy in ``"dynamic"`` mode."""
        if self.weight is not None:
            return self.weight
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            qweight, _ = torch.ops.quantized.linear_unpack(self._packed)
            q: Tensor = qweight.int_repr()
            return q

    def set_activations(self, activations: Activations) -> Int8Linear:
        """Switch between weight-only (``"float"``) and ``"dynamic"`` int8 activations."""
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
        if activations == self.activations:
            return self
        if activations == "dynamic":
            self._packed = _prepack(self.int8_weight(), self.scale, self.bias)
            self.weight = None  # the packed copy replaces it: one int8 copy in memory
        else:
            self.weight = self.int8_weight()
            self._packed = None
        self.activations = activations
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self._packed is not None:  # reduce_range: 7-bit activations, as torch.ao on x86
            y: Tensor = torch.ops.quantized.linear_dynamic(x, self._packed, True)
            return y
        assert self.weight is not None
        return int8_linear(x, self.weight, self.scale, self.bias)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.weight is None:  # "dynamic": the checkpoint holds the plain int8 weight
            destination[prefix + "weight"] = self.int8_weight()

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        mode = self.activations
        self.set_activations("float")  # load into the plain buffers, then pack again
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self.set_activations(mode)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activations={self.activations}")


# ---------------------------------------------------------------- the model


def _blocks(model: GPT | Llama) -> list[nn.Module]:
    """The transformer blocks of a GPT-2 or a Llama-style model."""
    if isinstance(model, Llama):
        return list(model.blocks())
    return list(model.transformer.h)


def _block_linears(model: GPT | Llama) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, child) of every linear layer (float or int8) in the transformer blocks,
    but a mixture of experts' router (``mlp.gate``: it stays float, see the module docstring)."""
    for block in _blocks(model):
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(parent, MoE) and name == "gate":
                    continue
                if isinstance(child, nn.Linear | Int8Linear):
                    yield parent, name, child


def quantize(model: M, activations: Activations = "float") -> M:
    """Swap every ``nn.Linear`` of ``model``'s transformer blocks (a GPT or a Llama) for an
    :class:`Int8Linear`, in place, and set their ``activations``; returns ``model``. The
    embedding and head, the norms and a mixture of experts' router stay float (see the module
    docstring). A model that is already quantized only switches
    ``activations``. On the meta device it changes only the structure (to load a quantized
    checkpoint into).
    """
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    for parent, name, child in list(_block_linears(model)):
        if isinstance(child, nn.Linear):
            child = Int8Linear.from_linear(child)
            setattr(parent, name, child)
        assert isinstance(child, Int8Linear)
        if not child.scale.is_meta:
            child.set_activations(activations)
    return model


def quantization_of(model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint records about ``model``'s quantization: ``{"method", "version"}``, or
    None for a float model."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return {"method": METHOD, "version": VERSION}
    return None


def linear_weight_bytes(model: GPT | Llama) -> int:
    """Bytes held by the weights (and scales) of the transformer blocks' linear layers: 4 per
    float32 weight, or 1 per int8 weight plus 4 per output channel's scale. Biases, the
    LayerNorms and the tied embedding / head are not counted.

        >>> from reference.model import GPT, GPTConfig
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
        >>> linear_weight_bytes(model), linear_weight_bytes(quantize(model))
        (12288, 3648)
    """
    total = 0
    for _, _, layer in _block_linears(model):
        if isinstance(layer, Int8Linear):  # fbgemm's packed copy: the same bytes, reordered
            total += layer.out_features * layer.in_features + layer.scale.nbytes
        else:
            assert isinstance(layer, nn.Linear)
            total += layer.weight.nbytes
    return total
