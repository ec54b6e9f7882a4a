"""Neural-network fundamentals in NumPy: layers with hand-written backward passes, softmax
cross-entropy, an MLP, SGD with momentum, a scalar autograd engine, and the same MLP in PyTorch.

Modules, one idea each:

* ``layers``: ``linear``, ``relu``, ``gelu``, ``tanh`` as ``*_forward`` / ``*_backward`` pairs;
* ``losses``: ``softmax_cross_entropy``, stable at any logit size;
* ``mlp``: the MLP on a dict of named params (``fc1.weight``, ...), forward and backward;
* ``optim``: ``sgd_momentum_step``, ``torch.optim.SGD``'s rule;
* ``autograd``: ``Value``, a micrograd-style scalar reverse-mode engine;
* ``torch_mlp``: ``TorchMLP``, the same MLP in PyTorch, and ``torch_mlp_from_params``;
* ``data`` and ``train`` (given, not exercises): ``make_spirals``, ``train_mlp`` and the demo
  ``train_on_spirals``.

Suggested order: layers, losses, mlp, optim (then ``train_mlp`` works), autograd, torch_mlp.
"""

from .autograd import Value
from .data import make_spirals
from .layers import (
    GELU_C,
    GELU_K,
    Array,
    LinearCache,
    gelu_backward,
    gelu_forward,
    linear_backward,
    linear_forward,
    relu_backward,
    relu_forward,
    tanh_backward,
    tanh_forward,
)
from .losses import softmax_cross_entropy
from .mlp import (
    ACTIVATIONS,
    MLPCache,
    Params,
    activation_backward,
    activation_forward,
    init_mlp_params,
    mlp_backward,
    mlp_forward,
    mlp_loss_and_grads,
    num_layers,
)
from .optim import sgd_momentum_step
from .torch_mlp import TorchMLP, torch_mlp_from_params
from .train import TrainResult, accuracy, train_mlp, train_on_spirals

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
