"""A scalar reverse-mode autograd engine (after Karpathy's micrograd).

Every ``Value`` remembers the ``Value``s it was computed from (``_prev``) and a closure
(``_backward``) that, once ``out.grad = dL/d out`` is known, adds ``dL/d input`` to each input's
``grad`` by the chain rule. ``backward()`` runs these closures from the output back to the leaves,
each node only after every node that uses it.

Two rules make it correct:

* accumulate, never assign: a value used twice (``a * a``, or ``a`` feeding two branches) gets a
  gradient contribution from each use, so ``_backward`` does ``x.grad += ...``;
* topological order: a node's ``_backward`` may run only when its own ``grad`` is complete,
  i.e. after the ``_backward`` of every node that consumed it.

The method names (``tanh``, ``relu``, ``exp``, ``log``, ``**``) match ``torch.Tensor``'s, so the
same Python expression runs on both, which is how the spec checks this engine against PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class Value:
    """A scalar node of a computation graph: ``data`` (the value), ``grad`` (``dL/d data``).

    Example: ``f = a * b + c**2`` at ``a=2, b=-3, c=4``::

        >>> a, b, c = Value(2.0), Value(-3.0), Value(4.0)
        >>> f = a * b + c**2
        >>> f.backward()
        >>> f.data, a.grad, b.grad, c.grad
        (10.0, -3.0, 2.0, 8.0)
    """

    def __init__(self, data: float, _prev: tuple[Value, ...] = (), _op: str = "") -> None:
        self.data = float(data)
        self.grad = 0.0
        self._prev = _prev  # the inputs this value was computed from
        self._op = _op  # for printing and debugging only
        self._backward: Callable[[], None] = lambda: None  # leaves have nothing to propagate

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    # --- primitive operations: each sets how its output's gradient flows to its inputs ---

    def __add__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.__add__._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.__mul__._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    def __pow__(self, k: float) -> Value:
        """``self ** k`` for a constant (int or float) exponent ``k``."""
        if not isinstance(k, int | float):
            raise TypeError(f"only constant int/float exponents are supported; got {type(k)}")
        if self.data < 0 and not float(k).is_integer():
            raise ValueError(f"a negative base ({self.data}) needs an integer exponent; got {k}")
        out = Value(self.data**k, (self,), f"**{k}")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.__pow__._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.tanh._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(max(self.data, 0.0), (self,), "relu")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.relu._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    def exp(self) -> Value:
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.exp._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    def log(self) -> Value:
        """Natural logarithm; ``self.data`` must be > 0."""
        if self.data <= 0:
            raise ValueError(f"log needs a positive value; got {self.data}")
        out = Value(math.log(self.data), (self,), "log")

        def _backward() -> None:
            raise NotImplementedError("exercises/backprop/autograd.py::Value.log._backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")

        out._backward = _backward
        return out

    # --- everything else is built from the primitives, so it needs no backward of its own ---

    def __neg__(self) -> Value:
        return self * -1.0

    def __sub__(self, other: Value | float) -> Value:
        return self + (-other)

    def __truediv__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        return self * other**-1

    def __radd__(self, other: float) -> Value:
        return self + other

    def __rmul__(self, other: float) -> Value:
        return self * other

    def __rsub__(self, other: float) -> Value:
        return Value(other) - self

    def __rtruediv__(self, other: float) -> Value:
        return Value(other) / self

    # --- reverse-mode differentiation ---

    def backward(self) -> None:
        """Set ``grad`` of every node this value depends on to ``d self / d node``.

        Seeds ``self.grad = 1``, then calls each node's ``_backward`` in reverse topological
        order: a node only after all the nodes computed from it. Leaves' ``grad`` start at 0 and
        are accumulated into, so call it once per fresh graph.

        Example: ``b`` reaches ``c`` both directly and through ``a``, so ``b``'s ``_backward``
        must wait until ``a``'s has added its share::

            >>> x = Value(3.0)
            >>> a = x * x
            >>> b = a + x
            >>> c = a * b  # = x**4 + x**3
            >>> c.backward()
            >>> x.grad  # 4 x**3 + 3 x**2
            135.0

        Hints: build the order with a depth-first search that appends a node after all of its
        ``_prev`` (post-order), remembering visited nodes; then walk that list backwards.
        """
        raise NotImplementedError("exercises/backprop/autograd.py::Value.backward is a stub: fill it in (task backprop), then run `pytest exercises -m backprop`")
