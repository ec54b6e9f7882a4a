"""Fine-tuning through the trainer: conversations in, a chat model out (the ``finetune`` section).

The run starts from a trained model, ``finetune.base`` (a run directory or a checkpoint), and
trains on the conversations of ``finetune.data`` (JSONL; ``reference/finetune.py`` reads
messages or Alpaca records) with the loss on the assistant's tokens only:

* **the tokenizer** is the base's plus the chat format's four special tokens
  (``reference/chat.py``), appended after its last id: every id the base knew keeps its meaning.
  The embedding (tied to the LM head) grows by four rows, drawn like GPT-2's initial weights
  (normal, std 0.02) from ``train.seed``: random rows are distinct, so the model can tell the
  roles apart from the first step. A Llama base with an untied head grows its ``lm_head`` by
  four rows too (drawn after the embedding's), which train as the embedding's do;
* **the model**: with ``finetune.method=lora`` every base weight is frozen and LoRA adapters
  (``reference/lora.py``) wrap the ``finetune.lora_targets`` linear layers; the four new
  embedding rows train too (a gradient hook zeroes the gradient of the base's rows, and the
  embedding takes no weight decay, so AdamW leaves those rows bit for bit as they were). With
  ``method=full`` everything trains;
* **batches**: ``train.batch_size`` conversations drawn at random (with ``train.seed``), right
  padded to the longest one in the batch (at most ``block_size + 1`` tokens each): one example
  per row, so with causal attention no example can attend to another, and padding is never
  attended to by a real token (it comes after them) and carries no loss;
* **checkpoints** are model checkpoints like any run's (``generate`` and ``load`` read them),
  with the LoRA delta merged into the weights, so a fine-tuned run is used like any other.
  A LoRA run's checkpoint also holds the adapter alone (``adapter.safetensors``, A, B and the
  new rows, and ``adapter_config.json``): ``resume`` rebuilds the model from the base and the
  adapter, and :func:`reference.lora.load_adapter` applies it to the base elsewhere.

At the end the trainer generates the answers of up to ``finetune.eval_examples`` held-out
conversations greedily and reports their exact-match accuracy (:func:`exact_match`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..arch import build_model
from ..atomic import write_json
from ..chat import ChatTokenizer, Message, render
from ..checkpoint import WEIGHTS_NAME, Model, find_checkpoint, read_config, read_safetensors
from ..finetune import encode_conversations, read_conversations, sft_batch
from ..generate import generate_batch
from ..inference import load
from ..llama import Llama
from ..model import GPT
from ..tokenizers import META_NAME, TOKENIZER_NAME
from .config import MAIN_JOB_MODEL, Config, config_from_dict

if TYPE_CHECKING:
    from .loop import Trainer

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "NEW_ROWS", "SFTData", "base_fingerprint",
           "exact_match", "finetune_config", "finetune_model", "grown_weights",
           "load_finetune_weights", "new_rows_name",
           "prepare_sft", "save_adapter_files", "sft_batches"]

NEW_ROWS = "transformer.wte.weight.new_rows"  # the adapter's copy of the chat tokens' rows
ADAPTER_WEIGHTS = "adapter.safetensors"  # reference/lora.py's file names
ADAPTER_CONFIG = "adapter_config.json"
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "bias")  # what a GPT base decides


def grown_weights(model: Model) -> dict[str, Tensor]:
    """The weights that grow with the vocabulary, by state-dict name: the token embedding,
    and a Llama's untied LM head (a tied head is the embedding).

    >>> from reference.llama import LlamaConfig
    >>> sorted(grown_weights(Llama(LlamaConfig(block_size=4, vocab_size=8, n_layer=1, n_head=1,
    ...                                        n_embd=8))))
    ['lm_head.weight', 'model.embed_tokens.weight']
    """
    if isinstance(model, Llama):
        out = {"model.embed_tokens.weight": model.model.embed_tokens.weight}
        if not model.config.tie_word_embeddings:
            out["lm_head.weight"] = model.lm_head.weight
        return out
    return {"transformer.wte.weight": model.transformer.wte.weight}


def new_rows_name(name: str) -> str:
    """The adapter's name for the chat tokens' rows of the grown weight ``name``."""
    return f"{name}.new_rows"
Example = tuple[list[int], list[bool]]


@dataclass
class SFTData:
    """The fine-tuning examples, split, encoded, with the chat tokenizer; the parts of
    :class:`reference.trainer.data.TokenData` the trainer reads (``directory``, ``meta``,
    ``vocab_size``, ``tokenizer()``, ``split()``)."""

    chat: ChatTokenizer
    train: list[Example]
    val: list[Example]
    val_conversations: list[list[Message]]
    directory: Path  # meta.json (and tokenizer.json) of the chat tokenizer, for checkpoints
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.chat.vocab_size

    def tokenizer(self) -> ChatTokenizer:
        return self.chat

    def split(self, name: str) -> list[Example]:
        return self.train if name == "train" else self.val


def prepare_sft(config: Config, *, write: bool = True) -> SFTData:
    """Read, shuffle (``train.seed``), split and encode ``finetune.data`` with the base's
    tokenizer plus the chat tokens; write the tokenizer's description to the run's data
    directory (``write``: rank 0 only)."""
    ft = config.finetune
    assert ft.base is not None and ft.data is not None
    base_dir = find_checkpoint(ft.base)
    base = load(base_dir)
    chat = ChatTokenizer(base.tokenizer)
    conversations = list(read_conversations(ft.data))
    if len(conversations) < 2:
        raise ValueError(f"{ft.data}: {len(conversations)} conversation(s); fine-tuning needs "
                         "at least 2 (one to train on, one held out)")
    random.Random(config.train.seed).shuffle(conversations)
    n_val = max(1, round(len(conversations) * ft.val_fraction))
    val, train = conversations[:n_val], conversations[n_val:]
    max_len = base.model.config.block_size + 1
    directory = Path(config.train.out_dir) / "data"
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / META_NAME, {"tokenizer": chat.to_dict(), "source": str(ft.data)})
        if (base_dir / TOKENIZER_NAME).is_file():  # a BPE base: its merges live in this file
            (directory / TOKENIZER_NAME).write_bytes((base_dir / TOKENIZER_NAME).read_bytes())
    train_ex = encode_conversations(chat, train, max_len)
    val_ex = encode_conversations(chat, val, max_len)
    meta = {"tokenizer": chat.to_dict(), "n_tokens": sum(len(ids) for ids, _ in train_ex + val_ex),
            "n_train": len(train_ex), "n_val": len(val_ex)}
    return SFTData(chat, train_ex, val_ex, val, directory, meta)


def sft_batches(examples: Sequence[Example], batch_size: int, *, generator: torch.Generator,
                device: torch.device, pad_id: int, rank: int = 0,
                world_size: int = 1) -> tuple[Tensor, Tensor]:
    """``batch_size`` examples drawn at random with ``generator`` (the global batch of every
    rank, then this rank's slice, as ``get_batch`` does), right padded: inputs and targets."""
    picks = torch.randint(len(examples), (world_size * batch_size,), generator=generator)
    mine = picks[rank * batch_size : (rank + 1) * batch_size].tolist()
    return sft_batch([examples[i] for i in mine], pad_id=pad_id, device=device)


def base_fingerprint(base: str) -> str:
    """The SHA-256 of the base checkpoint's weights file: resume checks the base is the same."""
    path = find_checkpoint(base) / WEIGHTS_NAME
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def finetune_model(config: Config, vocab_size: int) -> tuple[Model, int]:
    """The base model grown to ``vocab_size`` tokens (the new rows drawn from ``train.seed``),
    with LoRA applied for ``method=lora``; returns it and the base's vocabulary size."""
    from ..lora import apply_lora, check_lora_targets

    ft = config.finetune
    assert ft.base is not None
    base = load(ft.base).model
    n_base = base.config.vocab_size
    model = build_model(config.model.model_copy(update={"vocab_size": vocab_size}))
    state = base.state_dict()
    grown = grown_weights(model)
    old = {name: state.pop(name) for name in grown}
    state.pop("lm_head.weight", None)  # tied: the same tensor as the embedding
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= set(grown) | {"lm_head.weight"}
    generator = torch.Generator().manual_seed(config.train.seed)
    with torch.no_grad():
        for name, weight in grown.items():  # the embedding's rows first, then the head's
            rows = torch.empty(vocab_size - n_base, weight.size(1))
            rows.normal_(0.0, 0.02, generator=generator)
            weight.copy_(torch.cat([old[name], rows.to(old[name].dtype)]))
    model.train()
    if ft.method == "lora":
        if ft.lora_targets is not None:  # one line naming a pattern that matches nothing
            check_lora_targets(ft.lora_targets, model.config.arch)
        apply_lora(model, r=ft.lora_r, alpha=ft.lora_alpha, dropout=ft.lora_dropout,
                   targets=None if ft.lora_targets is None else tuple(ft.lora_targets),
                   rslora=ft.rslora)
        for weight in grown.values():
            weight.requires_grad_(True)
            weight.frozen_rows = n_base  # type: ignore[attr-defined]  # not decayed (optim.py)
            keep = torch.zeros(weight.size(0), 1, dtype=weight.dtype)
            keep[n_base:] = 1.0
            weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device))  # type: ignore[no-untyped-call]
    return model, n_base


@torch.no_grad()
def exact_match(model: GPT | Llama, chat: ChatTokenizer, conversations: Sequence[Sequence[Message]],
                *, batch_size: int = 64, max_new_tokens: int | None = None) -> float:
    """The fraction of ``conversations`` whose last (assistant) message the model writes
    exactly, generating greedily from the rendered earlier turns until ``<|end|>``. The model's
    mode is left alone: put it in eval mode first."""
    if not conversations:
        raise ValueError("exact_match needs at least one conversation")
    block = model.config.block_size
    hits = 0
    for start in range(0, len(conversations), batch_size):
        part = conversations[start : start + batch_size]
        prompts = [chat.encode(render(c[:-1], add_generation_prompt=True))[-block:] for c in part]
        answers = [c[-1]["content"] for c in part]
        n = max_new_tokens or max(len(chat.encode(a)) for a in answers) + 1
        outs = generate_batch(model, prompts, n, temperature=0.0, eos_id=chat.eot_id,
                              overflow="stop")
        for out, answer in zip(outs, answers, strict=True):
            if out and out[-1] == chat.eot_id:
                hits += chat.decode(out[:-1]) == answer
    return hits / len(conversations)



def finetune_config(config: Config, *, resuming: bool = False) -> Config:
    """``config`` with the base model's shape in the ``model`` section (``dropout`` may be
    changed) and the base's fingerprint in ``finetune.base_sha256``. A model section that
    differs from both the default and the base, or (on resume) a base whose weights changed, is
    a ValueError naming it."""
    ft = config.finetune
    assert ft.base is not None
    base_dir = find_checkpoint(ft.base)
    base = read_config(base_dir / "config.json")
    given = config.model
    if given.arch != base.arch and given.model_copy(update={"dropout": 0.0}) != MAIN_JOB_MODEL:
        raise ValueError(f"model.arch={given.arch} but the base model {base_dir} is "
                         f"{base.arch}: the model section comes from finetune.base (only "
                         "model.dropout may change)")
    shape = SHAPE if given.arch == base.arch == "gpt2" else \
        tuple(n for n in type(base).model_fields if n not in ("dropout", "vocab_size"))
    for name in shape if given.arch == base.arch else ():
        value = getattr(given, name)
        if value != getattr(base, name) and value != getattr(MAIN_JOB_MODEL, name, value):
            raise ValueError(f"model.{name}={value!r} but the base model {base_dir} has "
                             f"{getattr(base, name)!r}: the model section comes from "
                             "finetune.base (only model.dropout may change)")
    model = {name: getattr(base, name) for name in shape} | {"dropout": given.dropout}
    if "vocab_size" in given.model_fields_set and resuming:
        model["vocab_size"] = given.vocab_size
    fingerprint = base_fingerprint(ft.base)
    if resuming and ft.base_sha256 not in (None, fingerprint):
        raise ValueError(f"the base model {base_dir / WEIGHTS_NAME} changed since this run "
                         "started (its SHA-256 differs): resume needs the same base")
    raw = config.to_dict()
    raw["model"] = model
    raw["finetune"] = {**raw["finetune"], "base_sha256": fingerprint}
    return config_from_dict(raw, origin="finetune")


def save_adapter_files(trainer: Trainer, directory: Path) -> None:
    """Into a LoRA run's checkpoint ``directory``: the adapter alone (A, B and the chat
    tokens' embedding rows), with its settings (:func:`reference.lora.save_adapter`)."""
    from ..lora import LoRALinear, save_adapter

    model = trainer.model
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        return  # full fine-tuning: model.safetensors is the whole state
    rows = {new_rows_name(name): weight.detach()[trainer.base_vocab_size:]
            for name, weight in grown_weights(model).items()}
    save_adapter(model, directory, extra=rows, base=str(trainer.config.finetune.base))


def load_finetune_weights(trainer: Trainer, directory: Path) -> None:
    """Resume: the LoRA run's adapter (A, B, the new rows) from ``directory`` into the model
    the trainer rebuilt from the base; a full fine-tuning run's whole state."""
    from ..checkpoint import load_weights
    from ..lora import LoRALinear, load_lora_state_dict

    model = trainer.model
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        load_weights(model, read_safetensors(directory / WEIGHTS_NAME, device=trainer.device))
        return
    state = read_safetensors(directory / ADAPTER_WEIGHTS, device=trainer.device)
    grown = grown_weights(model)
    rows = {name: state.pop(new_rows_name(name), None) for name in grown}
    for name, found in rows.items():
        if found is None:
            raise ValueError(f"{directory / ADAPTER_WEIGHTS}: no {new_rows_name(name)} tensor "
                             "(the chat tokens' rows): not an adapter this trainer wrote")
    load_lora_state_dict(model, state)
    with torch.no_grad():
        for name, weight in grown.items():
            weight[trainer.base_vocab_size:].copy_(rows[name])  # type: ignore[arg-type]
