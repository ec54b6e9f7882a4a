"""CPU twins of the GPU gates (``benchmarks/gates.py``): every gate's code path, tiny, on the CPU.

The GPU gates run rarely (``benchmarks/gpu_gate.sh`` on a lent card); these keep their code
from rotting in the default run: each gate function runs on a 2-layer model with a few steps or
tokens, its figures are finite and positive, its goal fields are there, the JSON summary and
the Markdown report are written from the results, and the script parses. The decode step that
CUDA graphs will capture is traced whole (``fullgraph=True``) and gives the tokens of
``reference.generate``. No timing is asserted.
"""

from __future__ import annotations

import doctest
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

import benchmarks.gates as gates
from benchmarks import gate_report
from benchmarks.gates import (
    GPTConfig,
    StaticDecoder,
    api_gate,
    decode_gate,
    failure,
    int8_gate,
    machine,
    train_gate,
    write_summary,
)
from reference.generate import generate
from reference.model import GPT
from reference.quantization import quantize

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=32)
PROMPT, NEW = 4, 8


def positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """Each gate once, tiny, on the CPU; peaks given so MFU and the bandwidth limit exist."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFS_PEAK_FLOPS", "1e12")
        mp.setenv("LLMFS_PEAK_BW", "1e10")
        decode = decode_gate("cpu", TINY, prompt_len=PROMPT, new_tokens=NEW, rounds=1)
        return {
            "train": train_gate("cpu", TINY, batch_size=2, steps=2, warmup=1, compile=False),
            "decode": decode,
            "int8": int8_gate("cpu", TINY, prompt_len=PROMPT, new_tokens=NEW, rounds=1,
                              dequant=True),
            "int8 reusing decode": int8_gate("cpu", TINY, prompt_len=PROMPT, new_tokens=NEW,
                                             rounds=1, bf16=decode),
            "api": api_gate("cpu", TINY, streams=(2, 4), prompt_len=PROMPT, new_tokens=4,
                            rounds=1),
        }


@pytest.mark.parametrize("name", ["train", "decode", "int8", "int8 reusing decode", "api"])
def test_every_gate_reports_its_figures_baseline_and_goal(results: dict[str, Any],
                                                          name: str) -> None:
    r = results[name]
    assert r["gate"] == name.split()[0]
    assert r["device"].startswith("cpu") and r["torch"] == torch.__version__
    assert positive(r["figures"]["tokens_per_s"]), r["figures"]
    assert r["baseline"]["who"] and positive(r["ratio"])
    assert set(r["goal"]) == {"metric", "min", "text", "applies"}
    assert r["goal"]["applies"] is False and r["met"] is None  # the goals are set for GPUs
    json.dumps(r)  # JSON-ready


def test_train_gate_mfu_follows_the_written_formula(results: dict[str, Any]) -> None:
    f = results["train"]["figures"]
    hs = TINY.n_embd // TINY.n_head
    n = sum(p.numel() for p in GPT(TINY).parameters())
    assert f["n_params"] == n
    assert f["flops_per_token"] == 6 * n + 12 * TINY.n_layer * TINY.n_head * hs * TINY.block_size
    assert f["mfu"] == pytest.approx(f["flops_per_token"] * f["tokens_per_s"] / 1e12)
    base = results["train"]["baseline"]["figures"]
    assert positive(base["tokens_per_s"]) and base["compiled"] is False
    # the same weights and optimizer: the same losses, up to the two models' float rounding
    assert base["loss"] == pytest.approx(f["loss"], abs=1e-4)


def test_decode_gate_bandwidth_fraction_follows_the_written_formula(
        results: dict[str, Any]) -> None:
    f = results["decode"]["figures"]
    weights = sum(p.numel() * 4 for p in GPT(TINY).parameters())  # float32, tied head once
    mean_pos = PROMPT + (NEW - 1) / 2
    assert f["weight_bytes"] == weights
    assert f["bytes_per_token"] == weights + 2 * TINY.n_layer * TINY.n_embd * 4 * mean_pos
    assert f["limit_tokens_per_s"] == pytest.approx(1e10 / f["bytes_per_token"])
    assert f["of_bandwidth_limit"] == pytest.approx(f["tokens_per_s"] / f["limit_tokens_per_s"])
    assert f["same_tokens_as_eager"] == 1.0 and f["cudagraph_skips"] == 0
    assert positive(f["hf_generate_tokens_per_s"])


def test_int8_gate_reads_fewer_bytes_and_can_reuse_the_decode_baseline(
        results: dict[str, Any]) -> None:
    r, reused = results["int8"], results["int8 reusing decode"]
    assert r["figures"]["weight_bytes"] < r["baseline"]["figures"]["weight_bytes"]
    assert r["ratio"] == pytest.approx(r["figures"]["tokens_per_s"]
                                       / r["baseline"]["figures"]["tokens_per_s"])
    assert positive(r["figures"]["dequant_tokens_per_s"])
    assert positive(r["figures"]["dequant_ratio"])
    assert reused["settings"]["baseline_reused_from_decode_gate"] is True
    assert reused["baseline"]["figures"] == results["decode"]["figures"]


def test_api_gate_measures_each_stream_count_against_the_engine(results: dict[str, Any]) -> None:
    r = results["api"]
    for n in (2, 4):
        http, engine = r["figures"][f"{n}_streams"], r["baseline"]["figures"][f"{n}_streams"]
        assert positive(http["tokens_per_s"]) and positive(engine["tokens_per_s"])
        assert 0 < http["ttft_p50_ms"] <= http["ttft_p99_ms"]
        assert http["ratio_to_engine"] == pytest.approx(
            http["tokens_per_s"] / engine["tokens_per_s"])
    assert r["ratio"] == min(r["figures"][f"{n}_streams"]["ratio_to_engine"] for n in (2, 4))


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_the_decode_step_traces_whole_and_matches_generate(int8: bool) -> None:
    """What CUDA graphs capture: one graph (fullgraph: a graph break is an error), no
    recompilation across positions, and the greedy tokens of ``reference.generate``."""
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    if int8:
        model = quantize(model)
    prompt = torch.randint(0, TINY.vocab_size, (1, 5), generator=torch.Generator().manual_seed(1))
    expected = generate(model, prompt, 12, temperature=0.0)[:, 5:]
    decoder = StaticDecoder(model, max_len=20)
    assert torch.equal(decoder.generate(prompt, 12), expected)  # eager
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    decoder.step = torch.compile(decoder._step, backend="eager", fullgraph=True)
    assert torch.equal(decoder.generate(prompt, 12), expected)
    assert torch.equal(decoder.generate(prompt, 12), expected)  # the cache reused
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    with pytest.raises(ValueError, match="cache slots"):
        decoder.generate(prompt, 17)


def test_summary_merges_and_the_report_has_one_row_per_gate(results: dict[str, Any],
                                                            tmp_path: Path) -> None:
    path = tmp_path / "gates" / "summary.json"
    write_summary(path, [results["train"], results["decode"]], machine("cpu"))
    write_summary(path, [results["int8"], results["api"], failure("decode", "boom")],
                  machine("cpu"))  # a later step: its entries replace those of the same name
    summary = json.loads(path.read_text())
    assert [g["gate"] for g in summary["gates"]] == ["train", "int8", "api", "decode"]
    assert summary["machine"]["device"].startswith("cpu") and summary["date"]
    gate_report.main([str(path), "--step", "fsdp", "--rc", "124", "--expect", "fsdp_smoke",
                      "--log", str(tmp_path / "missing.log"), "--ok-entry"])
    gate_report.main([str(path), "--step", "extra", "--rc", "0", "--expect", "extra",
                      "--ok-entry"])
    table = (tmp_path / "gates" / "summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| train", "| int8", "| api", "| decode",
                                                 "| fsdp_smoke", "| extra"]
    assert rows[3].endswith("| FAILED |") and "boom" in rows[3]
    assert "time limit" in rows[4] and rows[5].endswith("| yes |")
    assert "MFU" in rows[0] and "TTFT p50/p99" in rows[2]
    assert all(r.endswith(("| n/a |", "| FAILED |", "| yes |")) for r in rows)


def test_gates_doctests() -> None:
    assert doctest.testmod(gates, raise_on_error=False).failed == 0


def test_the_gpu_script_parses() -> None:
    script = ROOT / "benchmarks" / "gpu_gate.sh"
    text = script.read_text()
    assert "set -euo pipefail" in text and "timeout" in text and "# FSDP smoke" in text
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True)
