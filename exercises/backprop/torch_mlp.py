"""The same MLP in PyTorch: ``nn.Linear`` layers named ``fc1 .. fcL``, so the parameter names and
layouts are those of the NumPy params dict, and autograd replaces the hand-written backward."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Array
from .mlp import num_layers


class TorchMLP(nn.Module):
    """``fc1 -> act -> fc2 -> act -> ... -> fcL`` with ``sizes = [D, H1, ..., K]``.

    ``activation``: ``"relu"``, ``"gelu"`` (tanh approximation, as the NumPy ``gelu_forward``)
    or ``"tanh"``. ``named_parameters()`` gives ``fc1.weight`` (H1, D), ``fc1.bias`` (H1,), ...

    Example::

        >>> model = TorchMLP([2, 16, 3])
        >>> [name for name, _ in model.named_parameters()]
        ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
        >>> model(torch.zeros(5, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2 or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"sizes must be >= 2 positive ints [in, hidden..., out]; got {sizes}")
        if activation not in ("relu", "gelu", "tanh"):
            raise ValueError(f"activation must be 'relu', 'gelu' or 'tanh'; got {activation!r}")
        self.activation = activation
        self.num_layers = len(sizes) - 1
        raise NotImplementedError("exercises/backprop/torch_mlp.py::TorchMLP.__init__ is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

    def act(self, x: Tensor) -> Tensor:
        """The hidden activation, as named at construction."""
        raise NotImplementedError("exercises/backprop/torch_mlp.py::TorchMLP.act is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, K) for inputs ``x`` (N, D)."""
        raise NotImplementedError("exercises/backprop/torch_mlp.py::TorchMLP.forward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")


def torch_mlp_from_params(params: Mapping[str, Array], activation: str = "relu") -> TorchMLP:
    """A ``TorchMLP`` holding copies of the NumPy ``params`` (same dtype, e.g. float64).

    Example::

        >>> params = {"fc1.weight": np.array([[1.0, -1.0]]), "fc1.bias": np.array([0.5])}
        >>> model = torch_mlp_from_params(params)
        >>> model.fc1.weight
        Parameter containing:
        tensor([[ 1., -1.]], dtype=torch.float64, requires_grad=True)
    """
    L = num_layers(dict(params))  # checks the names and shapes
    sizes = [params["fc1.weight"].shape[1]] + [params[f"fc{i}.weight"].shape[0]
                                               for i in range(1, L + 1)]
    dtype = torch.from_numpy(np.asarray(params["fc1.weight"])).dtype
    model = TorchMLP(sizes, activation).to(dtype)
    state = {name: torch.from_numpy(np.array(value)) for name, value in params.items()}
    model.load_state_dict(state, strict=True)  # strict: a missing or extra name is an error
    return model
