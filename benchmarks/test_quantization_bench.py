"""Int8 quantization: weight memory, perplexity and decode speed, against our float32 model and
torch.ao's dynamic quantization (the named peers; torchao's too when it is installed).

(The parameter is ``who``, not ``impl``: the root conftest parametrizes any ``impl`` argument.)

* ``quantization memory gpt2-124M``: bytes of the blocks' linear weights (and scales), int8 vs
  float32 (goal: 0.27x or less), counted, and measured as the resident memory of a process
  that loads the float32 or the int8 checkpoint; the time is that of ``quantize`` itself.
* ``quantization perplexity ...``: a character-level model trained here (``configs/tiny_cpu.yaml``
  for 300 steps on the built-in corpus), its validation perplexity in float32 (the peer) and
  quantized each way (goal: within 1%); the time is that of the evaluation. The same for a
  Llama-style model (``model.arch=llama``, grouped-query attention with 2 key/value heads) and
  a mixture of experts (``model.n_experts=4``, top-2; its router stays float) on that recipe.
* ``quantization decode cpu gpt2-124M``: tokens per second of ``generate`` (KV cache, greedy,
  batch 1, a 32-token prompt, 64 new tokens) on GPT-2 small's shape with random weights: our
  float32 model (the peer), int8 weight-only, int8 ``"dynamic"``, torch.ao's
  ``quantize_dynamic`` of the same layers, torchao's int8 configs (goal: 1.5x our float32 or
  better). Beside each: the bytes the model holds (read once per token) and the effective
  bandwidth, as a fraction of this machine's measured read bandwidth (the ceiling).
* ``quantization decode cuda ...``: the same on a GPU, float32 and bfloat16 activations with
  weight-only int8; skipped without one.

    pytest benchmarks/test_quantization_bench.py -s
"""

from __future__ import annotations

import copy
import gc
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from benchmarks.conftest import device_name
from reference.arch import build_model
from reference.checkpoint import save_checkpoint
from reference.generate import generate
from reference.model import GPT, GPTConfig
from reference.quantization import linear_weight_bytes, quantize

pytestmark = pytest.mark.quantization
ROOT = Path(__file__).resolve().parent.parent
PROMPT, NEW_TOKENS = 32, 64
QUIET = ["train.progress=false", "train.tensorboard=false", "train.plot=false"]


def _is_block_linear(module: nn.Module, name: str) -> bool:
    """What ``quantize`` swaps: the blocks' linears of a GPT or a Llama, not a router."""
    block = name.startswith(("transformer.h.", "model.layers."))
    return isinstance(module, nn.Linear) and block and not name.endswith("mlp.gate")


def torch_ao_dynamic(model: GPT) -> nn.Module:
    """torch.ao's dynamic int8 quantization of the same layers as ours (the blocks' linears),
    with per-channel symmetric weights over [-127, 127], as ours."""
    from torch.ao.quantization import PlaceholderObserver, QConfig, quantize_dynamic
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    qconfig = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.quint8, is_dynamic=True),
        weight=PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127,
            quant_max=127))
    names = {n: qconfig for n, m in model.named_modules() if _is_block_linear(m, n)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized: nn.Module = quantize_dynamic(copy.deepcopy(model), names, inplace=False)
    return quantized


def torchao(kind: str) -> Callable[[GPT], nn.Module]:
    """torchao's int8 weight-only or dynamic config on the blocks' linears (skips without it)."""

    def apply(model: GPT) -> nn.Module:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torchao.quantization import (
                    Int8DynamicActivationInt8WeightConfig,
                    Int8WeightOnlyConfig,
                    quantize_,
                )
        except Exception as e:  # not installed, or built for another torch
            pytest.skip(f"torchao not usable here: {type(e).__name__}: {e}")
        config = Int8WeightOnlyConfig() if kind == "weight-only" else \
            Int8DynamicActivationInt8WeightConfig()
        copied = copy.deepcopy(model)
        quantize_(copied, config, filter_fn=lambda m, name: _is_block_linear(m, name))
        return copied

    return apply


VARIANTS: dict[str, Callable[[GPT], nn.Module]] = {
    "ours float32": lambda m: m,
    "ours int8 weight-only": lambda m: quantize(copy.deepcopy(m)),
    "ours int8 dynamic": lambda m: quantize(copy.deepcopy(m), activations="dynamic"),
    "torch.ao quantize_dynamic": torch_ao_dynamic,
    "torchao int8 weight-only": torchao("weight-only"),
    "torchao int8 dynamic": torchao("dynamic"),
}


def _record(benchmark: Any, group: str, who: str, device: str, **figures: Any) -> None:
    benchmark.group = group
    benchmark.extra_info.update({"impl": who, "device": device_name(device), **figures})
    if who == "ours float32":
        benchmark.extra_info["peer"] = True


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers a forward pass reads (a tie counted once). Packed
    weights that ``parameters()`` does not show count as what they hold: fbgemm's (ours and
    torch.ao's) an int8 weight, and for torch.ao also its scales and bias; torchao's tensor
    subclasses their int8 data and scales."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        parts = [t.qdata, t.scale] if hasattr(t, "qdata") else [t]  # torchao: int8 + scales
        for part in parts:
            key = id(part) if hasattr(t, "qdata") else part.data_ptr()
            if key not in seen:
                seen.add(key)
                total += part.nbytes
    for m in model.modules():
        if getattr(m, "_packed", None) is not None:  # ours, "dynamic": scale, bias are buffers
            total += m.in_features * m.out_features
        elif hasattr(m, "_packed_params") and hasattr(m, "in_features"):  # torch.ao
            total += m.in_features * m.out_features + 8 * m.out_features
    return total


def read_bandwidth(gib: float = 0.5) -> float:
    """This machine's memory read bandwidth, bytes/s: the best of 5 sums of a tensor far
    larger than its caches (the ceiling of a memory-bound decode)."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.nbytes / best


# ----------------------------------------------------------------------------- memory

RESIDENT = """
import os, sys, torch
from reference.checkpoint import load_checkpoint
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
model = load_checkpoint(sys.argv[1])
print(rss() - before)
"""


def resident_bytes(checkpoint: Path) -> int:
    """The resident memory a fresh process gains by loading ``checkpoint`` (malloc's mmap
    threshold fixed, so that freed loading buffers go back to the system)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run([sys.executable, "-c", RESIDENT, str(checkpoint)], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True, timeout=600)
    return int(result.stdout.split()[-1])


def test_linear_weight_memory_gpt2_small(benchmark: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()
    fp32 = linear_weight_bytes(model)
    save_checkpoint(model, tmp_path / "fp32")
    benchmark.group = "quantization memory gpt2-124M"  # before the run, as every group here
    benchmark.pedantic(quantize, args=(model,), rounds=1, iterations=1)
    int8 = linear_weight_bytes(model)
    save_checkpoint(model, tmp_path / "int8")
    del model
    gc.collect()
    rss_fp32, rss_int8 = (resident_bytes(tmp_path / name) for name in ("fp32", "int8"))
    resident_int8 = fp32 - (rss_fp32 - rss_int8)  # what the blocks' linears hold once loaded
    _record(benchmark, "quantization memory gpt2-124M", "ours int8 (quantize)", "cpu",
            fp32_mb=fp32 / 1e6, int8_mb=int8 / 1e6, ratio=int8 / fp32,
            loaded_model_fp32_mb=rss_fp32 / 1e6, loaded_model_int8_mb=rss_int8 / 1e6,
            resident_ratio=resident_int8 / fp32, peer=True)
    print(f"\nlinear weights: fp32 {fp32 / 1e6:.1f} MB, int8 {int8 / 1e6:.1f} MB "
          f"({int8 / fp32:.4f}x; goal <= 0.27x); a process that loads the checkpoint holds "
          f"{rss_fp32 / 1e6:.0f} MB (fp32) vs {rss_int8 / 1e6:.0f} MB (int8): the linear "
          f"weights resident {resident_int8 / fp32:.4f}x")


# ----------------------------------------------------------------------------- perplexity

_trained: dict[str, dict[str, Any]] = {}
ARCHS = {  # the model settings over configs/tiny_cpu.yaml's
    "gpt2": [],
    "llama": ["model.arch=llama", "model.n_kv_head=2"],
    "moe": ["model.arch=llama", "model.n_kv_head=2", "model.n_experts=4",
            "model.intermediate_size=128"],
}


def trained_char_model(tmp_path_factory: pytest.TempPathFactory, arch: str = "gpt2") -> Any:
    """configs/tiny_cpu.yaml for 300 steps (about half a minute on two cores), once per run
    and architecture."""
    if arch not in _trained:
        from reference.trainer.config import load_config
        from reference.trainer.loop import Trainer

        out = tmp_path_factory.mktemp(f"char-{arch}")
        config = load_config(ROOT / "configs" / "tiny_cpu.yaml", [
            f"train.out_dir={out}", "train.device=cpu", "train.max_steps=300",
            "train.eval_interval=300", *QUIET, *ARCHS[arch]])
        trainer = Trainer(config)
        trainer.fit()
        _trained[arch] = {"trainer": trainer}
    return _trained[arch]["trainer"]


@torch.no_grad()
def perplexity(model: nn.Module, val_tokens: Any, batches: int = 40) -> float:
    """exp of the mean loss over fixed windows (the same for every model)."""
    import torch.nn.functional as F

    from reference.trainer.data import get_batch

    generator = torch.Generator().manual_seed(2024)
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(val_tokens, 64, 32, generator=generator)
        logits, _ = model(x)
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten()))
    return math.exp(total / batches)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("who", list(VARIANTS))
def test_validation_perplexity_of_a_trained_char_model(
    benchmark: Any, who: str, arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    trainer = trained_char_model(tmp_path_factory, arch)
    float_model = build_model(trainer.model.config)  # the weights alone: no trainer's hooks
    float_model.load_state_dict(trainer.model.state_dict())
    float_model.eval()
    model = VARIANTS[who](float_model).eval()
    name = {"gpt2": "", "llama": " llama (4/2 heads)", "moe": " llama moe (4 experts, top-2)"}
    group = f"quantization perplexity tiny_cpu char{name[arch]}, 300 steps"
    benchmark.group = group  # before the run: pytest-benchmark reads it when it starts
    ppl = benchmark.pedantic(lambda: perplexity(model, trainer.val_tokens), rounds=1,
                             iterations=1)
    if "fp32" not in _trained[arch]:
        _trained[arch]["fp32"] = perplexity(float_model, trainer.val_tokens)
    base = _trained[arch]["fp32"]
    _record(benchmark, group, who, "cpu", perplexity=ppl, vs_fp32=ppl / base - 1)
    print(f"\n{who}: validation perplexity {ppl:.4f} ({100 * (ppl / base - 1):+.3f}% vs float32; "
          "goal within 1%)")


# ----------------------------------------------------------------------------- decode speed

_gpt2: dict[str, Any] = {}


def gpt2_small() -> GPT:
    if "model" not in _gpt2:
        torch.manual_seed(0)
        _gpt2["model"] = GPT(GPTConfig()).eval()
        _gpt2["bandwidth"] = read_bandwidth()
    model: GPT = _gpt2["model"]
    return model


@pytest.mark.parametrize("who", list(VARIANTS))
def test_decode_tokens_per_second_cpu(benchmark: Any, who: str) -> None:
    float_model = gpt2_small()
    model = VARIANTS[who](float_model).eval()
    prompt = torch.randint(0, 50257, (1, PROMPT), generator=torch.Generator().manual_seed(1))

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return generate(model, prompt, NEW_TOKENS, temperature=0.0)  # type: ignore[arg-type]

    benchmark.group = "quantization decode cpu gpt2-124M, B=1, 32+64 greedy"  # before the run
    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (1, PROMPT + NEW_TOKENS)
    tokens_per_s = NEW_TOKENS / benchmark.stats.stats.median
    held = model_bytes(model)
    bandwidth = _gpt2["bandwidth"]
    _record(benchmark, "quantization decode cpu gpt2-124M, B=1, 32+64 greedy", who, "cpu",
            tokens_per_s=tokens_per_s, model_mb=held / 1e6,
            ceiling_tokens_per_s=bandwidth / held,
            of_ceiling=tokens_per_s * held / bandwidth, read_gbps=bandwidth / 1e9,
            threads=torch.get_num_threads())
    print(f"\n{who}: {tokens_per_s:.2f} tokens/s, model {held / 1e6:.0f} MB, "
          f"{100 * tokens_per_s * held / bandwidth:.0f}% of the {bandwidth / held:.1f} tokens/s "
          f"its bytes allow at {bandwidth / 1e9:.1f} GB/s")
    if model is not float_model:
        del model
        gc.collect()


CUDA_VARIANTS = ["float32", "bfloat16", "int8 weight-only float32", "int8 weight-only bfloat16"]


@pytest.mark.parametrize("who", CUDA_VARIANTS)
def test_decode_tokens_per_second_cuda(benchmark: Any, cuda: torch.device, who: str) -> None:
    dtype = torch.bfloat16 if who.endswith("bfloat16") else torch.float32
    torch.manual_seed(0)
    model = GPT(GPTConfig()).to(cuda, dtype).eval()
    if who.startswith("int8"):
        quantize(model)
    prompt = torch.randint(0, 50257, (1, PROMPT), device=cuda)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            out = generate(model, prompt, NEW_TOKENS, temperature=0.0)
        torch.cuda.synchronize()
        return out

    benchmark.group = "quantization decode cuda gpt2-124M, B=1, 32+64 greedy"  # before the run
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({
        "impl": who, "device": device_name(cuda), "peer": who == "float32",
        "tokens_per_s": NEW_TOKENS / benchmark.stats.stats.median,
        "model_mb": model_bytes(model) / 1e6,
    })
