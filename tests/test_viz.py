"""The attention visualizer writes a real, non-blank PNG heatmap of one head's weights."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
import torch

from reference.attention import attention_weights
from reference.viz import plot_attention

pytestmark = pytest.mark.attention

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS = ["The", " cat", " sat", " on", " the", " mat"]


@pytest.fixture
def causal_weights() -> torch.Tensor:
    """One head's causal attention for a 6-token input: random q, k with a fixed seed."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    return attention_weights(q, k, is_causal=True)[0, 1]  # (Tq, Tk) = (6, 6): batch 0, head 1


def _colour_present(pixels: np.ndarray, rgb: np.ndarray, tol: float = 2 / 255) -> bool:
    return bool((np.abs(pixels[..., :3] - rgb).max(axis=-1) <= tol).any())


def test_plot_attention_writes_a_real_non_blank_png(
    causal_weights: torch.Tensor, tmp_path: Path
) -> None:
    out = plot_attention(causal_weights, tmp_path / "head.png", query_labels=TOKENS,
                         key_labels=TOKENS, title="layer 0, head 1")
    assert out == tmp_path / "head.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC, f"not a PNG file: starts with {data[:8]!r}"
    assert 2_000 < len(data) < 2_000_000, f"implausible PNG size: {len(data)} bytes"

    pixels = matplotlib.image.imread(out)  # (H, W, 3 or 4) floats in [0, 1]
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), pixels.shape
    height, width = pixels.shape[:2]
    assert 200 <= height <= 2_000 and 200 <= width <= 2_000, f"odd image size {width}x{height}"
    assert pixels[..., :3].var() > 1e-3, "the image is blank (one flat colour)"
    colours = np.unique((pixels[..., :3] * 255).round().reshape(-1, 3), axis=0)
    assert len(colours) >= 16, f"only {len(colours)} distinct colours: no heatmap drawn"

    # The scale is fixed to [0, 1]: masked future keys (weight 0) take the colour map's lowest
    # colour, and query 0 (which can only see key 0, weight 1) its highest.
    viridis = matplotlib.colormaps["viridis"]
    assert _colour_present(pixels, np.array(viridis(0.0)[:3])), "no cell drawn with weight 0"
    assert _colour_present(pixels, np.array(viridis(1.0)[:3])), "no cell drawn with weight 1"


def test_plot_attention_replaces_atomically_and_leaves_no_temp_files(
    causal_weights: torch.Tensor, tmp_path: Path
) -> None:
    target = tmp_path / "sub" / "head.png"
    plot_attention(causal_weights, target)
    first = target.read_bytes()
    plot_attention(causal_weights.flip(0), str(target))  # str paths work; overwrites in place
    assert target.read_bytes()[:8] == PNG_MAGIC and target.read_bytes() != first
    assert [p.name for p in target.parent.iterdir()] == ["head.png"], "temp files left behind"


@pytest.mark.parametrize(
    ("weights", "kwargs", "error", "match"),
    [
        (torch.rand(2, 4, 4), {}, ValueError, "2-D"),  # a stack of heads, not one head
        (torch.rand(4), {}, ValueError, "2-D"),
        (torch.rand(0, 3), {}, ValueError, "non-empty"),
        (torch.rand(3, 4), {"query_labels": ["a", "b"]}, ValueError, "query_labels has 2"),
        (torch.rand(3, 4), {"key_labels": ["a", "b", "c"]}, ValueError, "key_labels has 3"),
        (torch.full((2, 2), float("nan")), {}, ValueError, "NaN"),
        (np.eye(3), {}, TypeError, "torch.Tensor"),
    ],
)
def test_plot_attention_rejects_bad_input_clearly(
    weights: object, kwargs: dict[str, list[str]], error: type[Exception], match: str,
    tmp_path: Path,
) -> None:
    with pytest.raises(error, match=match):
        plot_attention(weights, tmp_path / "bad.png", **kwargs)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir()), "a rejected call must write nothing"
