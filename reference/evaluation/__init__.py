"""Evaluation of a language model: perplexity, calibration and our own benchmark scorers.

* :mod:`.perplexity`: exact token-level perplexity with Hugging Face's strided sliding window,
  bits per byte and word perplexity (:class:`Perplexity` states the context and stride).
* :mod:`.calibration`: reliability bins and the expected calibration error of next-token
  probabilities.
* :mod:`.scorers`: zero-shot multiple choice (``acc`` and ``acc_norm``, HellaSwag's) and
  last-word accuracy (LAMBADA's) on JSONL task files.

Everything here runs on the inference path (``model(idx)`` -> logits) in eval mode, never the
trainer's random-window loss.
"""

from __future__ import annotations

from .calibration import Calibration, calibration, next_token_calibration
from .perplexity import Perplexity, perplexity, token_nlls, windows
from .scorers import (
    ChoiceScores,
    LastWordResult,
    MultipleChoice,
    MultipleChoiceResult,
    choose,
    evaluate_last_word,
    evaluate_multiple_choice,
    loglikelihood,
    read_last_word,
    read_multiple_choice,
    score_multiple_choice,
)

__all__ = [
    "Calibration",
    "ChoiceScores",
    "LastWordResult",
    "MultipleChoice",
    "MultipleChoiceResult",
    "Perplexity",
    "calibration",
    "choose",
    "evaluate_last_word",
    "evaluate_multiple_choice",
    "loglikelihood",
    "next_token_calibration",
    "perplexity",
    "read_last_word",
    "read_multiple_choice",
    "score_multiple_choice",
    "token_nlls",
    "windows",
]
