# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: Muon (issue 16): Newton–Schulz orthogonalisation and the Muon update of a matrix.

The oracle is ``torch.optim.Muon`` (torch >= 2.9, Keller Jordan's algorithm with his quintic
coefficients and ``adjust_lr_fn="original"``). Its Newton–Schulz runs in bfloat16; an
implementation doing the same operations in the same order (``addmm``) matches it exactly, and
the tolerance allows ``BF16_ULPS`` bfloat16 roundings of the orthogonalised update (entries of
order 1) for one that orders its products differently. Float32 runs of ``newton_schulz``
(``dtype=torch.float32``) are checked against hand-worked scalar iterations at 1e-5.

Contract:

| clause | tests | oracle |
|---|---|---|
| the Muon step (momentum as an average, nesterov or not, decoupled weight decay with the plain lr, the step scaled by sqrt(max(1, A/B))) over 3 steps, wide, square, tall, row and column matrices | `test_muon_step_matches_torch_optim_muon` | `torch.optim.Muon` |
| ns_steps and eps reach the orthogonalisation (eps floors the norm of a small update) | `test_muon_step_passes_ns_steps_and_eps_through` | `torch.optim.Muon` |
| newton_schulz in bfloat16 is the orthogonalisation torch.optim.Muon applies | `test_newton_schulz_matches_torch_optim_muon_update` | `torch.optim.Muon` with momentum 0, lr 1, no decay |
| the quintic's coefficients and the normalisation by the Frobenius norm: a diagonal matrix is the scalar polynomial on each entry | `test_newton_schulz_of_a_diagonal_matrix_is_the_scalar_iteration` | hand-worked (float64 scalar iterations) |
| an orthogonal matrix stays orthogonal (one scale for all its directions) | `test_orthogonal_matrix_stays_orthogonal` | hand-worked: p⁵(1/√n)·Q |
| singular values land near 1 for random matrices, bfloat16 and float32 | `test_singular_values_are_near_one_after_newton_schulz` | `torch.linalg.svdvals`, torch's documented range |
| invariants: transposing a non-square input transposes the output; scaling by a power of two changes nothing | `test_newton_schulz_is_transpose_equivariant_and_scale_invariant` | property (hypothesis) |
| a tall matrix is worked on as its transpose (the small Gram matrix) | `test_tall_matrix_costs_what_its_transpose_costs` | `torch.utils.flop_counter.FlopCounterMode` |
| the step of a tall column is lr·sqrt(A/B) times the unit direction | `test_muon_step_hand_worked_column` | hand-worked (4 × 1) |
| a zero gradient: output 0, finite; only the decay moves the weights | `test_zero_gradient_gives_zero_update` | the documented result |
| dtype out is `dtype`, shape and device kept (meta); a non-matrix raises naming its shape | `test_newton_schulz_dtype_shape_device`, `test_non_matrices_are_rejected` | the meta device; the documented errors |
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from specs import hints

COMPONENT = "muon"
pytestmark = pytest.mark.muon

COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's, stated by torch.optim.Muon
BF16_ULPS = 4 * 2.0**-8  # 4 bfloat16 roundings of an entry of order 1
SHAPES = [(8, 16), (16, 8), (24, 24), (64, 16), (1, 5), (5, 1)]


def scalar_iterates(s: float, steps: int = 5) -> float:
    """The quintic p(s) = a s + b s³ + c s⁵ iterated in float64."""
    a, b, c = COEFFS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def torch_muon(param: Tensor, grads: list[Tensor], **kwargs: Any) -> tuple[Tensor, Tensor]:
    """The parameter and momentum buffer after torch.optim.Muon steps on ``grads``."""
    p = param.clone().requires_grad_(True)
    opt = torch.optim.Muon([p], **kwargs)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt.state[p]["momentum_buffer"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_step_matches_torch_optim_muon(
    impl: Any, shape: tuple[int, int], nesterov: bool, weight_decay: float
) -> None:
    g = torch.Generator().manual_seed(sum(shape) + int(nesterov) + int(10 * weight_decay))
    param = torch.randn(shape, generator=g)
    grads = [torch.randn(shape, generator=g) for _ in range(3)]
    lr, momentum = 0.02, 0.9
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                              "nesterov": nesterov}
    expected, expected_buf = torch_muon(param, grads, **kwargs)
    p, buf = param.clone(), torch.zeros(shape)
    for grad in grads:
        impl.muon_step(p, grad, buf, lr=lr, weight_decay=weight_decay, momentum=momentum,
                       nesterov=nesterov)
    summed = torch.zeros(shape)
    for grad in grads:
        summed = momentum * summed + grad
    hints.assert_close(buf, expected_buf, what="the momentum buffer", wrong={
        "the momentum buffer is not updated in place: momentum_buffer.lerp_(grad, 1 - momentum), "
        "not lerp": torch.zeros(shape),
        "momentum summed (SGD's m·buf + grad): Muon's is an average, "
        "buf ← m·buf + (1 - m)·grad": summed,
    }, atol=1e-6, rtol=0)  # float32 lerps
    assert torch.isfinite(p).all(), (
        "the parameter is not finite: likely cause: Newton–Schulz diverged; divide the update by "
        "its Frobenius norm first (it bounds the largest singular value; the largest entry does "
        "not), and the quintic's coefficients are (3.4445, -4.7750, 2.0315), b negative")
    adjust = math.sqrt(max(1.0, shape[0] / shape[1]))
    step = lr * adjust

    def bug(**changes: Any) -> Any:
        """torch.optim.Muon with a classic bug's settings."""
        return lambda: torch_muon(param, grads, **{**kwargs, **changes})[0]

    hints.assert_close(p, expected, what="the parameter after 3 Muon steps", wrong={
        "nesterov is ignored: with nesterov=True the update is grad.lerp(buf, momentum)":
            bug(nesterov=False),
        "the step is not scaled by sqrt(max(1, A/B)): a tall matrix moves lr·sqrt(A/B)":
            bug(lr=lr / adjust, weight_decay=weight_decay * adjust),
        "the weight decay uses the adjusted lr: decay with the plain lr, "
        "param·(1 - lr·weight_decay)": bug(weight_decay=weight_decay * adjust),
        "the update is orthogonalised from the gradient, not from the momentum "
        "(nesterov: grad.lerp(buf, momentum), else buf)": bug(momentum=0.0),
        "cubic Newton–Schulz coefficients: Muon's quintic is (a, b, c) = "
        "(3.4445, -4.7750, 2.0315)": bug(ns_coefficients=(1.5, -0.5, 0.0)),
        "one Newton–Schulz step too few: run ns_steps (5) steps": bug(ns_steps=4),
    }, atol=3 * step * BF16_ULPS, rtol=0)  # bfloat16 NS: BF16_ULPS per update, times its step


@pytest.mark.parametrize("ns_steps, eps", [(3, 1e-7), (5, 1.0)])
def test_muon_step_passes_ns_steps_and_eps_through(impl: Any, ns_steps: int, eps: float) -> None:
    g = torch.Generator().manual_seed(ns_steps)
    param = torch.randn(6, 10, generator=g)
    grads = [0.01 * torch.randn(6, 10, generator=g) for _ in range(2)]  # norm < 1: eps binds
    kwargs: dict[str, Any] = {"lr": 0.05, "weight_decay": 0.1, "momentum": 0.9}
    expected, _ = torch_muon(param, grads, ns_steps=ns_steps, eps=eps, **kwargs)
    p, buf = param.clone(), torch.zeros(6, 10)
    for grad in grads:
        impl.muon_step(p, grad, buf, ns_steps=ns_steps, eps=eps, **kwargs)
    torch.testing.assert_close(p, expected, atol=2 * kwargs["lr"] * BF16_ULPS, rtol=0)  # bfloat16 NS, 2 updates


@pytest.mark.parametrize("shape", [(8, 16), (24, 24), (16, 4), (4, 1)], ids=str)
def test_newton_schulz_matches_torch_optim_muon_update(impl: Any, shape: tuple[int, int]) -> None:
    # momentum 0, no nesterov, lr 1, no decay, param 0: the new param is -sqrt(max(1, A/B))·NS(G)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    after, _ = torch_muon(torch.zeros(shape), [grad], lr=1.0, weight_decay=0.0, momentum=0.0,
                          nesterov=False)
    expected = -after / math.sqrt(max(1.0, shape[0] / shape[1]))  # exact: a power of two
    out = impl.newton_schulz(grad)
    assert out.dtype == torch.bfloat16 and out.shape == shape
    torch.testing.assert_close(out.float(), expected, atol=BF16_ULPS, rtol=0)  # a bfloat16 result: 4 ulps at 1


def test_newton_schulz_of_a_diagonal_matrix_is_the_scalar_iteration(impl: Any) -> None:
    # diag(3, 4): ‖·‖_F = 5, so the entries start at 0.6 and 0.8 (see the solution's docstring)
    out = impl.newton_schulz(torch.diag(torch.tensor([3.0, -4.0])), dtype=torch.float32)
    expected = torch.diag(torch.tensor([scalar_iterates(0.6), -scalar_iterates(0.8)]))
    assert [round(scalar_iterates(s), 4) for s in (0.6, 0.8)] == [0.7229, 1.1192]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # a (3, 2) diagonal (tall): the same iteration, on the entries 1, 2 scaled by 1/√5
    tall = torch.zeros(3, 2)
    tall[0, 0], tall[1, 1] = 1.0, 2.0
    out = impl.newton_schulz(tall, dtype=torch.float32)
    expected = torch.zeros(3, 2)
    expected[0, 0], expected[1, 1] = (scalar_iterates(s / math.sqrt(5)) for s in (1.0, 2.0))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [2, 8])
def test_orthogonal_matrix_stays_orthogonal(impl: Any, n: int) -> None:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(n),
                                       dtype=torch.float64))
    q = q.float()
    out = impl.newton_schulz(q, dtype=torch.float32)
    # every singular value is 1/√n after the normalisation: out = p⁵(1/√n)·Q
    torch.testing.assert_close(out, scalar_iterates(1 / math.sqrt(n)) * q, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(32, 64), (48, 48), (96, 24)], ids=str)
def test_singular_values_are_near_one_after_newton_schulz(
    impl: Any, dtype: torch.dtype, shape: tuple[int, int]
) -> None:
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(impl.newton_schulz(grad, dtype=dtype).float())
    # torch.optim.Muon documents roughly (0.5, 1.5); Gaussian matrices land in [0.68, 1.14]
    assert float(s.min()) > 0.6 and float(s.max()) < 1.2, s


@given(rows=st.integers(1, 12), cols=st.integers(1, 12), power=st.integers(-6, 6),
       seed=st.integers(0, 2**16), bf16=st.booleans())
def test_newton_schulz_is_transpose_equivariant_and_scale_invariant(
    impl: Any, rows: int, cols: int, power: int, seed: int, bf16: bool
) -> None:
    dtype = torch.bfloat16 if bf16 else torch.float32
    grad = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    out = impl.newton_schulz(grad, dtype=dtype)
    assert out.shape == (rows, cols) and out.dtype == dtype
    if rows != cols:  # one of the two is worked on transposed: the same products, same bits
        # (a square one is not, and five steps amplify its different roundings)
        torch.testing.assert_close(
            impl.newton_schulz(grad.T, dtype=dtype), out.T, atol=0, rtol=0,
            msg=lambda m: "newton_schulz(gᵀ) is not newton_schulz(g)ᵀ: likely cause: a tall "
            "matrix is not worked on as its transpose (x = x.T when A > B, transposed back at "
            f"the end)\n{m}")
    scaled = impl.newton_schulz(grad * 2.0**power, dtype=dtype)  # exact scaling: same bits
    torch.testing.assert_close(scaled, out, atol=0, rtol=0)


def test_tall_matrix_costs_what_its_transpose_costs(impl: Any) -> None:
    def flops(shape: tuple[int, int]) -> int:
        with FlopCounterMode(display=False) as counter:
            impl.newton_schulz(torch.randn(shape))
        return int(counter.get_total_flops())

    wide, tall = flops((8, 64)), flops((64, 8))
    assert wide > 0 and tall == wide, f"(64, 8) took {tall} flops, its transpose {wide}"


def test_muon_step_hand_worked_column(impl: Any) -> None:
    # (4, 1): A/B = 4, so the step is lr·2; NS of a column is the unit column times p⁵(1)
    grad = torch.tensor([[1.0], [2.0], [2.0], [4.0]])  # ‖grad‖ = 5
    param, buf = torch.zeros(4, 1), torch.zeros(4, 1)
    impl.muon_step(param, grad, buf, lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False)
    expected = -0.1 * 2 * scalar_iterates(1.0) * grad / 5  # p⁵(1) = 0.6964
    torch.testing.assert_close(buf, grad, atol=0, rtol=0)  # momentum 0: the buffer is the grad
    torch.testing.assert_close(param, expected, atol=0.2 * BF16_ULPS, rtol=0)  # bfloat16 NS times the step 0.2


def test_zero_gradient_gives_zero_update(impl: Any) -> None:
    out = impl.newton_schulz(torch.zeros(3, 5))
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.zeros(3, 5, dtype=out.dtype))
    param = torch.full((3, 5), 2.0)
    impl.muon_step(param, torch.zeros(3, 5), torch.zeros(3, 5), lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(param, torch.full((3, 5), 2.0 * (1 - 0.1 * 0.5)), atol=1e-6,
                               rtol=0)  # only the decay: 2·(1 - lr·wd) = 1.9


def test_newton_schulz_dtype_shape_device(impl: Any) -> None:
    out = impl.newton_schulz(torch.empty(6, 3, device="meta"), dtype=torch.float32)
    assert (out.shape, out.dtype, out.device.type) == ((6, 3), torch.float32, "meta")
    out = impl.newton_schulz(torch.randn(3, 6, dtype=torch.float64), dtype=torch.float64)
    assert (out.shape, out.dtype) == ((3, 6), torch.float64)


def test_non_matrices_are_rejected(impl: Any) -> None:
    assert impl.newton_schulz(torch.ones(2, 2)).shape == (2, 2)  # a matrix is fine
    with pytest.raises(ValueError, match=r"2-D matrix .*\(2, 3, 4\)"):
        impl.newton_schulz(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"2-D matrix .*\(5,\)"):
        impl.muon_step(torch.ones(5), torch.ones(5), torch.zeros(5), lr=0.1)
