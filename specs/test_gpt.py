"""Spec for the GPT component: a GPT-2-class model, its parts, and sampling.

Oracles: Hugging Face ``transformers``' GPT2LMHeadModel (random weights from a GPT2Config,
built offline, eager attention, eval mode, float32) for the model, its block, its MLP, its
gradients, its loss and its greedy decoding; ``transformers``' top-k / top-p logits warpers;
``torch.nn.functional`` (layer_norm, gelu(approximate="tanh"), cross_entropy); closed forms and
hand-worked examples. Weights are passed as dicts with GPT-2's names in ``nn.Linear`` layout.

Tolerances: float32 forward passes through a whole model agree with Hugging Face to 1e-5 (the
issue's bar; measured ~2e-7); float64 elementwise ops to 1e-10; empirical sampling frequencies
from 20,000 draws to 0.015 (more than 4 standard deviations).
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor

COMPONENT = "gpt"
pytestmark = pytest.mark.gpt

FORWARD_ATOL = 1e-5  # float32, whole model vs Hugging Face
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# (n_layer, n_head, n_embd, vocab_size, block_size): tiny, so the spec stays fast.
SMALL = (2, 4, 32, 100, 16)
OTHER = (3, 2, 48, 257, 32)


# ---------------------------------------------------------------- the Hugging Face oracle


@cache
def hf_model(shape: tuple[int, int, int, int, int] = SMALL, seed: int = 0) -> Any:
    """A GPT2LMHeadModel with random weights, biases and LayerNorm affines (none trivial)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd, vocab_size, block_size = shape
    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size,
        n_positions=block_size, bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2 init has zero biases and LayerNorms at identity: perturb them
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def ours(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF GPT-2 names, Conv1D (in, out) layout -> ours: nn.Linear (out, in), no lm_head."""
    return {
        k: (v.t().contiguous() if k.endswith(CONV1D) else v).detach().clone()
        for k, v in state_dict.items()
        if k != "lm_head.weight"
    }


def config_for(impl: Any, shape: tuple[int, int, int, int, int] = SMALL) -> Any:
    n_layer, n_head, n_embd, vocab_size, block_size = shape
    return impl.GPTConfig(
        block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
        n_embd=n_embd, dropout=0.0, bias=True,
    )  # fmt: skip


def tokens(batch: int, length: int, vocab_size: int, seed: int = 0) -> Tensor:
    return torch.randint(
        0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def assert_close(actual: Tensor, expected: Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    diff = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol:g}"


# ---------------------------------------------------------------- LayerNorm and GELU

small_floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def float_tensors(draw: st.DrawFn, min_last: int = 1, max_dims: int = 3) -> Tensor:
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=max_dims - 1))
    shape.append(draw(st.integers(min_last, 8)))
    n = math.prod(shape)
    values = draw(st.lists(small_floats, min_size=n, max_size=n))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))  # tiny variance makes eps matter
    return torch.tensor(values, dtype=torch.float64).view(shape) * scale


@given(x=float_tensors(min_last=2), eps=st.sampled_from([1e-5, 1e-3, 0.5]), affine=st.booleans())
def test_layer_norm_matches_torch_layer_norm(
    impl: Any, x: Tensor, eps: float, affine: bool
) -> None:
    C = x.size(-1)
    g = torch.Generator().manual_seed(C)
    weight = 1 + torch.randn(C, generator=g, dtype=torch.float64) if affine else None
    bias = torch.randn(C, generator=g, dtype=torch.float64) if affine else None
    out = impl.layer_norm(x, weight, bias, eps=eps)
    assert_close(out, F.layer_norm(x, (C,), weight, bias, eps), 1e-10, "layer_norm vs F.layer_norm")


def test_layer_norm_hand_worked_example(impl: Any) -> None:
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float64)  # mean 2, biased variance 1
    assert_close(
        impl.layer_norm(x, None, None, eps=0.0), torch.tensor([[-1.0, 1.0]]), 1e-12, "eps 0"
    )
    # eps inside the square root: (x - 2) / sqrt(1 + 3)
    assert_close(
        impl.layer_norm(x, None, None, eps=3.0), torch.tensor([[-0.5, 0.5]]), 1e-12, "eps 3"
    )
    w, b = (
        torch.tensor([2.0, 1.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    assert_close(impl.layer_norm(x, w, b, eps=0.0), torch.tensor([[-2.0, 2.0]]), 1e-12, "affine")


@given(x=float_tensors())
def test_gelu_matches_torch_tanh_approximation(impl: Any, x: Tensor) -> None:
    assert_close(impl.gelu(x), F.gelu(x, approximate="tanh"), 1e-10, "gelu vs F.gelu(tanh)")


def test_gelu_hand_worked_example(impl: Any) -> None:
    x = torch.tensor([0.0, 1.0, -1.0, 20.0, -20.0], dtype=torch.float64)
    # 0.5·(1 + tanh(sqrt(2/π)·1.044715)) = 0.841192; the exact erf GELU would give 0.841345
    expected = torch.tensor([0.0, 0.841192, -0.158808, 20.0, 0.0], dtype=torch.float64)
    assert_close(impl.gelu(x), expected, 1e-6, "gelu at 0, ±1, ±20")


# ---------------------------------------------------------------- sinusoidal positions


@given(n_positions=st.integers(0, 64), half=st.integers(1, 32))
def test_sinusoidal_matches_closed_form(impl: Any, n_positions: int, half: int) -> None:
    d = 2 * half
    pe = impl.sinusoidal_positional_encoding(n_positions, d)

    def closed_form(pos: int, j: int) -> float:
        angle = pos * 10000 ** (-(j - j % 2) / d)  # pair i = j // 2 turns at 10000^(-2i/d)
        return math.sin(angle) if j % 2 == 0 else math.cos(angle)

    rows = [[closed_form(pos, j) for j in range(d)] for pos in range(n_positions)]
    expected = torch.tensor(rows, dtype=torch.float64).view(n_positions, d)
    assert pe.dtype == torch.float32, f"expected float32, got {pe.dtype}"
    assert_close(pe, expected, 1e-6, "PE vs sin/cos closed form")


def test_sinusoidal_hand_worked_example(impl: Any) -> None:
    pe = impl.sinusoidal_positional_encoding(2, 4)  # ω = [1, 0.01]
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.841471, 0.540302, 0.0099998, 0.99995]])
    assert_close(pe, expected, 1e-6, "PE(2, 4)")


@given(p=st.integers(0, 40), k=st.integers(0, 40), half=st.integers(1, 16))
def test_sinusoidal_shift_is_a_rotation_fixed_by_the_offset(
    impl: Any, p: int, k: int, half: int
) -> None:
    """PE[p + k] is PE[p] with each (sin, cos) pair rotated by the angle PE[k] encodes."""
    pe = impl.sinusoidal_positional_encoding(81, 2 * half).double()
    sin_p, cos_p = pe[p, 0::2], pe[p, 1::2]
    sin_k, cos_k = pe[k, 0::2], pe[k, 1::2]
    rotated = torch.stack([sin_p * cos_k + cos_p * sin_k, cos_p * cos_k - sin_p * sin_k], dim=-1)
    assert_close(
        pe[p + k], rotated.flatten(), 1e-5, f"PE[{p}+{k}] vs rotation of PE[{p}] by PE[{k}]"
    )
    # so the similarity of two positions depends on their distance only
    assert_close(pe[p] @ pe[p + k], pe[0] @ pe[k], 1e-4, "PE[p]·PE[p+k] vs PE[0]·PE[k]")


@pytest.mark.parametrize("d_model", [3, 0])
def test_sinusoidal_rejects_odd_or_empty_width(impl: Any, d_model: int) -> None:
    with pytest.raises(ValueError, match=str(d_model)):
        impl.sinusoidal_positional_encoding(4, d_model)


# ---------------------------------------------------------------- the block


def block_params(model: Any, layer: int) -> dict[str, Tensor]:
    prefix = f"transformer.h.{layer}."
    return {
        k.removeprefix(prefix): v
        for k, v in ours(model.state_dict()).items()
        if k.startswith(prefix)
    }


def test_mlp_matches_hf_gpt2_mlp(impl: Any) -> None:
    model = hf_model()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.transformer.h[1].mlp(x)
    assert_close(
        impl.mlp_forward(x, block_params(model, 1)), expected, FORWARD_ATOL, "MLP vs HF GPT2MLP"
    )


@pytest.mark.parametrize("shape", [SMALL, OTHER], ids=["small", "other"])
def test_block_matches_hf_gpt2_block(impl: Any, shape: tuple[int, int, int, int, int]) -> None:
    """Block 0 maps HF's hidden state 0 (the embeddings) to its hidden state 1."""
    model = hf_model(shape)
    idx = tokens(2, shape[4], shape[3])
    with torch.no_grad():
        hidden = model(idx, output_hidden_states=True).hidden_states
    out = impl.block_forward(hidden[0], block_params(model, 0), shape[1])
    assert_close(out, hidden[1], FORWARD_ATOL, "block 0 vs HF GPT2Block")


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("shape", [SMALL, OTHER], ids=["small", "other"])
@pytest.mark.parametrize(
    ("batch", "length"), [(1, 1), (2, 7), (3, None)], ids=["1x1", "2x7", "3xblock"]
)
def test_gpt_forward_matches_hf_gpt2(
    impl: Any, shape: tuple[int, int, int, int, int], batch: int, length: int | None
) -> None:
    model = hf_model(shape)
    idx = tokens(batch, length or shape[4], shape[3])
    logits, loss = impl.gpt_forward(idx, ours(model.state_dict()), config_for(impl, shape))
    assert loss is None, "no targets: the loss must be None"
    with torch.no_grad():
        expected = model(idx).logits
    assert_close(logits, expected, FORWARD_ATOL, f"logits vs HF GPT2LMHeadModel {shape}")


@given(data=st.data())
def test_gpt_forward_is_causal(impl: Any, data: st.DataObject) -> None:
    """Changing the tokens from position t on leaves the logits before t exactly as they were."""
    params, config = ours(hf_model().state_dict()), config_for(impl)
    T = data.draw(st.integers(2, 16), label="T")
    t = data.draw(st.integers(1, T - 1), label="t")
    idx = torch.tensor(
        data.draw(
            st.lists(st.lists(st.integers(0, 99), min_size=T, max_size=T), min_size=1, max_size=2)
        )
    )
    changed = idx.clone()
    changed[:, t:] = (idx[:, t:] + data.draw(st.integers(1, 99), label="shift")) % 100
    before, _ = impl.gpt_forward(idx, params, config)
    after, _ = impl.gpt_forward(changed, params, config)
    assert_close(
        after[:, :t],
        before[:, :t],
        1e-6,
        f"logits before position {t} after changing tokens from {t} on",
    )
    assert (after[:, t] - before[:, t]).abs().max() > 1e-4, (
        "the changed token does not affect its own logits"
    )


def test_gpt_forward_loss_matches_torch_cross_entropy(impl: Any) -> None:
    idx, targets = tokens(3, 16, 100, seed=1), tokens(3, 16, 100, seed=2)
    targets[0, :5] = -1  # ignored positions
    logits, loss = impl.gpt_forward(idx, ours(hf_model().state_dict()), config_for(impl), targets)
    assert loss is not None and loss.ndim == 0, "with targets the loss is a scalar"
    expected = F.cross_entropy(logits.reshape(-1, 100), targets.reshape(-1), ignore_index=-1)
    assert_close(loss, expected, 1e-6, "loss vs F.cross_entropy(ignore_index=-1)")


def test_gpt_forward_loss_matches_hf_language_modeling_loss(impl: Any) -> None:
    """HF shifts labels itself; ours takes them shifted: idx[:, 1:] predicted from idx[:, :-1]."""
    model, idx = hf_model(), tokens(2, 16, 100, seed=3)
    with torch.no_grad():
        expected = model(idx, labels=idx).loss
    _, loss = impl.gpt_forward(idx[:, :-1], ours(model.state_dict()), config_for(impl), idx[:, 1:])
    assert loss is not None
    assert_close(loss, expected, 1e-5, "loss vs HF GPT2LMHeadModel(labels=idx).loss")


@given(n=st.integers(1, 12), v=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_cross_entropy_matches_torch(impl: Any, n: int, v: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = 5 * torch.randn(n, v, generator=g, dtype=torch.float64)
    targets = torch.randint(-1, v, (n,), generator=g)
    assume(bool((targets != -1).any()))
    expected = F.cross_entropy(logits, targets, ignore_index=-1)
    assert_close(
        impl.cross_entropy(logits, targets), expected, 1e-10, "cross_entropy vs F.cross_entropy"
    )


def test_cross_entropy_hand_worked_example(impl: Any) -> None:
    loss = impl.cross_entropy(torch.zeros(2, 2), torch.tensor([1, -1]))  # one position ignored
    assert_close(loss, torch.tensor(math.log(2)), 1e-7, "two equally likely tokens: ln 2")


def test_gpt_gradients_match_hf_gpt2(impl: Any) -> None:
    """Every gradient, including the tied embedding's (it is also the LM head), equals HF's."""
    model, idx = hf_model(), tokens(2, 16, 100, seed=4)
    model.zero_grad()
    model(idx, labels=idx).loss.backward()
    expected = ours({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    params = {k: v.requires_grad_() for k, v in ours(model.state_dict()).items()}
    _, loss = impl.gpt_forward(idx[:, :-1], params, config_for(impl), idx[:, 1:])
    assert loss is not None
    loss.backward()
    for name, p in params.items():
        assert p.grad is not None, f"{name} received no gradient"
        assert_close(p.grad, expected[name], 1e-6, f"gradient of {name} vs HF")


def test_every_parameter_receives_a_gradient(impl: Any) -> None:
    config = config_for(impl, OTHER)
    params = {k: v.requires_grad_() for k, v in ours(hf_model(OTHER).state_dict()).items()}
    _, loss = impl.gpt_forward(tokens(2, 32, 257), params, config, tokens(2, 32, 257, seed=1))
    assert loss is not None
    loss.backward()
    dead = [k for k, p in params.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not dead, f"parameters with no (or an all-zero) gradient: {dead}"


@pytest.mark.parametrize(
    ("case", "error", "words"),
    [
        ("too long", ValueError, ["17", "16"]),  # sequence length, block_size
        ("id too large", ValueError, ["100", "100"]),  # the id, vocab_size
        ("negative id", ValueError, ["-1", "100"]),
        ("float ids", TypeError, ["float32"]),
        ("no tokens", ValueError, ["empty"]),
        ("no rows", ValueError, ["empty"]),
    ],
)
def test_gpt_forward_rejects_bad_input_naming_value_and_limit(
    impl: Any, case: str, error: type, words: list[str]
) -> None:
    idx = {
        "too long": tokens(1, 17, 100),
        "id too large": torch.tensor([[1, 100, 2]]),
        "negative id": torch.tensor([[1, -1, 2]]),
        "float ids": torch.tensor([[1.0, 2.0]]),
        "no tokens": torch.zeros(1, 0, dtype=torch.long),
        "no rows": torch.zeros(0, 4, dtype=torch.long),
    }[case]
    with pytest.raises(error) as info:
        impl.gpt_forward(idx, ours(hf_model().state_dict()), config_for(impl))
    missing = [w for w in words if w not in str(info.value)]
    assert not missing, f"{case}: the message {str(info.value)!r} should name {missing}"


# ---------------------------------------------------------------- initialisation and size


def test_init_params_has_hf_gpt2_names_and_shapes(impl: Any) -> None:
    expected = {k: tuple(v.shape) for k, v in ours(hf_model(OTHER).state_dict()).items()}
    params = impl.init_params(config_for(impl, OTHER), seed=0)
    assert {k: tuple(v.shape) for k, v in params.items()} == expected
    assert all(v.dtype == torch.float32 for v in params.values())


def test_init_params_follows_gpt2_initialisation(impl: Any) -> None:
    """N(0, 0.02) weights, residual projections N(0, 0.02/sqrt(2·n_layer)), zero biases, unit LN."""
    n_layer = 8
    config = impl.GPTConfig(block_size=64, vocab_size=512, n_layer=n_layer, n_head=4, n_embd=64)
    params = impl.init_params(config, seed=0)

    def pooled(select: Any) -> Tensor:
        return torch.cat([v.flatten() for k, v in params.items() if select(k)])

    residual = pooled(lambda k: k.endswith("c_proj.weight"))
    other = pooled(
        lambda k: k.endswith("weight") and ".ln_" not in k and not k.endswith("c_proj.weight")
    )
    for got, std, what in [
        (residual, 0.02 / math.sqrt(2 * n_layer), "c_proj weights"),
        (other, 0.02, "other weights"),
    ]:
        assert abs(got.std().item() / std - 1) < 0.05, (
            f"{what}: std {got.std().item():.4g}, expected {std:.4g}"
        )
        assert abs(got.mean().item()) < 4 * std / math.sqrt(got.numel()), (
            f"{what}: mean {got.mean().item():.3g}"
        )
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        assert abs(params[name].std().item() / 0.02 - 1) < 0.05, (
            f"{name}: std {params[name].std().item():.4g}"
        )
    biases = pooled(lambda k: k.endswith("bias"))
    ln_weights = pooled(lambda k: ".ln_" in k and k.endswith("weight"))
    assert bool((biases == 0).all()), "biases (and LayerNorm shifts) start at 0"
    assert bool((ln_weights == 1).all()), "LayerNorm scales start at 1"


def test_init_params_is_reproducible_from_seed(impl: Any) -> None:
    config = config_for(impl)
    state = torch.get_rng_state()
    a, b, c = (impl.init_params(config, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state), "init_params changed the global RNG state"
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed gave different weights"
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"]), (
        "seeds 7 and 8 agree"
    )


def test_gpt2_small_has_124439808_parameters(impl: Any) -> None:
    """GPT-2 small with the head tied to the token embedding (HF's count on the meta device)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = impl.GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    count = impl.count_parameters(config)
    assert impl.count_parameters(impl.GPTConfig()) == count, "the defaults are GPT-2 small"
    with torch.device("meta"):  # shapes only, nothing allocated
        hf_count = GPT2LMHeadModel(GPT2Config()).num_parameters()
    assert count == hf_count == 124_439_808, f"counted {count:,}; HF {hf_count:,}"


@pytest.mark.parametrize("shape", [SMALL, OTHER], ids=["small", "other"])
def test_count_parameters_matches_hf_gpt2(impl: Any, shape: tuple[int, int, int, int, int]) -> None:
    assert impl.count_parameters(config_for(impl, shape)) == hf_model(shape).num_parameters()


def test_count_parameters_without_bias_matches_init_params(impl: Any) -> None:
    config = impl.GPTConfig(
        block_size=16, vocab_size=100, n_layer=2, n_head=4, n_embd=32, bias=False
    )
    params = impl.init_params(config, seed=0)
    assert not any(k.endswith("bias") for k in params), "bias=False: no *.bias parameters"
    assert impl.count_parameters(config) == sum(v.numel() for v in params.values())


# ---------------------------------------------------------------- sampling


@st.composite
def distinct_logits(draw: st.DrawFn, max_v: int = 12) -> Tensor:
    """(2, V) logits without ties, so "the k largest" and "the nucleus" are unambiguous."""
    v = draw(st.integers(2, max_v))
    rows = [
        draw(st.lists(st.integers(-400, 400), min_size=v, max_size=v, unique=True))
        for _ in range(2)
    ]
    return torch.tensor(rows, dtype=torch.float64) / 40


def warp(name: str, param: float, logits: Tensor) -> Tensor:
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    warper = TopKLogitsWarper(int(param)) if name == "top_k" else TopPLogitsWarper(param)
    out: Tensor = warper(None, logits.clone())
    return out


@given(logits=distinct_logits(), k=st.integers(1, 14))
def test_top_k_keeps_the_k_largest_as_hf_warper(impl: Any, logits: Tensor, k: int) -> None:
    out = impl.top_k_filter(logits, k)
    kept = torch.isfinite(out)
    assert torch.equal(kept, torch.isfinite(warp("top_k", k, logits))), (
        f"top-{k} kept {kept.tolist()}"
    )
    assert bool((kept.sum(-1) == min(k, logits.size(-1))).all()), (
        f"top-{k} kept {kept.sum(-1).tolist()}"
    )
    assert torch.equal(out[kept], logits[kept]), "kept logits must be unchanged"


def test_top_k_hand_worked_example(impl: Any) -> None:
    out = impl.top_k_filter(torch.tensor([1.0, 3.0, 2.0, 0.0]), 2)
    assert torch.equal(out, torch.tensor([-math.inf, 3.0, 2.0, -math.inf])), out


@given(logits=distinct_logits(), p=st.floats(0.01, 0.99))
def test_top_p_keeps_exactly_the_nucleus(impl: Any, logits: Tensor, p: float) -> None:
    """Kept: the most likely tokens, fewest of them, with total probability >= p."""
    probs = logits.softmax(-1)
    cumulative = probs.sort(-1, descending=True).values.cumsum(-1)
    assume(bool(((cumulative - p).abs() > 1e-6).all()))  # no token right at the threshold
    kept = torch.isfinite(impl.top_p_filter(logits, p))
    for row in range(logits.size(0)):
        mass = probs[row][kept[row]].sum().item()
        assert mass >= p, f"row {row}: kept mass {mass:.4f} < p={p:.4f}"
        least = probs[row][kept[row]].min().item()
        assert mass - least < p, (
            f"row {row}: dropping the least likely kept token still leaves >= p"
        )
        if (~kept[row]).any():
            assert probs[row][~kept[row]].max() < least, (
                f"row {row}: a dropped token beats a kept one"
            )
    assert torch.equal(kept, torch.isfinite(warp("top_p", p, logits))), (
        "differs from HF's TopPLogitsWarper"
    )


def test_top_p_hand_worked_example(impl: Any) -> None:
    logits = torch.tensor([0.1, 0.5, 0.15, 0.25]).log()  # already probabilities
    for p, expected in [(0.4, [1]), (0.7, [1, 3]), (0.8, [1, 2, 3]), (1.0, [0, 1, 2, 3])]:
        kept = torch.isfinite(impl.top_p_filter(logits, p)).nonzero().flatten().tolist()
        assert kept == expected, f"p={p}: kept {kept}, expected {expected}"


@pytest.mark.parametrize(
    ("fn", "bad"), [("top_k_filter", 0), ("top_p_filter", 0.0), ("top_p_filter", 1.5)]
)
def test_filters_reject_out_of_range_parameters(impl: Any, fn: str, bad: float) -> None:
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        getattr(impl, fn)(torch.zeros(1, 4), bad)


def test_greedy_sampling_is_argmax(impl: Any) -> None:
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    options: list[dict[str, Any]] = [{}, {"top_k": 5}, {"top_p": 0.5}]
    for kwargs in options:
        ids = impl.sample_next_token(logits, temperature=0.0, **kwargs)
        assert torch.equal(ids, logits.argmax(-1)), f"temperature 0 with {kwargs} is not argmax"
    ids = impl.sample_next_token(
        logits, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(ids, logits.argmax(-1)), "top_k=1 is not argmax"


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampling_frequencies_match_softmax_over_temperature(impl: Any, temperature: float) -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    n = 20_000
    ids = impl.sample_next_token(
        logits.expand(n, -1), temperature, generator=torch.Generator().manual_seed(0)
    )
    assert ids.shape == (n,) and ids.dtype == torch.int64, f"got {tuple(ids.shape)} {ids.dtype}"
    frequencies = torch.bincount(ids, minlength=5).double() / n
    assert_close(
        frequencies,
        (logits.double() / temperature).softmax(-1),
        0.015,
        f"frequencies at T={temperature}",
    )


@given(
    logits=distinct_logits(max_v=8),
    k=st.integers(1, 4),
    p=st.floats(0.05, 0.95),
    seed=st.integers(0, 99),
)
def test_samples_never_leave_top_k_or_nucleus(
    impl: Any, logits: Tensor, k: int, p: float, seed: int
) -> None:
    rows = logits.float().repeat(100, 1)  # 200 draws
    allowed_k = torch.isfinite(warp("top_k", k, rows))
    allowed_p = torch.isfinite(warp("top_p", p, rows.double()))
    g = torch.Generator().manual_seed(seed)
    ids = impl.sample_next_token(rows, 1.0, top_k=k, generator=g)
    assert bool(allowed_k.gather(1, ids[:, None]).all()), f"a sample outside the top {k}"
    ids = impl.sample_next_token(rows, 1.0, top_p=p, generator=g)
    assert bool(allowed_p.gather(1, ids[:, None]).all()), (
        f"a sample outside the top-{p:.3f} nucleus"
    )


def test_fixed_seed_reproduces_the_sample(impl: Any) -> None:
    logits = torch.zeros(64, 100)  # uniform: two different seeds almost surely differ somewhere
    draw = [
        impl.sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(s))
        for s in (1, 1, 2)
    ]
    assert torch.equal(draw[0], draw[1]), "the same seed gave different tokens"
    assert not torch.equal(draw[0], draw[2]), "seeds 1 and 2 gave the same 64 tokens"


def test_negative_temperature_is_rejected(impl: Any) -> None:
    with pytest.raises(ValueError, match=r"-0\.5"):
        impl.sample_next_token(torch.zeros(1, 4), temperature=-0.5)


# ---------------------------------------------------------------- generation


def test_greedy_generate_matches_hf_greedy_generate(impl: Any) -> None:
    model, idx = hf_model(), tokens(2, 5, 100, seed=5)
    with torch.no_grad():
        expected = model.generate(
            idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=8,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
    out = impl.generate(idx, ours(model.state_dict()), config_for(impl), 8, temperature=0.0)
    assert torch.equal(out, expected), f"greedy tokens {out.tolist()}, HF {expected.tolist()}"


def test_generate_crops_the_context_to_block_size(impl: Any) -> None:
    params, config = ours(hf_model().state_dict()), config_for(impl)
    long_prompt = tokens(2, 16 + 5, 100, seed=6)  # longer than block_size 16
    out = impl.generate(long_prompt, params, config, 6, temperature=0.0)
    cropped = impl.generate(long_prompt[:, -16:], params, config, 6, temperature=0.0)
    assert torch.equal(out[:, :21], long_prompt), "the prompt must be kept in the output"
    assert torch.equal(out[:, 21:], cropped[:, 16:]), "only the last block_size tokens may matter"


def test_generate_stops_at_end_of_text(impl: Any) -> None:
    """A row that emitted eos_id gets only eos_id after it; all rows done: generation stops."""
    params, config = ours(hf_model().state_dict()), config_for(impl)
    prompt, n = tokens(2, 3, 100, seed=20), 8  # a prompt whose greedy rows differ
    free = impl.generate(prompt, params, config, n, temperature=0.0)[:, 3:].tolist()
    # an eos that row 0 emits early and then would not repeat, and that row 1 never emits
    candidates = [
        t for j, t in enumerate(free[0][:-1]) if t not in free[1] and set(free[0][j + 1 :]) - {t}
    ]
    assert candidates, f"test setup: no usable eos in the greedy continuations {free}"
    eos = candidates[0]
    j = free[0].index(eos)
    out = impl.generate(prompt, params, config, n, temperature=0.0, eos_id=eos)
    expected = [
        prompt[0].tolist() + free[0][: j + 1] + [eos] * (n - j - 1),  # done: only eos after
        prompt[1].tolist() + free[1],  # never emits eos: runs the full n tokens
    ]
    assert out.tolist() == expected, f"with eos_id={eos}: {out.tolist()}, expected {expected}"
    alone = impl.generate(prompt[:1], params, config, n, temperature=0.0, eos_id=eos)
    expected_alone = [prompt[0].tolist() + free[0][: j + 1]]
    assert alone.tolist() == expected_alone, f"one row: should stop right after its eos {eos}"


def test_generate_with_a_seed_is_reproducible(impl: Any) -> None:
    params, config, prompt = ours(hf_model().state_dict()), config_for(impl), tokens(2, 3, 100)
    runs = [
        impl.generate(prompt, params, config, 10, temperature=1.5, top_k=50, top_p=0.95,
                      generator=torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    ]  # fmt: skip
    assert runs[0].shape == (2, 13), f"shape {tuple(runs[0].shape)}"
    assert torch.equal(runs[0], runs[1]), "the same seed gave different tokens"
    assert not torch.equal(runs[0], runs[2]), "seeds 3 and 4 gave the same 20 tokens"
