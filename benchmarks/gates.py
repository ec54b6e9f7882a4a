"""The GPU gates: one plain function per gate, used by the CUDA benchmarks and their CPU twins.

Each gate builds its models, measures the case and its baseline *in the same run on the same
device*, and returns one dict (JSON-ready)::

    {"gate": "decode", "what": ..., "device": card name, "torch": version, "settings": {...},
     "figures": {...}, "baseline": {"who": ..., "figures": {...}}, "ratio": ours / baseline,
     "goal": {"metric": ..., "min": ..., "text": ..., "applies": bool}, "met": True/False/None}

``met`` is None where the goal does not apply (a CPU twin, a card the goal is not set for).

* :func:`train_gate`: GPT-2 124M training steps (bf16 autocast, SDPA, fused AdamW,
  ``torch.compile``), tokens/s and MFU, beside Hugging Face's GPT2LMHeadModel with the same
  weights and optimizer. MFU, as nanoGPT's ``estimate_mfu`` (N: parameters, tied head once)::

      flops per token = 6·N + 12·n_layer·n_head·head_size·T
      mfu = flops per token · tokens/s / peak dense bf16 FLOP/s of the card

  Goal: MFU >= 50% on an H100/H200-class card.
* :func:`decode_gate`: batch-1 greedy decode with the static KV cache (:class:`StaticDecoder`:
  fixed cache size, ``input_pos`` a tensor, the one-token step under
  ``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs), vs the same step eager and
  Hugging Face ``generate`` with its cache. The memory-bandwidth limit::

      bytes per token = weight bytes + KV cache bytes at the mean position
                      = weight bytes + 2·n_layer·n_embd·bytes per element·mean position
      limit tokens/s  = peak bandwidth / bytes per token

  Goal: >= 5,000 tokens/s on a GPU.
* :func:`int8_gate`: the same decode with int8 weight-only linear layers
  (``reference.quantization``) vs bf16. Goal: int8 at least as fast as bf16 (ratio >= 1).
* :func:`api_gate`: completions streamed through a real uvicorn on 127.0.0.1 (the threaded
  ``Engine`` behind it) by 16 and 64 concurrent clients, vs the same requests submitted to the
  engine directly; time to first token p50/p99. Goal: HTTP >= 0.8x the engine's tokens/s.

Peaks come from tables by the card's CUDA name (dense bf16 FLOP/s; HBM bandwidth, bytes/s), or
``$LLMFS_PEAK_FLOPS`` / ``$LLMFS_PEAK_BW``. :func:`write_summary` merges results into one JSON
file; ``python -m benchmarks.gate_report`` turns it into a Markdown table.

Example (a CPU twin's size)::

    >>> cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=1, n_head=2, n_embd=16)
    >>> r = decode_gate("cpu", cfg, prompt_len=4, new_tokens=4, rounds=1, hf=False)
    >>> r["gate"], r["figures"]["tokens_per_s"] > 0, r["met"]
    ('decode', True, None)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.conftest import device_name
from reference.model import GPT, GPTConfig

Result = dict[str, Any]
# timer(label, fn, rounds) -> median seconds of one call of fn (fn synchronizes the device)
Timer = Callable[[str, Callable[[], object], int], float]

# Dense bf16 tensor-core peaks from the vendors' data sheets, FLOP/s. Keys match the CUDA name
# when every word of the key is in it (the key with the most words wins).
PEAK_BF16_FLOPS = {
    "H100 HBM3": 989e12,  # "NVIDIA H100 80GB HBM3": the SXM part
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 756e12,  # unknown variant: the lowest
    "H200": 989e12,
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}
# Peak memory bandwidth (HBM/GDDR), bytes/s.
PEAK_BW = {
    "H100 HBM3": 3.35e12,
    "H100 SXM": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H100": 2.0e12,
    "H200": 4.8e12,
    "H200 NVL": 4.8e12,
    "GH200": 4.0e12,
    "A100 80GB": 2.0e12,
    "A100": 1.555e12,  # the 40GB parts
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10": 0.6e12,
    "RTX 4090": 1.008e12,
}

MFU_GOAL, DECODE_GOAL, INT8_GOAL, API_GOAL = 0.5, 5000.0, 1.0, 0.8


def lookup(table: dict[str, float], name: str, env: str) -> float | None:
    """The table's figure for the card ``name`` (``$env`` first), or None for an unknown card.

    >>> lookup(PEAK_BW, "NVIDIA A100-SXM4-80GB", "NO_SUCH_VAR")
    2000000000000.0
    >>> lookup(PEAK_BF16_FLOPS, "NVIDIA H100 80GB HBM3", "NO_SUCH_VAR")
    989000000000000.0
    >>> lookup(PEAK_BW, "cpu (x86_64, 2 threads)", "NO_SUCH_VAR") is None
    True
    """
    if os.environ.get(env):
        return float(os.environ[env])
    words = set(name.replace("-", " ").split())
    matches = [k for k in table if set(k.split()) <= words]
    if not matches:
        return None
    return table[max(matches, key=lambda k: (len(k.split()), len(k)))]


def flops_per_token(config: GPTConfig, n_params: int, T: int) -> int:
    """6·N + 12·n_layer·n_head·head_size·T (forward + backward, attention included)."""
    hs = config.n_embd // config.n_head
    return 6 * n_params + 12 * config.n_layer * config.n_head * hs * T


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers (int8 weights are buffers), each tensor once."""
    seen: dict[int, int] = {}
    for t in (*model.parameters(), *model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(label: str, fn: Callable[[], object], rounds: int) -> float:
    """The median wall time of ``rounds`` calls of ``fn`` (which synchronizes the device)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _base(gate: str, what: str, device: torch.device, settings: dict[str, Any]) -> Result:
    return {"gate": gate, "what": what, "device": device_name(device),
            "torch": torch.__version__, "settings": settings}


def _goal(metric: str, minimum: float, text: str, applies: bool, value: float | None) -> Result:
    met = None if not applies or value is None else bool(value >= minimum)
    return {"goal": {"metric": metric, "min": minimum, "text": text, "applies": applies},
            "met": met}


def _hf_twin(model: GPT) -> Any:
    """Hugging Face's GPT2LMHeadModel (SDPA attention) holding ``model``'s very weights."""
    import transformers

    from reference.hf import config_to_hf, to_hf_state_dict

    options: dict[str, Any] = {**config_to_hf(model.config), "attn_implementation": "sdpa"}
    hf_config = transformers.GPT2Config(**options)
    hf = transformers.GPT2LMHeadModel(hf_config)
    hf.load_state_dict(to_hf_state_dict(model.state_dict()), strict=True)
    return hf


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- 1. training step


def train_gate(device: torch.device | str, config: GPTConfig | None = None, *,
               batch_size: int = 16, steps: int = 20, warmup: int = 3, compile: bool = True,
               hf: bool = True, timer: Timer = median_time) -> Result:
    """Training steps of ``config`` (default GPT-2 124M, T = block_size) on ``device``: forward
    in bf16 autocast (SDPA: flash attention on CUDA), cross-entropy, backward, AdamW step
    (``fused=True`` on CUDA), the model under ``torch.compile`` when ``compile``; the same for
    Hugging Face's model with the same weights (compiled too; eager if compiling fails, which
    ``baseline.figures.compiled`` says). ``warmup`` steps (compilation) are not timed."""
    device = torch.device(device)
    config = config or GPTConfig()
    B, T = batch_size, config.block_size
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
    torch.manual_seed(0)
    ours = GPT(config)
    n_params = sum(p.numel() for p in ours.parameters())  # the tied head once
    peers: dict[str, nn.Module] = {"reference": ours}
    if hf:
        peers["hf transformers"] = _hf_twin(ours)
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, config.vocab_size, (B, T), generator=g).to(device)
                    for _ in "it")
    autocast = device.type == "cuda"  # bf16 autocast on the CPU is slow and not the question
    figures: dict[str, Result] = {}
    for who, model in peers.items():
        figures[who] = _train_one(who, model.to(device).train(), idx, targets, steps=steps,
                                  warmup=warmup, compile=compile, autocast=autocast,
                                  timer=timer)
        model.to("cpu")
        _free(device)
    peak = lookup(PEAK_BF16_FLOPS, device_name(device), "LLMFS_PEAK_FLOPS")
    fpt = flops_per_token(config, n_params, T)
    for f in figures.values():
        f["mfu"] = fpt * f["tokens_per_s"] / peak if peak else None
    ours_f = figures.pop("reference")
    ours_f.update({"flops_per_token": fpt, "n_params": n_params, "peak_flops": peak,
                   "mfu_formula": "(6*N + 12*n_layer*n_head*head_size*T) * tokens_per_s / peak"})
    base = figures.get("hf transformers")
    size = f"{n_params / 1e6:.0f}M" if n_params >= 1e6 else f"{n_params / 1e3:.0f}k"
    result = _base("train", f"train step {size} params, B{B} T{T}, "
                   f"{'bf16 autocast, ' if autocast else ''}AdamW"
                   f"{' fused' if device.type == 'cuda' else ''}"
                   f"{', compiled' if compile else ''}", device,
                   {"batch_size": B, "T": T, "steps": steps, "n_layer": config.n_layer,
                    "n_embd": config.n_embd, "compile": compile})
    name = device_name(device)
    result.update({"figures": ours_f,
                   "baseline": {"who": "hf transformers GPT2LMHeadModel (sdpa)",
                                "figures": base} if base else None,
                   "ratio": ours_f["tokens_per_s"] / base["tokens_per_s"] if base else None})
    result.update(_goal("mfu", MFU_GOAL, "MFU >= 50% on an H100/H200-class card",
                        "H100" in name or "H200" in name, ours_f["mfu"]))
    return result


def _train_one(who: str, model: nn.Module, idx: Tensor, targets: Tensor, *, steps: int,
               warmup: int, compile: bool, autocast: bool, timer: Timer) -> Result:
    device = idx.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95),
                                  weight_decay=0.1, fused=device.type == "cuda")
    run: Any = torch.compile(model) if compile else model
    losses: list[Tensor] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = run(idx)
            logits = out[0] if who == "reference" else out.logits  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.detach())
        sync(device)

    compiled, error = compile, None
    try:
        for _ in range(warmup):
            step()
    except Exception as e:  # a peer that does not compile runs eager (said in the figures)
        if not compile or who == "reference":
            raise
        compiled, error, run = False, f"{type(e).__name__}: {e}"[:300], model
        for _ in range(warmup):
            step()
    seconds = timer(f"train {who}", step, steps)
    figures: Result = {"tokens_per_s": idx.numel() / seconds, "step_ms": seconds * 1e3,
                       "loss": float(losses[-1]), "compiled": compiled}
    if error:
        figures["compile_error"] = error
    return figures


# ---------------------------------------------------------------- 2. decode


class StaticDecoder:
    """Greedy batch-1 decoding over a static KV cache, the one-token step compilable whole.

    The cache is preallocated for ``max_len`` slots and read whole at every step (its
    ``length`` stays None: static shapes; the mask hides the unused slots); the position is a
    (1, 1) tensor advanced in place; the step has no data-dependent Python branch. With
    ``compile_mode`` (e.g. ``"reduce-overhead"``: CUDA graphs) the step runs under
    ``torch.compile(fullgraph=True)``; the cache tensors are marked as static addresses, so
    CUDA graphs may write them in place. The prompt is prefilled eagerly.

    >>> model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=8))
    >>> StaticDecoder(model.eval(), max_len=8).generate(torch.tensor([[1, 2, 3]]), 4).shape
    torch.Size([1, 4])
    """

    def __init__(self, model: nn.Module, max_len: int, compile_mode: str | None = None) -> None:
        self.model = model
        gpt: Any = model
        self.cache = gpt.new_cache(1, max_len)
        self.cache.length = None  # read all max_len slots: the same shapes every step
        self.device = self.cache.k[0].device
        if compile_mode is not None:
            for t in (*self.cache.k, *self.cache.v):
                torch._dynamo.mark_static_address(t)
        self.step: Callable[[Tensor, Tensor], Tensor] = (
            torch.compile(self._step, mode=compile_mode, fullgraph=True)
            if compile_mode is not None else self._step)

    def _step(self, token: Tensor, input_pos: Tensor) -> Tensor:
        """The next token (1, 1) after ``token`` (1, 1) at slot ``input_pos`` (1, 1)."""
        logits: Tensor = self.model(token, cache=self.cache, input_pos=input_pos)[0]
        return logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1) from (1, 1, V)

    @torch.no_grad()
    def generate(self, prompt: Tensor, new_tokens: int) -> Tensor:
        """``new_tokens`` greedy tokens (1, n) after ``prompt`` (1, T)."""
        T = prompt.shape[1]
        if T + new_tokens - 1 > self.cache.max_len:
            raise ValueError(f"prompt {T} + {new_tokens} new tokens need "
                             f"{T + new_tokens - 1} cache slots, the cache has "
                             f"{self.cache.max_len}")
        slots = torch.arange(T, device=self.device)[None]  # (1, T)
        logits = self.model(prompt, cache=self.cache, input_pos=slots)[0]  # (1, T, V)
        token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (1, 1)
        out = [token]
        pos = torch.full((1, 1), T, device=self.device)
        for _ in range(new_tokens - 1):
            token = self.step(token, pos).clone()  # a CUDA graph's output is overwritten
            out.append(token)
            pos += 1
        return torch.cat(out, dim=1)


def _cudagraph_skips() -> int:
    """How often inductor has declined CUDA graphs in this process (it says why in the log)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def _decode_figures(model: nn.Module, config: GPTConfig, rate: float, prompt_len: int,
                    new_tokens: int, peak_bw: float | None) -> Result:
    weights = model_bytes(model)
    elem = next(model.parameters()).element_size()  # the activations' and the cache's dtype
    mean_pos = prompt_len + (new_tokens - 1) / 2
    kv = 2 * config.n_layer * config.n_embd * elem * mean_pos
    per_token = weights + kv
    limit = peak_bw / per_token if peak_bw else None
    return {"tokens_per_s": rate, "ms_per_token": 1e3 / rate, "weight_bytes": weights,
            "bytes_per_token": per_token, "limit_tokens_per_s": limit,
            "of_bandwidth_limit": rate / limit if limit else None,
            "bandwidth_formula": "(weight bytes + 2*n_layer*n_embd*elem*mean_pos) * tokens/s "
                                 "/ peak bandwidth"}


def _decode_model(config: GPTConfig, device: torch.device, dtype: torch.dtype) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval().to(device=device, dtype=dtype)


def _time_decoder(label: str, decoder: StaticDecoder, prompt: Tensor, new_tokens: int,
                  rounds: int, timer: Timer) -> tuple[float, Tensor]:
    out: list[Tensor] = []

    def run() -> None:
        out[:] = [decoder.generate(prompt, new_tokens)]
        sync(prompt.device)

    run()  # compile and capture the graphs outside the timing (a second time: recorded)
    run()
    return new_tokens / timer(label, run, rounds), out[0]


def decode_gate(device: torch.device | str, config: GPTConfig | None = None, *,
                prompt_len: int = 16, new_tokens: int = 256, rounds: int = 3,
                dtype: torch.dtype | None = None, compile_mode: str | None = "reduce-overhead",
                hf: bool = True, timer: Timer = median_time) -> Result:
    """Batch-1 greedy decode of ``new_tokens`` after a ``prompt_len``-token prompt (prefill
    included in the time): :class:`StaticDecoder` compiled with ``compile_mode`` (on CUDA; eager
    elsewhere), vs the same decoder eager and HF ``generate`` with its cache. ``dtype``: bf16 on
    CUDA, float32 on the CPU by default."""
    device = torch.device(device)
    config = config or GPTConfig()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    mode = compile_mode if device.type == "cuda" else None
    model = _decode_model(config, device, dtype)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len),
                           generator=torch.Generator().manual_seed(1)).to(device)
    max_len = prompt_len + new_tokens
    peak_bw = lookup(PEAK_BW, device_name(device), "LLMFS_PEAK_BW")
    eager_rate, eager_out = _time_decoder("decode eager", StaticDecoder(model, max_len), prompt,
                                          new_tokens, rounds, timer)
    skips = _cudagraph_skips()
    rate, out = _time_decoder("decode static cache" + (f", {mode}" if mode else ""),
                              StaticDecoder(model, max_len, mode), prompt, new_tokens, rounds,
                              timer)
    figures = _decode_figures(model, config, rate, prompt_len, new_tokens, peak_bw)
    figures.update({"compile_mode": mode, "eager_tokens_per_s": eager_rate,
                    "cudagraph_skips": _cudagraph_skips() - skips,  # 0: the graphs ran
                    "same_tokens_as_eager": float((out == eager_out).float().mean()),
                    "peak_bandwidth": peak_bw})
    baseline: Result = {"who": "the same decode, eager", "figures": {"tokens_per_s": eager_rate}}
    if hf:
        figures["hf_generate_tokens_per_s"] = _hf_generate_rate(model, prompt, new_tokens,
                                                                rounds, timer)
        baseline = {"who": "hf transformers generate (its cache), eager",
                    "figures": {"tokens_per_s": figures["hf_generate_tokens_per_s"]}}
    result = _base("decode", f"decode batch 1, {config.n_layer}L {config.n_embd}C "
                   f"{str(dtype).removeprefix('torch.')}, static KV cache"
                   f"{', ' + mode if mode else ', eager'}", device,
                   {"prompt_len": prompt_len, "new_tokens": new_tokens, "rounds": rounds,
                    "max_len": max_len, "dtype": str(dtype)})
    result.update({"figures": figures, "baseline": baseline,
                   "ratio": rate / baseline["figures"]["tokens_per_s"]})
    result.update(_goal("tokens_per_s", DECODE_GOAL, ">= 5,000 tokens/s batch 1 on a GPU",
                        device.type == "cuda", rate))
    return result


def _hf_generate_rate(model: GPT, prompt: Tensor, new_tokens: int, rounds: int,
                      timer: Timer) -> float:
    hf = _hf_twin(model).eval().to(device=prompt.device, dtype=model_dtype(model))
    ones = torch.ones_like(prompt)

    def run() -> None:
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                        do_sample=False, pad_token_id=0, attention_mask=ones)
        sync(prompt.device)

    run()
    return new_tokens / timer("decode hf generate", run, rounds)


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


# ---------------------------------------------------------------- 3. int8 decode


def int8_gate(device: torch.device | str, config: GPTConfig | None = None, *,
              prompt_len: int = 16, new_tokens: int = 256, rounds: int = 3,
              compile_mode: str | None = "reduce-overhead", timer: Timer = median_time,
              bf16: Result | None = None, dequant: bool = False) -> Result:
    """Decode as :func:`decode_gate` with weight-only int8 linear layers
    (``reference.quantization.quantize``, activations bf16 on CUDA) vs the bf16 (float32 on the
    CPU) model. ``bf16``: a :func:`decode_gate` result of the same run to reuse as the
    baseline instead of measuring it again. ``dequant``: also time the layers with torch's
    int8 kernel switched off (``dequant_tokens_per_s``), the formula the compiler fuses."""
    from reference.quantization import quantize

    device = torch.device(device)
    config = config or GPTConfig()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mode = compile_mode if device.type == "cuda" else None
    model = _decode_model(config, device, dtype)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len),
                           generator=torch.Generator().manual_seed(1)).to(device)
    max_len = prompt_len + new_tokens
    peak_bw = lookup(PEAK_BW, device_name(device), "LLMFS_PEAK_BW")
    if bf16 is not None and bf16.get("figures"):
        base_figures = bf16["figures"]
        reused = True
    else:
        rate, _ = _time_decoder("decode float", StaticDecoder(model, max_len, mode), prompt,
                                new_tokens, rounds, timer)
        base_figures = _decode_figures(model, config, rate, prompt_len, new_tokens, peak_bw)
        reused = False
    q_model = quantize(copy.deepcopy(model))
    del model
    _free(device)
    rate, _ = _time_decoder("decode int8", StaticDecoder(q_model, max_len, mode), prompt,
                            new_tokens, rounds, timer)
    figures = _decode_figures(q_model, config, rate, prompt_len, new_tokens, peak_bw)
    figures["compile_mode"] = mode
    if dequant:  # the other way to run the matmul: x @ q.to(x.dtype)ᵀ * scale, which inductor
        # fuses into one kernel reading the int8 weight (gpt-fast's int8), instead of
        # torch._weight_int8pack_mm
        from reference import quantization

        with mock.patch.object(quantization, "_has_kernel", lambda x: False):
            other, _ = _time_decoder("decode int8 dequant", StaticDecoder(q_model, max_len, mode),
                                     prompt, new_tokens, rounds, timer)
        figures["dequant_tokens_per_s"] = other
        figures["dequant_ratio"] = other / base_figures["tokens_per_s"]
    name = str(dtype).removeprefix("torch.")
    result = _base("int8", f"int8 weight-only decode batch 1 vs {name}, {config.n_layer}L "
                   f"{config.n_embd}C", device,
                   {"prompt_len": prompt_len, "new_tokens": new_tokens, "rounds": rounds,
                    "activations": name, "baseline_reused_from_decode_gate": reused})
    ratio = figures["tokens_per_s"] / base_figures["tokens_per_s"]
    result.update({"figures": figures,
                   "baseline": {"who": f"{name} decode, same decoder", "figures": base_figures},
                   "ratio": ratio})
    result.update(_goal("ratio", INT8_GOAL, "int8 tokens/s >= 1.0x bf16's on a GPU",
                        device.type == "cuda", ratio))
    return result


# ---------------------------------------------------------------- 4. the API end to end


def _alphabet(vocab_size: int) -> str:
    return "".join(chr(0x100 + i) for i in range(vocab_size))  # one character, one token


def _prompts(config: GPTConfig, n: int, prompt_len: int) -> list[str]:
    chars = _alphabet(config.vocab_size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (n, prompt_len), generator=g).tolist()
    return ["".join(chars[i] for i in row) for row in ids]


@contextlib.contextmanager
def _serving(run: Path, device: torch.device, max_batch: int) -> Iterator[str]:
    """``create_app`` on a real uvicorn on 127.0.0.1 (a thread of this process); its URL."""

    from reference.server.app import create_app
    from reference.server.background import serve_in_thread
    from reference.server.settings import ServerSettings

    settings = ServerSettings(model=str(run), device=str(device), allow_anonymous=True,
                              max_batch=max_batch, max_waiting=max_batch, playground=False,
                              log_level="warning",
                              requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000)
    with serve_in_thread(create_app(settings)) as url:
        yield url


Timeline = tuple[float, list[list[float]]]  # (the round's start, each token's arrival time)


async def _http_round(url: str, prompts: list[str], new_tokens: int) -> Timeline:
    import httpx

    async def one(client: httpx.AsyncClient, i: int, prompt: str) -> list[float]:
        times: list[float] = []
        ask = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 1.0, "top_k": 50,
               "seed": i, "stream": True}
        async with client.stream("POST", "/v1/completions", json=ask) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    text = json.loads(line[6:])["choices"][0]["text"]
                    times += [time.perf_counter()] * len(text)  # one character per token
        return times

    limits = httpx.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        times = await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))
    return t0, list(times)


def _latency(timeline: Timeline, seconds: float, new_tokens: int) -> Result:
    import numpy as np

    t0, times = timeline
    counts = {len(t) for t in times}
    if counts != {new_tokens}:
        raise RuntimeError(f"every request should get {new_tokens} tokens, got {sorted(counts)}")
    ttft = np.array([t[0] - t0 for t in times]) * 1e3
    return {"tokens_per_s": len(times) * new_tokens / seconds,
            "ttft_p50_ms": float(np.percentile(ttft, 50)),
            "ttft_p99_ms": float(np.percentile(ttft, 99))}


def api_gate(device: torch.device | str, config: GPTConfig | None = None, *,
             streams: tuple[int, ...] = (16, 64), prompt_len: int = 32, new_tokens: int = 32,
             rounds: int = 3, workdir: Path | None = None, timer: Timer = median_time) -> Result:
    """Streamed completions (temperature 1, top-k 50, a seed each) through uvicorn + the server
    (``reference.server``) by ``n`` concurrent clients, for each ``n`` in ``streams``, vs the
    same requests submitted to ``reference.batching.Engine`` directly; tokens/s of the whole
    round and time to first token p50/p99 (from the round's start). The model (random weights,
    float32, a character tokenizer so one token is one character) is saved to ``workdir``."""
    from reference.batching import Engine, Request
    from reference.checkpoint import save_checkpoint
    from reference.inference import load
    from reference.tokenizers import META_NAME, CharTokenizer

    device = torch.device(device)
    config = config or GPTConfig()
    max_batch = max(streams)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run = workdir / "gate-model"
        torch.manual_seed(0)
        save_checkpoint(GPT(config).eval(), run)
        tokenizer = CharTokenizer(_alphabet(config.vocab_size))
        (run / META_NAME).write_text(json.dumps({"tokenizer": tokenizer.to_dict()}))
        http: dict[int, Result] = {}
        with _serving(run, device, max_batch) as url:
            for n in streams:
                prompts = _prompts(config, n, prompt_len)
                last: list[Timeline] = []

                def go(prompts: list[str] = prompts, last: list[Timeline] = last) -> None:
                    last[:] = [asyncio.run(_http_round(url, prompts, new_tokens))]

                go()  # warm-up
                http[n] = _latency(last[0], timer(f"api http {n}", go, rounds), new_tokens)
        engine_figures: dict[int, Result] = {}
        loaded = load(run, device=device)
        with Engine(loaded.model, max_batch=max_batch, max_waiting=max_batch) as engine:
            for n in streams:
                requests = [Request(tuple(loaded.tokenizer.encode(p)), new_tokens, 1.0, 50,
                                    None, None, i)
                            for i, p in enumerate(_prompts(config, n, prompt_len))]
                out: list[Timeline] = []

                def direct(requests: list[Request] = requests, out: list[Timeline] = out) -> None:
                    async def consume(r: Request) -> list[float]:
                        return [time.perf_counter() async for _ in engine.submit(r)]

                    async def all_of() -> Timeline:
                        t0 = time.perf_counter()
                        return t0, list(await asyncio.gather(*(consume(r) for r in requests)))

                    out[:] = [asyncio.run(all_of())]

                direct()
                engine_figures[n] = _latency(out[0], timer(f"api engine {n}", direct, rounds),
                                             new_tokens)
    figures: Result = {}
    for n in streams:
        figures[f"{n}_streams"] = {**http[n], "ratio_to_engine":
                                   http[n]["tokens_per_s"] / engine_figures[n]["tokens_per_s"]}
    worst = min(f["ratio_to_engine"] for f in figures.values())
    figures["tokens_per_s"] = figures[f"{max_batch}_streams"]["tokens_per_s"]
    result = _base("api", f"API: uvicorn + SSE, {', '.join(map(str, streams))} concurrent "
                   f"streams, {config.n_layer}L {config.n_embd}C float32", device,
                   {"streams": list(streams), "prompt_len": prompt_len,
                    "new_tokens": new_tokens, "rounds": rounds})
    result.update({"figures": figures,
                   "baseline": {"who": "reference.batching.Engine, the same requests directly",
                                "figures": {f"{n}_streams": engine_figures[n] for n in streams}},
                   "ratio": worst})
    result.update(_goal("ratio", API_GOAL, "HTTP >= 0.8x the raw engine's tokens/s (the worst "
                        "of the stream counts) on a GPU", device.type == "cuda", worst))
    return result


# ---------------------------------------------------------------- the summary


def machine(device: torch.device | str) -> Result:
    """The machine the figures come from: card, torch, CUDA and driver versions."""
    device = torch.device(device)
    info: Result = {"device": device_name(device), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "python": platform.python_version(),
                    "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "driver": None}
    if device.type == "cuda":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")[0]
    return info


def failure(gate: str, error: BaseException | str) -> Result:
    """The result of a gate that did not finish."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"gate": gate, "error": text[:2000], "met": False}


def write_summary(path: Path | str, results: list[Result], machine_info: Result) -> Result:
    """Merge ``results`` into the JSON summary at ``path`` (a gate's entry replaces the one of
    the same name: each step of the GPU script adds its own); the summary written."""
    path = Path(path)
    summary: Result = {"gates": []}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError, UnicodeDecodeError):
            summary = json.loads(path.read_text(encoding="utf-8"))
    names = {r["gate"] for r in results}
    gates = [g for g in summary.get("gates", []) if g.get("gate") not in names]
    summary.update({"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": machine_info, "gates": gates + list(results)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return summary
