"""Text to a memory-mapped token file, the train/validation split, and random batches.

A prepared dataset is a directory::

    tokens.bin      every token id of the corpus, uint16 when the vocabulary fits, else uint32
    meta.json       dtype, vocab_size, n_tokens, n_train (the split point), the tokenizer, and
                    the fingerprint of what was tokenized (so an identical request is reused)
    tokenizer.json  only for BPE: the tokenizer itself

The first ``n_train`` tokens are the training split, the rest the validation split (the end of
the text, as nanoGPT does). Text is tokenized as a stream of pieces with a progress bar, so a
corpus larger than memory never has to be held whole; ``tokens.bin`` is written under a temporary
name and moved into place, and ``meta.json`` last, so a half-written dataset is never mistaken
for a finished one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from tqdm import tqdm

from .. import bpe
from ..atomic import atomic_open, write_json
from ..tokenizers import (
    META_NAME,
    BPETokenizer,
    CharTokenizer,
    SymbolTokenizer,
    Tokenizer,
    load_tokenizer,
)
from .corpora import Corpus, MarkovSource

FORMAT_VERSION = 1
TOKENS_NAME = "tokens.bin"
Split = Literal["train", "val"]


def train_bpe_tokenizer(text: str, vocab_size: int) -> BPETokenizer:
    """A byte-level BPE tokenizer of ``vocab_size`` ids (``<|endoftext|>`` included) on ``text``."""
    vocab, merges = bpe.train_bpe(text, vocab_size, ["<|endoftext|>"])
    return BPETokenizer(bpe.Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"]))


def token_dtype(vocab_size: int) -> type[np.unsignedinteger[Any]]:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size <= 1 << 16:
        return np.uint16
    if vocab_size <= 1 << 32:
        return np.uint32
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


@dataclass(frozen=True)
class TokenData:
    """A prepared dataset: the memory-mapped token file and its metadata."""

    directory: Path
    meta: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def tokens(self) -> np.memmap[Any, np.dtype[Any]]:
        return np.memmap(self.directory / TOKENS_NAME, dtype=self.meta["dtype"], mode="r")

    def split(self, name: Split) -> npt.NDArray[np.unsignedinteger[Any]]:
        """The ``"train"`` or ``"val"`` part of the token file (a memmap view; nothing is read)."""
        tokens = self.tokens()
        n_train = int(self.meta["n_train"])
        if name == "train":
            return tokens[:n_train]
        if name == "val":
            return tokens[n_train:]
        raise ValueError(f"split must be 'train' or 'val', got {name!r}")

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.directory)


def load_token_data(directory: str | os.PathLike[str]) -> TokenData:
    """The dataset prepared in ``directory``; FileNotFoundError if it is missing or unfinished."""
    directory = Path(directory)
    meta_path = directory / META_NAME
    if not meta_path.is_file() or not (directory / TOKENS_NAME).is_file():
        raise FileNotFoundError(f"no prepared dataset in {directory} (run `prepare` first)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r}, "
                         f"expected {FORMAT_VERSION}")
    return TokenData(directory, meta)


def write_token_file(
    ids: Iterable[npt.NDArray[np.integer[Any]] | list[int]],
    directory: str | os.PathLike[str],
    *,
    vocab_size: int,
    tokenizer: dict[str, Any],
    fingerprint: dict[str, Any],
    val_fraction: float = 0.1,
) -> TokenData:
    """Write chunks of token ids to ``directory/tokens.bin`` and its ``meta.json``; atomically.

    The split point is ``n_train = n - max(1, round(n * val_fraction))``: at least one
    validation token (with ``val_fraction > 0``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    (directory / META_NAME).unlink(missing_ok=True)  # unfinished until the new meta lands
    n = 0
    with atomic_open(directory / TOKENS_NAME, "wb") as f:
        for chunk in ids:
            arr = np.asarray(chunk, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
                raise ValueError(f"token id {bad} outside the vocabulary [0, {vocab_size})")
            arr.astype(dtype).tofile(f)
            n += arr.size
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n - n_val < 2:
        raise ValueError(f"only {n} tokens: too few to train on")
    meta = {
        "format_version": FORMAT_VERSION,
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab_size,
        "n_tokens": n,
        "n_train": n - n_val,
        "tokenizer": tokenizer,
        "fingerprint": fingerprint,
    }
    write_json(directory / META_NAME, meta)
    return TokenData(directory, meta)


def prepare_text(
    corpus: Corpus,
    directory: str | os.PathLike[str],
    *,
    tokenizer: Tokenizer | None = None,
    tokenizer_spec: str = "char",
    val_fraction: float = 0.1,
    progress: bool = True,
) -> TokenData:
    """Tokenize ``corpus`` into ``directory`` (character-level unless ``tokenizer`` is given).

    ``tokenizer_spec`` names the tokenizer in the fingerprint (``"char"``, ``"bpe:512"``...): a
    dataset already in ``directory`` with the same corpus, split and spec is reused as it is.
    The character tokenizer takes one streaming pass for its alphabet, then one to encode.
    """
    fingerprint = corpus_fingerprint(corpus, tokenizer_spec, val_fraction)
    if existing := reusable(directory, fingerprint):
        return existing
    if tokenizer is None:
        alphabet: set[str] = set()
        for piece in _progress(corpus, progress, f"alphabet of {corpus.name}"):
            alphabet.update(piece)
        tokenizer = CharTokenizer(alphabet)
    tok = tokenizer

    def chunks() -> Iterator[npt.NDArray[np.int64]]:
        pieces = _progress(corpus, progress, f"tokenizing {corpus.name}")
        if isinstance(tok, BPETokenizer):
            buf: list[int] = []
            for i in tok.encode_stream(pieces):
                buf.append(i)
                if len(buf) >= 1 << 16:
                    yield np.asarray(buf, dtype=np.int64)
                    buf = []
            if buf:
                yield np.asarray(buf, dtype=np.int64)
        else:
            for piece in pieces:
                yield np.asarray(tok.encode(piece), dtype=np.int64)

    if isinstance(tok, BPETokenizer):
        Path(directory).mkdir(parents=True, exist_ok=True)
        tok.save(directory)
    return write_token_file(chunks(), directory, vocab_size=tok.vocab_size,
                            tokenizer=tok.to_dict(), fingerprint=fingerprint,
                            val_fraction=val_fraction)


def corpus_fingerprint(corpus: Corpus, tokenizer_spec: str, val_fraction: float) -> dict[str, Any]:
    """What identifies a prepared dataset: the corpus content, the tokenizer, the split."""
    return {"corpus": corpus.fingerprint or corpus.name, "tokenizer": tokenizer_spec,
            "val_fraction": val_fraction}


def prepare_markov(
    source: MarkovSource,
    directory: str | os.PathLike[str],
    *,
    n_tokens: int,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> TokenData:
    """Sample ``n_tokens`` of ``source`` into ``directory``; meta records its entropy rate."""
    fingerprint = {"corpus": f"markov:{source!r}", "n_tokens": n_tokens, "seed": seed,
                   "val_fraction": val_fraction}
    if existing := reusable(directory, fingerprint):
        return existing
    data = write_token_file(
        [source.sample(n_tokens, seed=seed)], directory, vocab_size=source.vocab_size,
        tokenizer=SymbolTokenizer(source.vocab_size).to_dict(), fingerprint=fingerprint,
        val_fraction=val_fraction,
    )
    meta = {**data.meta, "entropy_rate": source.entropy_rate()}
    write_json(Path(directory) / META_NAME, meta)
    return TokenData(data.directory, meta)


def reusable(directory: str | os.PathLike[str], fingerprint: dict[str, Any]) -> TokenData | None:
    """The dataset in ``directory`` if it is finished and was made from ``fingerprint``."""
    try:
        data = load_token_data(directory)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return data if data.meta.get("fingerprint") == fingerprint else None


def _progress(corpus: Corpus, enabled: bool, desc: str) -> Iterator[str]:
    bar = tqdm(total=corpus.size, desc=desc, unit="char", unit_scale=True,
               disable=not enabled or not sys.stderr.isatty(), leave=False)  # a terminal only
    with bar:
        for piece in corpus:
            bar.update(len(piece))
            yield piece


def get_batch(
    data: npt.NDArray[np.integer[Any]] | Tensor,
    block_size: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows of ``data`` and their next tokens, int64, on ``device``.

    The trainer spec's contract (starts from ``torch.randint(len(data) - block_size, ...)`` with
    ``generator``), vectorised: one fancy-indexed read of the memmap.

    Data-parallel training draws the *global* batch of ``world_size * batch_size`` starts from
    the same generator on every rank and keeps this ``rank``'s slice, so N processes see exactly
    the batch that one process with ``N * batch_size`` rows would: the result does not depend
    on the number of processes. On CUDA the batch goes through pinned memory, asynchronously.
    """
    if len(data) <= block_size:
        raise ValueError(f"{len(data)} tokens are too few for windows of {block_size} + 1")
    starts = torch.randint(len(data) - block_size, (world_size * batch_size,), generator=generator)
    mine = starts[rank * batch_size : (rank + 1) * batch_size].numpy()
    offsets = np.arange(block_size + 1)
    if isinstance(data, Tensor):
        window = data[torch.from_numpy(mine[:, None] + offsets)].to(torch.int64)  # (B, T + 1)
    else:
        window = torch.from_numpy(np.asarray(data[mine[:, None] + offsets]).astype(np.int64))
    x, y = window[:, :-1], window[:, 1:]  # (B, T) each: y is x shifted by one
    device = torch.device(device)
    if device.type == "cuda":
        x = x.contiguous().pin_memory().to(device, non_blocking=True)
        y = y.contiguous().pin_memory().to(device, non_blocking=True)
        return x, y
    return x.contiguous().to(device), y.contiguous().to(device)
