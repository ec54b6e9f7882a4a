"""Generated instruction tasks: fine-tuning data the project makes itself, with exact answers.

Each task is a list of conversations in the chat format (``reference/chat.py``): a user turn
with the instruction, an assistant turn with the one right answer, so a fine-tuned model is
scored by exact match (:func:`reference.trainer.sft.exact_match`). The inputs are random, not
words from a corpus, so a model cannot have memorised them:

* ``reverse``: ``"reverse: kqzd"`` -> ``"dzqk"``, 3 to 7 lowercase letters;
* ``add``: ``"add: 38+705"`` -> ``"743"``, two numbers of 1 to 3 digits.

Both use only characters of the built-in corpus (the main job's character vocabulary), so the
main job's model can be fine-tuned on them as it is.

Example::

    >>> reverse(2, seed=0)[0]
    [{'role': 'user', 'content': 'reverse: tkgnku'}, {'role': 'assistant', 'content': 'ukngkt'}]
    >>> add(1, seed=0)[0]
    [{'role': 'user', 'content': 'add: 97+5'}, {'role': 'assistant', 'content': '102'}]
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import Callable
from pathlib import Path

from .atomic import atomic_open

__all__ = ["TASKS", "add", "reverse", "reverse_preferences", "write_jsonl"]

Conversation = list[dict[str, str]]


def _turns(instruction: str, answer: str) -> Conversation:
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}]


def reverse(n: int, *, seed: int = 0, min_len: int = 3, max_len: int = 7) -> list[Conversation]:
    """``n`` word-reversal conversations over random lowercase words, from ``seed``."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(min_len, max_len)))
        out.append(_turns(f"reverse: {word}", word[::-1]))
    return out


def add(n: int, *, seed: int = 0, max_digits: int = 3) -> list[Conversation]:
    """``n`` addition conversations of two numbers with 1 to ``max_digits`` digits."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = (rng.randrange(10 ** rng.randint(1, max_digits)) for _ in range(2))
        out.append(_turns(f"add: {a}+{b}", str(a + b)))
    return out


def reverse_preferences(n: int, *, seed: int = 0, min_len: int = 3,
                        max_len: int = 7) -> list[dict[str, object]]:
    """``n`` preference pairs for DPO, ``{"prompt": [user turn], "chosen": the reversed word,
    "rejected": a near miss}``: the word itself, or its reversal with two letters swapped.

        >>> reverse_preferences(1, seed=0)[0]
        {'prompt': [{'role': 'user', 'content': 'reverse: tkgnku'}], 'chosen': 'ukngkt', \
'rejected': 'tkgnku'}
    """
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for messages in reverse(n, seed=seed, min_len=min_len, max_len=max_len):
        word = messages[0]["content"].removeprefix("reverse: ")
        chosen = word[::-1]
        rejected = word
        if rejected == chosen or rng.random() < 0.5:
            letters = list(chosen)
            i = rng.randrange(len(letters) - 1)
            letters[i], letters[i + 1] = letters[i + 1], letters[i]
            rejected = "".join(letters)
            if rejected == chosen:  # two equal letters: change one instead
                rejected = chosen[:i] + ("a" if chosen[i] != "a" else "b") + chosen[i + 1:]
        out.append({"prompt": messages[:1], "chosen": chosen, "rejected": rejected})
    return out


TASKS: dict[str, Callable[..., list[Conversation]]] = {"reverse": reverse, "add": add}


def write_jsonl(path: str | os.PathLike[str], conversations: list[Conversation]) -> Path:
    """One ``{"messages": [...]}`` record per line, written atomically; a file that exists is
    refused (a FileExistsError naming it)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: choose another file (nothing is overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path
