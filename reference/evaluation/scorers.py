"""Our own zero-shot scorers: multiple choice (HellaSwag's ``acc`` / ``acc_norm``) and last-word
accuracy (LAMBADA's), on JSONL task files, the way EleutherAI's lm-eval defines them.

Task files, one JSON object per line:

* multiple choice: ``{"context": str, "choices": [str, ...], "label": int}``; each choice is
  scored as the continuation ``delimiter + choice`` of the context (lm-eval's
  ``target_delimiter``, a space by default);
* last word: ``{"text": str}``; the context is the text up to its last space, the target is the
  space and the last word.

The metrics:

* ``acc``: the choice with the highest summed log-likelihood is right;
* ``acc_norm``: the highest log-likelihood per *character* of the choice (lm-eval's
  ``acc_norm``: ``ll / len(choice)``, not per token, so it is comparable across tokenizers);
* last-word ``acc``: greedy decoding of the context gives exactly the target's tokens, and
  ``perplexity`` = exp(-mean log-likelihood of the targets), as lm-eval's ``lambada``.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..jsonl import iter_jsonl
from ..llama import Llama
from ..model import GPT
from ..tokenizers import Tokenizer

__all__ = [
    "ChoiceScores",
    "LastWordResult",
    "MultipleChoice",
    "MultipleChoiceResult",
    "choose",
    "evaluate_last_word",
    "evaluate_multiple_choice",
    "loglikelihood",
    "read_jsonl",
    "read_last_word",
    "read_multiple_choice",
    "score_multiple_choice",
    "split_last_word",
    "synthetic_last_word",
    "synthetic_multiple_choice",
    "write_jsonl",
]


@dataclass(frozen=True)
class MultipleChoice:
    """One multiple-choice item: the context, the choices and the index of the right one."""

    context: str
    choices: list[str]
    label: int


@dataclass(frozen=True)
class ChoiceScores:
    """Each choice's summed log-likelihood, and the picks by ``acc`` and by ``acc_norm``."""

    loglikelihoods: list[float]
    pred: int
    pred_norm: int


@dataclass(frozen=True)
class MultipleChoiceResult:
    acc: float
    acc_norm: float
    n: int
    scores: list[ChoiceScores]


@dataclass(frozen=True)
class LastWordResult:
    acc: float
    perplexity: float
    n: int


# ---------------------------------------------------------------- task files


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped); errors name the file and line."""
    records = []
    for where, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> Path:
    """Write ``records`` one JSON object per line; returns the path."""
    path = Path(path)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def read_multiple_choice(path: str | os.PathLike[str]) -> list[MultipleChoice]:
    """The items of a ``{"context", "choices", "label"}`` file, checked."""
    items = []
    for number, r in enumerate(read_jsonl(path), 1):
        choices, label = r.get("choices"), r.get("label")
        if not isinstance(r.get("context"), str) or not isinstance(choices, list) or not choices \
                or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{path}: record {number} needs a text 'context' and a non-empty "
                             f"list of non-empty text 'choices'")
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise ValueError(f"{path}: record {number}: label {label!r} is not an index into "
                             f"its {len(choices)} choices")
        items.append(MultipleChoice(r["context"], list(choices), label))
    return items


def read_last_word(path: str | os.PathLike[str]) -> list[str]:
    """The texts of a ``{"text"}`` file; each must have a space before its last word."""
    texts = []
    for number, r in enumerate(read_jsonl(path), 1):
        text = r.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise ValueError(f"{path}: record {number} needs a 'text' of two words or more")
        texts.append(text)
    return texts


def split_last_word(text: str) -> tuple[str, str]:
    """``(context, target)``: the text up to its last space, and the space and the last word.

    >>> split_last_word("the cat sat on the mat")
    ('the cat sat on the', ' mat')
    """
    context, word = text.strip().rsplit(" ", 1)
    return context, " " + word


# ---------------------------------------------------------------- scoring


@torch.no_grad()
def loglikelihood(
    model: GPT | Llama, context: Sequence[int], continuation: Sequence[int]
) -> tuple[float, bool]:
    """``(log p(continuation | context), is_greedy)`` in nats, as lm-eval's ``loglikelihood``.

    The tokens are ``context + continuation`` cut on the left to ``block_size + 1``; the
    model reads all but the last and the continuation's tokens are scored. ``is_greedy``: every
    continuation token is the model's top-1 choice.
    """
    if not context or not continuation:
        raise ValueError(f"context and continuation need a token each; got {len(context)} and "
                         f"{len(continuation)} tokens")
    block_size = model.config.block_size
    if len(continuation) > block_size:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds block_size "
                         f"{block_size}")
    device = next(model.parameters()).device
    whole = torch.tensor([*context, *continuation][-(block_size + 1):], device=device)
    logits, _ = model(whole[None, :-1])  # (1, T, V): position t predicts whole[t + 1]
    logp = logits[0, -len(continuation):].double().log_softmax(-1)  # (n, V)
    target: Tensor = whole[-len(continuation):]
    ll = float(logp.gather(-1, target[:, None]).sum())
    return ll, bool((logp.argmax(-1) == target).all())


def choose(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """``(pred, pred_norm)``: the index of the highest log-likelihood, and of the highest
    log-likelihood per character of the choice (ties: the first).

    >>> choose([-4.0, -2.0], ["aaaa", "b"])  # per character: -1.0 against -2.0
    (1, 0)
    """
    pred = max(range(len(choices)), key=lambda i: loglikelihoods[i])
    pred_norm = max(range(len(choices)), key=lambda i: loglikelihoods[i] / len(choices[i]))
    return pred, pred_norm


def score_multiple_choice(
    model: GPT | Llama, tokenizer: Tokenizer, item: MultipleChoice, *, delimiter: str = " "
) -> ChoiceScores:
    """Each choice's log-likelihood as the continuation ``delimiter + choice`` of the context."""
    context = tokenizer.encode(item.context)
    lls = [loglikelihood(model, context, tokenizer.encode(delimiter + c))[0]
           for c in item.choices]
    pred, pred_norm = choose(lls, item.choices)
    return ChoiceScores(lls, pred, pred_norm)


def evaluate_multiple_choice(
    model: GPT | Llama, tokenizer: Tokenizer, items: Sequence[MultipleChoice], *,
    delimiter: str = " ",
) -> MultipleChoiceResult:
    """``acc`` and ``acc_norm`` over ``items``."""
    if not items:
        raise ValueError("no multiple-choice items to evaluate")
    scores = [score_multiple_choice(model, tokenizer, it, delimiter=delimiter) for it in items]
    acc = sum(s.pred == it.label for s, it in zip(scores, items, strict=True)) / len(items)
    acc_norm = sum(s.pred_norm == it.label for s, it in zip(scores, items, strict=True))
    return MultipleChoiceResult(acc, acc_norm / len(items), len(items), scores)


def evaluate_last_word(
    model: GPT | Llama, tokenizer: Tokenizer, texts: Sequence[str]
) -> LastWordResult:
    """LAMBADA's ``acc`` (greedy gives the last word) and ``perplexity`` over ``texts``."""
    if not texts:
        raise ValueError("no texts to evaluate")
    lls, hits = [], 0
    for text in texts:
        context, target = split_last_word(text)
        ll, greedy = loglikelihood(model, tokenizer.encode(context), tokenizer.encode(target))
        lls.append(ll)
        hits += greedy
    return LastWordResult(hits / len(texts), math.exp(-sum(lls) / len(lls)), len(texts))


# ---------------------------------------------------------------- small generated task sets


def synthetic_multiple_choice(
    n: int, *, seed: int = 0, alphabet: str = "abcd"
) -> list[dict[str, Any]]:
    """``n`` records ``{"context", "choices", "label"}``: a word repeated three times, and which
    of four words comes next (the same word is right). For tests and smoke runs."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        words = ["".join(rng.choices(alphabet, k=rng.randint(1, 4))) for _ in range(4)]
        words = list(dict.fromkeys(words)) or ["a"]
        label = rng.randrange(len(words))
        records.append({"context": " ".join([words[label]] * 3), "choices": words,
                        "label": label})
    return records


def synthetic_last_word(n: int, *, seed: int = 0, alphabet: str = "abcd") -> list[dict[str, Any]]:
    """``n`` records ``{"text"}``: a word repeated four times (the last one is the target)."""
    rng = random.Random(seed)
    return [{"text": " ".join(["".join(rng.choices(alphabet, k=rng.randint(1, 4)))] * 4)}
            for _ in range(n)]
