"""Fine-tuning on a task the project makes itself: word reversal, before and after, LoRA beside
full fine-tuning (the peer), then DPO on preference pairs.

* The base model is the main job (``configs/tiny_cpu.yaml``: 0.8M parameters, character-level
  on the built-in corpus, 1,000 steps), trained here once and kept in
  ``build/bench-finetune/base``.
* The data: ``python -m reference task reverse`` (5,000 conversations such as
  ``reverse: kqzd`` -> ``dzqk``, random letters, 3 to 7 of them), 4% held out (200).
* ``finetune lora`` and ``finetune full`` run ``python -m reference finetune`` in a subprocess
  on two threads; the time is the whole command (data, training, evaluation, checkpoints, the
  held-out answers). Figures: held-out exact match before (the base with the chat tokens added)
  and after, the trainable fraction, the child's peak resident memory, the adapter file's size
  against the checkpoint's. **Goal: >= 90% exact match after LoRA in under 10 minutes on 2 CPU
  cores, from near 0.**
* ``dpo``: from a short LoRA run (300 steps), DPO on generated pairs (chosen: the reversal;
  rejected: the word as given, or the reversal with two letters swapped), the held-out
  preference accuracy and the exact match before and after.

    pytest benchmarks/test_finetune_bench.py -s
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.conftest import device_name
from reference.checkpoint import find_checkpoint
from reference.inference import load
from reference.tasks import reverse_preferences
from reference.trainer.config import load_config
from reference.trainer.dpo import (
    Pair,
    encode_pairs,
    preference_accuracy,
    preference_margin,
    train_dpo,
)
from reference.trainer.sft import exact_match, finetune_model, prepare_sft

pytestmark = pytest.mark.finetune
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench-finetune"
QUIET = ["train.progress=false", "train.tensorboard=false", "train.plot=false",
         "train.device=cpu", "train.threads=2"]
SETTINGS = {
    "lora": ["finetune.method=lora", "finetune.lora_r=16", "finetune.lora_alpha=32",
             "train.lr=3e-3", "train.max_steps=1500"],
    "full": ["finetune.method=full", "train.lr=1e-3", "train.max_steps=1500"],
}
COMMON = ["train.batch_size=32", "train.warmup_steps=50", "train.min_lr=1e-4",
          "train.weight_decay=0.0", "train.eval_interval=500", "train.eval_steps=4",
          "finetune.val_fraction=0.04", "finetune.eval_examples=200", "train.keep_checkpoints=1"]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-m", "reference", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def base() -> Path:
    run = WORK / "base"
    if not (run / "checkpoints" / "latest").is_file():
        _python("train", f"train.out_dir={run}", "--overwrite", "--no-sample", *QUIET)
    return run


@pytest.fixture(scope="module")
def data() -> Path:
    path = WORK / "reverse.jsonl"
    if not path.is_file():
        _python("task", "reverse", str(path), "--n", "5000", "--seed", "0")
    return path


def _load() -> str:
    """The machine's load average (1, 5, 15 min): these runs share a 2-core machine."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _before(base: Path, data: Path) -> float:
    """Held-out exact match of the base with the chat tokens added (no training)."""
    config = load_config(overrides=[f"finetune.base={base}", f"finetune.data={data}",
                                    f"train.out_dir={WORK / 'before'}", *COMMON])
    from reference.trainer.sft import finetune_config

    config = finetune_config(config)
    sft = prepare_sft(config, write=False)
    config = config.with_vocab_size(sft.vocab_size)
    model, _ = finetune_model(config, sft.vocab_size)
    return exact_match(model.eval(), sft.chat, sft.val_conversations[:200])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_reverse(benchmark: Any, base: Path, data: Path, method: str) -> None:
    run = WORK / method
    args = ["finetune", str(base), str(data), f"train.out_dir={run}", "--overwrite",
            "--no-sample", *QUIET, *COMMON, *SETTINGS[method]]
    out: dict[str, Any] = {}

    def once() -> None:
        start = time.perf_counter()
        out["result"] = _python(*args)
        out["seconds"] = time.perf_counter() - start

    benchmark.group = "finetune reverse (2 CPU threads)"
    benchmark.extra_info.update(impl=method, peer=method == "full", device=device_name("cpu"))
    benchmark.pedantic(once, rounds=1, iterations=1)
    text = out["result"].stdout + out["result"].stderr
    accuracy = float(re.search(r"held-out exact match: ([\d.]+)%", text)[1])  # type: ignore[index]
    fraction = re.search(r"parameters \(([\d.]+)%\)", text)[1]  # type: ignore[index]
    rss = re.search(r"peak memory ([\d,]+) MiB", text)[1]  # type: ignore[index]  # the child's
    checkpoint = find_checkpoint(run)
    adapter = checkpoint / "adapter.safetensors"
    benchmark.extra_info.update(
        exact_match_before=f"{_before(base, data):.1%}", exact_match_after=f"{accuracy}%",
        trainable=f"{fraction}%", seconds=round(out["seconds"], 1),
        peak_rss_mib=rss, steps=SETTINGS[method][-1], load=_load(),
        checkpoint_kib=round((checkpoint / "model.safetensors").stat().st_size / 1024),
        adapter_kib=round(adapter.stat().st_size / 1024) if adapter.exists() else None)
    print(f"\n{method}: {benchmark.extra_info}")


def test_dpo_reverse(benchmark: Any, base: Path, data: Path) -> None:
    """DPO from a short LoRA SFT run (300 steps: the model reverses some words, not all), with
    the SFT adapters merged and fresh LoRA adapters trained by DPO against the SFT model."""
    run = WORK / "lora-short"
    if not (run / "checkpoints" / "latest").is_file():
        _python("finetune", str(base), str(data), f"train.out_dir={run}", "--overwrite",
                "--no-sample", *QUIET, *COMMON, *SETTINGS["lora"][:-1], "train.max_steps=300")
    torch.set_num_threads(2)
    loaded = load(run)
    model, chat = loaded.model, loaded.tokenizer
    from reference.chat import ChatTokenizer
    from reference.lora import apply_lora

    assert isinstance(chat, ChatTokenizer)
    apply_lora(model, r=8, alpha=16)
    block = model.config.block_size + 1

    def pairs(seed: int, n: int) -> list[Any]:
        records = reverse_preferences(n, seed=seed)
        return encode_pairs(chat, [Pair(tuple(r["prompt"]), str(r["chosen"]),  # type: ignore[arg-type]
                                        str(r["rejected"])) for r in records], block)

    train, held_out = pairs(10, 2000), pairs(11, 200)
    held_conversations = [[*r["prompt"], {"role": "assistant", "content": r["chosen"]}]  # type: ignore[list-item]
                          for r in reverse_preferences(200, seed=11)]
    model.eval()
    before = preference_accuracy(model, held_out)
    margin_before = preference_margin(model, held_out)
    match_before = exact_match(model, chat, held_conversations)
    result: dict[str, Any] = {}

    def once() -> None:
        result["dpo"] = train_dpo(model, train, steps=200, beta=0.1, lr=2e-3, batch_size=32)

    benchmark.group = "dpo reverse (2 CPU threads)"
    benchmark.extra_info.update(impl="reference", peer=True, device=device_name("cpu"))
    benchmark.pedantic(once, rounds=1, iterations=1)
    model.eval()
    benchmark.extra_info.update(
        preference_accuracy_before=f"{before:.1%}",
        preference_accuracy_after=f"{preference_accuracy(model, held_out):.1%}",
        margin_before=round(margin_before, 2),
        margin_after=round(preference_margin(model, held_out), 2),
        exact_match_before=f"{match_before:.1%}",
        exact_match_after=f"{exact_match(model, chat, held_conversations):.1%}",
        loss_first=round(result["dpo"].losses[0], 4),
        loss_last10=round(sum(result["dpo"].losses[-10:]) / 10, 4), load=_load())
    print(f"\ndpo: {benchmark.extra_info}")


@pytest.mark.parametrize("who", ["reference", "hf apply_chat_template"])
def test_chat_encoding(benchmark: Any, shared_data: Path, who: str) -> None:
    """Encoding 500 three-turn conversations with the loss mask on GPT-2's BPE: the library's
    ``encode_chat`` vs Hugging Face's ``apply_chat_template(return_assistant_tokens_mask=True)``
    with the same template (the peer; built offline as the spec builds it)."""
    from reference.chat import ChatTokenizer, encode_chat
    from reference.tasks import reverse
    from specs.test_finetune import gpt2_pair, hf_ids_and_mask

    hf, base = gpt2_pair(str(shared_data / "gpt2" / "gpt2.tiktoken"))
    chat = ChatTokenizer(base)
    conversations = [[{"role": "system", "content": "You reverse words, nothing else."}, *c]
                     for c in reverse(500, seed=3)]
    encode = (lambda c: encode_chat(chat, c)) if who == "reference" else (
        lambda c: hf_ids_and_mask(hf, c))
    assert encode(conversations[0]) == hf_ids_and_mask(hf, conversations[0])
    benchmark.group = "chat encoding, 500 conversations, GPT-2 BPE"
    benchmark.extra_info.update(impl=who, peer=who != "reference")
    benchmark(lambda: [encode(c) for c in conversations])
