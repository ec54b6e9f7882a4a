"""Watching a run: a progress bar, a JSONL metrics log, TensorBoard events, a PNG of the curves.

Files in the run directory::

    metrics.jsonl   one JSON object per line: {"kind": "train", "step", "loss", "lr",
                    "tokens_per_s", "grad_norm", "time"} or {"kind": "eval", "step",
                    "train_loss", "val_loss"}; appended, so a resumed run continues it.
                    A train record's ``loss`` is the loss that was minimised: for a mixture
                    of experts it includes ``router_aux_loss_coef`` times the load-balancing
                    loss (eval records are the plain cross-entropy). A mixture of experts'
                    train records add ``expert_fraction`` (per layer, each expert's share of
                    the tokens routed since the previous record, on rank 0) and
                    ``expert_balance`` (per layer, max/mean of those counts: 1.0 is even)
    tb/             TensorBoard event files (when the ``tensorboard`` package is installed)
    curves.png      training and validation loss against step, drawn at the end
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import atomic_path

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
TENSORBOARD_DIR = "tb"


def tensorboard_writer(log_dir: Path) -> Any | None:
    """A ``SummaryWriter``, or None with a message when ``tensorboard`` is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("TensorBoard logging is off: `pip install tensorboard` to turn it on "
                   "(or set train.tensorboard=false to silence this)")
        return None
    return SummaryWriter(log_dir=str(log_dir))


class Monitor:
    """Progress bar, metrics file, TensorBoard and final plot of one run (rank 0 only)."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        total_steps: int,
        start_step: int = 0,
        progress: bool = True,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.metrics_path = self.out_dir / METRICS_NAME
        self.bar: tqdm[Any] | None = None
        self.plain = False
        self.writer: Any | None = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        # A bar that redraws itself on a terminal; in a file or a pipe, plain lines instead
        # (one per logged step), not a line per redraw.
        self.plain = progress and not sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step",
                        disable=not progress or self.plain, dynamic_ncols=True)
        self.writer = tensorboard_writer(self.out_dir / TENSORBOARD_DIR) if tensorboard else None

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_train(self, step: int, *, loss: float, lr: float, tokens_per_s: float,
                  grad_norm: float, **extra: Any) -> None:
        """One training record; ``extra`` (e.g. a mixture of experts' ``expert_fraction`` and
        ``expert_balance``) joins it as given, and scalar lists go to TensorBoard per index."""
        if not self.enabled:
            return
        self._append({"kind": "train", "step": step, "loss": loss, "lr": lr,
                      "tokens_per_s": tokens_per_s, "grad_norm": grad_norm, **extra,
                      "time": time.time()})
        if self.plain:
            self.message(f"step {step}/{self.total_steps}: loss {loss:.4f}, lr {lr:.2e}, "
                         f"{tokens_per_s:,.0f} tokens/s")
        elif self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
            if math.isfinite(grad_norm):
                self.writer.add_scalar("train/grad_norm", grad_norm, step)
            for i, balance in enumerate(extra.get("expert_balance", [])):
                self.writer.add_scalar(f"experts/balance_layer{i}", balance, step)

    def log_eval(self, step: int, *, train_loss: float, val_loss: float) -> None:
        if not self.enabled:
            return
        self._append({"kind": "eval", "step": step, "train_loss": train_loss,
                      "val_loss": val_loss, "time": time.time()})
        self.message(f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
        if self.writer is not None:
            self.writer.add_scalar("eval/train_loss", train_loss, step)
            self.writer.add_scalar("eval/val_loss", val_loss, step)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self, *, plot: bool = True) -> Path | None:
        """Close the bar and the writer; draw ``curves.png`` (returned) when asked."""
        if not self.enabled:
            return None
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if plot and self.metrics_path.is_file():
            return plot_curves(self.metrics_path, self.out_dir / CURVES_NAME)
        return None


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; for a step logged twice (a resume), the later one."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                latest[(record["kind"], record["step"])] = record
    return sorted(latest.values(), key=lambda r: (r["step"], r["kind"]))


def plot_curves(metrics: str | os.PathLike[str], png: str | os.PathLike[str]) -> Path:
    """Draw training and validation loss against step from ``metrics`` into ``png``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), lw=0.8, alpha=0.6, label="train (batch)")
    if evals:
        steps = [r["step"] for r in evals]
        ax.plot(steps, [r["train_loss"] for r in evals], "o-", label="train (eval)")
        ax.plot(steps, [r["val_loss"] for r in evals], "s-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png
