"""A small non-linear classification dataset: interleaved spirals (as in CS231n's notes).

No straight line separates two spiral arms, so a linear classifier stays near chance while an MLP
with one hidden layer can fit them: a quick, visual check that backprop works.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .layers import Array


def make_spirals(
    n_per_class: int = 100, n_classes: int = 3, noise: float = 0.2, seed: int = 0
) -> tuple[Array, NDArray[np.int64]]:
    """Points on ``n_classes`` interleaved spiral arms in the plane, and their class labels.

    Returns ``X`` (N, 2) float64 in roughly ``[-1, 1]^2`` and ``y`` (N,) int64 in
    ``[0, n_classes)``, ``N = n_per_class * n_classes``, class by class. Arm ``c`` has radius going
    from 0 to 1 while its angle sweeps 4 radians from ``4c`` (plus Gaussian ``noise`` on the angle).
    Deterministic given ``seed``.

    Example::

        >>> X, y = make_spirals(n_per_class=50, n_classes=2)
        >>> X.shape, y.shape, np.bincount(y).tolist()
        ((100, 2), (100,), [50, 50])
    """
    if n_per_class < 1 or n_classes < 2 or noise < 0:
        raise ValueError(f"need n_per_class >= 1, n_classes >= 2, noise >= 0; got "
                         f"{n_per_class}, {n_classes}, {noise}")
    rng = np.random.default_rng(seed)
    X = np.empty((n_per_class * n_classes, 2))
    y = np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)
    radius = np.linspace(0.0, 1.0, n_per_class)
    for c in range(n_classes):
        angle = np.linspace(4.0 * c, 4.0 * (c + 1), n_per_class)
        angle = angle + rng.standard_normal(n_per_class) * noise
        rows = slice(c * n_per_class, (c + 1) * n_per_class)
        X[rows] = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    return X, y
