"""The library's int8 quantization beyond the spec (``reference.quantization``): the module that
swaps a model's linear layers, its two ways to run the matmul, and the model it makes.

Oracles: ``F.linear`` on the dequantized weight (weight-only), ``torch.ao``'s dynamic quantized
``Linear`` on the same int8 weight (the ``"dynamic"`` mode, bit for bit), the float model (a
stated bound on the logits), and the per-layer error bound that follows from ``|W - q * scale|
<= scale / 2``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reference.model import GPT, GPTConfig
from reference.quantization import (
    Int8Linear,
    dequantize,
    int8_linear,
    linear_weight_bytes,
    quantization_of,
    quantize,
    quantize_per_channel,
)

pytestmark = pytest.mark.quantization

SMALL = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64)


def small_model(seed: int = 0, embedding_scale: float = 5.0) -> GPT:
    """GPT-2's init, with the tied embedding scaled up so that the logits span about ±8 (at
    the init they are within ±1, where any error looks small)."""
    torch.manual_seed(seed)
    model = GPT(SMALL).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(embedding_scale)
    return model


def random_linear(n_in: int, n_out: int, bias: bool, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():  # rows of different sizes, as in a trained layer
        layer.weight.mul_(torch.logspace(-2, 1, n_out)[torch.randperm(n_out)][:, None])
        if bias:
            layer.bias.normal_()
    return layer


# ----------------------------------------------------------------------------- the swap


def test_quantize_swaps_only_the_blocks_linear_layers() -> None:
    """Every linear layer of the blocks becomes an Int8Linear; the tied embedding / head, the
    position embedding and the LayerNorms stay float, and the tie holds."""
    model = quantize(small_model())
    int8 = [name for name, m in model.named_modules() if isinstance(m, Int8Linear)]
    assert len(int8) == 4 * SMALL.n_layer, int8
    assert all(n.startswith("transformer.h.") for n in int8), int8
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.transformer.wte.weight, "the tie is broken"
    floats = {n: p.dtype for n, p in model.named_parameters()}
    assert set(floats.values()) == {torch.float32}, floats
    assert quantization_of(model) == {"method": "int8-per-channel", "version": 1}
    assert quantization_of(small_model()) is None
    layer = model.transformer.h[0].mlp.c_fc
    assert quantize(model) is model and model.transformer.h[0].mlp.c_fc is layer, \
        "quantizing a quantized model must only keep it as it is"


def test_quantized_layers_hold_what_quantize_per_channel_gives() -> None:
    model = small_model()
    float_weight = model.transformer.h[1].attn.c_attn.weight.detach().clone()
    float_bias = model.transformer.h[1].attn.c_attn.bias.detach().clone()
    layer = quantize(model).transformer.h[1].attn.c_attn
    assert isinstance(layer, Int8Linear)
    q, scale = quantize_per_channel(float_weight)
    assert torch.equal(layer.int8_weight(), q) and torch.equal(layer.scale, scale)
    assert layer.bias is not None and torch.equal(layer.bias.detach(), float_bias)


@given(
    n_in=st.integers(1, 40), n_out=st.integers(1, 40), bias=st.booleans(),
    batch=st.lists(st.integers(1, 3), max_size=2), seed=st.integers(0, 2**31 - 1),
)
def test_int8_linear_equals_f_linear_on_the_dequantized_weight(
    n_in: int, n_out: int, bias: bool, batch: list[int], seed: int
) -> None:
    """Weight-only: the layer (torch's int8 kernel on the CPU) is F.linear on q * scale, to
    float32 rounding (1e-5 relative and absolute), for any leading dims."""
    linear = random_linear(n_in, n_out, bias, seed)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(*batch, n_in)
    with torch.no_grad():
        want = F.linear(x.double(), dequantize(layer.int8_weight(), layer.scale).double(),
                        None if linear.bias is None else linear.bias.double())
        torch.testing.assert_close(layer(x).double(), want, atol=1e-5, rtol=1e-5)


@given(n_in=st.integers(1, 64), n_out=st.integers(1, 32), seed=st.integers(0, 2**31 - 1))
def test_int8_linear_error_is_within_half_a_step_per_input(n_in: int, n_out: int,
                                                           seed: int) -> None:
    """|y - y_float|[o] <= (scale[o] / 2) * Σ_i |x_i| (+ float32 rounding): the per-layer bound
    that |W - q * scale| <= scale / 2 gives."""
    linear = random_linear(n_in, n_out, True, seed)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(5, n_in)
    with torch.no_grad():
        error = (layer(x).double() - F.linear(x.double(), linear.weight.double(),
                                              linear.bias.double())).abs()
    bound = layer.scale.double() / 2 * x.double().abs().sum(-1, keepdim=True)
    assert (error <= bound * (1 + 1e-4) + 1e-5).all(), (error / bound).max()


@pytest.mark.parametrize("shape", [(1, 48), (1, 4, 48), (2, 7, 48)])
def test_the_kernel_path_and_the_plain_formula_agree(shape: tuple[int, ...]) -> None:
    """The CPU float32 kernel (a decode step: at most KERNEL_MAX_ROWS rows, no float weight
    built), the per-call dequantization (more rows, float64, or an input that needs a
    gradient) and the meta device give the same numbers and shapes."""
    layer = Int8Linear.from_linear(random_linear(48, 20, True, 3))
    assert layer.weight is not None and layer.bias is not None
    x = torch.randn(*shape)
    with torch.no_grad():
        fast = int8_linear(x, layer.weight, layer.scale, layer.bias)
        plain = int8_linear(x.double(), layer.weight, layer.scale, layer.bias)
    torch.testing.assert_close(fast.double(), plain, atol=1e-5, rtol=1e-5)
    x.requires_grad_(True)
    out = layer(x)
    out.sum().backward()  # the fallback has a backward; the kernel has none
    assert x.grad is not None and torch.isfinite(x.grad).all()
    meta = layer.to_empty(device="meta")(torch.randn(3, 48, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (3, 20)


# ----------------------------------------------------------------------------- dynamic mode


@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_mode_equals_torch_ao_dynamic_linear_bit_for_bit(bias: bool) -> None:
    """``activations="dynamic"`` runs what torch.ao's dynamic quantized Linear runs on the same
    int8 weight and scales: the same numbers exactly, for 2-D and 3-D inputs."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    layer = Int8Linear.from_linear(random_linear(24, 10, bias, 5)).set_activations("dynamic")
    q, scale = layer.int8_weight(), layer.scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = DynamicLinear(24, 10, bias_=bias)
        qweight = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(10, dtype=torch.long), 0)
        peer.set_weight_bias(qweight, None if layer.bias is None else layer.bias.detach())
    for x in (torch.randn(4, 24), torch.randn(2, 3, 24)):
        with torch.no_grad():
            assert torch.equal(layer(x), peer(x))


def test_dynamic_mode_keeps_one_int8_copy_and_the_same_state_dict() -> None:
    """The packed copy replaces the plain int8 weight (one copy in memory); the state dict,
    and so the checkpoint, is the same in both modes; switching back gives the weight back."""
    model = quantize(small_model())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize(model, activations="dynamic")
    layer = model.transformer.h[0].attn.c_proj
    assert isinstance(layer, Int8Linear) and layer.weight is None
    assert "activations=dynamic" in repr(layer)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    fresh = quantize(GPT(SMALL), activations="dynamic")
    fresh.load_state_dict(after)  # into packed layers: repacked
    x = torch.randint(0, SMALL.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x)[0], model(x)[0])
    quantize(model, activations="float")
    assert layer.weight is not None and torch.equal(
        layer.weight, before["transformer.h.0.attn.c_proj.weight"])


def test_dynamic_mode_is_refused_off_the_cpu_and_a_bad_mode_is_named() -> None:
    layer = Int8Linear(8, 4, device="meta")
    with pytest.raises(ValueError, match=r"CPU only.*meta"):
        layer.set_activations("dynamic")
    with pytest.raises(ValueError, match="'int4'"):
        quantize(small_model(), activations="int4")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("seed", [0, 1])
def test_quantized_logits_stay_within_the_stated_bound(seed: int) -> None:
    """Stated bound, on a 2-layer, 64-wide model at GPT-2's init (logits within about ±8): per
    position, KL(float || int8) <= 1e-5 nats and |Δ logit| <= 2e-2 for weight-only (measured
    ~1e-6 and ~7e-3); KL <= 1e-4 for ``"dynamic"`` (measured ~8e-6). The greedy token is the
    same at every position."""
    model = small_model(seed)
    x = torch.randint(0, SMALL.vocab_size, (4, SMALL.block_size),
                      generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = model(x)[0]
        weight_only = quantize(copy.deepcopy(model))(x)[0]
        dynamic = quantize(copy.deepcopy(model), activations="dynamic")(x)[0]
    assert want.abs().max() > 4, "the test model's logits are too small to test against"
    p = want.log_softmax(-1)
    for name, got, kl_bound in (("weight-only", weight_only, 1e-5), ("dynamic", dynamic, 1e-4)):
        kl = (p.exp() * (p - got.log_softmax(-1))).sum(-1)
        assert kl.max() <= kl_bound, f"{name}: KL {kl.max():.2e} > {kl_bound}"
        assert torch.equal(got.argmax(-1), want.argmax(-1)), f"{name}: the greedy token moved"
    assert (weight_only - want).abs().max() <= 2e-2


def test_linear_weight_memory_of_gpt2_small_is_a_quarter() -> None:
    """GPT-2 small's blocks (on the meta device: no memory used): int8 weights plus a float32
    scale per row are 0.25 + 1/in_features of float32, 0.2513x, under the goal of 0.27x."""
    with torch.device("meta"):
        model = GPT(GPTConfig())
    fp32 = linear_weight_bytes(model)
    n_weights = 12 * (3 * 768 * 768 + 768 * 768 + 2 * 4 * 768 * 768)
    assert fp32 == 4 * n_weights
    int8 = linear_weight_bytes(quantize(model))
    rows = 12 * (3 * 768 + 768 + 4 * 768 + 768)
    assert int8 == n_weights + 4 * rows
    assert int8 / fp32 <= 0.27
