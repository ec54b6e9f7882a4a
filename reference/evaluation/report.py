"""One evaluation report of a run: ``python -m reference evaluate RUN_DIR``.

Writes ``report.md`` and ``report.html`` (self-contained: the plots are embedded) with the PNGs
beside them, and ``report.json`` (the summary's figures as data, see :func:`summary`), by
default in ``RUN_DIR/eval/`` (an existing report is never replaced without ``overwrite``):

* **summary**: perplexity (with its context and stride), bits per byte, word perplexity and
  the expected calibration error, on an evaluation text: ``--text FILE``, or the run's own
  validation split (decoded from its prepared dataset), never the trainer's random windows;
* **loss curves** from the run's ``metrics.jsonl``;
* **perplexity by position in the context** (``token_nlls``' window positions);
* **calibration** of next-token probabilities: the reliability diagram and its table;
* **samples** from fixed prompts across temperatures and seeds, side by side, with their
  average log-probability, rep-4 and distinct-n (:mod:`.analysis`);
* **error analysis**: the failure categories with counts and examples.

With ``compare`` (a second run or checkpoint) or ``compare_int8`` (the same model with int8
linear layers, ``reference.quantization.quantize``) every table and plot shows both side by
side, on the same text, prompts and seeds. Example::

    evaluate("runs/main", compare="runs/reverse")   # -> runs/main/eval/report.md
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from ..atomic import atomic_open, atomic_write_text
from ..checkpoint import TRAINER_NAME, find_checkpoint, read_json
from ..inference import Loaded, load, with_context
from .analysis import Category, Sample, draw_samples, error_analysis
from .calibration import Calibration, next_token_calibration
from .perplexity import Perplexity, perplexity, token_nlls

__all__ = ["Options", "evaluate"]

REPORT_MD, REPORT_HTML, REPORT_JSON = "report.md", "report.html", "report.json"
LOSS_PNG, POSITION_PNG, CALIBRATION_PNG = "loss_curves.png", "ppl_by_position.png", \
    "calibration.png"
MAX_CHARSET_TOKENS = 5_000_000  # the training split's characters are read from this many tokens


@dataclass(frozen=True)
class Options:
    """What the report measures and draws (the command line's options)."""

    prompts: tuple[str, ...] = ()  # default: the run's sample prompt and the text's first line
    temperatures: tuple[float, ...] = (0.5, 0.8, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    max_new_tokens: int = 200
    context: int | None = None  # default: block_size; past it for a Llama-style model
    rope_scaling: str | None = None  # "linear:F" or "yarn:F" (Llama-style models only)
    sliding_window: int | None = None  # a window W imposed at evaluation (Llama-style only)
    stride: int | None = None  # default: the context (disjoint windows)
    max_chars: int = 100_000  # the evaluation text is cut to its first max_chars characters
    bins: int = 15
    device: str = "cpu"


@dataclass
class Evaluated:
    """One model's figures."""

    label: str
    loaded: Loaded
    run_dir: Path | None
    ppl: Perplexity
    position_nll: list[float]  # mean NLL by the predicting token's position in its window
    calibration: Calibration
    samples: list[Sample]
    categories: list[Category]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    trained: int | None = None  # the training length, when the context goes past it
    within_past: tuple[float, float] | None = None  # perplexity within / past ``trained``


# ---------------------------------------------------------------- where things are


def run_directory(path: Path, checkpoint: Path) -> Path | None:
    """The run directory of ``path`` (a run, or a checkpoint inside one); None for a bare
    checkpoint."""
    if (path / "checkpoints").is_dir():
        return path
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def data_directory(run_dir: Path | None, checkpoint: Path) -> Path | None:
    """The run's prepared dataset: its config's ``data.dir``, else ``RUN_DIR/data``."""
    if (checkpoint / TRAINER_NAME).is_file():
        configured = read_json(checkpoint / TRAINER_NAME).get("config", {}).get("data", {})
        if isinstance(configured, dict) and configured.get("dir"):
            return Path(configured["dir"])
    return run_dir / "data" if run_dir is not None else None


def _split_text(data_dir: Path | None, split: str, limit: int) -> str | None:
    """The first ``limit`` tokens of a prepared dataset's split, decoded; None without one."""
    from ..trainer.data import load_token_data

    if data_dir is None:
        return None
    try:
        data = load_token_data(data_dir)
    except FileNotFoundError:
        return None
    tokens = data.split("train" if split == "train" else "val")[:limit]
    return data.tokenizer().decode_bytes(tokens.tolist()).decode("utf-8", errors="replace")


def evaluation_text(text_file: str | os.PathLike[str] | None, run_dir: Path | None,
                    checkpoint: Path, max_chars: int) -> tuple[str, str]:
    """``(text, where it came from)``: the file's text, else the run's validation split."""
    if text_file is not None:
        path = Path(text_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"--text {path}: not found") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"--text {path}: not UTF-8 text ({e})") from None
        source = str(path)
    else:
        data_dir = data_directory(run_dir, checkpoint)
        found = _split_text(data_dir, "val", max_chars * 4)
        if found is None:
            raise FileNotFoundError(f"{checkpoint}: no validation split to evaluate on (no "
                                    f"prepared dataset in {data_dir}): give --text FILE")
        text, source = found, f"the validation split of {data_dir}"
    text = text[:max_chars]
    if len(text) < 2:
        raise ValueError(f"{source}: {len(text)} characters, too short to evaluate on")
    return text, source


# ---------------------------------------------------------------- measuring one model


def measure(label: str, loaded: Loaded, run_dir: Path | None, text: str, prompts: Sequence[str],
            charset: set[str] | None, options: Options, trained: int | None = None) -> Evaluated:
    """Every figure of the report for one model, on ``text``; ``trained``: the length the
    model was trained with, when its context now goes past it."""
    from ..trainer.monitor import METRICS_NAME, read_metrics

    model, tokenizer = loaded.model, loaded.tokenizer
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:
        raise ValueError(f"{loaded.checkpoint}: cannot tokenize the evaluation text: {e}") \
            from None
    ppl = perplexity(model, ids, text=text, context=options.context, stride=options.stride)
    nll, position = token_nlls(model, ids, context=options.context, stride=options.stride)
    sums = torch.zeros(ppl.context, dtype=torch.float64).index_add_(0, position, nll)
    counts = torch.bincount(position, minlength=ppl.context).double()  # (context,)
    position_nll = (sums / counts).tolist()  # NaN where no token was scored
    within_past = None
    if trained is not None and trained < ppl.context:
        within_past = (math.exp(float(sums[:trained].sum() / counts[:trained].sum())),
                       math.exp(float(sums[trained:].sum() / counts[trained:].sum())))
    calib = next_token_calibration(model, ids, context=options.context, bins=options.bins)
    samples = draw_samples(model, tokenizer, prompts, options.temperatures, options.seeds,
                           max_new_tokens=options.max_new_tokens, settings=loaded.sample,
                           charset=charset)
    metrics_path = run_dir / METRICS_NAME if run_dir is not None else None
    metrics = read_metrics(metrics_path) if metrics_path and metrics_path.is_file() else []
    return Evaluated(label, loaded, run_dir, ppl, position_nll, calib, samples,
                     error_analysis(samples), metrics,
                     trained if within_past is not None else None, within_past)


# ---------------------------------------------------------------- plots


def _figure(width: float = 7.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def plot_loss_curves(runs: Sequence[Evaluated], path: Path) -> Path | None:
    """Training (per logged batch) and validation loss against step; None without metrics."""
    if not any(r.metrics for r in runs):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for r in runs:
        train = [(m["step"], m["loss"]) for m in r.metrics if m["kind"] == "train"]
        evals = [(m["step"], m["val_loss"]) for m in r.metrics if m["kind"] == "eval"]
        if train:
            ax.plot(*zip(*train, strict=True), lw=0.8, alpha=0.6, label=f"{r.label}: train")
        if evals:
            ax.plot(*zip(*evals, strict=True), "s-", label=f"{r.label}: validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_position(runs: Sequence[Evaluated], path: Path) -> Path:
    """Perplexity of the tokens predicted at each position of the window (log scale), the
    training length marked by a vertical line when the context goes past it."""
    fig = _figure()
    ax = fig.add_subplot()
    for r in runs:
        ppl = [math.exp(v) if math.isfinite(v) else math.nan for v in r.position_nll]
        ax.plot(range(1, len(ppl) + 1), ppl, ".-",
                label=f"{r.label} (context {r.ppl.context}, stride {r.ppl.stride})")
    for trained in sorted({r.trained for r in runs if r.trained is not None}):
        ax.axvline(trained + 0.5, color="gray", ls="--", lw=1,
                   label=f"training length ({trained} tokens)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("tokens of context (position in the window + 1)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def plot_calibration(runs: Sequence[Evaluated], path: Path) -> Path:
    """Reliability diagram (accuracy against confidence per bin) over the bins' counts."""
    fig = _figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    for r in runs:
        c = r.calibration
        seen = [i for i, n in enumerate(c.counts) if n > 0]
        top.plot([c.confidence[i] for i in seen], [c.accuracy[i] for i in seen], "o-",
                 label=f"{r.label} (ECE {c.ece:.4f})")
        mids = [(a + b) / 2 for a, b in zip(c.edges, c.edges[1:], strict=False)]
        bottom.step(mids, c.counts, where="mid", label=r.label)
    top.set_ylabel("accuracy (top-1 = next token)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.grid(alpha=0.3)
    top.legend()
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("predictions")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- the document


Block = tuple[Any, ...]  # ("h1" | "h2" | "p", text), ("table", header, rows), ("img", alt, file)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", "⏎ ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown; a table cell's ``|`` is escaped and a newline shown as ``⏎``.

    >>> print(to_markdown([("h2", "Summary"), ("table", ["figure", "run"], [["a|b", 0.5]])]))
    ## Summary
    <BLANKLINE>
    | figure | run |
    |---|---|
    | a\\|b | 0.5 |
    <BLANKLINE>
    """
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(("#" if kind == "h1" else "##") + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "img":
            out.append(f"![{block[1]}]({block[2]})")
        else:
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], directory: Path, title: str) -> str:
    """The blocks as one HTML page, the PNGs embedded as data URIs (no file or CDN needed)."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            tag = "p" if kind == "p" else kind
            body.append(f"<{tag}>{html.escape(block[1])}</{tag}>")
        elif kind == "img":
            data = base64.b64encode((directory / block[2]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}">')
        else:
            head = "".join(f"<th>{html.escape(_cell(h))}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
                           + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:80em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:.3em .6em;vertical-align:top;white-space:pre-wrap;text-align:left}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _describe_model(r: Evaluated) -> list[Any]:
    from ..checkpoint import skeleton
    from ..llama import LlamaConfig
    from ..quantization import Int8Linear

    cfg = r.loaded.model.config
    # the architecture's count (int8 weights included), on the meta device where it can be
    params = sum(p.numel() for p in skeleton(cfg).parameters())
    int8 = any(isinstance(m, Int8Linear) for m in r.loaded.model.modules())
    kind = r.loaded.tokenizer.to_dict().get("kind", "?")
    arch = ""  # GPT-2's rows read as they always have
    if isinstance(cfg, LlamaConfig):
        arch = f"llama (n_kv_head {cfg.n_kv_head}"
        if cfg.n_experts:
            arch += f", {cfg.n_experts} experts, top-{cfg.n_experts_per_tok}"
        arch += "): "
    return [r.label, str(r.loaded.checkpoint), f"{arch}{cfg.n_layer} layers, {cfg.n_head} "
            f"heads, {cfg.n_embd} wide, block_size {cfg.block_size}"
            + (", int8 linear layers" if int8 else ""), f"{params:,}",
            f"{kind}, {cfg.vocab_size} ids"]


def summary(runs: Sequence[Evaluated], source: str, text: str) -> dict[str, Any]:
    """The report's figures as data (``report.json``): what the README's tables are made of."""
    out: dict[str, Any] = {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "text": {"source": source, "characters": len(text)},
        "runs": [],
    }
    for r in runs:
        label, checkpoint, model, params, tokenizer = _describe_model(r)
        last = {}
        for m in r.metrics:
            if m.get("kind") == "eval":
                last = m
        train_s = [m["time"] for m in r.metrics if "time" in m]
        out["runs"].append({
            "label": label, "checkpoint": checkpoint, "model": model,
            "parameters": int(params.replace(",", "")), "tokenizer": tokenizer,
            "perplexity": r.ppl.ppl, "context": r.ppl.context, "stride": r.ppl.stride,
            "trained_length": r.trained,
            "perplexity_within_training_length": r.within_past[0] if r.within_past else None,
            "perplexity_past_training_length": r.within_past[1] if r.within_past else None,
            "tokens": r.ppl.tokens, "bits_per_byte": r.ppl.bits_per_byte,
            "word_perplexity": r.ppl.word_ppl, "ece": r.calibration.ece,
            "steps": last.get("step"), "val_loss": last.get("val_loss"),
            "train_loss": last.get("train_loss"),
            "logged_seconds": (max(train_s) - min(train_s)) if len(train_s) > 1 else None,
        })
    return out


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def build_blocks(runs: Sequence[Evaluated], source: str, text: str,
                 images: dict[str, Path | None], max_new_tokens: int) -> list[Block]:
    labels = [r.label for r in runs]
    blocks: list[Block] = [
        ("h1", "Evaluation report: " + " vs ".join(labels)),
        ("p", f"Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `python -m reference "
              f"evaluate`. Evaluation text: {source} ({len(text):,} characters, "
              f"{len(text.encode('utf-8')):,} bytes, {len(text.split()):,} words)."),
        ("table", ["run", "checkpoint", "model", "parameters", "tokenizer"],
         [_describe_model(r) for r in runs]),
        ("h2", "Summary"),
        ("table", ["figure", *labels], [
            ["perplexity", *(f"{r.ppl.ppl:.4f}" for r in runs)],
            ["context, stride", *(f"{r.ppl.context}, {r.ppl.stride}" for r in runs)],
            ["tokens scored", *(f"{r.ppl.tokens:,}" for r in runs)],
            ["bits per byte", *(f"{r.ppl.bits_per_byte:.4f}" for r in runs)],
            ["word perplexity", *(_big(r.ppl.word_ppl) for r in runs)],
            [f"ECE ({len(runs[0].calibration.counts)} bins)",
             *(f"{r.calibration.ece:.4f}" for r in runs)],
            ["mean log-prob of the samples (nats/token)",
             *(f"{_mean([s.mean_logprob for s in r.samples]):.4f}" for r in runs)],
        ]),
        *(("p", f"{r.label}: {r.ppl.describe()}.") for r in runs),
        ("h2", "Loss curves"),
    ]
    if images[LOSS_PNG] is None:
        blocks.append(("p", "No metrics.jsonl: not a run directory (a bare checkpoint)."))
    else:
        blocks.append(("img", "loss curves", LOSS_PNG))
        rows = [[r.label, m["step"], m["train_loss"], m["val_loss"]]
                for r in runs for m in r.metrics if m["kind"] == "eval"]
        blocks.append(("p", "The trainer's estimates on random windows, for the curve's shape "
                            "only (the figures above are exact, on the evaluation text):"))
        blocks.append(("table", ["run", "step", "train loss", "validation loss"], rows))
    blocks += [
        ("h2", "Perplexity by position in the context"),
        ("p", "Each scored token by how many tokens of context its window gave it; the "
              "first positions only occur at the start of a window."),
        ("img", "perplexity by position", POSITION_PNG),
        *_past_training_blocks(runs),
        ("table", ["tokens of context", *labels], _position_rows(runs)),
        ("h2", "Calibration of next-token probabilities"),
        ("p", "Confidence: the top-1 probability; correct: the top-1 token is the next token. "
              "ECE = sum over bins of count / N x |accuracy - confidence|."),
        ("img", "reliability diagram", CALIBRATION_PNG),
        ("table", ["bin", *(f"{x} {r.label}" for r in runs
                            for x in ("count", "confidence", "accuracy"))],
         _calibration_rows(runs)),
        *_sample_blocks(runs, max_new_tokens),
        *_error_blocks(runs),
    ]
    return blocks


def _past_training_blocks(runs: Sequence[Evaluated]) -> list[Block]:
    """One line per run whose context goes past its training length (the dashed line)."""
    blocks: list[Block] = []
    for r in runs:
        if r.trained is None or r.within_past is None:
            continue
        within, past = r.within_past
        cfg = r.loaded.model.config
        scaling = getattr(cfg, "rope_scaling", None)
        how = (f"rotary scaling {scaling.type} x{scaling.factor:g}" if scaling is not None
               else "plain rotary extrapolation")
        if window := getattr(cfg, "sliding_window", None):
            how += f", sliding window {window}"
        blocks.append(("p", f"{r.label}: trained on {r.trained} tokens, evaluated with "
                            f"{r.ppl.context} ({how}): perplexity {within:.3f} within the "
                            f"training length (1-{r.trained} tokens of context), {past:.3f} "
                            f"past it ({r.trained + 1}-{r.ppl.context}), x{past / within:.2f}."))
    return blocks


def _big(value: float) -> str:
    """A figure that may be huge (a word perplexity): 2 decimals, or 4 significant digits."""
    return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:.4g}"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _position_rows(runs: Sequence[Evaluated]) -> list[list[Any]]:
    """Perplexity in position buckets 1, 2, 3-4, 5-8, ... tokens of context."""
    width = max(len(r.position_nll) for r in runs)
    rows, lo = [], 1
    while lo <= width:
        hi = min(2 * lo - 1 if lo > 2 else lo, width)
        cells = []
        for r in runs:
            part = [v for v in r.position_nll[lo - 1 : hi] if math.isfinite(v)]
            cells.append(f"{math.exp(sum(part) / len(part)):.3f}" if part else "n/a")
        rows.append([f"{lo}" if lo == hi else f"{lo}-{hi}", *cells])
        lo = hi + 1
    return rows


def _calibration_rows(runs: Sequence[Evaluated]) -> list[list[Any]]:
    edges = runs[0].calibration.edges
    rows = []
    for i in range(len(edges) - 1):
        row: list[Any] = [f"[{edges[i]:.3f}, {edges[i + 1]:.3f})"]
        for r in runs:
            c = r.calibration
            row += [c.counts[i], c.confidence[i], c.accuracy[i]]
        rows.append(row)
    return rows


def _sample_blocks(runs: Sequence[Evaluated], max_new_tokens: int) -> list[Block]:
    first = runs[0]
    blocks: list[Block] = [
        ("h2", "Samples"),
        ("p", f"Up to {max_new_tokens} new tokens per sample, past block_size by re-running "
              "the last block_size tokens; top_k and top_p are each run's own sample "
              "settings. log-prob: the average log-probability of the sample's tokens under "
              "its model (temperature 1); rep-4: the fraction of repeated token 4-grams; "
              "distinct-1/2/3 over words."),
    ]
    prompts = list(dict.fromkeys(s.prompt for s in first.samples))
    for prompt in prompts:
        blocks.append(("p", f"Prompt: {json.dumps(prompt, ensure_ascii=False)}"))
        header = ["temperature", "seed"]
        for r in runs:
            header += [f"{r.label}: sample", "log-prob", "rep-4", "distinct-1/2/3", "failures"]
        rows = []
        picked = [[s for s in r.samples if s.prompt == prompt] for r in runs]
        for row_samples in zip(*picked, strict=True):
            row: list[Any] = [row_samples[0].temperature, row_samples[0].seed]
            for s in row_samples:
                row += [s.text, f"{s.mean_logprob:.3f}", f"{s.repetition:.3f}",
                        "/".join(_cell(s.distinct[n]) for n in (1, 2, 3)),
                        ", ".join(s.failures) or "-"]
            rows.append(row)
        blocks.append(("table", header, rows))
    return blocks


def _error_blocks(runs: Sequence[Evaluated]) -> list[Block]:
    blocks: list[Block] = [("h2", "Error analysis")]
    header = ["category", "what it means", *(f"{r.label}: count" for r in runs)]
    rows = []
    for i, category in enumerate(runs[0].categories):
        rows.append([category.name, category.description,
                     *(f"{r.categories[i].count} of {r.categories[i].total}" for r in runs)])
    blocks.append(("table", header, rows))
    examples = []
    for r in runs:
        for c in r.categories:
            for index in c.examples:
                s = r.samples[index]
                examples.append([r.label, c.name, f"T={s.temperature}, seed {s.seed}",
                                 json.dumps(s.prompt, ensure_ascii=False), s.text[-160:]])
    if examples:
        blocks.append(("p", "Examples (the last 160 characters of each):"))
        blocks.append(("table", ["run", "category", "sample", "prompt", "text"], examples))
    return blocks


# ---------------------------------------------------------------- the command


def _label(path: Path, taken: Sequence[str]) -> str:
    label = path.name or str(path)
    return label if label not in taken else str(path)


def evaluate(run: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None,
             compare: str | os.PathLike[str] | None = None, compare_int8: str | None = None,
             text: str | os.PathLike[str] | None = None, overwrite: bool = False,
             options: Options | None = None) -> Path:
    """Write the report of ``run`` (and of ``compare``, or of its int8 copy with
    ``compare_int8`` = ``"float"`` or ``"dynamic"``) and return the path of ``report.md``."""
    options = options or Options()
    if compare is not None and compare_int8 is not None:
        raise ValueError("give --compare or --compare-int8, not both")
    path = Path(run)
    out_dir = Path(out) if out is not None else path / "eval"
    if not overwrite and ((out_dir / REPORT_MD).exists() or (out_dir / REPORT_HTML).exists()):
        raise FileExistsError(f"{out_dir / REPORT_MD} exists: give --overwrite to replace it, "
                              "or another --out")
    checkpoint = find_checkpoint(path)
    run_dir = run_directory(path, checkpoint)
    eval_text, source = evaluation_text(text, run_dir, checkpoint, options.max_chars)
    train = _split_text(data_directory(run_dir, checkpoint), "train", MAX_CHARSET_TOKENS)
    charset = set(train) if train is not None else None
    first = load(checkpoint, device=options.device)
    trained = with_context(first.model, options.context, options.rope_scaling,
                           options.sliding_window)
    prompts = options.prompts or _default_prompts(first, eval_text)
    runs = [measure(_label(path, []), first, run_dir, eval_text, prompts, charset, options,
                    trained)]
    if compare_int8 is not None:
        from ..quantization import quantize

        other = load(checkpoint, device=options.device)
        with_context(other.model, options.context, options.rope_scaling, options.sliding_window)
        quantize(other.model, compare_int8)  # type: ignore[arg-type]
        runs.append(measure(f"{runs[0].label} int8 ({compare_int8})", other, run_dir,
                            eval_text, prompts, charset, options, trained))
    elif compare is not None:
        cpath = Path(compare)
        ccheckpoint = find_checkpoint(cpath)
        second = load(ccheckpoint, device=options.device)
        ctrained = with_context(second.model, options.context, options.rope_scaling,
                                options.sliding_window)
        runs.append(measure(_label(cpath, [runs[0].label]), second,
                            run_directory(cpath, ccheckpoint), eval_text, prompts, charset,
                            options, ctrained))
    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path | None] = {
        LOSS_PNG: plot_loss_curves(runs, out_dir / LOSS_PNG),
        POSITION_PNG: plot_position(runs, out_dir / POSITION_PNG),
        CALIBRATION_PNG: plot_calibration(runs, out_dir / CALIBRATION_PNG),
    }
    blocks = build_blocks(runs, source, eval_text, images, options.max_new_tokens)
    atomic_write_text(out_dir / REPORT_HTML, to_html(blocks, out_dir, str(blocks[0][1])))
    atomic_write_text(out_dir / REPORT_MD, to_markdown(blocks))
    atomic_write_text(out_dir / REPORT_JSON,
                      json.dumps(_no_nan(summary(runs, source, eval_text)), indent=2) + "\n")
    return out_dir / REPORT_MD


def _default_prompts(loaded: Loaded, text: str) -> tuple[str, ...]:
    """The run's own sample prompt and the start of the evaluation text's first line, those
    of them the tokenizer can encode (a character model knows only its training characters)."""
    line = next((s for s in text.splitlines() if s.strip()), "")[:24]
    prompts = []
    for prompt in dict.fromkeys(p for p in (loaded.sample.prompt, line) if p):
        try:
            loaded.tokenizer.encode(prompt)
        except ValueError:
            continue
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{loaded.checkpoint}: no default prompt can be encoded: give --prompt")
    return tuple(prompts)
