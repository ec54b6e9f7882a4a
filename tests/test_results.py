"""The README's result tables are what the measured files in benchmarks/results/ give.

``scripts/results.py`` stores pytest-benchmark runs, GPU gate summaries and evaluated runs, and
renders the README's "Performance" and "Training results" tables from them; these tests check the
README is up to date, that every stored file validates, and the storing and rendering on small
hand-made inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import results

ROOT = Path(__file__).resolve().parent.parent


def test_readme_tables_are_rendered_from_the_stored_results() -> None:
    current, fresh = results.rendered_readme()
    assert current == fresh, "README.md's tables are stale: run scripts/results.py readme"


def test_every_stored_result_names_its_machine_and_date() -> None:
    benches, gates, runs = results.load_results()
    assert benches or gates or runs, "benchmarks/results/ holds no measurement"
    for item in [*benches, *gates, *runs]:
        assert item.machine.strip()
        assert len(item.date) == 10 and item.date[4] == "-" and item.date[7] == "-"


def test_the_readme_shows_no_approximate_figures() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("performance", "training"):
        table = text.split(f"<!-- results:{name} -->")[1].split(f"<!-- /results:{name} -->")[0]
        assert "~" not in table


PYTEST_BENCHMARK = {
    "machine_info": {"machine": "x86_64", "processor": "x86_64",
                     "cpu": {"brand_raw": "Test CPU", "count": 2}},
    "datetime": "2026-11-29T10:00:00.000000",
    "benchmarks": [
        {"group": "attention", "name": "test_a[peer]", "stats": {"median": 0.002},
         "extra_info": {"impl": "torch sdpa", "peer": True}},
        {"group": "attention", "name": "test_a[ref]", "stats": {"median": 0.003},
         "extra_info": {"impl": "reference", "tokens_per_s": 1234.5}},
    ],
}


def test_a_benchmark_run_renders_as_ratios_to_its_peer(tmp_path: Path) -> None:
    run = results.bench_from_pytest_benchmark(PYTEST_BENCHMARK, "pytest benchmarks")
    assert run.machine == "Test CPU, 2 cores" and run.date == "2026-11-29"
    table = results.performance_table([run], [])
    row = "| attention | torch sdpa (2 ms) | reference 1.50x (3 ms; tokens_per_s 1,234) "
    assert row + "| Test CPU, 2 cores, 2026-11-29 |" in table
    assert "not run yet" in table  # no GPU summary stored: said, not left out


def test_a_gate_summary_and_a_run_render(tmp_path: Path) -> None:
    gates = results.GateRun(machine="NVIDIA H200", date="2026-12-01", gates=[
        results.Gate(name="decode", figures={"tokens_per_s": 6000.0},
                     baseline={"eager tokens_per_s": 1500.0}, ratio=4.0, goal=">= 5,000 tokens/s",
                     met=True)])
    table = results.performance_table([], [gates])
    assert ("| GPU gate: decode | eager tokens_per_s 1,500 | tokens_per_s 6,000; 4.00x the "
            "baseline; goal >= 5,000 tokens/s: met | NVIDIA H200, 2026-12-01 |") in table
    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    report = {"written": "2026-11-29T12:00:00+0000", "machine": "x86_64, 2 cores",
              "runs": [{"model": "4 layers", "parameters": 1000, "tokenizer": "char, 65 ids",
                        "steps": 10, "logged_seconds": 12.5, "val_loss": 1.5,
                        "perplexity": 4.25, "context": 64, "stride": 32, "tokens": 999,
                        "bits_per_byte": 2.0, "ece": 0.01}]}
    (run_dir / "eval" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    run = results.run_from_directory(run_dir, "tiny", "a test")
    assert ("| tiny: a test | 4 layers, 1,000 parameters | char, 65 ids | 10 | 12 s | 1.5000 | "
            "4.2500 (64, 32; 999) | 2.0000 | 0.0100 | x86_64, 2 cores, 2026-11-29 |"
            ) in results.training_table([run])


def _study(variant: str, val_loss: float, **extra: object) -> results.StudyRecord:
    fields: dict[str, object] = {
        "variant": variant, "data": "char", "arch": "llama", "optimizer": "adamw",
        "overrides": [], "config": "llama_char.yaml", "parameters": 804_224, "val_loss": val_loss,
        "steps": 600, "budget_s": 104.0, "train_seconds": 104.2, "tokens_per_s": 12_000.0,
        "peak_rss_mb": 400.0, "curve": [{"step": 600, "seconds": 104.2, "val_loss": val_loss}],
        "quick": False, "machine": "x86_64, 2 cores, 2 threads, load 0.50", "date": "2026-11-29"}
    return results.StudyRecord.model_validate({**fields, **extra})


def test_the_study_table_shows_each_variant_against_plain_llama() -> None:
    table = results.study_table([
        _study("llama", 1.75),
        _study("combo", 1.62, overrides=["model.qk_norm=true", "train.optimizer=muon"],
               optimizer="muon")])
    lines = table.splitlines()
    assert lines[2].startswith("| combo | char | llama_char.yaml: qk_norm=true, optimizer=muon | "
                               "804,224 | 600 | 104 | 12,000 | 400 | 1.6200 | -0.1300 |")
    assert lines[3].endswith("| 1.7500 | - |")  # sorted by loss; the baseline has no delta
    assert "104 s; x86_64, 2 cores, 2 threads, 2026-11-29; load average at the start 0.50" in table
    assert "Not run yet" in results.study_table([])


def test_a_quick_study_record_is_not_a_measurement(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(_study("llama", 2.0, quick=True).model_dump_json())
    code = ("from pathlib import Path; from scripts import results; "
            f"results.load_all(Path({str(tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--quick" in proc.stderr and proc.stderr.count("\n") == 1


def test_render_replaces_only_between_the_markers() -> None:
    text = "a\n<!-- results:x -->\nold\n<!-- /results:x -->\nb\n"
    expected = "a\n<!-- results:x -->\nnew\n<!-- /results:x -->\nb\n"
    assert results.render(text, {"x": "new"}) == expected


@pytest.mark.parametrize("content, message", [
    ("{", "not JSON"),
    ('{"kind": "bench", "machine": "m"}', "date"),
    ('{"kind": "nope"}', "unknown kind 'nope'"),
])
def test_a_bad_results_file_is_one_line_naming_it(tmp_path: Path, content: str,
                                                  message: str) -> None:
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    code = ("import sys; from pathlib import Path; from scripts import results; "
            f"results.load_results(Path({str(tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bad.json" in proc.stderr and message in proc.stderr


def test_a_gpu_gate_summary_is_kept_in_the_table_format(tmp_path: Path) -> None:
    from benchmarks import gates

    decode = {"gate": "decode", "figures": {"tokens_per_s": 6000.0},
              "baseline": {"who": "eager", "figures": {"tokens_per_s": 1500.0}}, "ratio": 4.0,
              "goal": {"metric": "tokens_per_s", "min": 5000, "text": ">= 5,000 tokens/s",
                       "applies": True}, "met": True}
    summary = gates.write_summary(tmp_path / "summary.json",
                                  [decode, gates.failure("api", "TimeoutError: limit")],
                                  gates.machine("cpu"))
    run = results.gates_from_summary(summary)
    assert run.machine.startswith("cpu (") and len(run.date) == 10
    table = results.performance_table([], [run])
    assert ("| GPU gate: decode | eager tokens_per_s 1,500 | tokens_per_s 6,000; 4.00x the "
            "baseline; goal >= 5,000 tokens/s: met |") in table
    assert "| GPU gate: api | none | TimeoutError: limit |" in table
