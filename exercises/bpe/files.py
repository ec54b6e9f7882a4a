"""Files: this project's tokenizer format, and GPT-2's ranks in tiktoken's format (given code).

Given code, not an exercise: it lives in solutions/bpe/files.py and is used from there.
"""

from solutions.bpe.files import (
    FORMAT,
    VERSION,
    atomic_write_text,
    load_model,
    load_tiktoken_ranks,
    save_model,
)

__all__ = ["FORMAT", "VERSION", "atomic_write_text", "load_model", "load_tiktoken_ranks", "save_model"]
