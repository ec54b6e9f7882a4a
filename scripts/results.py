"""The README's result tables, made from measured files and nothing else.

Measurements are stored under ``benchmarks/results/`` (committed, small JSON), each naming its
machine and date, and the README's "Performance" and "Training results" tables are rendered from
them between markers (``<!-- results:performance -->`` ... ``<!-- /results:performance -->``).
A test (tests/test_results.py) fails when the README differs from what the files give, so no
figure in those tables is typed by hand::

    .venv/bin/python -m pytest benchmarks --benchmark-json=build/bench.json
    .venv/bin/python scripts/results.py bench build/bench.json      # keep a benchmark run
    bash benchmarks/gpu_gate.sh build/gates                         # on a GPU machine
    .venv/bin/python scripts/results.py gates build/gates/summary.json
    .venv/bin/python -m reference evaluate runs/main                # writes eval/report.json
    .venv/bin/python scripts/results.py run runs/main --name main-job --note "README's main job"
    .venv/bin/python scripts/results.py readme                      # rewrite the tables
    .venv/bin/python scripts/results.py readme --check              # exit 1 if they are stale

A stored benchmark run keeps, per benchmark, its group, implementation, median time, whether
it is the group's named peer, and its extra figures (``tokens_per_s``...); a stored run keeps
the evaluation report's figures with the training log's last evaluation and wall-clock.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bench(Strict):
    group: str
    impl: str
    median_s: float
    peer: bool
    figures: dict[str, float | int | str]


class BenchRun(Strict):
    kind: str = "bench"
    machine: str
    date: str  # YYYY-MM-DD
    command: str
    benchmarks: list[Bench]


class Gate(Strict):
    name: str
    figures: dict[str, Any]
    baseline: dict[str, Any] | None = None
    ratio: float | None = None
    goal: str | None = None
    met: bool | None = None
    error: str | None = None


class GateRun(Strict):
    kind: str = "gates"
    machine: str
    date: str
    gates: list[Gate]


class CurvePoint(Strict):
    step: int
    seconds: float
    val_loss: float


class StudyRecord(Strict):
    """One variant of the architecture study (``scripts/study.py``) on one tokenization."""

    kind: str = "study"
    variant: str
    data: str
    arch: str
    optimizer: str
    overrides: list[str]
    config: str
    parameters: int
    val_loss: float
    steps: int
    budget_s: float
    train_seconds: float
    tokens_per_s: float
    peak_rss_mb: float
    curve: list[CurvePoint]
    quick: bool
    machine: str
    date: str


class TrainingRun(Strict):
    kind: str = "run"
    name: str
    note: str
    machine: str
    date: str
    model: str
    parameters: int
    tokenizer: str
    steps: int | None
    wall_clock_s: float | None
    val_loss: float | None
    perplexity: float
    context: int
    stride: int
    tokens: int
    bits_per_byte: float | None
    ece: float | None


def fail(message: str) -> None:
    """One line on stderr, exit 2: bad input never ends in a traceback."""
    print(f"results: {message}", file=sys.stderr)
    raise SystemExit(2)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{path}: not found")
    except json.JSONDecodeError as e:
        fail(f"{path}: not JSON ({e})")


def write(path: Path, model: BaseModel) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------- storing measurements


def bench_from_pytest_benchmark(data: dict[str, Any], command: str) -> BenchRun:
    """A pytest-benchmark ``--benchmark-json`` file, reduced to what the tables need."""
    try:
        info = data["machine_info"]
        cpu = info.get("cpu", {})
        machine = (f"{cpu.get('brand_raw') or info.get('processor') or info['machine']}, "
                   f"{cpu.get('count', '?')} cores")
        benches = [
            Bench(group=b.get("group") or b["name"],
                  impl=str(b["extra_info"].get("impl", b["name"])),
                  median_s=float(b["stats"]["median"]), peer=bool(b["extra_info"].get("peer")),
                  figures={k: v for k, v in b["extra_info"].items()
                           if k not in {"impl", "peer"} and isinstance(v, int | float | str)})
            for b in data["benchmarks"]
        ]
        return BenchRun(machine=machine, date=str(data["datetime"])[:10], command=command,
                        benchmarks=benches)
    except (KeyError, TypeError, ValidationError) as e:
        fail(f"not a pytest-benchmark JSON file: missing or bad {e}")
        raise  # unreachable


def gates_from_summary(data: dict[str, Any]) -> GateRun:
    """A GPU gate summary (``benchmarks/gpu_gate.sh``'s ``summary.json``, written by
    ``benchmarks.gates.write_summary``), reduced to what the table needs."""
    try:
        m = data["machine"]
        machine = (f"{m['device']}, torch {m['torch']}, CUDA {m.get('cuda')}"
                   if isinstance(m, dict) else str(m))
        gates = []
        for g in data["gates"]:
            base = g.get("baseline") or {}
            goal = g.get("goal") or {}
            gates.append(Gate(
                name=g["gate"], figures=g.get("figures") or {},
                baseline=({f"{base.get('who', 'baseline')} {k}": v
                           for k, v in (base.get("figures") or {}).items()} or None),
                ratio=g.get("ratio"), goal=goal.get("text") if isinstance(goal, dict) else goal,
                met=g.get("met"), error=g.get("error")))
        return GateRun(machine=machine, date=str(data["date"])[:10], gates=gates)
    except (KeyError, TypeError, AttributeError, ValidationError) as e:
        fail(f"not a GPU gate summary: missing or bad {e}")
        raise  # unreachable


def run_from_directory(run_dir: Path, name: str, note: str) -> TrainingRun:
    """A run directory's evaluation (``eval/report.json``, from ``python -m reference
    evaluate``) and training log (``metrics.jsonl``: wall-clock from the first to the last
    record)."""
    report = read_json(run_dir / "eval" / "report.json")
    try:
        first = report["runs"][0]
        return TrainingRun(
            name=name, note=note, machine=report["machine"], date=report["written"][:10],
            model=first["model"], parameters=first["parameters"], tokenizer=first["tokenizer"],
            steps=first["steps"], wall_clock_s=first["logged_seconds"],
            val_loss=first["val_loss"], perplexity=first["perplexity"],
            context=first["context"], stride=first["stride"], tokens=first["tokens"],
            bits_per_byte=first["bits_per_byte"], ece=first["ece"])
    except (KeyError, IndexError, TypeError, ValidationError) as e:
        fail(f"{run_dir / 'eval' / 'report.json'}: missing or bad field {e}")
        raise  # unreachable


# ---------------------------------------------------------------- loading and rendering


def load_results(root: Path = RESULTS) -> tuple[list[BenchRun], list[GateRun], list[TrainingRun]]:
    """Every stored measurement under ``root`` but the study's, validated (a bad file: one
    line, exit 2)."""
    benches, gates, runs, _ = load_all(root)
    return benches, gates, runs


def load_all(root: Path = RESULTS) -> tuple[list[BenchRun], list[GateRun], list[TrainingRun],
                                            list[StudyRecord]]:
    benches: list[BenchRun] = []
    gates: list[GateRun] = []
    runs: list[TrainingRun] = []
    study: list[StudyRecord] = []
    for path in sorted(root.glob("**/*.json")):
        data = read_json(path)
        kind = data.get("kind") if isinstance(data, dict) else None
        try:
            if kind == "bench":
                benches.append(BenchRun.model_validate(data))
            elif kind == "gates":
                gates.append(GateRun.model_validate(data))
            elif kind == "run":
                runs.append(TrainingRun.model_validate(data))
            elif kind == "study":
                record = StudyRecord.model_validate(data)
                if record.quick:
                    fail(f"{path}: a --quick smoke run, not a measurement; delete it")
                study.append(record)
            else:
                fail(f"{path}: unknown kind {kind!r} (expected bench, gates, run or study)")
        except ValidationError as e:
            error = e.errors()[0]
            fail(f"{path}: {'.'.join(map(str, error['loc']))}: {error['msg']}")
    return benches, gates, runs, study


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if value == 0 or abs(value) >= 1e-3:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def performance_table(benches: list[BenchRun], gates: list[GateRun]) -> str:
    rows = ["| benchmark | named peer (median) | result (time as a multiple of the peer's) "
            "| machine, date |", "|---|---|---|---|"]
    for run in benches:
        groups: dict[str, list[Bench]] = defaultdict(list)
        for b in run.benchmarks:
            groups[b.group].append(b)
        for group, items in sorted(groups.items()):
            peer = next((b for b in items if b.peer), None)
            cells = []
            for b in sorted(items, key=lambda b: b.median_s):
                if b is peer:
                    continue
                ratio = f" {b.median_s / peer.median_s:.2f}x" if peer else ""
                extra = ", ".join(f"{k} {fmt(v)}" for k, v in b.figures.items()
                                  if k != "device")  # the machine has its own column
                cells.append(f"{b.impl}{ratio} ({fmt(b.median_s * 1e3)} ms"
                             + (f"; {extra}" if extra else "") + ")")
            peer_cell = (f"{peer.impl} ({fmt(peer.median_s * 1e3)} ms)" if peer
                         else "none in this group")
            rows.append(f"| {group} | {peer_cell} | {'; '.join(cells)} | {run.machine}, "
                        f"{run.date} |")
    for grun in gates:
        for gate in grun.gates:
            result = gate.error or ", ".join(f"{k} {fmt(v)}" for k, v in gate.figures.items())
            if gate.ratio is not None:
                result += f"; {gate.ratio:.2f}x the baseline"
            goal = (f"; goal {gate.goal}: {'met' if gate.met else 'not met'}" if gate.goal
                    else "")
            base = (", ".join(f"{k} {fmt(v)}" for k, v in gate.baseline.items())
                    if gate.baseline else "none")
            rows.append(f"| GPU gate: {gate.name} | {base} | {result}{goal} | {grun.machine}, "
                        f"{grun.date} |")
    if not gates:
        rows.append("| GPU gates (`benchmarks/gpu_gate.sh`) | - | not run yet: no GPU has been "
                    "available to this project | - |")
    notes = [f"Measured with `{run.command}` on {run.machine}, {run.date}." for run in benches]
    return "\n".join(rows + (["", *notes] if notes else []))


def training_table(runs: list[TrainingRun]) -> str:
    rows = ["| run | model | tokenizer | steps | wall-clock | validation loss | perplexity "
            "(context, stride; tokens) | bits/byte | ECE | machine, date |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r.date, r.name)):
        clock = f"{r.wall_clock_s:.0f} s" if r.wall_clock_s is not None else "-"
        loss = f"{r.val_loss:.4f}" if r.val_loss is not None else "-"
        bpb = f"{r.bits_per_byte:.4f}" if r.bits_per_byte is not None else "-"
        ece = f"{r.ece:.4f}" if r.ece is not None else "-"
        rows.append(f"| {r.name}: {r.note} | {r.model}, {r.parameters:,} parameters | "
                    f"{r.tokenizer} | {r.steps if r.steps is not None else '-'} | {clock} | "
                    f"{loss} | {r.perplexity:.4f} ({r.context}, {r.stride}; {r.tokens:,}) | "
                    f"{bpb} | {ece} | {r.machine}, {r.date} |")
    return "\n".join(rows)


STUDY_BASELINE = "llama"  # each option's effect is measured against the plain Llama-style run


def study_table(records: list[StudyRecord]) -> str:
    """Per tokenization, every variant's final validation loss after the same training
    wall-clock, its difference from the plain Llama-style variant, speed and memory."""
    if not records:
        return "Not run yet: `python scripts/study.py` (about 50 minutes on 2 cores)."
    rows = ["| variant | data | what changes (config, overrides) | parameters | steps | "
            "training s | tokens/s | peak RSS (MB) | validation loss | vs llama |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    order = ["char", "bpe"]
    for r in sorted(records, key=lambda r: (order.index(r.data) if r.data in order else 9,
                                            r.val_loss)):
        base = next((b for b in records if b.data == r.data and b.variant == STUDY_BASELINE),
                    None)
        delta = f"{r.val_loss - base.val_loss:+.4f}" if base and base is not r else "-"
        what = r.config + (": " + ", ".join(o.removeprefix("model.").removeprefix("train.")
                                            for o in r.overrides) if r.overrides else "")
        rows.append(f"| {r.variant} | {r.data} | {what} | {r.parameters:,} | {r.steps:,} | "
                    f"{r.train_seconds:.0f} | {r.tokens_per_s:,.0f} | {r.peak_rss_mb:,.0f} | "
                    f"{r.val_loss:.4f} | {delta} |")
    budgets = sorted({f"{r.budget_s:g} s" for r in records})
    machines = sorted({f"{r.machine.split(', load')[0]}, {r.date}" for r in records})
    loads = [float(r.machine.rpartition("load ")[2]) for r in records if "load " in r.machine]
    load = f"; load average at the start {min(loads):.2f}-{max(loads):.2f}" if loads else ""
    note = (f"Training wall-clock per variant: {', '.join(budgets)}; {'; '.join(machines)}"
            f"{load}.")
    return "\n".join([*rows, "", note])


def render(readme: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        if start not in readme or end not in readme.partition(start)[2]:
            fail(f"README.md has no {start} ... {end} markers")
        head, _, rest = readme.partition(start)
        readme = head + f"{start}\n{table}\n{end}" + rest.partition(end)[2]
    return readme


def rendered_readme(readme_path: Path = README, root: Path = RESULTS) -> tuple[str, str]:
    """(the README as it is, the README with its tables made from ``root``)."""
    benches, gates, runs, study = load_all(root)
    text = readme_path.read_text(encoding="utf-8")
    return text, render(text, {"performance": performance_table(benches, gates),
                               "training": training_table(runs), "study": study_table(study)})


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/results.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("bench", help="keep a pytest-benchmark JSON run")
    b.add_argument("json")
    b.add_argument("--command", dest="made_by", default="pytest benchmarks",
                   help="the command that made it (stored with it)")
    g = sub.add_parser("gates", help="keep a GPU gate summary (benchmarks/gpu_gate.sh)")
    g.add_argument("json")
    r = sub.add_parser("run", help="keep a run's evaluation and training figures")
    r.add_argument("run_dir")
    r.add_argument("--name", required=True)
    r.add_argument("--note", default="")
    m = sub.add_parser("readme", help="rewrite the README's tables from benchmarks/results/")
    m.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)

    if args.action == "bench":
        run = bench_from_pytest_benchmark(read_json(Path(args.json)), args.made_by)
        write(RESULTS / f"bench-{slug(run.machine)[:40]}-{run.date}.json", run)
    elif args.action == "gates":
        gates = gates_from_summary(read_json(Path(args.json)))
        write(RESULTS / f"gates-{slug(gates.machine)[:40]}-{gates.date}.json", gates)
    elif args.action == "run":
        run_dir = Path(args.run_dir)
        write(RESULTS / "training" / f"{slug(args.name)}.json",
              run_from_directory(run_dir, args.name, args.note))
    else:
        current, fresh = rendered_readme()
        if args.check:
            if current != fresh:
                print("README.md's result tables are stale: run "
                      ".venv/bin/python scripts/results.py readme", file=sys.stderr)
                return 1
            print("README.md's result tables match benchmarks/results/")
        elif current != fresh:
            README.write_text(fresh, encoding="utf-8")
            print("rewrote README.md's result tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
