"""Sliding-window perplexity of Tiny Shakespeare's first 100 KB: reference vs solutions vs
Hugging Face's documented loop on a GPT2LMHeadModel with the same weights (the peer).

(The parameter is ``who``, not ``impl``: the root conftest parametrizes any ``impl`` argument.)

The peer is the loop of Hugging Face's "Perplexity of fixed-length models" (labels -100 on the
overlapped context, one window per forward), with the exact per-token count. The reference
batches 8 windows per forward; the solution runs one window at a time on our model. Each row
records the perplexity it computed: the three agree (checked, 1e-4 relative), the time differs.

* CPU: a character-level model (vocab 65) of 4 layers x 128 wide, context 256, stride 128;
* CUDA: GPT-2 small's shape (124M, GPT-2's BPE, context 1024, stride 512), float32.

    pytest benchmarks/test_evaluation_bench.py --benchmark-min-rounds=1
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import solutions.evaluation
from benchmarks.conftest import device_name
from reference.evaluation import perplexity
from reference.hf import config_to_hf, to_hf_state_dict
from reference.model import GPT, GPTConfig
from reference.tokenizers import CharTokenizer, gpt2_tokenizer

transformers = pytest.importorskip("transformers")

WHO = ["reference", "solutions", "hf loop"]
N_BYTES = 100_000


def _text(shared_data: Path) -> str:
    raw = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[:N_BYTES]
    return raw.decode("utf-8", errors="ignore")


def _models(config: GPTConfig, device: torch.device) -> tuple[GPT, Any]:
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    hf_config = dict(config_to_hf(config), n_positions=config.block_size + 1)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
    state = to_hf_state_dict(model.state_dict())
    wpe = state["transformer.wpe.weight"]  # HF's window holds the target: one position more
    state["transformer.wpe.weight"] = torch.cat([wpe, torch.zeros_like(wpe[:1])])
    hf.load_state_dict(state, strict=True)
    return model, hf.to(device).eval()


@torch.inference_mode()
def hf_loop(hf: Any, ids: list[int], max_length: int, stride: int, device: torch.device
            ) -> float:
    """Hugging Face's documented loop, counting the scored tokens exactly; the perplexity."""
    enc = torch.tensor([ids], device=device)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, enc.size(1), stride):
        end = min(begin + max_length, enc.size(1))
        trg_len = end - prev_end
        input_ids = enc[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        loss = hf(input_ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * n
        n_tokens += n
        prev_end = end
        if end == enc.size(1):
            break
    return math.exp(nll_sum / n_tokens)


def _run(benchmark: Any, who: str, group: str, model: GPT, hf: Any, ids: list[int],
         text: str, context: int, stride: int, device: torch.device) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = who
    benchmark.extra_info["device"] = device_name(device)
    benchmark.extra_info["tokens"] = len(ids)
    if who == "hf loop":
        benchmark.extra_info["peer"] = True

    def run() -> float:
        if who == "hf loop":
            ppl = hf_loop(hf, ids, context + 1, stride, device)
        elif who == "reference":
            ppl = perplexity(model, ids, text=text, context=context, stride=stride).ppl
        else:
            ppl = solutions.evaluation.perplexity(model, ids, context=context, stride=stride).ppl
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ppl

    ppl = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info["ppl"] = ppl
    with torch.inference_mode():
        reference_ppl = perplexity(model, ids, context=context, stride=stride).ppl
    assert math.isclose(ppl, reference_ppl, rel_tol=1e-4), (who, ppl, reference_ppl)


@pytest.mark.parametrize("who", WHO)
def test_perplexity_cpu(benchmark: Any, shared_data: Path, who: str) -> None:
    device = torch.device("cpu")
    text = _text(shared_data)
    tok = CharTokenizer.from_text(text)
    config = GPTConfig(block_size=256, vocab_size=tok.vocab_size, n_layer=4, n_head=4,
                       n_embd=128)
    model, hf = _models(config, device)
    _run(benchmark, who, "perplexity cpu char 4x128 ctx 256 stride 128", model, hf,
         tok.encode(text), text, 256, 128, device)


@pytest.mark.parametrize("who", ["reference", "hf loop"])  # the solution runs on the CPU only
def test_perplexity_cuda(benchmark: Any, cuda: torch.device, shared_data: Path, who: str) -> None:
    text = _text(shared_data)
    tok = gpt2_tokenizer(shared_data / "gpt2" / "gpt2.tiktoken")
    model, hf = _models(GPTConfig(), cuda)  # GPT-2 small's shape: 124M, block 1024
    _run(benchmark, who, "perplexity cuda gpt2-124M ctx 1024 stride 512", model, hf,
         tok.encode(text), text, 1024, 512, cuda)
