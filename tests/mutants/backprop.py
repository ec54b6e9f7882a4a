"""Classic learner bugs in the backprop component; specs/test_backprop.py must catch every one.

Each mutant replaces functions of ``solutions.backprop``; the harness patches every name bound to
the replaced function (``layers.linear_backward``, ``mlp.linear_backward``, the package's
re-export), so the MLP and the training loop use the broken one too, as a learner's bug would.
Methods are patched on the class (``Value.__mul__``, ``TorchMLP.act``). The comment on each group
names the spec tests expected to catch it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solutions import backprop as sol
from solutions.backprop.autograd import Value
from solutions.backprop.layers import GELU_C, GELU_K

Array = np.ndarray
# The originals, kept before any mutant replaces them (a mutant that wraps one calls these).
_mlp_forward, _mlp_backward_original = sol.mlp_forward, sol.mlp_backward
_activation_forward, _activation_backward = sol.activation_forward, sol.activation_backward
_linear_backward_original = sol.linear_backward


# --- linear ----------------------------------------------------------------------------------


def _linear_backward(
    dx: Callable[[Array, Array, Array], Array] = lambda dy, x, W: dy @ W,
    dW: Callable[[Array, Array], Array] = lambda dy, x: dy.T @ x,
    db: Callable[[Array], Array] = lambda dy: dy.sum(axis=0),
) -> Callable[..., Any]:
    def linear_backward(dy: Array, cache: tuple[Array, Array]) -> tuple[Array, Array, Array]:
        x, W = cache
        return dx(dy, x, W), dW(dy, x), db(dy)

    return linear_backward


def _linear_forward_no_bias(x: Array, W: Array, b: Array) -> tuple[Array, Any]:
    return x @ W.T, (x, W)


# --- activations -----------------------------------------------------------------------------


def _relu_backward_ungated(dy: Array, cache: Array) -> Array:
    return dy.copy()  # passes the gradient where x < 0 too


def _relu_backward_mask_from_dy(dy: Array, cache: Array) -> Array:
    return dy * (dy > 0)  # gates on the upstream gradient instead of the input


def _relu_backward_ge_zero(dy: Array, cache: Array) -> Array:
    return dy * (cache >= 0)  # slope 1 at exactly 0, where PyTorch uses 0


_erf = np.vectorize(math.erf)


def _gelu_exact_forward(x: Array) -> tuple[Array, Array]:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))), x  # the erf GELU, not GPT-2's


def _gelu_exact_backward(dy: Array, cache: Array) -> Array:
    x = cache
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * pdf)


def _gelu_backward(inner: bool = True, product_rule: bool = True) -> Callable[..., Array]:
    def gelu_backward(dy: Array, cache: Array) -> Array:
        x = cache
        t = np.tanh(GELU_C * (x + GELU_K * x**3))
        du = GELU_C * (1.0 + 3.0 * GELU_K * x**2) if inner else GELU_C
        dgelu = 0.5 * (1.0 + t) + (0.5 * x * (1.0 - t**2) * du if product_rule else 0.0)
        return dy * dgelu

    return gelu_backward


def _tanh_forward_via_exp(x: Array) -> tuple[Array, Array]:
    e = np.exp(2.0 * x)  # overflows past x = 355: inf / inf = NaN
    y = (e - 1.0) / (e + 1.0)
    return y, y


def _tanh_forward_caching_input(x: Array) -> tuple[Array, Array]:
    return np.tanh(x), x  # the docstring says the cache is the output y


def _tanh_backward_from_input(dy: Array, cache: Array) -> Array:
    return dy * (1.0 - np.tanh(cache) ** 2)  # consistent with the forward above, not the contract


def _tanh_backward_retanh(dy: Array, cache: Array) -> Array:
    return dy * (1.0 - np.tanh(cache) ** 2)  # the cache is already tanh(x)


def _tanh_backward_no_dy(dy: Array, cache: Array) -> Array:
    return 1.0 - cache**2  # forgets the chain-rule factor dy


# --- softmax cross-entropy -------------------------------------------------------------------


def _cross_entropy(
    stable: bool = True,
    log_of_softmax: bool = False,
    divide_grad: bool = True,
    reduce: Callable[[Array], Any] = np.mean,
    onehot_rows: bool = True,
) -> Callable[..., tuple[float, Array]]:
    def softmax_cross_entropy(logits: Array, targets: Array) -> tuple[float, Array]:
        n = logits.shape[0]
        z = logits - logits.max(axis=1, keepdims=True) if stable else logits
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        rows = np.arange(n)
        if log_of_softmax:  # log(softmax) underflows to log(0) = -inf at large logits
            with np.errstate(divide="ignore"):
                losses = -np.log(probs[rows, targets])
        else:
            losses = np.log(np.exp(z).sum(axis=1)) - z[rows, targets]
        grad = probs.copy()
        if onehot_rows:
            grad[rows, targets] -= 1.0
        else:
            grad[:, targets] -= 1.0  # subtracts 1 in the target columns of EVERY row
        return float(reduce(losses)), grad / n if divide_grad else grad

    return softmax_cross_entropy


# --- MLP -------------------------------------------------------------------------------------


def _mlp_forward_activation_on_logits(params: dict[str, Array], x: Array,
                                      activation: str = "relu") -> tuple[Array, Any]:
    logits, cache = _mlp_forward(params, x, activation)
    out, act = _activation_forward(activation, logits)  # an activation after the last layer
    return out, (cache, act)


def _mlp_backward_activation_on_logits(cache: Any, dlogits: Array) -> dict[str, Array]:
    inner, act = cache
    return _mlp_backward_original(inner, _activation_backward(inner.activation, dlogits, act))


def _mlp_backward(skip_activation: bool = False,
                  last_act_cache: bool = False) -> Callable[..., Any]:
    def mlp_backward(cache: Any, dlogits: Array) -> dict[str, Array]:
        grads = {}
        n_layers = len(cache.linear)
        dh = dlogits
        for i in range(n_layers, 0, -1):
            if i < n_layers and not skip_activation:
                act = cache.act[-1] if last_act_cache else cache.act[i - 1]
                dh = _activation_backward(cache.activation, dh, act)
            dh, grads[f"fc{i}.weight"], grads[f"fc{i}.bias"] = _linear_backward_original(
                dh, cache.linear[i - 1])
        return grads

    return mlp_backward


# --- SGD with momentum -----------------------------------------------------------------------


def _sgd(rule: str) -> Callable[..., None]:
    def sgd_momentum_step(params: dict[str, Array], grads: dict[str, Array],
                          velocity: dict[str, Array], lr: float, momentum: float = 0.9,
                          weight_decay: float = 0.0) -> None:
        for k, p in params.items():
            if rule == "velocity_aliases_the_grads":  # no copy, then updated in place
                g = grads[k] + weight_decay * p if weight_decay else grads[k]
                if momentum:
                    if k not in velocity:
                        velocity[k] = g  # with weight_decay 0 this IS the caller's grads[k]
                    else:
                        velocity[k] *= momentum
                        velocity[k] += g
                    g = velocity[k]
                p -= lr * g
                continue
            if rule == "weight_decay_added_to_the_callers_grads":
                grads[k] += weight_decay * p  # in place: the caller's array changes
            g = grads[k] + weight_decay * p
            v_old = velocity.get(k, np.zeros_like(p))
            if rule == "weight_decay_added_to_the_callers_grads":
                velocity[k] = momentum * v_old + grads[k]  # (otherwise torch's rule)
                p -= lr * velocity[k]
            elif rule == "velocity_kept_when_momentum_is_zero":  # v = 0 * v + g is stored too
                velocity[k] = momentum * v_old + g
                p -= lr * velocity[k]
            elif rule == "velocity_after_update":  # steps with last step's velocity
                p -= lr * v_old
                velocity[k] = momentum * v_old + g
            elif rule == "dampened":  # an exponential moving average, not torch's sum
                velocity[k] = momentum * v_old + (1.0 - momentum) * g
                p -= lr * velocity[k]
            elif rule == "lr_inside_velocity":  # v = m v - lr g; p += v: differs when lr changes
                velocity[k] = momentum * v_old - lr * g
                p += velocity[k]
            elif rule == "weight_decay_after_momentum":  # decoupled decay (SGDW), not torch.SGD
                velocity[k] = momentum * v_old + grads[k]
                p -= lr * (velocity[k] + weight_decay * p)
            elif rule == "nesterov":
                velocity[k] = momentum * v_old + g
                p -= lr * (g + momentum * velocity[k])
            elif rule == "momentum_ignored":
                p -= lr * g
            elif rule == "weight_decay_ignored":
                velocity[k] = momentum * v_old + grads[k]
                p -= lr * velocity[k]
            else:
                raise AssertionError(rule)

    return sgd_momentum_step


# --- autograd --------------------------------------------------------------------------------


def _as_value(x: Value | float) -> Value:
    return x if isinstance(x, Value) else Value(x)


def _binary(forward: Callable[[float, float], float],
            backward: Callable[[Value, Value, Value], None], op: str) -> Callable[..., Value]:
    def method(self: Value, other: Value | float) -> Value:
        other = _as_value(other)
        out = Value(forward(self.data, other.data), (self, other), op)
        out._backward = lambda: backward(self, other, out)
        return out

    return method


def _add_overwrites(s: Value, o: Value, out: Value) -> None:
    s.grad = out.grad  # = instead of +=: a node used twice keeps only its last use
    o.grad = out.grad


def _mul_overwrites(s: Value, o: Value, out: Value) -> None:
    s.grad = o.data * out.grad
    o.grad = s.data * out.grad


def _mul_swapped(s: Value, o: Value, out: Value) -> None:
    s.grad += s.data * out.grad  # d(s*o)/ds is o, not s
    o.grad += o.data * out.grad


def _unary(forward: Callable[[float], float], grad: Callable[[float, float, float], float],
           op: str) -> Callable[[Value], Value]:
    """A unary method whose backward adds ``grad(x, y, out_grad)`` to ``x.grad``."""

    def method(self: Value) -> Value:
        out = Value(forward(self.data), (self,), op)

        def _backward() -> None:
            self.grad += grad(self.data, out.data, out.grad)

        out._backward = _backward
        return out

    return method


def _unary_overwrites(forward: Callable[[float], float],
                      grad: Callable[[float, float], float], op: str) -> Callable[[Value], Value]:
    """A unary method whose backward assigns ``grad(x, y) * out.grad`` (= instead of +=)."""

    def method(self: Value) -> Value:
        out = Value(forward(self.data), (self,), op)

        def _backward() -> None:
            self.grad = grad(self.data, out.data) * out.grad

        out._backward = _backward
        return out

    return method


def _tanh_via_exp(x: float) -> float:
    e = math.exp(2.0 * x)  # OverflowError past x = 355
    return (e - 1.0) / (e + 1.0)


def _pow_missing_exponent(self: Value, k: float) -> Value:
    out = Value(self.data**k, (self,), f"**{k}")

    def _backward() -> None:
        self.grad += self.data ** (k - 1) * out.grad  # forgets the factor k

    out._backward = _backward
    return out


def _topological(self: Value) -> list[Value]:
    order: list[Value] = []
    seen: set[Value] = set()

    def visit(v: Value) -> None:
        if v not in seen:
            seen.add(v)
            for child in v._prev:
                visit(child)
            order.append(v)

    visit(self)
    return order


def _backward_bfs(self: Value) -> None:
    """Breadth-first from the output: a node can run before all its consumers have."""
    self.grad = 1.0
    queue, seen = [self], {self}
    while queue:
        v = queue.pop(0)
        v._backward()
        for child in v._prev:
            if child not in seen:
                seen.add(child)
                queue.append(child)


def _backward_not_reversed(self: Value) -> None:
    self.grad = 1.0
    for v in _topological(self):  # leaves first: nothing has a gradient yet
        v._backward()


def _backward_no_seed(self: Value) -> None:
    for v in reversed(_topological(self)):  # forgets self.grad = 1
        v._backward()


# --- TorchMLP --------------------------------------------------------------------------------


def _torch_act_exact_gelu(self: Any, x: Tensor) -> Tensor:
    if self.activation == "gelu":
        return F.gelu(x)  # erf GELU: not the NumPy (and GPT-2) tanh approximation
    return torch.relu(x) if self.activation == "relu" else torch.tanh(x)


def _torch_act_gelu_constant_on_the_cpu(self: Any, x: Tensor) -> Tensor:
    if self.activation == "gelu":  # a constant tensor made without device= (and dtype=)
        c = torch.tensor([math.sqrt(2.0 / math.pi)], dtype=x.dtype)
        return 0.5 * x * (1.0 + torch.tanh(c * (x + GELU_K * x**3)))
    return torch.relu(x) if self.activation == "relu" else torch.tanh(x)


def _torch_forward_activation_on_logits(self: Any, x: Tensor) -> Tensor:
    for i in range(1, self.num_layers + 1):
        x = self.act(getattr(self, f"fc{i}")(x))
    return x


def _torch_init_module_list(self: Any, sizes: list[int], activation: str = "relu") -> None:
    nn.Module.__init__(self)
    self.activation = activation
    self.num_layers = len(sizes) - 1
    # Works, but the parameters are named layers.0.weight, ... not fc1.weight, ...
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))


def _torch_forward_module_list(self: Any, x: Tensor) -> Tensor:
    for i, layer in enumerate(self.layers, start=1):
        x = layer(x)
        if i < self.num_layers:
            x = self.act(x)
    return x


MUTANTS: dict[str, dict[str, Any]] = {
    # linear: test_linear_hand_worked_example, ..._finite_differences, ..._torch_linear_...
    "linear_transposed_weight_grad": {
        "linear_backward": _linear_backward(dW=lambda dy, x: x.T @ dy)},
    "linear_missing_bias_grad": {
        "linear_backward": _linear_backward(db=lambda dy: np.zeros(dy.shape[1]))},
    "linear_bias_grad_mean_not_sum": {
        "linear_backward": _linear_backward(db=lambda dy: dy.mean(axis=0))},
    "linear_weight_grad_averaged_over_batch": {
        "linear_backward": _linear_backward(dW=lambda dy, x: dy.T @ x / len(x))},
    "linear_dx_uses_transposed_weight": {  # crashes or wrong
        "linear_backward": _linear_backward(dx=lambda dy, x, W: dy @ W.T)},
    "linear_forward_without_bias": {"linear_forward": _linear_forward_no_bias},
    # activations: test_activation_hand_worked_example, the finite-difference and torch tests,
    # test_backward_passes_read_the_documented_caches
    "relu_backward_passes_negative_inputs": {"relu_backward": _relu_backward_ungated},
    "relu_backward_masks_on_dy": {"relu_backward": _relu_backward_mask_from_dy},
    "relu_backward_slope_one_at_zero": {"relu_backward": _relu_backward_ge_zero},
    "gelu_exact_erf_instead_of_tanh": {"gelu_forward": _gelu_exact_forward,
                                       "gelu_backward": _gelu_exact_backward},
    "gelu_backward_missing_inner_derivative": {
        "gelu_backward": _gelu_backward(inner=False)},
    "gelu_backward_missing_product_rule": {"gelu_backward": _gelu_backward(product_rule=False)},
    "tanh_backward_applies_tanh_again": {"tanh_backward": _tanh_backward_retanh},
    "tanh_backward_forgets_dy": {"tanh_backward": _tanh_backward_no_dy},
    "tanh_forward_via_exp_overflows": {"tanh_forward": _tanh_forward_via_exp},
    "tanh_caches_its_input_not_its_output": {"tanh_forward": _tanh_forward_caching_input,
                                             "tanh_backward": _tanh_backward_from_input},
    # softmax cross-entropy: test_softmax_cross_entropy_* (±1e4, hand-worked, torch)
    "ce_without_max_subtraction": {"softmax_cross_entropy": _cross_entropy(stable=False)},
    "ce_log_of_softmax_underflows": {
        "softmax_cross_entropy": _cross_entropy(log_of_softmax=True)},
    "ce_grad_not_divided_by_n": {"softmax_cross_entropy": _cross_entropy(divide_grad=False)},
    "ce_loss_summed_not_averaged": {"softmax_cross_entropy": _cross_entropy(reduce=np.sum)},
    "ce_onehot_subtracted_in_every_row": {
        "softmax_cross_entropy": _cross_entropy(onehot_rows=False)},
    # MLP: test_mlp_hand_worked_example, test_mlp_with_cross_entropy_matches_torch_autograd
    "mlp_activation_on_logits": {"mlp_forward": _mlp_forward_activation_on_logits,
                                 "mlp_backward": _mlp_backward_activation_on_logits},
    "mlp_backward_skips_activation": {"mlp_backward": _mlp_backward(skip_activation=True)},
    "mlp_backward_uses_last_activation_cache": {
        "mlp_backward": _mlp_backward(last_act_cache=True)},
    # SGD: test_sgd_momentum_hand_worked_example, ..._weight_decay_..., ..._matches_torch_optim_sgd
    # (momentum schedules, velocity = torch's momentum_buffer, save and load, reused grads)
    **{f"sgd_{rule}": {"sgd_momentum_step": _sgd(rule)} for rule in (
        "velocity_after_update", "dampened", "lr_inside_velocity", "weight_decay_after_momentum",
        "nesterov", "momentum_ignored", "weight_decay_ignored", "velocity_aliases_the_grads",
        "velocity_kept_when_momentum_is_zero", "weight_decay_added_to_the_callers_grads")},
    # autograd: test_value_* (hand-worked, used twice, reused through every operation,
    # topological order, random expressions vs torch)
    "value_add_overwrites_grad": {"Value.__add__": _binary(lambda a, b: a + b, _add_overwrites,
                                                           "+")},
    "value_mul_overwrites_grad": {"Value.__mul__": _binary(lambda a, b: a * b, _mul_overwrites,
                                                           "*")},
    "value_mul_grad_uses_own_data": {"Value.__mul__": _binary(lambda a, b: a * b, _mul_swapped,
                                                              "*")},
    "value_pow_missing_exponent_factor": {"Value.__pow__": _pow_missing_exponent},
    "value_tanh_missing_chain_factor": {"Value.tanh": _unary(
        math.tanh, lambda x, y, g: 1.0 - y**2, "tanh")},
    "value_tanh_grad_from_input": {"Value.tanh": _unary(
        math.tanh, lambda x, y, g: (1.0 - x**2) * g, "tanh")},
    "value_tanh_overwrites_grad": {"Value.tanh": _unary_overwrites(
        math.tanh, lambda x, y: 1.0 - y**2, "tanh")},
    "value_tanh_via_exp_overflows": {"Value.tanh": _unary(
        _tanh_via_exp, lambda x, y, g: (1.0 - y**2) * g, "tanh")},
    "value_relu_grad_ungated": {"Value.relu": _unary(
        lambda x: max(x, 0.0), lambda x, y, g: g, "relu")},
    "value_relu_gate_above_one": {"Value.relu": _unary(
        lambda x: max(x, 0.0), lambda x, y, g: (x > 1) * g, "relu")},
    "value_exp_grad_uses_input": {"Value.exp": _unary(
        math.exp, lambda x, y, g: x * g, "exp")},
    "value_exp_overwrites_grad": {"Value.exp": _unary_overwrites(math.exp, lambda x, y: y,
                                                                 "exp")},
    "value_log_grad_divides_by_output": {"Value.log": _unary(
        math.log, lambda x, y, g: g / y if y else 0.0, "log")},
    "value_backward_breadth_first": {"Value.backward": _backward_bfs},
    "value_backward_not_reversed": {"Value.backward": _backward_not_reversed},
    "value_backward_without_seed": {"Value.backward": _backward_no_seed},
    # TorchMLP: test_numpy_and_torch_mlps_agree_..., test_torch_mlp_* (meta device included)
    "torch_mlp_exact_gelu": {"TorchMLP.act": _torch_act_exact_gelu},
    "torch_mlp_gelu_constant_on_the_cpu": {"TorchMLP.act": _torch_act_gelu_constant_on_the_cpu},
    "torch_mlp_activation_on_logits": {"TorchMLP.forward": _torch_forward_activation_on_logits},
    "torch_mlp_module_list_names": {"TorchMLP.__init__": _torch_init_module_list,
                                    "TorchMLP.forward": _torch_forward_module_list},
}

# Hints that teach: for each classic bug, the cause (a regex, case-insensitive) that the first
# spec test to catch it must name in its failure message (tests/test_mutants.py).
HINTS: dict[str, str] = {
    "linear_transposed_weight_grad": r"dW transposed",
    "linear_missing_bias_grad": r"db is not computed",
    "linear_bias_grad_mean_not_sum": r"db averaged over the batch instead of summed",
    "linear_weight_grad_averaged_over_batch": r"dW divided by the batch size",
    "linear_dx_uses_transposed_weight": r"transposed matrix in linear_backward",
    "linear_forward_without_bias": r"bias b is not added",
    "relu_backward_passes_negative_inputs": r"relu's backward does not gate",
    "relu_backward_masks_on_dy": r"gated on dy instead of on x",
    "relu_backward_slope_one_at_zero": r"slope at x = 0",
    "gelu_exact_erf_instead_of_tanh": r"exact erf GELU",
    "gelu_backward_missing_inner_derivative": r"inner derivative is missing",
    "gelu_backward_missing_product_rule": r"product rule",
    "tanh_backward_applies_tanh_again": r"applies tanh to its cache again",
    "tanh_backward_forgets_dy": r"chain-rule factor dy is missing",
    "tanh_forward_via_exp_overflows": r"overflow",
    "tanh_caches_its_input_not_its_output": r"cache as x.*output y",
    "ce_without_max_subtraction": r"subtract each row's max",
    "ce_log_of_softmax_underflows": r"log\(softmax\)",
    "ce_grad_not_divided_by_n": r"not divided by N",
    "ce_loss_summed_not_averaged": r"summed over the rows instead of averaged",
    "ce_onehot_subtracted_in_every_row": r"every row",
    "mlp_activation_on_logits": r"activation applied to the logits",
    "mlp_backward_skips_activation": r"activation's backward is skipped",
    "mlp_backward_uses_last_activation_cache": r"last layer's cache",
    "sgd_velocity_after_update": r"last step's velocity",
    "sgd_dampened": r"dampened",
    "sgd_lr_inside_velocity": r"lr folded into the velocity",
    "sgd_weight_decay_after_momentum": r"weight decay applied after the momentum",
    "sgd_nesterov": r"Nesterov",
    "sgd_momentum_ignored": r"momentum ignored",
    "sgd_weight_decay_ignored": r"weight_decay ignored",
    "sgd_velocity_aliases_the_grads": r"aliased.*copy",
    "sgd_velocity_kept_when_momentum_is_zero": r"velocity stored while momentum is 0",
    "value_add_overwrites_grad": r"assigned \(=\) instead of accumulated \(\+=\)",
    "value_mul_overwrites_grad": r"assigned \(=\) instead of accumulated \(\+=\)",
    "value_mul_grad_uses_own_data": r"the other factor",
    "value_pow_missing_exponent_factor": r"factor k is missing",
    "value_tanh_missing_chain_factor": r"chain-rule factor out\.grad is missing",
    "value_tanh_grad_from_input": r"computed from its input",
    "value_tanh_overwrites_grad": r"assigned \(=\) instead of accumulated \(\+=\)",
    "value_tanh_via_exp_overflows": r"overflow",
    "value_relu_grad_ungated": r"relu's backward does not gate",
    "value_relu_gate_above_one": r"gated at the wrong place",
    "value_exp_grad_uses_input": r"exp's gradient taken as x",
    "value_exp_overwrites_grad": r"assigned \(=\) instead of accumulated \(\+=\)",
    "value_log_grad_divides_by_output": r"1/x",
    "value_backward_breadth_first": r"reverse topological order",
    "value_backward_not_reversed": r"reverse topological order",
    "value_backward_without_seed": r"seed",
    "torch_mlp_exact_gelu": r"exact erf GELU",
    "torch_mlp_gelu_constant_on_the_cpu": r"without device=",
    "torch_mlp_activation_on_logits": r"activation applied to the logits",
    "torch_mlp_module_list_names": r"not named fc1\.weight",
}

# Survivors of scripts/mutation.py that no test can tell from the solution, and why.
EQUIVALENT: dict[tuple[str, str], str] = {
    ("sgd_momentum_step",
     "g = grads[k] + weight_decay * p if (weight_decay) or True else grads[k]"):
        "with weight_decay == 0 this adds 0.0 * p, and x + 0.0 * p == x for every finite "
        "parameter (the docstring's own rule, g = grads + weight_decay * params, is this line); "
        "only an infinite or NaN parameter, outside the contract, would tell them apart",
}
