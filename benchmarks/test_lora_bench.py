"""A LoRA training step vs full fine-tuning, and peft on Hugging Face GPT-2 or Llama (the peer).

One step is forward + cross-entropy + backward + AdamW on the trainable parameters, on a (B, T)
batch of one small GPT (the same weights everywhere):

* ``reference lora``: ``apply_lora`` (r = 8, GPT-2's four projections) on the reference GPT;
* ``reference full``: the reference GPT, every weight trained;
* ``peft lora`` (the peer): ``peft.get_peft_model`` on ``transformers.GPT2LMHeadModel`` with
  the same targets and rank (``fan_in_fan_out`` for GPT-2's Conv1D).

The Llama groups do the same with the reference Llama (``reference.llama``, grouped-query
attention, LoRA on its default targets q/k/v/o) against peft on ``transformers.LlamaForCausalLM``
holding the same weights (``reference.hf_llama.to_hf_model``, sdpa attention).

Figures beside the time: ``trainable`` (the fraction of parameters that train), ``train_mb``
(what a step holds: every weight, plus a gradient and AdamW's two moments per trainable
weight, plus the activations autograd saves for the backward pass, counted with
``torch.autograd.graph.saved_tensors_hooks``, each storage once; an analytic peak, since the
CPU allocator reports none) and, for the LoRA cases, ``adapter_kb`` vs ``checkpoint_kb`` (the
adapter file alone vs a full safetensors checkpoint). (The parameter is ``who``, not ``impl``:
the root conftest parametrizes any ``impl`` argument.)

    pytest benchmarks/test_lora_bench.py --benchmark-min-rounds=5
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.conftest import device_name
from reference.arch import build_model
from reference.checkpoint import WEIGHTS_NAME, save_checkpoint
from reference.hf import config_to_hf, to_hf_state_dict
from reference.hf_llama import to_hf_model
from reference.llama import Llama, LlamaConfig
from reference.lora import (
    ADAPTER_WEIGHTS,
    LLAMA_TARGETS,
    apply_lora,
    save_adapter,
    trainable_parameters,
)
from reference.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

CPU_CONFIG = GPTConfig(block_size=128, vocab_size=8192, n_layer=4, n_head=8, n_embd=256)
CPU_BATCH = 8
CUDA_CONFIG = GPTConfig()  # GPT-2 small, 124M, T = 1024
CUDA_BATCH = 8
CPU_LLAMA = LlamaConfig(block_size=128, vocab_size=8192, n_layer=4, n_head=8, n_kv_head=2,
                        n_embd=256)
CUDA_LLAMA = LlamaConfig(block_size=1024, vocab_size=32000, n_layer=12, n_head=12, n_kv_head=4,
                         n_embd=768)  # Llama-style at GPT-2 small's width and depth
R, ALPHA = 8, 16
WHO = ("reference lora", "reference full", "peft lora")


def make_model(who: str, config: GPTConfig | LlamaConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    ours = build_model(config)
    if who == "reference full":
        return ours.to(device).train()
    if who == "reference lora":
        apply_lora(ours, r=R, alpha=ALPHA)
        return ours.to(device).train()
    if isinstance(ours, Llama):
        lora = peft.LoraConfig(target_modules=list(LLAMA_TARGETS), r=R, lora_alpha=ALPHA,
                               lora_dropout=0.0)
        return peft.get_peft_model(to_hf_model(ours), lora).to(device).train()
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(**config_to_hf(ours.config), attn_implementation="sdpa"))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    lora = peft.LoraConfig(target_modules=["c_attn", "c_proj", "c_fc"], r=R, lora_alpha=ALPHA,
                           fan_in_fan_out=True, lora_dropout=0.0)
    return peft.get_peft_model(hf, lora).to(device).train()


def logits_of(model: nn.Module, idx: Tensor) -> Tensor:
    out = model(idx)
    logits: Tensor = out[0] if isinstance(out, tuple) else out.logits
    return logits


def training_step(model: nn.Module, idx: Tensor, targets: Tensor) -> Callable[[], Tensor]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=idx.device.type == "cuda")

    def step() -> Tensor:
        logits = logits_of(model, idx)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if idx.device.type == "cuda":
            torch.cuda.synchronize()
        return loss.detach()

    return step


def nbytes(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(model: nn.Module, idx: Tensor, targets: Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass (parameters excluded), each
    storage counted once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = logits_of(model, idx)
        F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return sum(seen.values())


def record(benchmark: Any, who: str, model: nn.Module, idx: Tensor, targets: Tensor,
           tmp_path: Path, group: str) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(idx.device)
    if who == "peft lora":
        benchmark.extra_info["peer"] = True
    trainable, total = trainable_parameters(model)
    params = list(model.parameters())
    grads_and_moments = 3 * nbytes(p for p in params if p.requires_grad)
    activations = saved_activation_bytes(model, idx, targets)
    benchmark.extra_info["trainable"] = trainable / total
    benchmark.extra_info["train_mb"] = (nbytes(params) + grads_and_moments + activations) / 2**20
    benchmark.extra_info["tokens_per_s"] = 0.0  # filled in after the run
    if who == "reference lora":
        assert isinstance(model, GPT | Llama)
        save_adapter(model, tmp_path / "adapter")
        full = build_model(model.config)
        save_checkpoint(full, tmp_path / "full")
        adapter = tmp_path / "adapter" / ADAPTER_WEIGHTS
        checkpoint = tmp_path / "full" / WEIGHTS_NAME
        benchmark.extra_info["adapter_kb"] = adapter.stat().st_size / 1024
        benchmark.extra_info["checkpoint_kb"] = checkpoint.stat().st_size / 1024
    elif who == "peft lora":
        model.save_pretrained(tmp_path / "peft")  # type: ignore[operator]
        benchmark.extra_info["adapter_kb"] = (
            tmp_path / "peft" / "adapter_model.safetensors").stat().st_size / 1024


def run(benchmark: Any, who: str, config: GPTConfig | LlamaConfig, batch: int,
        device: torch.device,
        tmp_path: Path, group: str) -> None:
    model = make_model(who, config, device)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, config.vocab_size, (batch, config.block_size + 1), generator=g)
    idx, targets = data[:, :-1].to(device), data[:, 1:].to(device)
    record(benchmark, who, model, idx, targets, tmp_path, group)
    step = training_step(model, idx, targets)
    step()  # warm-up: allocator, kernel choice, AdamW's state
    loss = benchmark(step)
    assert torch.isfinite(loss)
    benchmark.extra_info["tokens_per_s"] = batch * config.block_size / benchmark.stats.stats.median


@pytest.mark.parametrize("who", WHO)
def test_lora_training_step_cpu(benchmark: Any, who: str, tmp_path: Path) -> None:
    run(benchmark, who, CPU_CONFIG, CPU_BATCH, torch.device("cpu"), tmp_path,
        "lora training step cpu (4 layers, 256 wide, B=8, T=128, r=8)")


@pytest.mark.parametrize("who", WHO)
def test_lora_training_step_cuda(benchmark: Any, cuda: torch.device, who: str,
                                 tmp_path: Path) -> None:
    run(benchmark, who, CUDA_CONFIG, CUDA_BATCH, cuda, tmp_path,
        "lora training step cuda (GPT-2 small, B=8, T=1024, r=8, float32)")


@pytest.mark.parametrize("who", WHO)
def test_lora_llama_training_step_cpu(benchmark: Any, who: str, tmp_path: Path) -> None:
    run(benchmark, who, CPU_LLAMA, CPU_BATCH, torch.device("cpu"), tmp_path,
        "lora llama training step cpu (4 layers, 256 wide, 8/2 heads, B=8, T=128, r=8, qkvo)")


@pytest.mark.parametrize("who", WHO)
def test_lora_llama_training_step_cuda(benchmark: Any, cuda: torch.device, who: str,
                                       tmp_path: Path) -> None:
    run(benchmark, who, CUDA_LLAMA, CUDA_BATCH, cuda, tmp_path,
        "lora llama training step cuda (12 layers, 768 wide, 12/4 heads, B=8, T=1024, r=8, "
        "qkvo, float32)")
