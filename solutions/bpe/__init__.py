"""Task `bpe`: a byte-level BPE tokenizer, trained from raw text, exact against GPT-2's.

Text becomes bytes (UTF-8), so any string can be encoded with no "unknown" token; byte-pair
encoding then merges the most frequent adjacent pair of tokens into a new token, again and again,
and the list of merges *is* the tokenizer. One idea per module:

* :func:`split_on_special_tokens` and :func:`pretokenize` (``pretokenize.py``): cut out special
  tokens such as ``<|endoftext|>``, then cut the text into GPT-2's pre-tokens (words with their
  leading space, numbers, punctuation, whitespace); no merge ever crosses either cut;
* :func:`get_pair_counts` (``stats.py``): how often each adjacent pair of ids occurs;
* :func:`merge` (``merge.py``): replace every occurrence of one pair by a new id;
* :func:`train_bpe` (``train.py``): the training loop: count, pick the best pair, merge, repeat;
* :class:`Tokenizer` (``tokenizer.py``): ``encode``, ``decode``, ``encode_iterable``, save/load;
* :func:`load_tiktoken_ranks` (``files.py``): GPT-2's ranks from a tiktoken-format file.

The vocabulary maps id -> bytes: ids 0..255 are the single bytes, then one id per merge in the
order learned, then the special tokens. Run ``pytest exercises -m bpe`` to check yours.
"""

from reference.bpe.files import load_model, load_tiktoken_ranks, save_model  # given

from .merge import merge
from .pretokenize import GPT2_SPLIT_PATTERN, pretokenize, split_on_special_tokens
from .stats import get_pair_counts
from .tokenizer import Tokenizer
from .train import train_bpe

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "Tokenizer",
    "get_pair_counts",
    "load_model",
    "load_tiktoken_ranks",
    "merge",
    "pretokenize",
    "save_model",
    "split_on_special_tokens",
    "train_bpe",
]
