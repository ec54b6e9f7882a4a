"""The byte-level BPE tokenizer, production version (task `bpe`).

The bpe spec's public API (``specs/test_bpe.py`` runs on it and on the course), plus:

* :func:`train_bpe` with incremental pair counts, ``processes=`` for parallel pre-tokenization
  and a progress bar; :func:`train_bpe_from_file` for corpora larger than memory;
* :class:`Tokenizer` with a fast cached encoder, ``encode_iterable`` in bounded memory,
  ``save``/``load``, ``from_tiktoken`` and ``from_gpt2_files`` (``vocab.json`` + ``merges.txt``);
* the vocabulary builder and inspector: :func:`build_vocab`, :func:`render_token`,
  :func:`describe_vocab`;
* a command line: ``python -m reference.bpe train|encode|inspect`` (``--help``).

The course's tokenizer (``solutions/bpe``) takes the file formats, the pre-tokenizer pattern and
the argument checks from here as given code.
"""

from .files import load_model, load_tiktoken_ranks, save_model
from .gpt2_files import bytes_to_unicode, load_gpt2_files, token_to_string
from .pairs import get_pair_counts, merge
from .pretokenize import (
    GPT2_SPLIT_PATTERN,
    chunk_boundaries,
    count_pretokens,
    count_pretokens_in_file,
    iter_text_blocks,
    pretokenize,
    split_on_special_tokens,
)
from .tokenizer import Tokenizer
from .trainer import train_bpe, train_bpe_from_file, train_from_counts
from .vocab import build_vocab, describe_vocab, render_token

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "Tokenizer",
    "build_vocab",
    "bytes_to_unicode",
    "chunk_boundaries",
    "count_pretokens",
    "count_pretokens_in_file",
    "describe_vocab",
    "get_pair_counts",
    "iter_text_blocks",
    "load_gpt2_files",
    "load_model",
    "load_tiktoken_ranks",
    "merge",
    "pretokenize",
    "render_token",
    "save_model",
    "split_on_special_tokens",
    "token_to_string",
    "train_bpe",
    "train_bpe_from_file",
    "train_from_counts",
]
