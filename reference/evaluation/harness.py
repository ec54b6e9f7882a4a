"""Standard benchmarks through EleutherAI's lm-evaluation-harness (``lm-eval``).

:class:`LLMFS` is an ``lm_eval`` model, registered as ``llmfs``, for the reference model: a run
directory or a checkpoint, loaded through the one inference path (:func:`reference.inference.load`).
It answers lm-eval's three request types the way lm-eval's own Hugging Face backend (``HFLM``)
does, so the same weights give the same numbers:

* ``loglikelihood(context, continuation)`` -> (sum of the continuation's log-probabilities,
  whether greedy decoding gives it): the pair is encoded as ``HFLM`` does (trailing spaces of the
  context move to the continuation; the continuation's ids are those of context + continuation
  after the context's), the input is cut from the left to ``block_size`` tokens, and requests
  run in batches, right-padded (causal attention: padding never reaches a real position);
* ``loglikelihood_rolling(text)`` -> the log-likelihood of the whole text, every token scored
  once: lm-eval's disjoint windows of ``block_size`` tokens, the first conditioned on the
  end-of-text token (a tokenizer without one, such as the character-level one, conditions on
  the text's first token, which is then not scored);
* ``generate_until(context, gen_kwargs)`` -> the continuation, cut at the first ``until``
  string: greedy by default (``temperature`` 0), through :func:`reference.generate.stream`,
  with the context cut from the left to ``block_size - max_gen_toks`` tokens.

:func:`evaluate` wraps ``lm_eval.simple_evaluate``. From Python::

    results = evaluate("runs/main", ["hellaswag"], limit=100)
    print(results["results"]["hellaswag"]["acc_norm,none"])

From the command line (``lm-eval`` downloads the tasks' data sets from the Hugging Face hub)::

    python -m reference.evaluation.harness runs/main --tasks hellaswag,lambada_openai,wikitext

Importing this module imports ``lm_eval`` (a development dependency, not the library's).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lm_eval  # type: ignore[import-untyped]
import lm_eval.evaluator  # type: ignore[import-untyped]  # lm-eval >= 0.4.10 loads it lazily
import lm_eval.models.utils  # type: ignore[import-untyped]
import lm_eval.utils  # type: ignore[import-untyped]
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM  # type: ignore[import-untyped]
from lm_eval.api.registry import register_model  # type: ignore[import-untyped]
from lm_eval.tasks import TaskManager  # type: ignore[import-untyped]

from ..generate import stream
from ..inference import Loaded, load

__all__ = ["LLMFS", "evaluate", "main"]

GEN_KWARGS = ("until", "max_gen_toks", "temperature", "do_sample", "top_k", "top_p")

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def _positive_int(value: Any, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(n) != str(value).strip():
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


@register_model("llmfs")
class LLMFS(TemplateLM):  # type: ignore[misc]  # lm_eval ships no type information
    """The reference model as an lm-eval model: ``--model llmfs --model_args path=RUN_DIR``.

    ``path``: a run directory (its newest checkpoint) or a checkpoint directory; or ``loaded``,
    a model already loaded. ``batch_size`` requests run as one forward pass;
    ``max_gen_toks`` is the default length limit of ``generate_until``: 256 as in lm-eval, or
    half the block size when that is smaller (the context keeps the other half).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, device: str = "cpu",
                 batch_size: int | str = 8, max_gen_toks: int | str | None = None,
                 loaded: Loaded | None = None, max_batch_size: int | None = None) -> None:
        super().__init__()
        del max_batch_size  # lm-eval passes it to every model; batches here are fixed
        if loaded is None:
            if path is None:
                raise ValueError("give model_args path=RUN_DIR (a run or checkpoint directory)")
            loaded = load(path, device=device)
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.max_length = loaded.model.config.block_size
        self.max_gen_toks = (min(256, max(1, self.max_length // 2)) if max_gen_toks is None
                             else _positive_int(max_gen_toks, "max_gen_toks"))

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eot_id

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # -- loglikelihood ------------------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False,
                      ) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), is_greedy) per request's (context, cont)."""
        pairs: list[tuple[Any, list[int], list[int]]] = []
        for context, continuation in (req.args for req in requests):
            if context == "":  # the end-of-text token, else the first token, is the context
                pairs.append(((context, continuation), *self._unconditional(continuation)))
            else:
                pairs.append(((context, continuation), *self._encode_pair(context, continuation)))
        return self._loglikelihood_tokens(pairs)

    def _unconditional(self, text: str) -> Pair:
        ids = self.tok_encode(text)
        eot = self.eot_token_id
        return ([eot], ids) if eot is not None else (ids[:1], ids[1:])

    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, override_bs: int | None = None,
                              ) -> list[tuple[float, bool]]:
        """Score each (key, context ids, continuation ids), ``batch_size`` at a time."""
        size = override_bs or self.batch_size
        results: list[tuple[float, bool]] = []
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            results.extend(self._score_batch([(c, x) for _, c, x in chunk]))
        for (key, _, _), answer in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def _score_batch(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        inputs: list[list[int]] = []
        for context, continuation in pairs:
            if not continuation:  # nothing to score: log 1
                inputs.append([])
                continue
            if not context or len(continuation) > self.max_length:
                raise ValueError(f"a request needs 1+ context tokens and 1 to {self.max_length} "
                                 f"continuation tokens, got {len(context)} and "
                                 f"{len(continuation)}")
            inputs.append((context + continuation)[-(self.max_length + 1) :][:-1])  # cut left
        width = max(len(ids) for ids in inputs)
        if width == 0:
            return [(0.0, True)] * len(pairs)
        idx = torch.zeros(len(inputs), width, dtype=torch.long, device=self.device)  # right pad
        for row, ids in enumerate(inputs):
            idx[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        with torch.no_grad():
            logp = F.log_softmax(self.model(idx)[0], dim=-1)  # (B, T, V)
        out = []
        for row, (ids, (_, continuation)) in enumerate(zip(inputs, pairs, strict=True)):
            if not continuation:
                out.append((0.0, True))
                continue
            n, k = len(ids), len(continuation)
            scored = logp[row, n - k : n]  # (k, V): position t predicts token t + 1
            target = torch.tensor(continuation, device=self.device)
            greedy = bool((scored.argmax(-1) == target).all())
            out.append((float(scored.gather(-1, target[:, None]).sum()), greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False,
                              ) -> list[float]:
        """Log-likelihood of each whole text: lm-eval's disjoint ``block_size`` windows."""
        out = []
        for (text,) in (req.args for req in requests):
            prefix, ids = self._unconditional(text)
            windows = [] if not ids else [
                (None, *lm_eval.utils.make_disjoint_window(w))
                for w in lm_eval.utils.get_rolling_token_windows(
                    token_list=ids, prefix_token=prefix[0], max_seq_len=self.max_length,
                    context_len=1)
            ]
            total = sum(nll for nll, _ in self._loglikelihood_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # -- generation ---------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation of its context, cut at the first ``until`` string."""
        return [self._generate(context, gen_kwargs) for context, gen_kwargs in
                (req.args for req in requests)]

    def _generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        kwargs = copy.deepcopy(gen_kwargs)
        if unknown := sorted(set(kwargs) - set(GEN_KWARGS)):
            raise ValueError(f"generation options {unknown} are not supported; "
                             f"use {list(GEN_KWARGS)}")
        eot = self.eot_token_id
        eos = None if eot is None else self.tok_decode([eot])
        until = lm_eval.models.utils.handle_stop_sequences(kwargs.get("until"), eos=eos)
        max_gen_toks = _positive_int(kwargs.get("max_gen_toks", self.max_gen_toks),
                                     "max_gen_toks")
        temperature = float(kwargs.get("temperature", 0.0))
        if kwargs.get("do_sample") is False:
            temperature = 0.0
        room = self.max_length - max_gen_toks  # the context keeps room for the generated tokens
        if room < 1:
            raise ValueError(f"max_gen_toks {max_gen_toks} leaves no room for a context in "
                             f"block_size {self.max_length}")
        ids = self.tok_encode(context)[-room:] or ([] if eot is None else [eot])
        if not ids:
            raise ValueError("an empty context needs a tokenizer with an end-of-text token")
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        drawn: list[int] = []
        for step in stream(self.model, idx, max_gen_toks, temperature=temperature,
                           top_k=kwargs.get("top_k"), top_p=kwargs.get("top_p"), eos_id=eot):
            token = int(step[0])
            if token == eot:
                break
            drawn.append(token)
            if any(s and s in self.tok_decode(drawn) for s in until):
                break
        text = self.tok_decode(drawn)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return text


def evaluate(path: str | os.PathLike[str], tasks: Sequence[str], *, limit: int | None = None,
             num_fewshot: int = 0, include_path: str | os.PathLike[str] | None = None,
             include_defaults: bool = True, device: str = "cpu", batch_size: int = 8,
             **options: Any) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of the model at ``path`` on ``tasks``: its result dict
    (``results[task]["acc,none"]`` and so on). ``include_path``: a folder of task YAML files,
    besides lm-eval's own unless ``include_defaults`` is False (indexing lm-eval's thousands of
    task files takes seconds); ``options`` go to ``simple_evaluate`` (``bootstrap_iters=0``
    skips the standard errors)."""
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    manager = TaskManager(include_path=None if include_path is None else str(include_path),
                          include_defaults=include_defaults)
    if unknown := [t for t in tasks if t not in manager.all_tasks]:
        raise ValueError(f"unknown tasks {unknown}"
                         + ("" if include_path is None else f" (also looked in {include_path})"))
    model = LLMFS(path, device=device, batch_size=batch_size)
    results: dict[str, Any] = lm_eval.simple_evaluate(
        model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
        task_manager=manager, log_samples=False, **options)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reference.evaluation.harness RUN_DIR --tasks a,b``: a table, and JSON."""
    parser = argparse.ArgumentParser(prog="python -m reference.evaluation.harness",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("path", help="a run directory or a checkpoint directory")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--limit", type=int, help="at most this many documents per task")
    parser.add_argument("--num-fewshot", type=int, default=0)
    parser.add_argument("--include-path", help="a folder of extra task YAML files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    results = evaluate(args.path, args.tasks.split(","), limit=args.limit,
                       num_fewshot=args.num_fewshot, include_path=args.include_path,
                       device=args.device, batch_size=args.batch_size)
    print(lm_eval.utils.make_table(results))
    if args.output is not None:
        args.output.write_text(json.dumps(results["results"], indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
