"""Qualitative and error analysis of a model's samples: read them side by side, count what fails.

* :func:`draw_samples`: one sample per (prompt, temperature, seed), through the inference path
  (``reference.inference.prompt_ids`` and ``reference.generate.stream``), each with its
  repetition rate, distinct-n and the average log-probability of its tokens under the model;
* the measures: :func:`distinct_n` (unique n-grams / n-grams, Li et al. 2016) and
  :func:`repetition_rate` (the fraction of n-grams that repeat an earlier one, Welleck et al.
  2019's rep-n: ``1 - distinct_n``);
* error analysis: one small predicate per failure category (:data:`CATEGORIES`), and
  :func:`error_analysis` to count them over the samples with examples.

Every predicate takes plain values (strings, id lists, bytes), so a test can hand it a
constructed output. Example::

    >>> distinct_n("the cat the cat".split(), 2), repetition_rate("abcabcabc", 3)
    (0.6666666666666666, 0.5714285714285714)
    >>> repetition_loop(list("hello, ") + list("ab") * 10), early_end([5, 0], eot_id=0)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..generate import stream
from ..inference import SampleSettings, prompt_ids
from ..llama import Llama
from ..model import GPT
from ..tokenizers import Tokenizer
from .perplexity import token_nlls

__all__ = [
    "CATEGORIES",
    "Category",
    "Sample",
    "distinct_n",
    "draw_samples",
    "early_end",
    "error_analysis",
    "failures",
    "invalid_utf8",
    "mean_logprob",
    "ngrams",
    "out_of_distribution",
    "prompt_echo",
    "repetition_loop",
    "repetition_rate",
    "truncated_at_context",
]

# ---------------------------------------------------------------- measures


def ngrams(seq: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    """The ``n``-grams of ``seq`` in order: ``len(seq) - n + 1`` of them (none if shorter).

    >>> ngrams("abca", 2)
    [('a', 'b'), ('b', 'c'), ('c', 'a')]
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(seq: Sequence[Hashable], n: int) -> float:
    """Unique ``n``-grams / ``n``-grams of ``seq``: 1.0 when none repeats; NaN with none.

    >>> distinct_n("aaaa", 1), distinct_n("abcd", 2)
    (0.25, 1.0)
    """
    grams = ngrams(seq, n)
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(seq: Sequence[Hashable], n: int = 4) -> float:
    """The fraction of ``n``-grams of ``seq`` that repeat an earlier one (rep-n): 0.0 when
    none does, near 1.0 in a loop; NaN with no ``n``-gram.

    >>> repetition_rate("abcd", 2), repetition_rate("abababab", 2)
    (0.0, 0.7142857142857143)
    """
    return 1.0 - distinct_n(seq, n)


def mean_logprob(model: GPT | Llama, prompt: Sequence[int], new: Sequence[int]) -> float:
    """The average log-probability (nats) of the ``new`` tokens after ``prompt`` under
    ``model`` at temperature 1, unfiltered: each token with up to ``block_size`` tokens
    before it (stride 1, as generation sees them). NaN when ``new`` is empty."""
    if not new:
        return float("nan")
    if not prompt:
        raise ValueError("mean_logprob needs a prompt of at least one token")
    nll, _ = token_nlls(model, [*prompt, *new], context=model.config.block_size, stride=1)
    return -float(nll[-len(new):].mean())


# ---------------------------------------------------------------- failure predicates


def repetition_loop(ids: Sequence[Hashable], *, min_repeats: int = 3,
                    min_span: int = 16) -> bool:
    """The sample ends in a loop: its last ``L`` tokens repeat one span of ``p`` tokens,
    with ``L >= min_repeats * p`` and ``L >= min_span`` (so a short run of spaces is not a
    loop).

    >>> repetition_loop(list("the end of it all, " * 3)), repetition_loop(list("abc" * 3))
    (True, False)
    """
    n = len(ids)
    for p in range(1, n // min_repeats + 1):
        k = 0  # how far back the tail stays periodic with period p
        while k + p < n and ids[n - 1 - k] == ids[n - 1 - k - p]:
            k += 1
        span = k + p
        if span >= min_repeats * p and span >= min_span:
            return True
    return False


def early_end(ids: Sequence[int], *, eot_id: int | None, min_tokens: int = 5) -> bool:
    """End-of-text among the first ``min_tokens`` new tokens (an empty or near-empty sample).
    Always False for a tokenizer without an end-of-text token.

    >>> early_end([0], eot_id=0), early_end([1, 2, 3, 4, 5, 0], eot_id=0)
    (True, False)
    >>> early_end([0], eot_id=None)
    False
    """
    return eot_id is not None and eot_id in ids[:min_tokens]


def truncated_at_context(n_prompt: int, ids: Sequence[int], *, eot_id: int | None,
                         block_size: int) -> bool:
    """Prompt and sample reached the context limit (``block_size`` tokens) without an
    end-of-text: generation stops there (``overflow="stop"``) or goes on with the start of
    the prompt out of view (``"recompute"``).

    >>> truncated_at_context(4, [1] * 60, eot_id=0, block_size=64)
    True
    >>> truncated_at_context(4, [1] * 59, eot_id=0, block_size=64)
    False
    >>> truncated_at_context(4, [1] * 59 + [0], eot_id=0, block_size=64)
    False
    """
    ended = eot_id is not None and eot_id in ids
    return not ended and n_prompt + len(ids) >= block_size


def invalid_utf8(data: bytes) -> bool:
    """The sample's bytes are not valid UTF-8: a byte-level tokenizer drew a piece of a
    character without the rest (decoding shows U+FFFD there).

    >>> invalid_utf8("héllo".encode()), invalid_utf8("日".encode()[:2]), invalid_utf8(b"\\xff")
    (False, True, True)
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def out_of_distribution(text: str, charset: Iterable[str]) -> list[str]:
    """The characters of ``text`` outside ``charset`` (the training data's characters), sorted
    and without duplicates: empty when all are known. U+FFFD (a broken UTF-8 piece) counts
    when it is not in the training data.

    >>> out_of_distribution("héllo ☃", "helo ")
    ['é', '☃']
    """
    known = set(charset)
    return sorted(set(text) - known)


def prompt_echo(prompt: str, continuation: str, *, min_chars: int = 8) -> bool:
    """The continuation repeats the prompt (stripped of surrounding whitespace) word for word;
    prompts shorter than ``min_chars`` characters never count (``"The "`` recurs by chance).

    >>> prompt_echo("Once upon a time", " there was... Once upon a time")
    True
    >>> prompt_echo("The ", "The cat")
    False
    """
    core = prompt.strip()
    return len(core) >= min_chars and core in continuation


# ---------------------------------------------------------------- samples and their analysis


@dataclass(frozen=True)
class Sample:
    """One drawn sample and its measures. ``ids``: the new tokens, end-of-text included when
    drawn; ``text``: their text up to end-of-text (broken UTF-8 shown as U+FFFD)."""

    prompt: str
    temperature: float
    seed: int
    prompt_ids: list[int]
    ids: list[int]
    text: str
    mean_logprob: float  # nats per token, under the model at temperature 1
    repetition: float  # rep-4 over the tokens
    distinct: dict[int, float]  # distinct-1, -2, -3 over the whitespace-separated words
    failures: list[str] = field(default_factory=list)  # the names of the categories it fails


@dataclass(frozen=True)
class Category:
    """A failure category over a set of samples: how many fail it, and the first examples."""

    name: str
    description: str
    count: int
    total: int
    examples: list[int]  # indexes into the samples


CATEGORIES: dict[str, str] = {
    "repetition loop": "the sample ends in one span repeated 3+ times (16+ tokens)",
    "early end-of-text": "end-of-text among the first 5 new tokens",
    "truncated at the context limit": "prompt + sample reached block_size without end-of-text",
    "invalid UTF-8": "the sample's bytes are not valid UTF-8 (a character cut in pieces)",
    "out-of-distribution characters": "characters that are not in the training data",
    "prompt echo": "the sample repeats the prompt (8+ characters) word for word",
}


def failures(prompt: str, n_prompt: int, ids: Sequence[int], tokenizer: Tokenizer, *,
             block_size: int, charset: Iterable[str] | None = None) -> list[str]:
    """The names of the :data:`CATEGORIES` one sample falls in (in their order). ``charset``:
    the training data's characters (None: that category is not checked)."""
    eot = tokenizer.eot_id
    body = list(ids[: ids.index(eot)]) if eot is not None and eot in ids else list(ids)
    data = tokenizer.decode_bytes(body)
    text = data.decode("utf-8", errors="replace")
    found = {
        "repetition loop": repetition_loop(body),
        "early end-of-text": early_end(ids, eot_id=eot),
        "truncated at the context limit": truncated_at_context(n_prompt, ids, eot_id=eot,
                                                               block_size=block_size),
        "invalid UTF-8": invalid_utf8(data),
        "out-of-distribution characters": charset is not None
        and bool(out_of_distribution(text, charset)),
        "prompt echo": prompt_echo(prompt, text),
    }
    return [name for name in CATEGORIES if found[name]]


def draw_samples(model: GPT | Llama, tokenizer: Tokenizer, prompts: Sequence[str],
                 temperatures: Sequence[float], seeds: Sequence[int], *,
                 max_new_tokens: int = 200, settings: SampleSettings | None = None,
                 charset: Iterable[str] | None = None) -> list[Sample]:
    """One sample per prompt x temperature x seed (in that nesting order), drawn as
    ``reference.inference`` draws them: the prompt's last ``block_size`` ids, ``top_k`` and
    ``top_p`` from ``settings`` (default: the inference defaults), stopping at end-of-text."""
    settings = settings or SampleSettings()
    block_size = model.config.block_size
    device = next(model.parameters()).device
    known = None if charset is None else set(charset)
    samples = []
    for prompt in prompts:
        try:
            start = prompt_ids(tokenizer, prompt, block_size)
        except ValueError as e:
            raise ValueError(f"prompt {prompt!r}: {e}") from None
        for temperature in temperatures:
            for seed in seeds:
                idx = torch.tensor([start], device=device)
                steps = stream(model, idx, max_new_tokens, temperature=temperature,
                               top_k=settings.top_k, top_p=settings.top_p, seed=seed,
                               eos_id=tokenizer.eot_id)
                ids = [int(t[0]) for t in steps]
                eot = tokenizer.eot_id
                body = ids[: ids.index(eot)] if eot is not None and eot in ids else ids
                text = tokenizer.decode_bytes(body).decode("utf-8", errors="replace")
                words = text.split()
                samples.append(Sample(
                    prompt=prompt, temperature=temperature, seed=seed, prompt_ids=start,
                    ids=ids, text=text, mean_logprob=mean_logprob(model, start, ids),
                    repetition=repetition_rate(body, 4),
                    distinct={n: distinct_n(words, n) for n in (1, 2, 3)},
                    failures=failures(prompt, len(start), ids, tokenizer,
                                      block_size=block_size, charset=known),
                ))
    return samples


def error_analysis(samples: Sequence[Sample], *, examples: int = 3) -> list[Category]:
    """Each of the :data:`CATEGORIES` with the number of samples that fall in it and the
    indexes of the first ``examples`` of them.

    >>> s = Sample("p", 1.0, 0, [1], [2], "x", -1.0, 0.0, {}, ["prompt echo"])
    >>> [(c.name, c.count, c.examples) for c in error_analysis([s, s])][-1]
    ('prompt echo', 2, [0, 1])
    """
    out = []
    for name, description in CATEGORIES.items():
        hits = [i for i, s in enumerate(samples) if name in s.failures]
        out.append(Category(name, description, len(hits), len(samples), hits[:examples]))
    return out
