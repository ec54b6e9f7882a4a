"""Neural-network fundamentals in NumPy: the reference is the worked solution, re-exported.

For these fundamentals (hand-written backward passes, a softmax cross-entropy, an MLP, SGD with
momentum, a scalar autograd engine) the clear version is also the only version worth having: a
"production" NumPy MLP would not be faster in any way that matters, and the real model uses
PyTorch's autograd. So there is one source of truth, ``solutions/backprop/``, and this module
exposes its public API under ``reference.backprop`` for the rest of the package (e.g. the demo
command, which calls ``train_mlp``).
"""

from solutions.backprop import (
    ACTIVATIONS,
    GELU_C,
    GELU_K,
    Array,
    LinearCache,
    MLPCache,
    Params,
    TorchMLP,
    TrainResult,
    Value,
    accuracy,
    activation_backward,
    activation_forward,
    gelu_backward,
    gelu_forward,
    init_mlp_params,
    linear_backward,
    linear_forward,
    make_spirals,
    mlp_backward,
    mlp_forward,
    mlp_loss_and_grads,
    num_layers,
    relu_backward,
    relu_forward,
    sgd_momentum_step,
    softmax_cross_entropy,
    tanh_backward,
    tanh_forward,
    torch_mlp_from_params,
    train_mlp,
    train_on_spirals,
)

__all__ = [
    "ACTIVATIONS",
    "GELU_C",
    "GELU_K",
    "Array",
    "LinearCache",
    "MLPCache",
    "Params",
    "TorchMLP",
    "TrainResult",
    "Value",
    "accuracy",
    "activation_backward",
    "activation_forward",
    "gelu_backward",
    "gelu_forward",
    "init_mlp_params",
    "linear_backward",
    "linear_forward",
    "make_spirals",
    "mlp_backward",
    "mlp_forward",
    "mlp_loss_and_grads",
    "num_layers",
    "relu_backward",
    "relu_forward",
    "sgd_momentum_step",
    "softmax_cross_entropy",
    "tanh_backward",
    "tanh_forward",
    "torch_mlp_from_params",
    "train_mlp",
    "train_on_spirals",
]
