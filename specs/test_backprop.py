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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from specs.hints import likely

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
                         shape: tuple[int, ...] | None = None,
                         wrong: Mapping[str, Any] | None = None) -> None:
    """``ours`` equals PyTorch's ``theirs`` (a missing torch gradient counts as zeros); a
    failure names the classic bug of ``wrong`` (cause -> that bug's answer) ``ours`` matches."""
    ours = np.asarray(ours, dtype=np.float64)
    expected = (np.zeros(shape) if theirs is None else theirs.detach().numpy())
    assert ours.shape == expected.shape, (
        f"{name} has shape {ours.shape}, PyTorch's has {expected.shape} (transposed?)"
    )
    with hinted(ours, wrong or {}):
        np.testing.assert_allclose(ours, expected, rtol=TORCH_RTOL, atol=TORCH_ATOL,
                                   err_msg=f"{name} differs from PyTorch's")


def likely_np(actual: Any, wrong: Mapping[str, Any], hint: str = "") -> str:
    """``"likely cause: ..."``: the classic bug in ``wrong`` (cause -> what that bug gives,
    worked out here, never by the code under test) whose answer ``actual`` matches, else
    ``hint``. NumPy arrays, numbers and tuples of numbers compare as float64 tensors."""

    def as_tensor(value: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(value() if callable(value) else value,
                                          dtype=np.float64))

    def lazily(value: Any) -> Callable[[], torch.Tensor]:
        return lambda: as_tensor(value)

    try:
        found = likely(as_tensor(actual), {cause: lazily(v) for cause, v in wrong.items()},
                       atol=1e-12, rtol=1e-9)
    except (TypeError, ValueError):  # not numbers: no bug's answer to match
        found = ""
    return found or (f"likely cause: {hint}" if hint else "")


def then(cause: str) -> str:
    """``cause`` as the start of a message: followed by "; " when there is one."""
    return f"{cause}; " if cause else ""


@contextmanager
def hinted(actual: Any, wrong: Mapping[str, Any], hint: str = "") -> Iterator[None]:
    """An AssertionError inside gets the likely cause (see ``likely_np``) put in front."""
    try:
        yield
    except AssertionError as error:
        cause = likely_np(actual, wrong, hint)
        if not cause:
            raise
        raise AssertionError(f"{cause}\n{error}") from None


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
    try:
        dx, dW, db = impl.linear_backward(dy, cache)
    except ValueError as error:  # NumPy's shape mismatch in a matrix product
        pytest.fail(f"likely cause: a transposed matrix in linear_backward: dx = dy W is "
                    f"(N, out) @ (out, in), dW = dy^T x is (out, N) @ (N, in); {error}")
    with hinted(y, {"the bias b is not added": x @ W.T}):
        np.testing.assert_array_equal(y, [[1.5, 1.5, 3.0], [3.5, -1.5, 2.0]],
                                      err_msg="y = x W^T + b")
    np.testing.assert_array_equal(dx, [[4.0, 5.0], [-1.0, 0.0]], err_msg="dx = dy W")
    with hinted(dW, {"dW transposed: dW = dy^T x has W's shape (out, in)": x.T @ dy,
                     "dW divided by the batch size: it is summed over the batch, not averaged":
                         dy.T @ x / len(x)}):
        np.testing.assert_array_equal(dW, [[1.0, 2.0], [5.0, 3.0], [0.0, 7.0]],
                                      err_msg="dW = dy^T x, shape (out, in) like W")
    with hinted(db, {"db is not computed (zeros): db = dy summed over the batch": np.zeros(3),
                     "db averaged over the batch instead of summed": dy.mean(axis=0)}):
        np.testing.assert_array_equal(db, [1.0, 3.0, 2.0],
                                      err_msg="db = dy summed over the batch (not averaged)")


# (x, forward(x), dy, backward) worked by hand. GELU's digits are the tanh formula's with
# c = sqrt(2/pi), k = 0.044715, to 15 significant digits (the exact-erf GELU is 0.841344746068543
# at 1, so it fails here).
HAND_WORKED_ACTIVATIONS = {
    "relu": ([-2.0, 0.0, 0.5, 3.0], [0.0, 0.0, 0.5, 3.0], [5.0, 5.0, -5.0, 5.0],
             [0.0, 0.0, -5.0, 5.0]),
    "gelu": ([0.0, 1.0, -1.0], [0.0, 0.841191990608277, -0.158808009391723],
             [2.0, 1.0, 1.0], [1.0, 1.08296408384578, -0.0829640838457826]),
    "tanh": ([0.0, math.atanh(0.5), -math.atanh(0.5)], [0.0, 0.5, -0.5],
             [2.0, 2.0, 2.0], [2.0, 1.5, 1.5]),
}


GELU_C, GELU_K = math.sqrt(2.0 / math.pi), 0.044715  # GPT-2's tanh approximation


def activation_bugs(name: str, x: np.ndarray, dy: np.ndarray) -> tuple[dict[str, Any], ...]:
    """What the classic bugs of each activation give at ``x`` (forward, then backward)."""
    y = np.array(HAND_WORKED_ACTIVATIONS[name][1])
    if name == "relu":
        return {}, {"relu's backward does not gate: dx = dy where x > 0, else 0": dy,
                    "relu's backward gated on dy instead of on x (its cache)": dy * (dy > 0),
                    "relu's slope at x = 0 taken as 1: PyTorch's is 0 (x > 0, not x >= 0)":
                        dy * (x >= 0),
                    "the chain-rule factor dy is missing": (x > 0) * 1.0}
    if name == "gelu":
        t = np.tanh(GELU_C * (x + GELU_K * x**3))
        du = GELU_C * (1.0 + 3.0 * GELU_K * x**2)
        return ({"the exact erf GELU instead of GPT-2's tanh approximation":
                     F.gelu(t64(x)).numpy()},
                {"the inner derivative is missing: d tanh(u)/dx = (1 - tanh(u)^2) u', "
                 "u' = c (1 + 3k x^2)": dy * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * GELU_C),
                 "the product rule's second term is missing: d/dx [0.5 x (1 + tanh u)] = "
                 "0.5 (1 + tanh u) + 0.5 x (1 - tanh(u)^2) u'": dy * 0.5 * (1 + t),
                 "the chain-rule factor dy is missing": 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * du})
    return {}, {"tanh's backward applies tanh to its cache again: the cache is y = tanh(x), so "
                "dx = dy (1 - y^2)": dy * (1 - np.tanh(y) ** 2),
                "the chain-rule factor dy is missing: dx = dy (1 - y^2)": 1 - y**2}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_hand_worked_example(impl: Any, name: str) -> None:
    x, y_expected, dy, dx_expected = (np.array(v) for v in HAND_WORKED_ACTIVATIONS[name])
    y, cache = getattr(impl, f"{name}_forward")(x)
    dx = getattr(impl, f"{name}_backward")(dy, cache)
    wrong_forward, wrong_backward = activation_bugs(name, x, dy)
    with hinted(y, wrong_forward):
        np.testing.assert_allclose(y, y_expected, rtol=1e-13, atol=1e-15,
                                   err_msg=f"{name} forward at {x}")
    with hinted(dx, wrong_backward):
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
        wrong = {"tanh_backward reads its cache as x: the documented cache is tanh's output y "
                 "(what tanh_forward returns), so dx = dy (1 - y^2)": dy * (1 - np.tanh(cache) ** 2)
                 } if name == "tanh" else {}
        assert_matches_torch(f"{name}_backward(dy, cache={'y' if name == 'tanh' else 'x'})",
                             getattr(impl, f"{name}_backward")(dy, cache), xt.grad, wrong=wrong)
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
    mean = (math.log(2.0) + math.log(4.0)) / 2
    summed = {"the loss is summed over the rows instead of averaged": 2 * mean}
    assert loss == pytest.approx(mean, rel=1e-14), (
        f"{then(likely_np(loss, summed))}loss is the MEAN over rows of -log p[target]"
    )
    probs = np.array([[0.5, 0.5], [0.75, 0.25]])
    with hinted(dlogits, {"dlogits not divided by N (the loss is a mean over the N rows)":
                              probs - np.eye(2),
                          "1 subtracted in the target columns of every row: subtract it only at "
                          "(i, targets[i])": (probs - 1.0) / 2}):
        np.testing.assert_allclose(dlogits, [[-0.25, 0.25], [0.375, -0.375]], rtol=1e-14,
                                   atol=1e-16,
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
    log_sum_exp = ("compute the loss as logsumexp(z) - z[target], with z = logits - row max, "
                   "not as log(softmax)")
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            loss, dlogits = impl.softmax_cross_entropy(logits, np.array([0, 0],
                                                                        dtype=target_dtype))
    except FloatingPointError as error:
        cause = ("exp overflowed: subtract each row's max from the logits before exp"
                 if "overflow" in str(error) else f"log(0) or inf - inf: {log_sum_exp}")
        pytest.fail(f"likely cause: {cause}; {error} at {dtype.__name__} logits of ±1e4")
    # Row 1: the target has all the mass, loss 0. Row 2: logsumexp = 1e4 + ln 2, target -1e4.
    assert math.isfinite(loss), (
        f"likely cause: log(softmax) underflows to log(0) = -inf: {log_sum_exp}; loss is {loss} "
        f"at {dtype.__name__} logits of ±1e4"
    )
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
    wrong = {"the activation's backward is skipped between layers": mlp_grads_by_hand("skip"),
             "every layer's activation backward reads the last layer's cache: each layer keeps "
             "its own": mlp_grads_by_hand("last")}
    for name, value in expected.items():
        with hinted(grads[name], {cause: grads_of[name] for cause, grads_of in wrong.items()}):
            np.testing.assert_array_equal(grads[name], value, err_msg=f"grads[{name!r}]")


def mlp_grads_by_hand(bug: str) -> dict[str, np.ndarray]:
    """The hand-worked MLP's gradients with a classic bug: ReLU's backward ``skip``ped, or every
    layer gated by the ``last`` hidden layer's pre-activation."""
    p = hand_params()
    x, dlogits = np.array([[1.0, -1.0]]), np.array([[1.0, -1.0]])
    z1 = x @ p["fc1.weight"].T
    h1 = np.maximum(z1, 0)
    z2 = h1 @ p["fc2.weight"].T
    h2 = np.maximum(z2, 0)
    gate = {"skip": (np.ones(2), np.ones(2)), "last": (z2 > 0, z2 > 0)}[bug]
    dz2 = dlogits @ p["fc3.weight"] * gate[1]
    dz1 = dz2 @ p["fc2.weight"] * gate[0]
    return {"fc3.weight": dlogits.T @ h2, "fc3.bias": dlogits.sum(0),
            "fc2.weight": dz2.T @ h1, "fc2.bias": dz2.sum(0),
            "fc1.weight": dz1.T @ x, "fc1.bias": dz1.sum(0)}


def test_torch_mlp_hand_worked_example(impl: Any) -> None:
    """The network of test_mlp_hand_worked_example, loaded into TorchMLP: same names, logits."""
    try:
        model = impl.torch_mlp_from_params(hand_params(), "relu")
    except RuntimeError as error:
        if isinstance(error, NotImplementedError) or "state_dict" not in str(error):
            raise
        pytest.fail(f"likely cause: TorchMLP's parameters are not named fc1.weight, fc1.bias, "
                    f"... (layers as attributes fc1, fc2, ..., not a ModuleList): {error}")
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
    act = TORCH_ACTIVATIONS[activation]
    wrong = {"an activation applied to the logits too: the last layer has none":
                 act(act(torch.ones(1, dtype=torch.float64))).item(),
             "the exact erf GELU (F.gelu's default) instead of approximate='tanh'":
                 F.gelu(torch.ones(1, dtype=torch.float64)).item()}
    assert logits == pytest.approx(ACTIVATION_AT_ONE[activation], rel=1e-14), (
        f"{then(likely_np(logits, wrong))}{activation}: logits {logits}, want "
        f"{ACTIVATION_AT_ONE[activation]}"
    )


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
    try:
        logits = model(torch.randn(6, 3, device="meta", dtype=torch.float64))
    except RuntimeError as error:
        if isinstance(error, NotImplementedError):
            raise
        pytest.fail(f"likely cause: a tensor made without device= (a constant) lands on the "
                    f"CPU: TorchMLP({activation}) on meta inputs: {error}")
    assert logits.device.type == "meta", f"TorchMLP({activation}) logits on {logits.device}"
    assert logits.dtype == torch.float64 and logits.shape == (6, 2), (logits.dtype, logits.shape)


def test_sgd_momentum_hand_worked_example(impl: Any) -> None:
    """w = 1, constant gradient 0.5, momentum 0.9, lr 0.1 then 0.2 (lr scales v, not folded in):
    v = 0.5, w = 0.95; v = 0.9 * 0.5 + 0.5 = 0.95, w = 0.95 - 0.2 * 0.95 = 0.76."""
    params: dict[str, np.ndarray] = {"w": np.array([1.0])}
    velocity: dict[str, np.ndarray] = {}
    for step, (lr, expected) in enumerate([(0.1, 0.95), (0.2, 0.76)]):
        impl.sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=lr, momentum=0.9)
        with hinted(params["w"], {cause: [w[step]] for cause, w in sgd_bugs_by_hand().items()}):
            np.testing.assert_allclose(params["w"], [expected], rtol=1e-15,
                                       err_msg=f"after step {step + 1}")


def sgd_bugs_by_hand(weight_decay: float = 0.0) -> dict[str, list[float]]:
    """w after each step of the hand-worked examples (w = 1, gradient 0.5, momentum 0.9, lr 0.1
    then 0.2, or 0.1 twice with weight decay) under each classic bug of the update rule."""
    lrs, m, g = ((0.1, 0.1) if weight_decay else (0.1, 0.2)), 0.9, 0.5
    bugs = {
        "the step uses last step's velocity: update v = m v + g first, then p -= lr v": "late",
        "the velocity is dampened (v = m v + (1 - m) g): torch's is v = m v + g": "dampened",
        "Nesterov momentum (p -= lr (g + m v)): torch's default steps by v": "nesterov",
        "lr folded into the velocity (v = m v - lr g): torch's v has no lr, p -= lr v": "lr_in_v",
        "momentum ignored: p -= lr g, with no velocity": "no_momentum",
        "weight decay applied after the momentum (decoupled, as SGDW): torch adds "
        "weight_decay * p to the gradient before it": "decoupled",
        "weight_decay ignored: the gradient is grads + weight_decay * p": "no_decay",
    }
    out = {}
    for cause, bug in bugs.items():
        w, v, ws = 1.0, 0.0, []
        for lr in lrs:
            d = g + (0.0 if bug in ("decoupled", "no_decay") else weight_decay * w)
            v_old, v = v, {"dampened": m * v + (1 - m) * d, "lr_in_v": m * v - lr * d}.get(
                bug, m * v + d)
            w = {"late": w - lr * v_old, "nesterov": w - lr * (d + m * v), "lr_in_v": w + v,
                 "no_momentum": w - lr * d, "decoupled": w - lr * (v + weight_decay * w)
                 }.get(bug, w - lr * v)
            ws.append(w)
        out[cause] = ws
    return out


def test_sgd_weight_decay_hand_worked_example(impl: Any) -> None:
    """weight_decay 0.1 adds 0.1 w to the gradient before momentum: g = 0.6, v = 0.6, w = 0.94;
    g = 0.5 + 0.094 = 0.594, v = 0.54 + 0.594 = 1.134, w = 0.94 - 0.1134 = 0.8266."""
    params: dict[str, np.ndarray] = {"w": np.array([1.0])}
    velocity: dict[str, np.ndarray] = {}
    bugs = sgd_bugs_by_hand(weight_decay=0.1)
    for step, expected in enumerate((0.94, 0.8266)):
        impl.sgd_momentum_step(params, {"w": np.array([0.5])}, velocity, lr=0.1, momentum=0.9,
                               weight_decay=0.1)
        with hinted(params["w"], {cause: [w[step]] for cause, w in bugs.items()}):
            np.testing.assert_allclose(params["w"], [expected], rtol=1e-14,
                                       err_msg=f"after step {step + 1}")


def test_value_hand_worked_example(impl: Any) -> None:
    """f = a*b + c**2 at (2, -3, 4): f = 10, df/da = b = -3, df/db = a = 2, df/dc = 2c = 8."""
    a, b, c = impl.Value(2.0), impl.Value(-3.0), impl.Value(4.0)
    f = a * b + c**2
    f.backward()
    assert f.data == 10.0
    grads = (a.grad, b.grad, c.grad)
    wrong = {
        "backward does not seed the output's gradient with 1 (self.grad = 1), or runs the nodes "
        "leaves first instead of in reverse topological order": (0.0, 0.0, 0.0),
        "d(a*b)/da taken as a instead of b (the other factor)": (2.0, -3.0, 8.0),
        "d(x**k)/dx = k x**(k-1): the factor k is missing": (-3.0, 2.0, 4.0),
    }
    assert grads == (-3.0, 2.0, 8.0), f"{then(likely_np(grads, wrong))}(df/da, df/db, df/dc)"


OVERWRITE = "the gradient is assigned (=) instead of accumulated (+=)"


def test_value_used_twice_accumulates_its_gradient(impl: Any) -> None:
    """Each use of a node adds its share: d(a + a)/da = 2, d(a * a)/da = 2a."""
    a = impl.Value(3.0)
    (a + a).backward()
    assert a.grad == 2.0, f"likely cause: {OVERWRITE}; d(a + a)/da = 2, got {a.grad}"
    a = impl.Value(3.0)
    (a * a).backward()
    assert a.grad == 6.0, f"likely cause: {OVERWRITE}; d(a * a)/da = 2a = 6, got {a.grad}"


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
    assert x.grad == 135.0, (
        f"likely cause: backward not in reverse topological order (breadth-first?): a node's "
        f"_backward must run after those of every node that uses it; dc/dx = 135, got {x.grad}"
    )


# op: (op, x, op'(x)) worked by hand; the test below uses op twice on the same input.
REUSED_OPS: dict[str, tuple[Callable[[Any], Any], float, float]] = {
    "tanh": (lambda x: x.tanh(), math.atanh(0.5), 0.75),
    "relu": (lambda x: x.relu(), 0.5, 1.0),
    "exp": (lambda x: x.exp(), math.log(2.0), 2.0),
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
    wrong = {cause: 3 * bad + 1 for cause, bad in REUSED_OP_BUGS.get(name, {}).items()}
    wrong["the chain-rule factor out.grad is missing"] = 2 * slope + 1  # out.grad is 1, then 2
    cause = (likely_np(x.grad, wrong)  # or whichever use ran last, alone:
             or likely_np(x.grad, {OVERWRITE: slope}) or likely_np(x.grad, {OVERWRITE: 2 * slope}))
    assert x.grad == pytest.approx(3 * slope + 1, rel=1e-12), (
        f"{then(cause)}{name}: d(op(x) + 2 op(x) + x)/dx = {3 * slope + 1}, got {x.grad}"
    )


# op: {cause: the slope op'(x) that bug gives at the x of REUSED_OPS}
REUSED_OP_BUGS: dict[str, dict[str, float]] = {
    "tanh": {"tanh's gradient computed from its input: it is 1 - y^2, y = tanh(x) the output":
             1 - math.atanh(0.5) ** 2},
    "relu": {"relu's gradient gated at the wrong place: out.grad passes wherever x > 0": 0.0},
    "exp": {"exp's gradient taken as x: it is exp(x), the output": math.log(2.0)},
    "log": {"log's gradient taken as 1/log(x): it is 1/x, x the input": 1 / math.log(2.0)},
    "pow3": {"d(x**k)/dx = k x**(k-1): the factor k is missing": 4.0},
}


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


# name: the likely cause when that case's gradient is wrong
HAND_WORKED_OP_HINTS = {
    "relu_negative": "relu's backward does not gate: out.grad passes only where x > 0",
    "relu_at_zero": "relu's slope at x = 0 taken as 1: PyTorch's is 0 (x > 0, not x >= 0)",
    "tanh_saturated": "tanh's gradient is 1 - y^2 with y = tanh(x) the output",
}


@pytest.mark.parametrize("name", HAND_WORKED_OPS)
def test_value_operation_hand_worked_gradients(impl: Any, name: str) -> None:
    f, inputs, value, expected = HAND_WORKED_OPS[name]
    leaves = [impl.Value(v) for v in inputs]
    try:
        out = f(*leaves)
    except OverflowError as error:
        pytest.fail(f"likely cause: math.exp overflows at |x| = {inputs[0]:g} (tanh written with "
                    f"exp(2x)?): use math.tanh; {name}: {error}")
    out.backward()
    assert out.data == pytest.approx(value, rel=1e-12, abs=1e-15), f"{name}: value"
    grads = tuple(leaf.grad for leaf in leaves)
    hint = HAND_WORKED_OP_HINTS.get(name)
    assert grads == pytest.approx(expected, rel=1e-12, abs=1e-15), (
        f"{'likely cause: ' + hint + '; ' if hint else ''}"
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
    finite = np.isfinite(yt.detach().numpy())
    assert np.isfinite(np.asarray(y, dtype=np.float64)[finite]).all(), (
        f"likely cause: overflow at large |x| (exp(2x) = inf, inf/inf = NaN): use np.tanh, or "
        f"exp of -|x| only; {name}(x) at x = {x}: {y}"
    )
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
    act = TORCH_ACTIVATIONS[activation]
    assert_matches_torch("logits", logits, logits_t, wrong={
        "an activation applied to the logits too: the last layer has none":
            lambda: act(logits_t.detach()).numpy()})
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


@settings(report_multiple_bugs=False)  # the first failure, with its hint, not a group of them
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
            np.testing.assert_array_equal(
                given[k], grads[k], err_msg=f"likely cause: grads[{k!r}] modified in place "
                f"(grads[k] += ...): the step changed the caller's grads[{k!r}]; compute "
                f"g = grads[k] + weight_decay * p as a new array")
            given[k].fill(np.nan)  # the caller reuses its buffers: nothing may still point here
            assert_matches_torch(f"params[{k!r}] {what}", ours[k], leaf)
            buffer = opt.state[leaf].get("momentum_buffer")
            if buffer is None:
                assert k not in velocity, f"likely cause: a velocity stored while momentum is " \
                    f"0; velocity[{k!r}] {what}: torch keeps no momentum buffer yet (momentum 0 " \
                    "so far), so there is no velocity"
            else:
                assert k in velocity, f"velocity[{k!r}] missing {what}"
                assert not np.isnan(velocity[k]).any(), (
                    f"likely cause: velocity[{k!r}] is the caller's grads[{k!r}] array itself "
                    f"(aliased; the caller refilled it): store a copy; velocity {what}"
                )
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
