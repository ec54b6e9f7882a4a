"""The GPU gates under pytest-benchmark: one case per gate of ``benchmarks/gates.py``, on CUDA.

Each case runs its gate (the case and its baseline, measured in the same run on the same card);
pytest-benchmark times the gate's main measurement (its rounds are the benchmark's), and the
figures go to ``extra_info``. At the end of the session every gate's result (or its error) is
merged into ONE JSON summary: ``--gate-json PATH``, else ``$LLMFS_GATE_JSON``, else
``build/gates/summary.json``; ``python -m benchmarks.gate_report PATH`` writes its Markdown
table. Without CUDA every case skips (the CPU twins are ``tests/test_gate_twins.py``).

    pytest benchmarks/test_gpu_gates.py            # all four, ~5 minutes on an H100/H200
    benchmarks/gpu_gate.sh build/gates             # the same, one step per gate, time-boxed

Sizes (on the card): GPT-2 124M; training B=16, T=1024, 3 warm-up (compile) + 20 timed steps;
decode batch 1, 16-token prompt + 256 new tokens, 3 timed rounds; the API 16 and 64 concurrent
streams of 32-token prompts + 32 new tokens, 3 rounds each. int8 is timed both ways:
torch's ``_weight_int8pack_mm`` (the library's path) and the dequantizing formula under the
compiler (``dequant_tokens_per_s``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.gates import (
    Result,
    Timer,
    api_gate,
    decode_gate,
    failure,
    int8_gate,
    machine,
    median_time,
    train_gate,
    write_summary,
)

TRAIN_BATCH, TRAIN_STEPS, TRAIN_WARMUP = 16, 20, 3
PROMPT, NEW, ROUNDS = 16, 256, 3
API_STREAMS, API_PROMPT, API_NEW, API_ROUNDS = (16, 64), 32, 32, 3


def summary_path(config: pytest.Config) -> Path:
    chosen = config.getoption("--gate-json", None) or os.environ.get("LLMFS_GATE_JSON")
    return Path(chosen) if chosen else config.rootpath / "build" / "gates" / "summary.json"


@pytest.fixture(scope="session")
def gate_results(request: pytest.FixtureRequest) -> Iterator[list[Result]]:
    """The gates' results of this session; each is merged into the JSON summary as soon as it
    is recorded (:func:`run_gate`), so a later gate that hangs loses nothing before it."""
    results: list[Result] = []
    yield results
    if results:
        print(f"\ngate summary: {summary_path(request.config)}")


def record(config: pytest.Config, results: list[Result], result: Result) -> None:
    results.append(result)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_summary(summary_path(config), [result], machine(device))


@pytest.fixture(scope="session")
def decode_results() -> dict[str, Result]:
    """decode_gate's result, reused as int8_gate's bf16 baseline in the same session."""
    return {}


def bench_timer(benchmark: Any, main: str) -> Timer:
    """The gate's timer: pytest-benchmark times the ``main`` measurement, the rest plainly."""

    def timer(label: str, fn: Callable[[], object], rounds: int) -> float:
        if label != main:
            return median_time(label, fn, rounds)
        benchmark.pedantic(fn, rounds=rounds, iterations=1)
        stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
        return float(stats.stats.median) if stats is not None else median_time(label, fn, 1)

    return timer


def run_gate(benchmark: Any, config: pytest.Config, results: list[Result], name: str,
             main: str, gate: Callable[[Timer], Result]) -> Result:
    """Run ``gate``; record its result (or its error: the summary keeps it) in the summary."""
    benchmark.group = f"gpu gate {name}"
    benchmark.extra_info["impl"] = main
    try:
        result = gate(bench_timer(benchmark, main))
    except Exception as e:
        record(config, results, failure(name, e))
        raise
    record(config, results, result)
    benchmark.extra_info.update({"device": result["device"], "ratio": result["ratio"],
                                 "met": result["met"]})
    benchmark.extra_info.update({k: v for k, v in result["figures"].items()
                                 if isinstance(v, int | float)})
    return result


def test_train_gate(benchmark: Any, pytestconfig: pytest.Config, cuda: torch.device,
                    gate_results: list[Result]) -> None:
    result = run_gate(benchmark, pytestconfig, gate_results, "train", "train reference",
                      lambda timer: train_gate(cuda, batch_size=TRAIN_BATCH, steps=TRAIN_STEPS,
                                               warmup=TRAIN_WARMUP, timer=timer))
    assert result["figures"]["tokens_per_s"] > 0


def test_decode_gate(benchmark: Any, pytestconfig: pytest.Config, cuda: torch.device,
                     gate_results: list[Result], decode_results: dict[str, Result]) -> None:
    result = run_gate(benchmark, pytestconfig, gate_results, "decode",
                      "decode static cache, reduce-overhead",
                      lambda timer: decode_gate(cuda, prompt_len=PROMPT, new_tokens=NEW,
                                                rounds=ROUNDS, timer=timer))
    decode_results["decode"] = result
    assert result["figures"]["tokens_per_s"] > 0


def test_int8_gate(benchmark: Any, pytestconfig: pytest.Config, cuda: torch.device,
                   gate_results: list[Result], decode_results: dict[str, Result]) -> None:
    result = run_gate(benchmark, pytestconfig, gate_results, "int8", "decode int8",
                      lambda timer: int8_gate(cuda, prompt_len=PROMPT, new_tokens=NEW,
                                              rounds=ROUNDS, timer=timer,
                                              bf16=decode_results.get("decode"),
                                              dequant=True))
    assert result["figures"]["tokens_per_s"] > 0


def test_api_gate(benchmark: Any, pytestconfig: pytest.Config, cuda: torch.device,
                  gate_results: list[Result], tmp_path: Path) -> None:
    result = run_gate(benchmark, pytestconfig, gate_results, "api",
                      f"api http {max(API_STREAMS)}",
                      lambda timer: api_gate(cuda, streams=API_STREAMS, prompt_len=API_PROMPT,
                                             new_tokens=API_NEW, rounds=API_ROUNDS,
                                             workdir=tmp_path, timer=timer))
    assert result["figures"]["tokens_per_s"] > 0
