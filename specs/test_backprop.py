# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: neural-network fundamentals in NumPy, with hand-written backward passes.

Covers ``linear``, ``relu``, ``gelu`` (tanh approximation), ``tanh``, ``softmax_cross_entropy``,
the MLP (``mlp_forward`` / ``mlp_backward`` on a dict of named params), ``sgd_momentum_step``, the
scalar autograd engine ``Value``, and ``TorchMLP`` (the same MLP in PyTorch).

Contract:

| clause | tests | oracle |
|---|---|---|
| linear: y = x W^T + b, dx, dW (out, in), db summed over the batch | `test_linear_hand_worked_example`, `test_linear_gradients_match_finite_differences`, `test_linear_matches_torch_linear_and_autograd` | hand-worked; central differences; `F.linear` + `torch.autograd` |
| relu (slope 0 at 0), tanh-GELU, tanh, forward and backward, inputs up to ±1e4 | `test_activation_hand_worked_example`, `test_activation_gradient_matches_finite_differences`, `test_activation_matches_torch_functional_and_autograd` | hand-worked; central differences; `F.relu`, `F.gelu(approximate="tanh")`, `torch.tanh` |
| each backward reads the cache its docstring names (x; tanh: y; linear: (x, W)) | `test_backward_passes_read_the_documented_caches` | `torch.autograd` |
| cross-entropy: mean loss (a float), dlogits = (softmax - onehot) / N | `test_softmax_cross_entropy_hand_worked_example`, `test_softmax_cross_entropy_matches_torch_cross_entropy`, `test_softmax_cross_entropy_gradient_matches_finite_differences` | hand-worked; `F.cross_entropy`; central differences |
| cross-entropy finite and exact at logits of ±1e4, float32 or float64, any integer targets | `test_softmax_cross_entropy_is_finite_at_logits_of_1e4`, `test_softmax_cross_entropy_matches_torch_cross_entropy` | hand-worked (logsumexp = 1e4 + ln 2); `F.cross_entropy` |
| MLP forward/backward: no activation on the logits, each layer its own cache, grads named as params | `test_mlp_hand_worked_example`, `test_mlp_gradients_match_finite_differences`, `test_mlp_with_cross_entropy_matches_torch_autograd` | hand-worked; central differences; the MLP in `torch.nn.functional` |
| TorchMLP: names fc1.weight..., shapes, activations, the NumPy MLP's logits and gradients | `test_torch_mlp_hand_worked_example`, `test_torch_mlp_hand_worked_activation`, `test_torch_mlp_names_and_shapes`, `test_numpy_and_torch_mlps_agree_on_logits_loss_and_gradients` | hand-worked; the NumPy MLP, itself checked against torch |
| TorchMLP on its inputs' device and dtype | `test_torch_mlp_runs_on_its_inputs_device_and_dtype` | the meta device |
| SGD: torch's rule (lr outside the velocity, weight decay before momentum) | `test_sgd_momentum_hand_worked_example`, `test_sgd_weight_decay_hand_worked_example` | hand-worked |
| SGD over steps: lr and momentum schedules (momentum 0 included), velocity = momentum_buffer, state saved and loaded mid-run, grads left alone and not aliased | `test_sgd_momentum_matches_torch_optim_sgd` | `torch.optim.SGD` with its param_groups changed |
| Value: each operation's value and gradient, saturated tanh | `test_value_hand_worked_example`, `test_value_operation_hand_worked_gradients`, `test_value_gradients_match_torch_autograd_on_random_expressions` | hand-worked; `torch.autograd` on the same expressions |
| Value: a reused node accumulates through every operation; unused nodes get no gradient | `test_value_used_twice_accumulates_its_gradient`, `test_value_every_operation_accumulates_into_a_reused_input`, `test_value_leaves_the_output_does_not_use_keep_a_zero_gradient` | hand-worked |
| Value: backward in topological order | `test_value_backward_runs_in_topological_order`, `test_value_gradients_match_torch_autograd_on_random_expressions` | hand-worked (a diamond); `torch.autograd` |
| everything together learns a non-linear dataset | `test_mlp_learns_spirals_to_95_percent_within_300_steps` | accuracy on fresh points |

Tolerances: float64 against PyTorch 1e-10 relative (the same formulas in another order);
central differences in float64 (step 1e-5) to a relative error of 1e-6. Part 1 holds the
hand-worked examples (cheap, they fail first), Part 2 the oracle comparisons over drawn inputs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

COMPONENT = "backprop"
IN_LIBRARY = False  # the library trains with torch's autograd: no NumPy engine in reference/
pytestmark = pytest.mark.backprop

ACTIVATIONS = ("relu", "gelu", "tanh")
TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": lambda t: F.gelu(t, approximate="tanh"),  # GPT-2's GELU
    "tanh": torch.tanh,
}

# Float64 against PyTorch float64: the same formulas in a different order differ by a few ulps.
TORCH_RTOL, TORCH_ATOL = 1e-10, 1e-12
# Central differences in float64 with step 1e-5: truncation error ~1e-10, round-off ~1e-9 for the
# losses used here, so a relative error of 1e-6 separates correct from wrong gradients widely.
FD_EPS, FD_MAX_REL_ERROR = 1e-5, 1e-6


# ----------------------------------------------------------------------------------------------
# Oracles and helpers
# ----------------------------------------------------------------------------------------------


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = FD_EPS) -> np.ndarray:
    """Central differences ``(f(x + eps e_i) - f(x - eps e_i)) / 2 eps`` for every entry of ``x``.

    ``f`` takes no arguments and reads ``x``, which is perturbed in place and restored.
    """
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + eps
        f_plus = f()
        x[idx] = original - eps
        f_minus = f()
        x[idx] = original
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``|a - n| / max(|a| + |n|, 1)``: relative for gradients of norm >= 1, absolute below.

    The floor keeps a gradient that is (nearly) zero from being judged on the finite
    differences' round-off alone.
    """
    diff = np.linalg.norm(analytic - numeric)
    return float(diff / max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1.0))


def assert_gradient_matches_fd(name: str, analytic: Any, f: Callable[[], float],
                               x: np.ndarray) -> None:
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == x.shape, (
        f"d{name} has shape {analytic.shape}, but {name} has shape {x.shape}: a gradient has the "
        "shape of the thing it is the gradient of (transposed?)"
    )
    numeric = numerical_gradient(f, x)
    err = relative_error(analytic, numeric)
    assert err < FD_MAX_REL_ERROR, (
        f"d{name} disagrees with central finite differences: relative error {err:.2e} "
        f"(max {FD_MAX_REL_ERROR:g})\nanalytic:\n{analytic}\nnumeric:\n{numeric}"
    )


def assert_matches_torch(name: str, ours: Any, theirs: torch.Tensor | None,
                         shape: tuple[int, ...] | None = None) -> None:
    """``ours`` equals PyTorch's ``theirs`` (a missing torch gradient counts as zeros)."""
    ours = np.asarray(ours, dtype=np.float64)
    expected = (np.zeros(shape) if theirs is None else theirs.detach().numpy())
    assert ours.shape == expected.shape, (
        f"{name} has shape {ours.shape}, PyTorch's has {expected.shape} (transposed?)"
    )
    np.testing.assert_allclose(ours, expected, rtol=TORCH_RTOL, atol=TORCH_ATOL,
                               err_msg=f"{name} differs from PyTorch's")


def t64(a: Any, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def floats(lo: float = -2.0, hi: float = 2.0) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(shape: tuple[int, ...], lo: float = -2.0, hi: float = 2.0,
           elements: st.SearchStrategy[float] | None = None) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi) if elements is None else elements)


dims = st.integers(1, 4)


@st.composite
def linear_cases(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    """(x (N, in), W (out, in), b (out,), dy (N, out)) of small drawn sizes and values."""
    n, fan_in, fan_out = draw(dims), draw(dims), draw(dims)
    return (draw(arrays((n, fan_in))), draw(arrays((fan_out, fan_in))),
            draw(arrays((fan_out,))), draw(arrays((n, fan_out))))


@st.composite
def activation_cases(draw: st.DrawFn, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, dy) of one drawn shape; for ReLU, x stays 0.01 away from the kink at 0."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3))
    elements = floats(-3.0, 3.0)
    if name == "relu":  # finite differences across the kink are meaningless
        elements = floats(0.01, 3.0) | floats(-3.0, -0.01)
    return draw(arrays(shape, elements=elements)), draw(arrays(shape))


@st.composite
def mlp_cases(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """(params, x (N, D), targets (N,), G (N, K)) for an MLP of 1 or 2 hidden layers."""
    sizes = [draw(st.integers(1, 3)), *draw(st.lists(dims, min_size=1, max_size=2)),
             draw(st.integers(2, 3))]
    n = draw(dims)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = {}
    for i in range(1, len(sizes)):
        params[f"fc{i}.weight"] = rng.standard_normal((sizes[i], sizes[i - 1]))
        params[f"fc{i}.bias"] = rng.standard_normal(sizes[i]) * 0.5
    x = draw(arrays((n, sizes[0])))
    targets = np.array(draw(st.lists(st.integers(0, sizes[-1] - 1), min_size=n, max_size=n)))
    return params, x, targets, rng.standard_normal((n, sizes[-1]))


def torch_mlp_oracle(params: dict[str, np.ndarray], x: np.ndarray,
                     activation: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MLP written with ``torch.nn.functional`` here: logits and the leaf parameters."""
    leaves = {name: t64(value, grad=True) for name, value in params.items()}
    n_layers = len(params) // 2
    h = t64(x)
    for i in range(1, n_layers + 1):
        h = F.linear(h, leaves[f"fc{i}.weight"], leaves[f"fc{i}.bias"])
        if i < n_layers:
            h = TORCH_ACTIVATIONS[activation](h)
    return h, leaves


def hand_params() -> dict[str, np.ndarray]:
    """A 2-2-2-2 MLP worked by hand (see test_mlp_hand_worked_example)."""
    return {
        "fc1.weight": np.eye(2), "fc1.bias": np.zeros(2),
        "fc2.weight": np.array([[-1.0, 1.0], [2.0, 1.0]]), "fc2.bias": np.zeros(2),
        "fc3.weight": np.array([[1.0, 2.0], [3.0, 4.0]]), "fc3.bias": np.zeros(2),
    }


# ----------------------------------------------------------------------------------------------
# Part 1: one hand-worked example per exercise (exact numbers; these run first)
# ----------------------------------------------------------------------------------------------


def test_linear_hand_worked_example(impl: Any) -> None:
    """y = x W^T + b with W (out=3, in=2); gradients worked by hand for a batch of 2."""
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([0.5, -0.5, 0.0])
    dy = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]])
    y, cache = impl.linear_forward(x, W, b)
    dx, dW, db = impl.linear_backward(dy, cache)
    np.testing.assert_array_equal(y, [[1.5, 1.5, 3.0], [3.5, -1.5, 2.0]], err_msg="y = x W^T + b")
    np.testing.assert_array_equal(dx, [[4.0, 5.0], [-1.0, 0.0]], err_msg="dx = dy W")
    np.testing.assert_array_equal(dW, [[1.0, 2.0], [5.0, 3.0], [0.0, 7.0]],
                                  err_msg="dW = dy^T x, shape (out, in) like W")
    np.testing.assert_array_equal(db, [1.0, 3.0, 2.0],
                                  err_msg="db = dy summed over the batch (not averaged)")


# (x, forward(x), dy, backward) worked by hand. GELU's digits are the tanh formula's with
# c = sqrt(2/pi), k = 0.044715, to 15 significant digits (the exact-erf GELU is 0.841344746068543
# at 1, so it fails here).
HAND_WORKED_ACTIVATIONS = {
    "relu": ([-2.0, 0.0, 0.5, 3.0], [0.0, 0.0, 0.5, 3.0], [5.0, 5.0, 5.0, 5.0],
             [0.0, 0.0, 5.0, 5.0]),
    "gelu": ([0.0, 1.0, -1.0], [0.0, 0.841191990608277, -0.158808009391723],
             [2.0, 1.0, 1.0], [1.0, 1.08296408384578, -0.0829640838457826]),
    "tanh": ([0.0, math.atanh(0.5), -math.atanh(0.5)], [0.0, 0.5, -0.5],
             [2.0, 2.0, 2.0], [2.0, 1.5, 1.5]),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_hand_worked_example(impl: Any, name: str) -> None:
    x, y_expected, dy, dx_expected = (np.array(v) for v in HAND_WORKED_ACTIVATIONS[name])
    y, cache = getattr(impl, f"{name}_forward")(x)
    dx = getattr(impl, f"{name}_backward")(dy, cache)
    np.testing.assert_allclose(y, y_expected, rtol=1e-13, atol=1e-15,
                               err_msg=f"{name} forward at {x}")
    np.testing.assert_allclose(dx, dx_expected, rtol=1e-13, atol=1e-15,
                               err_msg=f"{name} backward at {x} with dy={dy}")


def test_backward_passes_read_the_documented_caches(impl: Any) -> None:
    """The docstrings fix each cache: relu and gelu keep x, tanh keeps its OUTPUT y, linear keeps
    (x, W). A backward handed that cache directly gives torch.autograd's gradient."""
    x = np.array([-1.5, -0.2, 0.3, 2.0])
    dy = np.array([1.0, -2.0, 0.5, 3.0])
    for name, cache in (("relu", x), ("gelu", x), ("tanh", np.tanh(x))):
        xt = t64(x, grad=True)
        TORCH_ACTIVATIONS[name](xt).backward(t64(dy))
        assert_matches_torch(f"{name}_backward(dy, cache={'y' if name == 'tanh' else 'x'})",
                             getattr(impl, f"{name}_backward")(dy, cache), xt.grad)
    x2, W = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([[2.0, 1.0], [-1.0, 0.5], [0.0, 4.0]])
    dy2 = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.5]])
    xt, Wt = t64(x2, grad=True), t64(W, grad=True)
    F.linear(xt, Wt).backward(t64(dy2))
    dx, dW, db = impl.linear_backward(dy2, (x2, W))
    assert_matches_torch("linear_backward(dy, (x, W)): dx", dx, xt.grad)
    assert_matches_torch("linear_backward(dy, (x, W)): dW", dW, Wt.grad)
    np.testing.assert_array_equal(db, dy2.sum(axis=0), err_msg="db")


def test_softmax_cross_entropy_hand_worked_example(impl: Any) -> None:
    """Row 1: p = (1/2, 1/2), target 0; row 2: logits (ln 3, 0) so p = (3/4, 1/4), target 1.
    loss = (ln 2 + ln 4) / 2; dlogits = ((1/2 - 1, 1/2), (3/4, 1/4 - 1)) / 2."""
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    loss, dlogits = impl.softmax_cross_entropy(logits, np.array([0, 1]))
    assert isinstance(loss, float), f"loss must be a Python float, got {type(loss)}"
    assert loss == pytest.approx((math.log(2.0) + math.log(4.0)) / 2, rel=1e-14), (
        "loss is the MEAN over rows of -log p[target]"
    )
    np.testing.assert_allclose(dlogits, [[-0.25, 0.25], [0.375, -0.375]], rtol=1e-14, atol=1e-16,
                               err_msg="dlogits = (softmax - onehot(target of each row)) / N")


@pytest.mark.parametrize(("dtype", "target_dtype"), [(np.float64, np.int64),
                                                    (np.float32, np.int32), (np.float32, np.uint8)])
def test_softmax_cross_entropy_is_finite_at_logits_of_1e4(
    impl: Any, dtype: type, target_dtype: type
) -> None:
    """exp(1e4) overflows float32 and float64; subtracting the row max first keeps everything
    exact here. float32 logits and any integer dtype of targets are accepted."""
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
    # Overflow, inf - inf, log(0) inside are errors here, not warnings; exp(-2e4) -> 0 is fine.
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, dlogits = impl.softmax_cross_entropy(logits, np.array([0, 0], dtype=target_dtype))
    # Row 1: the target has all the mass, loss 0. Row 2: logsumexp = 1e4 + ln 2, target -1e4.
    assert math.isfinite(loss), f"loss is {loss} at {dtype.__name__} logits of ±1e4"
    rel = 1e-14 if dtype == np.float64 else 1e-6  # a float32 result may keep float32's digits
    assert loss == pytest.approx((0.0 + 2e4 + math.log(2.0)) / 2, rel=rel)
    assert np.isfinite(dlogits).all(), f"dlogits not finite at logits of ±1e4:\n{dlogits}"
    np.testing.assert_allclose(dlogits, [[0.0, 0.0, 0.0], [-0.5, 0.25, 0.25]], atol=1e-15)


def test_mlp_hand_worked_example(impl: Any) -> None:
    """Two hidden ReLU layers whose masks differ, so each layer must use its own cache.

    Forward, x = (1, -1): z1 = x, h1 = (1, 0); z2 = W2 h1 = (-1, 2), h2 = (0, 2);
    logits = W3 h2 = (4, 8). Backward, dlogits = (1, -1): dW3 = dlogits^T h2, db3 = dlogits;
    dh2 = dlogits W3 = (-2, -2), dz2 = dh2 * [z2 > 0] = (0, -2), dW2 = dz2^T h1, db2 = dz2;
    dh1 = dz2 W2 = (-4, -2), dz1 = dh1 * [z1 > 0] = (-4, 0), dW1 = dz1^T x, db1 = dz1.
    """
    params = hand_params()
    logits, cache = impl.mlp_forward(params, np.array([[1.0, -1.0]]), "relu")
    grads = impl.mlp_backward(cache, np.array([[1.0, -1.0]]))
    np.testing.assert_array_equal(logits, [[4.0, 8.0]], err_msg="logits")
    assert sorted(grads) == sorted(params), f"grads keys {sorted(grads)} != params keys"
    expected = {
        "fc3.weight": [[0.0, 2.0], [0.0, -2.0]], "fc3.bias": [1.0, -1.0],
        "fc2.weight": [[0.0, 0.0], [-2.0, 0.0]], "fc2.bias": [0.0, -2.0],
        "fc1.weight": [[-4.0, 4.0], [0.0, 0.0]], "fc1.bias": [-4.0, 0.0],
    }
    for name, value in expected.items():
        np.testing.assert_array_equal(grads[name], value, err_msg=f"grads[{name!r}]")


def test_torch_mlp_hand_worked_example(impl: Any) -> None:
    """The network of test_mlp_hand_worked_example, loaded into TorchMLP: same names, logits."""
    model = impl.torch_mlp_from_params(hand_params(), "relu")
    assert [n for n, _ in model.named_parameters()] == list(hand_params()), (
        "TorchMLP's parameters must be named fc1.weight, fc1.bias, fc2.weight, ... in order"
    )
    logits = model(torch.tensor([[1.0, -1.0]], dtype=torch.float64))
    assert logits.dtype == torch.float64, "torch_mlp_from_params keeps the params' dtype"
    np.testing.assert_array_equal(logits.detach().numpy(), [[4.0, 8.0]])


# act(1) for each activation; GELU is the tanh approximation (exact erf: 0.841344746068543).
ACTIVATION_AT_ONE = {"relu": 1.0, "gelu": 0.841191990608277, "tanh": 0.761594155955765}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_mlp_hand_worked_activation(impl: Any, activation: str) -> None:
    """1-1-1 net with unit weights and zero biases: logits = act(1) (no activation on logits)."""
    one, zero = np.ones((1, 1)), np.zeros(1)
    params = {"fc1.weight": one, "fc1.bias": zero, "fc2.weight": one, "fc2.bias": zero}
    model = impl.torch_mlp_from_params(params, activation)
    logits = model(torch.ones(1, 1, dtype=torch.float64)).item()
    assert logits == pytest.approx(ACTIVATION_AT_ONE[activation], rel=1e-14), activation


def test_torch_mlp_names_and_shapes(impl: Any) -> None:
    model = impl.TorchMLP([2, 16, 8, 3], "gelu")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "fc1.weight": (16, 2), "fc1.bias": (16,), "fc2.weight": (8, 16), "fc2.bias": (8,),
        "fc3.weight": (3, 8), "fc3.bias": (3,),
    }, f"TorchMLP parameters: {shapes}"
    assert model(torch.zeros(5, 2)).shape == (5, 3)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_mlp_runs_on_its_inputs_device_and_dtype(impl: Any, activation: str) -> None:
    """Moved to the meta device (placement without a GPU) and float64, its logits are there too:
    nothing in the forward is made on the CPU or in float32."""
    model = impl.TorchMLP([3, 4, 5, 2], activation).to(device="meta", dtype=torch.float64)
    logits = model(torch.randn(6, 3, device="meta", dtype=torch.float64))
    assert logits.device.type == "meta", f"TorchMLP({activation}) logits on {logits.device}"
    assert logits.dtype == torch.float64 and logits.shape == (6, 2), (logits.dtype, logits.shape)


def test_sgd_momentum_hand_worked_example(impl: Any) -> None:
    """w = 1, constant gradient 0.5, momentum 0.9, lr 0.1 then 0.2 (lr scales v, not folded in):
    v = 0.5, w = 0.95; v = 0.9 * 0.5 + 0.5 = 0.95, w = 0.95 - 0.2 * 0.95 = 0.76."""
    params: dict[str, np.ndarray] = {"w": np.array([1.0])}
    velocity: dict[str, np.ndarray] = {}
    impl.sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=0.1, momentum=0.9)
    np.testing.assert_allclose(params["w"], [0.95], rtol=1e-15, err_msg="after step 1")
    impl.sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=0.2, momentum=0.9)
    np.testing.assert_allclose(params["w"], [0.76], rtol=1e-15, err_msg="after step 2")


def test_sgd_weight_decay_hand_worked_example(impl: Any) -> None:
    """weight_decay 0.1 adds 0.1 w to the gradient before momentum: g = 0.6, v = 0.6, w = 0.94;
    g = 0.5 + 0.094 = 0.594, v = 0.54 + 0.594 = 1.134, w = 0.94 - 0.1134 = 0.8266."""
    params: dict[str, np.ndarray] = {"w": np.array([1.0])}
    velocity: dict[str, np.ndarray] = {}
    for expected in (0.94, 0.8266):
        impl.sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=0.1, momentum=0.9,
                               weight_decay=0.1)
        np.testing.assert_allclose(params["w"], [expected], rtol=1e-14)


def test_value_hand_worked_example(impl: Any) -> None:
    """f = a*b + c**2 at (2, -3, 4): f = 10, df/da = b = -3, df/db = a = 2, df/dc = 2c = 8."""
    a, b, c = impl.Value(2.0), impl.Value(-3.0), impl.Value(4.0)
    f = a * b + c**2
    f.backward()
    assert f.data == 10.0
    assert (a.grad, b.grad, c.grad) == (-3.0, 2.0, 8.0), "(df/da, df/db, df/dc)"


def test_value_used_twice_accumulates_its_gradient(impl: Any) -> None:
    """Each use of a node adds its share: d(a + a)/da = 2, d(a * a)/da = 2a."""
    a = impl.Value(3.0)
    (a + a).backward()
    assert a.grad == 2.0, f"d(a + a)/da = 2, got {a.grad} (gradients overwritten, not added?)"
    a = impl.Value(3.0)
    (a * a).backward()
    assert a.grad == 6.0, f"d(a * a)/da = 2a = 6, got {a.grad}"


def test_value_backward_runs_in_topological_order(impl: Any) -> None:
    """x -> a = x*x -> b = a + x -> c = a*b = x**4 + x**3: a feeds c directly and via b, so a's
    backward must wait for b's. dc/dx = 4x**3 + 3x**2 = 135 at x = 3; dc/da = b + a = 21."""
    x = impl.Value(3.0)
    a = x * x
    b = a + x
    c = a * b
    c.backward()
    assert c.data == 108.0
    assert (a.grad, b.grad) == (21.0, 9.0), "(dc/da, dc/db)"
    assert x.grad == 135.0, f"dc/dx = 135, got {x.grad} (a node's backward ran too early?)"


# op: (op, x, op'(x)) worked by hand; the test below uses op twice on the same input.
REUSED_OPS: dict[str, tuple[Callable[[Any], Any], float, float]] = {
    "tanh": (lambda x: x.tanh(), math.atanh(0.5), 0.75),
    "relu": (lambda x: x.relu(), 0.5, 1.0),
    "exp": (lambda x: x.exp(), 0.0, 1.0),
    "log": (lambda x: x.log(), 2.0, 0.5),
    "pow3": (lambda x: x**3, 2.0, 12.0),
    "pow_negative": (lambda x: x**-1, 4.0, -0.0625),
    "mul_by_constant": (lambda x: x * 3.0, 1.5, 3.0),
    "add_constant": (lambda x: x + 3.0, 1.5, 1.0),
}


@pytest.mark.parametrize("name", REUSED_OPS)
def test_value_every_operation_accumulates_into_a_reused_input(impl: Any, name: str) -> None:
    """f = op(x) + 2 op(x) + x: x feeds three nodes, so df/dx = 3 op'(x) + 1. Each op's backward
    must add (+=) to x.grad; one that assigns (=) keeps only whichever use ran last."""
    op, x0, slope = REUSED_OPS[name]
    x = impl.Value(x0)
    f = op(x) + 2.0 * op(x) + x
    f.backward()
    assert x.grad == pytest.approx(3 * slope + 1, rel=1e-12), (
        f"{name}: d(op(x) + 2 op(x) + x)/dx = {3 * slope + 1}, got {x.grad} (= instead of +=?)"
    )


def test_value_leaves_the_output_does_not_use_keep_a_zero_gradient(impl: Any) -> None:
    """Only what the output depends on gets a gradient (torch: grad None); a branch computed
    from a leaf but not used by the output sends nothing back."""
    a, b = impl.Value(2.0), impl.Value(5.0)
    unused = (a * b).exp()  # computed, never reaches f
    f = a * 3.0
    f.backward()
    assert (a.grad, b.grad, unused.grad) == (3.0, 0.0, 0.0), "(df/da, df/db, df/dunused)"


# name: (f of the inputs, inputs, f's value, gradients), all worked by hand. The "chain" cases put
# the operation inside another (3 * op), so a backward that forgets the factor out.grad is caught.
HAND_WORKED_OPS: dict[str, tuple[Callable[..., Any], tuple[float, ...], float,
                                 tuple[float, ...]]] = {
    "add": (lambda x, y: x + y, (2.0, -3.0), -1.0, (1.0, 1.0)),
    "mul": (lambda x, y: x * y, (2.0, -3.0), -6.0, (-3.0, 2.0)),
    "sub": (lambda x, y: x - y, (5.0, 3.0), 2.0, (1.0, -1.0)),
    "div": (lambda x, y: x / y, (1.0, 2.0), 0.5, (0.5, -0.25)),
    "neg": (lambda x: -x, (2.0,), -2.0, (-1.0,)),
    "radd_rmul_rsub": (lambda x: 1.0 - (2.0 + 3.0 * x), (2.0,), -7.0, (-3.0,)),
    "rtruediv": (lambda x: 2.0 / x, (4.0,), 0.5, (-0.125,)),
    "pow3": (lambda x: x**3, (2.0,), 8.0, (12.0,)),
    "pow_negative": (lambda x: x**-1, (4.0,), 0.25, (-0.0625,)),
    "pow_half": (lambda x: x**0.5, (4.0,), 2.0, (0.25,)),
    "tanh": (lambda x: x.tanh(), (0.0,), 0.0, (1.0,)),
    "tanh_off_zero": (lambda x: x.tanh(), (math.atanh(0.5),), 0.5, (0.75,)),
    "relu_positive": (lambda x: x.relu(), (2.0,), 2.0, (1.0,)),
    "relu_negative": (lambda x: x.relu(), (-1.0,), 0.0, (0.0,)),
    "relu_at_zero": (lambda x: x.relu(), (0.0,), 0.0, (0.0,)),  # PyTorch's convention
    "relu_below_one": (lambda x: x.relu(), (0.5,), 0.5, (1.0,)),
    "tanh_saturated": (lambda x: x.tanh(), (800.0,), 1.0, (0.0,)),  # exp(1600) would overflow
    "tanh_saturated_negative": (lambda x: x.tanh(), (-800.0,), -1.0, (0.0,)),
    "exp": (lambda x: x.exp(), (0.0,), 1.0, (1.0,)),
    "log": (lambda x: x.log(), (2.0,), math.log(2.0), (0.5,)),
    "chain_pow": (lambda x: 3.0 * x**2, (2.0,), 12.0, (12.0,)),
    "chain_tanh": (lambda x: 3.0 * (2.0 * x).tanh(), (0.0,), 0.0, (6.0,)),
    "chain_relu": (lambda x: 3.0 * (2.0 * x).relu(), (1.0,), 6.0, (6.0,)),
    "chain_exp": (lambda x: 3.0 * (2.0 * x).exp(), (0.0,), 3.0, (6.0,)),
    "chain_log": (lambda x: 3.0 * (2.0 * x).log(), (0.5,), 0.0, (6.0,)),
}


@pytest.mark.parametrize("name", HAND_WORKED_OPS)
def test_value_operation_hand_worked_gradients(impl: Any, name: str) -> None:
    f, inputs, value, expected = HAND_WORKED_OPS[name]
    leaves = [impl.Value(v) for v in inputs]
    out = f(*leaves)
    out.backward()
    assert out.data == pytest.approx(value, rel=1e-12, abs=1e-15), f"{name}: value"
    grads = tuple(leaf.grad for leaf in leaves)
    assert grads == pytest.approx(expected, rel=1e-12, abs=1e-15), (
        f"{name}: gradients {grads}, expected {expected}"
    )


# ----------------------------------------------------------------------------------------------
# Part 2: oracles over hypothesis-drawn shapes and values
# ----------------------------------------------------------------------------------------------


@given(case=linear_cases())
def test_linear_gradients_match_finite_differences(impl: Any, case: tuple[np.ndarray, ...]) -> None:
    x, W, b, dy = (a.copy() for a in case)
    _, cache = impl.linear_forward(x.copy(), W.copy(), b.copy())
    dx, dW, db = impl.linear_backward(dy.copy(), cache)

    def loss() -> float:  # L = sum(y * dy), so dL/dy = dy
        return float((impl.linear_forward(x, W, b)[0] * dy).sum())

    assert_gradient_matches_fd("x", dx, loss, x)
    assert_gradient_matches_fd("W", dW, loss, W)
    assert_gradient_matches_fd("b", db, loss, b)


@given(case=linear_cases())
def test_linear_matches_torch_linear_and_autograd(impl: Any, case: tuple[np.ndarray, ...]) -> None:
    x, W, b, dy = case
    y, cache = impl.linear_forward(x.copy(), W.copy(), b.copy())
    dx, dW, db = impl.linear_backward(dy.copy(), cache)
    xt, Wt, bt = t64(x, grad=True), t64(W, grad=True), t64(b, grad=True)
    yt = F.linear(xt, Wt, bt)
    yt.backward(t64(dy))
    assert_matches_torch("y", y, yt)
    assert_matches_torch("dx", dx, xt.grad)
    assert_matches_torch("dW", dW, Wt.grad)
    assert_matches_torch("db", db, bt.grad)


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(data=st.data())
def test_activation_gradient_matches_finite_differences(impl: Any, name: str,
                                                        data: st.DataObject) -> None:
    x, dy = data.draw(activation_cases(name))
    forward = getattr(impl, f"{name}_forward")
    _, cache = forward(x.copy())
    dx = getattr(impl, f"{name}_backward")(dy.copy(), cache)
    assert_gradient_matches_fd("x", dx, lambda: float((forward(x)[0] * dy).sum()), x)


@pytest.mark.parametrize("name", ACTIVATIONS)
@given(data=st.data())
def test_activation_matches_torch_functional_and_autograd(impl: Any, name: str,
                                                          data: st.DataObject) -> None:
    """ReLU, GELU(approximate="tanh") and tanh against PyTorch, including ReLU's 0 at 0, and
    at inputs up to ±1e4 where a tanh written with exp overflows."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3))
    extremes = st.sampled_from([-1e4, -800.0, -50.0, 50.0, 800.0, 1e4])  # exp(2x) overflows
    x = data.draw(arrays(shape, elements=floats(-4.0, 4.0) | extremes))
    dy = data.draw(arrays(shape))
    y, cache = getattr(impl, f"{name}_forward")(x.copy())
    dx = getattr(impl, f"{name}_backward")(dy.copy(), cache)
    xt = t64(x, grad=True)
    yt = TORCH_ACTIVATIONS[name](xt)
    yt.backward(t64(dy))
    assert_matches_torch(f"{name}(x)", y, yt)
    assert_matches_torch(f"d{name}/dx", dx, xt.grad)


@st.composite
def ce_cases(draw: st.DrawFn, scale: float) -> tuple[np.ndarray, np.ndarray]:
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    logits = draw(arrays((n, k), -scale, scale))
    targets = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return logits, targets


@given(case=ce_cases(scale=1e4))
def test_softmax_cross_entropy_matches_torch_cross_entropy(
    impl: Any, case: tuple[np.ndarray, np.ndarray]
) -> None:
    """Value and gradient equal F.cross_entropy's, for logits anywhere in [-1e4, 1e4]."""
    logits, targets = case
    with np.errstate(over="raise", invalid="raise"):
        loss, dlogits = impl.softmax_cross_entropy(logits.copy(), targets)
    lt = t64(logits, grad=True)
    expected = F.cross_entropy(lt, torch.from_numpy(targets))
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-10, abs=1e-10)
    assert_matches_torch("dlogits", dlogits, lt.grad)


@given(case=ce_cases(scale=5.0))
def test_softmax_cross_entropy_gradient_matches_finite_differences(
    impl: Any, case: tuple[np.ndarray, np.ndarray]
) -> None:
    logits, targets = case
    _, dlogits = impl.softmax_cross_entropy(logits.copy(), targets)
    assert_gradient_matches_fd(
        "logits", dlogits, lambda: impl.softmax_cross_entropy(logits, targets)[0], logits
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(case=mlp_cases())
def test_mlp_gradients_match_finite_differences(impl: Any, activation: str,
                                                case: tuple[Any, ...]) -> None:
    params, x, _, G = case
    _, cache = impl.mlp_forward(params, x, activation)
    grads = impl.mlp_backward(cache, G)
    assert sorted(grads) == sorted(params), f"grads keys {sorted(grads)} != {sorted(params)}"

    def loss() -> float:  # L = sum(logits * G), so dL/dlogits = G
        return float((impl.mlp_forward(params, x, activation)[0] * G).sum())

    for name in params:
        assert_gradient_matches_fd(name, grads[name], loss, params[name])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(case=mlp_cases())
def test_mlp_with_cross_entropy_matches_torch_autograd(impl: Any, activation: str,
                                                       case: tuple[Any, ...]) -> None:
    """mlp_forward, softmax_cross_entropy, mlp_backward against the same net in torch (F.linear)."""
    params, x, targets, _ = case
    logits, cache = impl.mlp_forward(params, x, activation)
    loss, dlogits = impl.softmax_cross_entropy(logits, targets)
    grads = impl.mlp_backward(cache, dlogits)
    logits_t, leaves = torch_mlp_oracle(params, x, activation)
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(targets))
    loss_t.backward()
    assert_matches_torch("logits", logits, logits_t)
    assert loss == pytest.approx(loss_t.item(), rel=1e-10, abs=1e-12)
    for name, leaf in leaves.items():
        assert_matches_torch(f"grads[{name!r}]", grads[name], leaf.grad)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@given(case=mlp_cases())
def test_numpy_and_torch_mlps_agree_on_logits_loss_and_gradients(
    impl: Any, activation: str, case: tuple[Any, ...]
) -> None:
    params, x, targets, _ = case
    logits, cache = impl.mlp_forward(params, x, activation)
    loss, dlogits = impl.softmax_cross_entropy(logits, targets)
    grads = impl.mlp_backward(cache, dlogits)
    model = impl.torch_mlp_from_params(params, activation)
    logits_t = model(t64(x))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(targets))
    loss_t.backward()
    assert_matches_torch("logits (NumPy vs TorchMLP)", logits, logits_t)
    assert loss == pytest.approx(loss_t.item(), rel=1e-10, abs=1e-12)
    torch_params = dict(model.named_parameters())
    assert sorted(torch_params) == sorted(params), f"TorchMLP names {sorted(torch_params)}"
    for name, p in torch_params.items():
        assert_matches_torch(f"grads[{name!r}] (NumPy vs TorchMLP)", grads[name], p.grad)


@st.composite
def sgd_cases(draw: st.DrawFn) -> tuple[Any, ...]:
    """params, grads per step, and a schedule: lr and momentum per step (momentum constant, or
    changing, 0 included), weight decay, and the step after which the state is saved and loaded."""
    shapes = draw(st.lists(hnp.array_shapes(min_dims=1, max_dims=2, max_side=3),
                           min_size=1, max_size=3))
    steps = draw(st.integers(1, 6))
    lrs = draw(st.lists(floats(0.0, 1.0), min_size=steps, max_size=steps))
    momentum = st.sampled_from([0.0, 0.5, 0.9]) | floats(0.0, 0.99)
    if draw(st.booleans(), label="constant momentum"):
        momenta = [draw(momentum)] * steps
    else:
        momenta = draw(st.lists(momentum, min_size=steps, max_size=steps))
    weight_decay = draw(st.sampled_from([0.0, 0.1]) | floats(0.0, 0.5))
    save_at = draw(st.integers(1, steps))  # after this step (the last: no continuation)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(shapes)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(steps)]
    return params, grads, lrs, momenta, weight_decay, save_at


def save_and_load(arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Round-trip dicts of arrays through an .npz file, as a checkpoint of a NumPy run would."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{group}.{k}": v for group, d in arrays.items() for k, v in d.items()})
    buffer.seek(0)
    with np.load(buffer) as loaded:
        out: dict[str, dict[str, np.ndarray]] = {group: {} for group in arrays}
        for key in loaded.files:
            group, _, k = key.partition(".")
            out[group][k] = loaded[key].copy()
    return out


@given(case=sgd_cases())
def test_sgd_momentum_matches_torch_optim_sgd(impl: Any, case: tuple[Any, ...]) -> None:
    """Several steps against torch.optim.SGD, whose lr and momentum a schedule changes between
    steps through its param_groups. After every step the params match, and so does the state:
    ``velocity[k]`` is torch's ``momentum_buffer`` (absent where torch keeps none, momentum 0).
    The state is saved to a file and loaded mid-run, and the caller reuses its grad arrays
    (left unchanged by the step, then overwritten): the run goes on as torch's uninterrupted."""
    params, grads_per_step, lrs, momenta, weight_decay, save_at = case
    leaves = {k: t64(v, grad=True) for k, v in params.items()}
    opt = torch.optim.SGD(list(leaves.values()), lr=lrs[0], momentum=momenta[0],
                          weight_decay=weight_decay)
    ours = {k: v.copy() for k, v in params.items()}
    velocity: dict[str, np.ndarray] = {}
    for step, (grads, lr, momentum) in enumerate(zip(grads_per_step, lrs, momenta, strict=True),
                                                 start=1):
        given = {k: g.copy() for k, g in grads.items()}
        impl.sgd_momentum_step(ours, given, velocity, lr=lr, momentum=momentum,
                               weight_decay=weight_decay)
        for k, leaf in leaves.items():
            leaf.grad = t64(grads[k])
        opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"] = lr, momentum
        opt.step()
        what = (f"after step {step} (lr={lr:.3g}, momentum={momentum:.3g}, "
                f"weight_decay={weight_decay:.3g}, schedule {momenta})")
        for k, leaf in leaves.items():
            np.testing.assert_array_equal(given[k], grads[k],
                                          err_msg=f"the step changed the caller's grads[{k!r}]")
            given[k].fill(np.nan)  # the caller reuses its buffers: nothing may still point here
            assert_matches_torch(f"params[{k!r}] {what}", ours[k], leaf)
            buffer = opt.state[leaf].get("momentum_buffer")
            if buffer is None:
                assert k not in velocity, f"velocity[{k!r}] {what}: torch keeps no momentum " \
                    "buffer yet (momentum 0 so far), so there is no velocity"
            else:
                assert k in velocity, f"velocity[{k!r}] missing {what}"
                assert_matches_torch(f"velocity[{k!r}] (torch's momentum_buffer) {what}",
                                     velocity[k], buffer)
        if step == save_at:
            state = save_and_load({"params": ours, "velocity": velocity})
            ours, velocity = state["params"], state["velocity"]


# Expressions written once, run on Value and on 0-d torch tensors (same operator and method
# names). Where an operation has a restricted domain, its argument is made safe (x*x + 1 > 0).
PROGRAM_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 1.0),
    "radd": lambda a, _: 1.5 + a,
    "rsub": lambda a, _: 1.0 - a,
    "rmul": lambda a, _: 0.5 * a,
    "rdiv": lambda a, _: 2.0 / (a * a + 1.0),
    "neg": lambda a, _: -a,
    "square": lambda a, _: a**2,
    "cube": lambda a, _: a**3,
    "sqrt": lambda a, _: (a * a + 0.5) ** 0.5,
    "pow_negative": lambda a, _: (a * a + 1.0) ** -1.5,
    "tanh": lambda a, _: a.tanh(),
    "relu": lambda a, _: a.relu(),
    "exp": lambda a, _: a.exp(),
    "log": lambda a, _: (a * a + 1.0).log(),
}


@st.composite
def programs(draw: st.DrawFn) -> tuple[list[float], list[tuple[str, int, int]]]:
    """Leaf values and a list of (op, i, j): node k+len(leaves) = op(node i, node j) (mod count).

    Reusing nodes makes fan-out (a node used twice) and diamonds (a node reached by paths of
    different lengths) common, which is what accumulation and topological order are about.
    """
    leaves = draw(st.lists(floats(-2.0, 2.0), min_size=1, max_size=3))
    steps = draw(st.lists(st.tuples(st.sampled_from(sorted(PROGRAM_OPS)), st.integers(0, 63),
                                    st.integers(0, 63)), min_size=1, max_size=8))
    return leaves, steps


def run_program(leaves: list[Any], steps: list[tuple[str, int, int]]) -> tuple[Any, list[Any]]:
    """Every node of the program, and the output ``sum_k (1.5 + k / 2) * node_k``.

    Every computed node reaches the output, and with a weight != 1, so each node's ``grad`` is
    never just 1: a backward that forgets the factor ``out.grad`` gives a wrong answer.
    """
    nodes = list(leaves)
    for op, i, j in steps:
        nodes.append(PROGRAM_OPS[op](nodes[i % len(nodes)], nodes[j % len(nodes)]))
    computed = nodes[len(leaves):]
    out = computed[0] * 1.5
    for k, node in enumerate(computed[1:], start=1):
        out = out + node * (1.5 + k / 2)
    return out, nodes


@given(program=programs())
def test_value_gradients_match_torch_autograd_on_random_expressions(
    impl: Any, program: tuple[list[float], list[tuple[str, int, int]]]
) -> None:
    values, steps = program
    torch_leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    out_t, nodes_t = run_program(torch_leaves, steps)
    # Keep to well-conditioned expressions (no overflow, e.g. from exp of a large value).
    assume(all(math.isfinite(n.item()) and abs(n.item()) < 1e4 for n in nodes_t))
    out_t.backward()
    expected = [0.0 if t.grad is None else t.grad.item() for t in torch_leaves]
    assume(all(math.isfinite(g) and abs(g) < 1e8 for g in expected))

    leaves = [impl.Value(v) for v in values]
    out, _ = run_program(leaves, steps)
    out.backward()
    program_text = ", ".join(f"{op}({i}, {j})" for op, i, j in steps)
    assert out.data == pytest.approx(out_t.item(), rel=1e-12, abs=1e-12), program_text
    np.testing.assert_allclose([leaf.grad for leaf in leaves], expected, rtol=1e-9, atol=1e-9,
                               err_msg=f"leaf gradients differ from torch.autograd for the "
                               f"program [{program_text}] on leaves {values}")


# ----------------------------------------------------------------------------------------------
# Everything together: training on a non-linear dataset
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_learns_spirals_to_95_percent_within_300_steps(impl: Any, activation: str) -> None:
    """A 3-arm spiral is not linearly separable (a linear model scores about 50%)."""
    X, y = impl.make_spirals(n_per_class=100, n_classes=3, seed=0)
    result = impl.train_mlp(X, y, hidden=(64,), activation=activation, steps=300, seed=0)
    assert len(result.losses) == 300 and all(math.isfinite(v) for v in result.losses)
    assert result.losses[-1] < 0.25 * result.losses[0], (
        f"loss went from {result.losses[0]:.3f} to only {result.losses[-1]:.3f} in 300 steps"
    )
    assert result.accuracy >= 0.95, f"training accuracy {result.accuracy:.3f} < 0.95"
    X_new, y_new = impl.make_spirals(n_per_class=100, n_classes=3, seed=1)
    held_out = impl.accuracy(result.params, X_new, y_new, activation)
    assert held_out >= 0.95, f"accuracy on fresh spiral points {held_out:.3f} < 0.95"
