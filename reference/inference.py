"""The one inference path: load a trained model with its tokenizer, then stream text from it.

The command line's ``generate``, the trainer's end-of-run sample, the server and the evaluator
all go through here, and importing it loads no trainer module.

* :func:`load`: a run directory (its newest checkpoint) or a checkpoint directory -> a
  :class:`Loaded` model (in eval mode), tokenizer and the run's sample settings;
* :func:`stream_text`: the text of one sample, piece by piece as tokens are drawn (a character
  cut between two tokens is held back until it is whole);
* :func:`sample_text`: ``num_samples`` whole samples, drawn as one batch.

Example::

    loaded = load("runs/main")
    for piece in stream_text(loaded.model, loaded.tokenizer, loaded.sample):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from .checkpoint import TRAINER_NAME, find_checkpoint, load_checkpoint
from .generate import Overflow, stream
from .llama import Llama
from .model import GPT
from .rope import RopeScaling, parse_rope_scaling
from .settings import (
    NonNegativeFloat,
    NonNegativeInt,
    Number,
    PositiveInt,
    Settings,
    ValidationError,
    one_line,
)
from .tokenizers import Tokenizer, load_tokenizer

__all__ = ["Loaded", "SampleSettings", "load", "prompt_ids", "resolve_device", "sample_text",
           "stream_text", "with_context"]


class SampleSettings(Settings):
    """How to sample: the ``sample`` section of a run's config, and ``generate``'s options."""

    prompt: str = "The "
    max_new_tokens: NonNegativeInt = 400
    num_samples: PositiveInt = 1
    temperature: NonNegativeFloat = 0.8  # 0: greedy
    top_k: PositiveInt | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = 0.95
    seed: NonNegativeInt = 0


@dataclass(frozen=True)
class Loaded:
    """A model ready to generate: in eval mode, on ``device``, with its tokenizer."""

    model: GPT | Llama
    tokenizer: Tokenizer
    checkpoint: Path  # the checkpoint directory it came from
    sample: SampleSettings  # the run's sample section (the defaults for a bare model checkpoint)
    device: torch.device


def with_context(model: GPT | Llama, context: int | None, rope_scaling: str | None = None,
                 sliding_window: int | None = None) -> int:
    """Let ``model`` read ``context`` tokens at once, past its training length if it has
    rotary positions, and apply ``rope_scaling`` ("linear:F" or "yarn:F") and a
    ``sliding_window`` (Llama only), in place. Returns the trained length (the block_size it
    had). A GPT's learned position embeddings end at its block_size: a context past it is a
    ValueError naming the limit."""
    trained = model.config.block_size
    if context is not None and context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if isinstance(model, GPT):
        if context is not None and context > trained:
            raise ValueError(f"context {context} is past block_size {trained}: GPT-2's learned "
                             f"position embeddings end there (a Llama-style model can go on)")
        if rope_scaling is not None or sliding_window is not None:
            raise ValueError(f"rope scaling {rope_scaling!r} / sliding window {sliding_window} "
                             "need rotary positions (a Llama-style model); GPT-2's are learned")
        return trained
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding window must be >= 1, got {sliding_window}")
    length = max(context or trained, trained)
    scaling: RopeScaling | Literal["keep"] = "keep"
    if rope_scaling is not None:
        scaling = parse_rope_scaling(rope_scaling, trained)
    model.extend_context(length, scaling, sliding_window if sliding_window else "keep")
    return trained


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a ValueError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} but no CUDA device is available (try cpu or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} but MPS is not available (try cpu or auto)")
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, got {name!r}")
    return torch.device(name)


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Loaded:
    """The model, tokenizer and sample settings saved at ``path``: a run directory (its newest
    checkpoint) or a checkpoint directory. FileNotFoundError/ValueError name the file."""
    directory = find_checkpoint(path)
    where = resolve_device(device)
    model = load_checkpoint(directory, device=where)  # in eval mode
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"model {model.config.vocab_size}: not a pair that belongs together")
    return Loaded(model, tokenizer, directory, _run_sample_settings(directory), where)


def _run_sample_settings(directory: Path) -> SampleSettings:
    path = directory / TRAINER_NAME
    if not path.is_file():
        return SampleSettings()
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        return SampleSettings.model_validate(raw["config"]["sample"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no readable 'config.sample' section ({e})") from None
    except ValidationError as e:
        raise ValueError(one_line(e, SampleSettings, origin=str(path), prefix="sample.")) from None


def prompt_ids(tokenizer: Tokenizer, prompt: str, block_size: int) -> list[int]:
    """``prompt``'s ids, the last ``block_size`` of them; an empty prompt starts from the
    end-of-text token, or is a ValueError for a tokenizer without one. For a chat tokenizer
    (``reference/chat.py``) the prompt is the user's turn, rendered as in training and
    followed by ``<|assistant|>``: the model writes the answer, which ends at ``<|end|>``."""
    if getattr(tokenizer, "kind", None) == "chat":  # a chat model: the prompt is a user turn
        from .chat import render

        prompt = render([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        if tokenizer.eot_id is None:
            raise ValueError("the prompt is empty: give at least one character to start from")
        ids = [tokenizer.eot_id]
    return ids[-block_size:]


def stream_text(model: GPT | Llama, tokenizer: Tokenizer, settings: SampleSettings, *,
                use_cache: bool = True, overflow: Overflow = "recompute",
                on_token: Callable[[int], None] | None = None) -> Iterator[str]:
    """The continuation of ``settings.prompt`` (one sample), as text pieces while it is drawn.

    Stops after ``max_new_tokens`` tokens or at the tokenizer's end-of-text token (not shown).
    A character whose UTF-8 bytes span several tokens is yielded once it is complete.
    ``use_cache``: prefill + one token per step (the default), or the full context each step.
    ``overflow``: what happens past ``block_size`` (:func:`reference.generate.stream`;
    ``"slide"``, Llama-style models only, slides the KV cache).
    ``on_token(id)`` is called for every token drawn (e.g. to count them).
    """
    device = next(model.parameters()).device
    idx = torch.tensor([prompt_ids(tokenizer, settings.prompt, model.config.block_size)],
                       device=device)
    eot = tokenizer.eot_id
    steps = stream(model, idx, settings.max_new_tokens, temperature=settings.temperature,
                   top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed, eos_id=eot,
                   use_cache=use_cache, overflow=overflow)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for step in steps:
        token = int(step[0])
        if on_token is not None:
            on_token(token)
        if token == eot:
            break
        if piece := decoder.decode(tokenizer.decode_bytes([token])):
            yield piece
    if tail := decoder.decode(b"", final=True):
        yield tail


def sample_text(model: GPT | Llama, tokenizer: Tokenizer, settings: SampleSettings, *,
                overflow: Overflow = "recompute") -> list[str]:
    """``settings.num_samples`` continuations of ``settings.prompt``, prompt included, drawn
    as one batch; each ends at the tokenizer's end-of-text token if it draws one.
    ``overflow`` as for :func:`stream_text`."""
    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, settings.prompt, model.config.block_size)
    idx = torch.tensor([ids] * settings.num_samples, device=device)
    eot = tokenizer.eot_id
    steps = list(stream(model, idx, settings.max_new_tokens, temperature=settings.temperature,
                        top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed,
                        eos_id=eot, overflow=overflow))
    rows = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(len(idx))]
    texts = []
    for row in rows:
        if eot is not None and eot in row:
            row = row[: row.index(eot)]
        texts.append(settings.prompt + tokenizer.decode(row))
    return texts
