"""Attention heatmaps: see which keys each query looks at.

Example::

    import torch
    from reference.attention import attention_weights
    from reference.viz import plot_attention

    q, k = torch.randn(6, 8), torch.randn(6, 8)
    w = attention_weights(q, k, is_causal=True)  # (6, 6), one head
    tokens = ["The", " cat", " sat", " on", " the", " mat"]
    plot_attention(w, "attention.png", query_labels=tokens, key_labels=tokens)

Matplotlib's object API with the Agg canvas is used directly (no ``pyplot``): no display, no
global figure state, safe to call from a server or a training loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from .atomic import atomic_open


def plot_attention(
    weights: Tensor,
    path: str | os.PathLike[str],
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG heatmap of one head's attention weights; return the path written.

    ``weights`` (Tq, Tk): row i is query i's distribution over the keys (e.g. one head of
    :func:`reference.attention.attention_weights`). The colour scale is fixed to [0, 1], so
    pictures of different heads compare directly and a masked key (weight 0) is the darkest
    colour. ``query_labels`` (Tq) and ``key_labels`` (Tk) name the rows and columns (e.g. the
    tokens). The file is written atomically: a reader never sees a half-written PNG.

    Raises ``TypeError`` if ``weights`` is not a tensor, ``ValueError`` if it is not 2-D, is
    empty, is not finite, or if a label list's length does not match its axis.
    """
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor (Tq, Tk), got {type(weights).__name__}")
    if weights.dim() != 2 or weights.numel() == 0:
        raise ValueError(
            f"weights must be a non-empty 2-D tensor (Tq, Tk) of one head; got shape "
            f"{tuple(weights.shape)} (select a head first, e.g. weights[0, h])"
        )
    t_q, t_k = weights.shape
    for name, labels, n in (("query_labels", query_labels, t_q), ("key_labels", key_labels, t_k)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} labels for {n} rows/columns of weights")
    w = weights.detach().to("cpu", torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("weights contain NaN or inf; nothing sensible to plot")

    # About 0.4 inch per cell, within bounds, so a short input is legible and a long one fits.
    width = min(max(3.0 + 0.4 * t_k, 4.0), 20.0)
    height = min(max(2.0 + 0.4 * t_q, 3.0), 20.0)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(w.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="attention weight")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    if query_labels is not None:
        ax.set_yticks(range(t_q), [str(s) for s in query_labels])
    if key_labels is not None:
        ax.set_xticks(range(t_k), [str(s) for s in key_labels], rotation=90)
    if title is not None:
        ax.set_title(title)

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "wb") as f:
        fig.savefig(f, format="png")
    return target
