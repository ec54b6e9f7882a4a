"""A tiny character-level training run for tests that need a run directory (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import torch

from reference.trainer.config import load_config
from reference.trainer.loop import Trainer


def tiny_char_run(root: Path, *overrides: str) -> Path:
    """Train 8 steps of a 1-layer, 16-wide model (block_size 16) on a repeated sentence, with an
    evaluation every 4 steps; ``overrides`` add or change settings (``"model.arch=llama"``).
    Returns the run directory. The caller's torch thread count is kept."""
    text = root / "corpus.txt"
    text.write_text("the cat sat on the mat. a dog ran to the log! " * 300, encoding="utf-8")
    config = load_config(overrides=[
        f"train.out_dir={root / 'run'}", "train.device=cpu", "train.threads=1",
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "data.source=text", f"data.path={text}", "train.batch_size=4", "train.max_steps=8",
        "train.warmup_steps=1", "train.eval_interval=4", "train.eval_steps=1",
        "train.log_interval=1", "train.progress=false", "train.tensorboard=false",
        "train.plot=false", "sample.prompt=the ", "sample.max_new_tokens=8", *overrides,
    ])
    threads = torch.get_num_threads()
    Trainer(config).fit()
    torch.set_num_threads(threads)
    return root / "run"
