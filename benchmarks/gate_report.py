"""The GPU gates' JSON summary as a Markdown table, written next to it (``summary.md``).

    python -m benchmarks.gate_report build/gates/summary.json

One row per gate: what it measures, the baseline measured beside it, the result, the goal, and
whether it is met (``yes``/``no``; ``n/a`` where the goal does not apply, e.g. a CPU run;
``FAILED`` with the error for a gate that did not finish).

``--step NAME --rc RC --expect GATE[,GATE...] [--log FILE]`` (used by ``gpu_gate.sh`` after
each step) first records, for every expected gate the step left no entry for, a failure naming
the step, its exit status (124/137: the step's time limit) and the log's last lines; with
``--ok-entry`` a step that exited 0 records a passing entry instead (a step that is not a
pytest gate, e.g. the FSDP smoke run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.gates import machine, write_summary

MAIN_FIGURE = {"train": "mfu", "decode": "tokens_per_s", "int8": "tokens_per_s",
               "api": "tokens_per_s"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _result(gate: dict[str, Any]) -> str:
    f = gate.get("figures") or {}
    name = gate.get("gate")
    ratio = gate.get("ratio")
    if name == "train":
        mfu = f.get("mfu")
        parts = [f"{_fmt(f.get('tokens_per_s'))} tokens/s",
                 f"MFU {mfu:.1%}" if isinstance(mfu, float) else "MFU -"]
    elif name == "decode":
        frac = f.get("of_bandwidth_limit")
        parts = [f"{_fmt(f.get('tokens_per_s'))} tokens/s",
                 f"{frac:.1%} of the bandwidth limit" if isinstance(frac, float) else "",
                 f"eager {_fmt(f.get('eager_tokens_per_s'))} tokens/s"]
    elif name == "int8":
        parts = [f"{_fmt(f.get('tokens_per_s'))} tokens/s"]
        if "dequant_tokens_per_s" in f:
            parts.append(f"with the dequantizing formula {_fmt(f['dequant_tokens_per_s'])} "
                         f"tokens/s ({_fmt(f.get('dequant_ratio'))}x the baseline)")
    elif name == "api":
        parts = [f"{n.split('_')[0]} streams: {_fmt(v.get('tokens_per_s'))} tokens/s "
                 f"({_fmt(v.get('ratio_to_engine'))}x engine), TTFT p50/p99 "
                 f"{_fmt(v.get('ttft_p50_ms'))}/{_fmt(v.get('ttft_p99_ms'))} ms"
                 for n, v in f.items() if isinstance(v, dict)]
    else:
        parts = [f"{_fmt(f.get('tokens_per_s'))} tokens/s" if "tokens_per_s" in f else
                 ", ".join(f"{k} {_fmt(v)}" for k, v in f.items())]
    if ratio is not None and name != "api":
        parts.append(f"{_fmt(ratio)}x the baseline")
    return "; ".join(p for p in parts if p)


def _baseline(gate: dict[str, Any]) -> str:
    base = gate.get("baseline")
    if not base:
        return "-"
    f = base.get("figures") or {}
    if "tokens_per_s" in f:
        return f"{base['who']}: {_fmt(f['tokens_per_s'])} tokens/s"
    return str(base["who"])


def _met(gate: dict[str, Any]) -> str:
    if gate.get("error"):
        return "FAILED"
    return {True: "yes", False: "no", None: "n/a"}[gate.get("met")]


def markdown(summary: dict[str, Any]) -> str:
    """The table (and the machine and date above it) for ``summary``."""
    m = summary.get("machine") or {}
    lines = [f"GPU gates, {summary.get('date', '?')}, on {m.get('device', '?')} (torch "
             f"{m.get('torch', '?')}, CUDA {m.get('cuda') or '-'}, driver "
             f"{m.get('driver') or '-'}, {m.get('cpu_count', '?')} CPUs)", "",
             "| gate | what | baseline (same run) | result | goal | met |",
             "|---|---|---|---|---|---|"]
    for gate in summary.get("gates", []):
        if gate.get("error"):
            error = " ".join(str(gate["error"]).split())[:300].replace("|", "/")
            lines.append(f"| {gate['gate']} | {gate.get('what', '-')} | - | "
                         f"error: {error} | - | FAILED |")
            continue
        goal = (gate.get("goal") or {}).get("text", "-")
        lines.append(f"| {gate['gate']} | {gate.get('what', '-')} | {_baseline(gate)} | "
                     f"{_result(gate)} | {goal} | {_met(gate)} |")
    return "\n".join(lines) + "\n"


def record_step(path: Path, step: str, rc: int, expect: list[str], log: Path | None,
                ok_entry: bool) -> None:
    """Record the gates ``step`` was to produce and did not (see the module docstring)."""
    summary: dict[str, Any] = {}
    if path.is_file():
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            summary = {}
    have = {g.get("gate") for g in summary.get("gates", [])}
    tail = ""
    if log is not None and log.is_file():
        tail = " | ".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-8:])
    added = []
    for gate in expect:
        if rc == 0 and ok_entry:
            added.append({"gate": gate, "what": f"step {step}", "figures": {"exit_status": 0},
                          "ratio": None, "goal": {"text": "runs to the end (exit 0)"},
                          "met": True})
        elif gate not in have or (rc != 0 and ok_entry):
            why = "its time limit" if rc in (124, 137) else f"exit status {rc}"
            if rc == 0:
                why = "exit 0 but no result (skipped?)"
            added.append({"gate": gate, "error": f"step {step}: {why}; log: {tail}"[:2000],
                          "met": False})
    if added:
        import torch

        here = summary.get("machine") or machine("cuda" if torch.cuda.is_available() else "cpu")
        write_summary(path, added, here)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--step")
    parser.add_argument("--rc", type=int, default=0)
    parser.add_argument("--expect", default="")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--ok-entry", action="store_true")
    args = parser.parse_args(argv)
    if args.step:
        record_step(args.summary, args.step, args.rc,
                    [g for g in args.expect.split(",") if g], args.log, args.ok_entry)
    if not args.summary.is_file():
        parser.error(f"{args.summary}: no such summary")
    summary = json.loads(args.summary.read_text(encoding="utf-8"))
    out = args.summary.with_suffix(".md")
    out.write_text(markdown(summary), encoding="utf-8")
    print(out.read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
