"""The components demo (``python -m solutions.demo``) runs end to end and writes its heatmap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from solutions import demo


def test_demo_trains_the_mlp_and_writes_a_heatmap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main(["--out", str(tmp_path), "--steps", "300"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("training accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0, out
    png = tmp_path / "attention.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_example_attends_to_earlier_occurrences() -> None:
    w = demo.attention_example("abab")
    torch.testing.assert_close(w.sum(-1), torch.ones(4))
    assert torch.all(w.triu(1) == 0), "causal: no weight on later characters"
    assert w[2, 0] == w[2, 2] > w[2, 1], "the second 'a' attends to both 'a's equally"


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--text", ""]])
def test_demo_rejects_bad_arguments(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path), *argv])
    assert exc.value.code == 2
