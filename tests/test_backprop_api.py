"""The backprop component's edges and extras, beyond the spec (which runs on every implementation).

Here, against the worked solutions (the library has no NumPy engine): clear errors at the public
entry points, and the given code (not exercises): the dataset generator, the training loop and
``torch_mlp_from_params``. The docstring examples run in tests/test_doctests.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from solutions.backprop import (
    TorchMLP,
    Value,
    init_mlp_params,
    make_spirals,
    mlp_forward,
    sgd_momentum_step,
    softmax_cross_entropy,
    torch_mlp_from_params,
    train_mlp,
)

pytestmark = pytest.mark.backprop


# --- dataset and training loop (given code) ---------------------------------------------------


def test_make_spirals_is_deterministic_balanced_and_bounded() -> None:
    X, y = make_spirals(n_per_class=40, n_classes=4, noise=0.1, seed=3)
    X2, y2 = make_spirals(n_per_class=40, n_classes=4, noise=0.1, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert X.shape == (160, 2) and X.dtype == np.float64
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [40] * 4
    assert np.abs(X).max() <= 1.0 + 1e-12  # radius goes from 0 to 1
    assert not np.array_equal(X, make_spirals(n_per_class=40, n_classes=4, noise=0.1, seed=4)[0])


def test_spirals_are_not_linearly_separable() -> None:
    """A linear model (an MLP with no hidden layer) stays far from the 95% the MLP reaches."""
    X, y = make_spirals()
    result = train_mlp(X, y, hidden=(), steps=300)
    assert result.accuracy < 0.7, f"a linear model scored {result.accuracy:.2f} on the spirals"


def test_train_mlp_is_deterministic_and_reports_losses() -> None:
    X, y = make_spirals(n_per_class=30, seed=1)
    a = train_mlp(X, y, steps=20, seed=5)
    b = train_mlp(X, y, steps=20, seed=5)
    assert a.losses == b.losses and len(a.losses) == 20
    assert a.accuracy == b.accuracy and 0.0 <= a.accuracy <= 1.0
    assert sorted(a.params) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert a.losses[0] == pytest.approx(np.log(3), rel=0.5)  # about chance at the start


def test_init_mlp_params_shapes_and_scale() -> None:
    params = init_mlp_params([2, 256, 3], seed=0)
    assert {k: v.shape for k, v in params.items()} == {
        "fc1.weight": (256, 2), "fc1.bias": (256,), "fc2.weight": (3, 256), "fc2.bias": (3,)}
    assert params["fc2.weight"].std() == pytest.approx(np.sqrt(2 / 256), rel=0.2)  # He-normal
    assert not params["fc1.bias"].any()


def test_torch_mlp_from_params_holds_copies_in_the_params_dtype() -> None:
    """The docstring's promise: copies (training one does not move the other), same dtype."""
    params = {k: v.astype(np.float32) for k, v in init_mlp_params([2, 3, 2], seed=1).items()}
    before = {k: v.copy() for k, v in params.items()}
    model = torch_mlp_from_params(params)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for k, v in params.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} shares memory with the model")
    params["fc1.weight"][:] = 7.0
    assert not (model.fc1.weight == 7.0).any(), "the model shares memory with the params"


# --- clear errors at the edges ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "targets", "error", "match"),
    [
        (np.zeros(3), np.array([0]), ValueError, "2-D"),
        (np.zeros((2, 3)), np.array([0]), ValueError, r"shape \(2,\)"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError, "integer"),
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, r"\[0, 3\)"),
        (np.zeros((2, 3)), np.array([-1, 0]), ValueError, r"\[0, 3\)"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), ValueError, "at least one row"),
    ],
)
def test_softmax_cross_entropy_rejects_bad_inputs(logits: np.ndarray, targets: np.ndarray,
                                                  error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        softmax_cross_entropy(logits, targets)


def test_mlp_forward_rejects_bad_params_inputs_and_activation() -> None:
    params = init_mlp_params([2, 4, 3])
    with pytest.raises(ValueError, match=r"x must be \(N, 2\)"):
        mlp_forward(params, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="activation"):
        mlp_forward(params, np.zeros((5, 2)), "sigmoid")
    with pytest.raises(ValueError, match=re.escape("fc1.weight, fc1.bias")):
        mlp_forward({"layer1.weight": np.zeros((4, 2))}, np.zeros((5, 2)))
    bad = {**params, "fc2.weight": np.zeros((3, 5))}
    with pytest.raises(ValueError, match=r"fc2\.weight has 5 inputs but fc1 has 4"):
        mlp_forward(bad, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="sizes"):
        init_mlp_params([2])


def test_sgd_rejects_bad_hyperparameters_and_mismatched_grads() -> None:
    params = {"w": np.ones(2)}
    with pytest.raises(ValueError, match="lr"):
        sgd_momentum_step(params, {"w": np.ones(2)}, {}, lr=-0.1)
    with pytest.raises(ValueError, match="momentum"):
        sgd_momentum_step(params, {"w": np.ones(2)}, {}, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="same names"):
        sgd_momentum_step(params, {"v": np.ones(2)}, {}, lr=0.1)
    with pytest.raises(ValueError, match=re.escape("grads['w'] has shape (3,)")):
        sgd_momentum_step(params, {"w": np.ones(3)}, {}, lr=0.1)
    np.testing.assert_array_equal(params["w"], np.ones(2))  # nothing was changed


def test_value_rejects_what_it_cannot_differentiate() -> None:
    with pytest.raises(ValueError, match="positive"):
        Value(0.0).log()
    with pytest.raises(ValueError, match="integer exponent"):
        Value(-2.0) ** 0.5
    with pytest.raises(TypeError, match="constant"):
        Value(2.0) ** Value(2.0)  # type: ignore[operator]
    assert (Value(-2.0) ** 2).data == 4.0


def test_torch_mlp_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="activation"):
        TorchMLP([2, 3], "sigmoid")
    with pytest.raises(ValueError, match="sizes"):
        TorchMLP([2])
    with pytest.raises(ValueError, match=re.escape("fc1.weight")):
        torch_mlp_from_params({"w": np.zeros((2, 2))})


def test_train_mlp_rejects_bad_data() -> None:
    with pytest.raises(ValueError, match="X"):
        train_mlp(np.zeros((4, 2)), np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="steps"):
        train_mlp(np.zeros((4, 2)), np.zeros(4, dtype=int), steps=0)
