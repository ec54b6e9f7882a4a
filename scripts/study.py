"""The architecture study (issue 16): GPT-2-style vs Llama-style vs MoE, and each speed option,
every variant given the same wall-clock on Tiny Shakespeare (characters and GPT-2 BPE tokens).

Each variant trains in its own process (so its peak resident memory is its own), from the same
recipe (``configs/shakespeare_char_fast.yaml``: batch 32 x 64, lr 4e-3 with a 50-step warm-up
and a cosine to the end of the budget, AdamW), for the same *training* wall-clock (default
104 s, nanoGPT's CPU recipe time): a short calibration measures the variant's seconds per
step and sets ``train.max_steps`` so that its cosine ends with the budget (as
``benchmarks/test_trainer_bench.py`` does; the calibration's time counts against the budget).
The validation loss is measured on 20 fixed batches at about 10 points (the clock paused), and
the final model on 200 fixed batches of 32 x 64 validation tokens: one evaluator, the same
batches for every variant of a tokenizer.

Variants (``--only`` takes a comma-separated list of these names):

* ``nanogpt``: nanoGPT's published CPU recipe (``configs/shakespeare_char.yaml``: batch 12,
  lr 1e-3), the issue's baseline, given the same wall-clock;
* ``gpt2``: this project's fastest GPT-2-style recipe (0.80M parameters with the char vocabulary);
* ``llama``: ``configs/llama_char.yaml``: RMSNorm, rotary, SwiGLU, 2 kv heads, untied head:
  the same parameter count as ``gpt2`` (its untied head matches GPT-2's position table; on BPE
  tokens, where a second 50,257 x 128 table would double the model, the Llama variants tie it);
* ``moe``: ``configs/moe_char.yaml``: 4 SwiGLU experts of width 192, 2 per token: equal
  *active* parameters to ``llama`` (a token's feed-forward is 2 x 192 = 384 wide), twice the
  feed-forward weights in total;
* ``muon``, ``qk_norm``, ``relu2``, ``zero_init``, ``softcap``: ``llama`` plus one option
  (``relu2`` with hidden width 576 keeps the parameter count: 2 x 128 x 576 = 3 x 128 x 384);
* ``combo``: ``llama`` with all five options.

Usage::

    python scripts/study.py                          # everything: 2 x 10 variants, about 50 min
    python scripts/study.py --only gpt2,llama,muon --data char --seconds 60
    python scripts/study.py --quick --only gpt2,llama --out /tmp/s   # a smoke run, seconds

It writes ``<out>/<variant>-<data>.json`` (``--out`` defaults to
``benchmarks/results/study``: val loss, steps, tokens/s, peak RSS, parameters, wall-clock,
machine, date, the curve), one PNG of all validation-loss curves (``--plot``, default
``benchmarks/results/study/curves.png``, shown in the README) and prints a Markdown table
(``scripts/results.py readme`` puts the stored records in the README). Data from
``$LLMFS_DATA`` (default ``../shared/data``): ``tinyshakespeare/input.txt`` and
``gpt2/gpt2.tiktoken``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import the project's packages
    sys.path.insert(0, str(ROOT))

NANOGPT, FAST, LLAMA = "shakespeare_char.yaml", "shakespeare_char_fast.yaml", "llama_char.yaml"
MUON = ["train.optimizer=muon", "train.muon_lr=0.02"]  # AdamW keeps lr for embeddings, head, norms
OPTIONS = ["model.qk_norm=true", "model.mlp=relu2", "model.intermediate_size=576",
           "model.zero_init_proj=true", "model.logit_softcap=15.0"]
# name -> (config file, overrides)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "nanogpt": (NANOGPT, []),
    "gpt2": (FAST, []),
    "llama": (LLAMA, []),
    "moe": ("moe_char.yaml", []),
    "muon": (LLAMA, MUON),
    "qk_norm": (LLAMA, ["model.qk_norm=true"]),
    "relu2": (LLAMA, ["model.mlp=relu2", "model.intermediate_size=576"]),
    "zero_init": (LLAMA, ["model.zero_init_proj=true"]),
    "softcap": (LLAMA, ["model.logit_softcap=15.0"]),
    "combo": (LLAMA, [*OPTIONS, *MUON]),
}
DATA = ("char", "bpe")
GOAL_CHAR = 1.70  # issue 16: char-level validation loss in nanoGPT's CPU wall-clock
CURVE_POINTS, CURVE_BATCHES, FINAL_BATCHES, BATCH, BLOCK = 10, 20, 200, 32, 64


def data_root() -> Path:
    return Path(os.environ.get("LLMFS_DATA", ROOT.parent / "shared" / "data"))


def overrides(variant: str, data: str, work: Path) -> list[str]:
    """The settings every variant shares: the data, where runs go, quiet."""
    root = data_root()
    common = [f"data.path={root / 'tinyshakespeare' / 'input.txt'}",
              f"data.dir={work / f'data-{data}'}", f"train.out_dir={work / 'runs' / variant}",
              "train.device=cpu", "train.progress=false", "train.tensorboard=false",
              "train.plot=false"]
    if data == "bpe":
        common += ["data.tokenizer=gpt2",
                   f"data.tokenizer_path={root / 'gpt2' / 'gpt2.tiktoken'}"]
        if VARIANTS[variant][0] != NANOGPT and VARIANTS[variant][0] != FAST:  # Llama-style
            common.append("model.tie_word_embeddings=true")  # equal parameters on 50,257 ids
    return common + VARIANTS[variant][1]


# ---------------------------------------------------------------- one variant (a worker)


def make_trainer(variant: str, data: str, work: Path, extra: list[str]) -> Any:
    from reference.trainer.config import load_config
    from reference.trainer.loop import Trainer

    config = load_config(ROOT / "configs" / VARIANTS[variant][0],
                         overrides(variant, data, work) + extra)
    return Trainer(config, overwrite=True)


def val_loss(trainer: Any, batches: int) -> float:
    """Mean loss over fixed windows of the validation split (seed 2024, as the benchmark's)."""
    import torch

    from reference.trainer.data import get_batch

    model = trainer.model.eval()
    generator = torch.Generator().manual_seed(2024)
    total = 0.0
    with torch.no_grad():
        for _ in range(batches):
            x, y = get_batch(trainer.val_tokens, BLOCK, BATCH, generator=generator)
            _, loss = model(x, y)
            total += float(loss)
    model.train()
    return total / batches


def run_variant(variant: str, data: str, seconds: float, work: Path, quick: bool) -> dict[str, Any]:
    """Calibrate, train for ``seconds`` of training wall-clock, evaluate; the result record."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    warmup = ["train.warmup_steps=2"] if quick else []
    probe = make_trainer(variant, data, work, ["train.max_steps=1000", *warmup])
    begin = time.perf_counter()
    for _ in range(2):
        probe.train_one_step()
    tick, timed = time.perf_counter(), 3 if quick else 15
    for _ in range(timed):
        probe.train_one_step()
    per_step = (time.perf_counter() - tick) / timed
    spent = time.perf_counter() - begin
    least = 5 if quick else 50
    steps = max(least, int(0.97 * (seconds - spent) / per_step))
    del probe
    trainer = make_trainer(variant, data, work, [f"train.max_steps={steps}", *warmup])
    every = max(1, steps // CURVE_POINTS)
    curve_batches = 2 if quick else CURVE_BATCHES
    curve: list[dict[str, float]] = []
    train_s = spent
    # a machine slowed down since the calibration: stop at 1.1 x the budget anyway
    while trainer.step < steps and (trainer.step < least or train_s < seconds * 1.1):
        tick = time.perf_counter()
        trainer.train_one_step()
        train_s += time.perf_counter() - tick
        if trainer.step % every == 0 or trainer.step == steps:
            curve.append({"step": trainer.step, "seconds": round(train_s, 2),
                          "val_loss": val_loss(trainer, curve_batches)})
    final = val_loss(trainer, 4 if quick else FINAL_BATCHES)
    model = trainer.model
    trainer.release()
    return {
        "kind": "study", "variant": variant, "data": data,
        "arch": model.config.arch, "optimizer": trainer.config.train.optimizer,
        "overrides": VARIANTS[variant][1], "config": VARIANTS[variant][0],
        "parameters": model.num_parameters(),
        "val_loss": final, "steps": trainer.step, "budget_s": seconds,
        "train_seconds": round(train_s, 2),
        "tokens_per_s": round(trainer.step * trainer.tokens_per_step / train_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "curve": curve, "quick": quick,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}",
        "date": datetime.date.today().isoformat(),
    }


# ---------------------------------------------------------------- the study (the parent)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = sorted({r["data"] for r in records}, key=DATA.index)
    fig, axes = plt.subplots(1, len(datas), figsize=(6.5 * len(datas), 4.5), squeeze=False)
    names = list(VARIANTS)
    colours = {n: f"C{i}" for i, n in enumerate(names)}  # one colour per variant in both panels
    for ax, data in zip(axes[0], datas, strict=True):
        rows = sorted((r for r in records if r["data"] == data),
                      key=lambda r: names.index(r["variant"]) if r["variant"] in names else 99)
        for r in rows:
            xs = [p["seconds"] for p in r["curve"]]
            ax.plot(xs, [p["val_loss"] for p in r["curve"]], marker=".", label=r["variant"],
                    color=colours.get(r["variant"]))
        if data == "char":
            ax.axhline(GOAL_CHAR, color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"goal {GOAL_CHAR:.2f}", (0.01, GOAL_CHAR),
                        xycoords=("axes fraction", "data"), xytext=(0, 2),
                        textcoords="offset points", fontsize=8, color="grey")
        ax.set(title=f"Tiny Shakespeare, {data} tokens", xlabel="training wall-clock (s)",
               ylabel="validation loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| variant | data | optimizer | parameters | steps | val loss | tokens/s | "
             "peak RSS (MB) | wall-clock (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['variant']} | {r['data']} | {r['optimizer']} | {r['parameters']:,} "
                     f"| {r['steps']} | {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", help=f"comma-separated variants (of {', '.join(VARIANTS)})")
    parser.add_argument("--data", default="char,bpe", help="comma-separated: char, bpe")
    parser.add_argument("--seconds", type=float, default=104.0,
                        help="training wall-clock per variant (default 104: nanoGPT's)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 s per variant, tiny evaluations")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "study")
    parser.add_argument("--plot", type=Path,
                        default=ROOT / "benchmarks" / "results" / "study" / "curves.png")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "study",
                        help="tokenized data and scratch run directories")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seconds = 3.0 if args.quick else args.seconds
    if args.worker:
        variant, data = args.worker
        record = run_variant(variant, data, seconds, args.work, args.quick)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{variant}-{data}.json").write_text(json.dumps(record, indent=1) + "\n")
        return 0
    names = args.only.split(",") if args.only else list(VARIANTS)
    datas = args.data.split(",")
    if bad := [n for n in names if n not in VARIANTS] + [d for d in datas if d not in DATA]:
        parser.error(f"unknown variant or data {bad}; variants: {', '.join(VARIANTS)}; "
                     f"data: {', '.join(DATA)}")
    missing = [p for p in (data_root() / "tinyshakespeare" / "input.txt",
                           data_root() / "gpt2" / "gpt2.tiktoken") if not p.is_file()]
    if missing:
        print(f"study: missing {', '.join(map(str, missing))}: set LLMFS_DATA", file=sys.stderr)
        return 2
    records = []
    for data in datas:
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, data, "--seconds", str(seconds),
                   "--out", str(args.out), "--work", str(args.work),
                   *(["--quick"] if args.quick else [])]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            record = json.loads((args.out / f"{name}-{data}.json").read_text())
            records.append(record)
            print(f"{name}-{data}: val {record['val_loss']:.4f} after {record['steps']} steps "
                  f"({time.perf_counter() - start:.0f} s with setup)", flush=True)
    # the plot shows every record kept in --out (a study may run in parts: --data char, then bpe)
    kept = [json.loads(p.read_text()) for p in sorted(args.out.glob("*-*.json"))]
    plot([r for r in kept if r.get("kind") == "study" and r.get("quick") == args.quick]
         or records, args.plot)
    print(table(records))
    print(f"\ncurves: {args.plot}; records: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
