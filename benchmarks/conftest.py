"""Benchmark conventions: every group names a peer, and the summary reports ratios to it.

Each benchmark sets ``benchmark.group`` (what is compared, e.g. ``"attention cpu T=256"``) and
``benchmark.extra_info["impl"]`` (who runs it: ``"reference"``, ``"solutions"``, ``"torch sdpa"``,
``"tiktoken"``...). The one peer of a group sets ``benchmark.extra_info["peer"] = True``. At the end
of the run a table gives, per group, each median time and its ratio to the peer's; extra figures
(``tokens_per_s``, ``mfu``...) in ``extra_info`` are printed beside them. ``--benchmark-json``
keeps all of it.

Benchmarks are not part of the default run (``pytest benchmarks`` or ``tox -e bench``). GPU cases
take the ``cuda`` fixture, which skips cleanly when no CUDA device is present.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gate-json", default=None,
                     help="the GPU gates' JSON summary (default: $LLMFS_GATE_JSON or "
                          "build/gates/summary.json; see benchmarks/test_gpu_gates.py)")


@pytest.fixture
def cuda() -> torch.device:
    """A CUDA device, or a clean skip without one."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


def device_name(device: torch.device | str) -> str:
    """The card's name for CUDA, the processor's for CPU (recorded with every figure)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    benches = [b for b in getattr(session, "benchmarks", []) if b]
    groups: dict[str, list[Any]] = defaultdict(list)
    for bench in benches:
        groups[bench.group or "(no group)"].append(bench)
    if not groups:
        return
    write = terminalreporter.write_line
    terminalreporter.section("ratios to the named peer (median time; lower is faster)")
    for group, items in sorted(groups.items()):
        peers = [b for b in items if b.extra_info.get("peer")]
        write(f"{group}:")
        for bench in sorted(items, key=lambda b: b.stats.median):
            who = bench.extra_info.get("impl", bench.name)
            extra = {k: v for k, v in bench.extra_info.items() if k not in {"impl", "peer"}}
            ratio = ""
            if peers:
                peer = peers[0]
                ratio = (
                    f"  {bench.stats.median / peer.stats.median:6.2f}x the time of "
                    f"{peer.extra_info.get('impl', peer.name)}"
                )
            figures = "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()
            )
            write(f"  {who:<24} {bench.stats.median * 1e3:10.3f} ms{ratio}  {figures}")
