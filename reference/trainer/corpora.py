"""Where the training text comes from.

* :func:`builtin_corpus`: the Python Language Reference's help topics (what ``help("assert")``
  prints), about 465,000 characters of English about Python that ship with every CPython as
  ``pydoc_data.topics``: no network, no file from the user. The main job's default.
* :class:`MarkovSource`: a seeded Markov chain over a small alphabet, generated on the fly, whose
  exact entropy rate (the loss floor no model can beat) is computed here.
* :func:`tiny_shakespeare`: Karpathy's Tiny Shakespeare (1.1 MB), downloaded once from its public
  URL with a SHA-256 check into a cache, or read from a local file.
* :func:`text_file` and :func:`jsonl_file`: any local text file, or JSON Lines with a text field.
* :func:`hf_dataset`: large corpora such as OpenWebText, streamed with Hugging Face ``datasets``
  (an optional extra, online only).

A :class:`Corpus` is a named, re-iterable source of text pieces: iterating it twice reads the
source twice (a character tokenizer needs one pass for its alphabet, one to encode).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import urllib.error
import urllib.request
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..atomic import atomic_open

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DOCUMENT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """A named text source. ``pieces()`` returns a fresh iterator of text pieces each time.

    ``size`` is its length in characters when known cheaply (for progress bars); ``fingerprint``
    identifies the exact content (a SHA-256 when known), so a prepared token file can be reused.
    """

    name: str
    pieces: Callable[[], Iterator[str]] = field(repr=False)
    size: int | None = None
    fingerprint: str | None = None

    def __iter__(self) -> Iterator[str]:
        return self.pieces()

    def text(self) -> str:
        """The whole corpus as one string (for small corpora)."""
        return "".join(self.pieces())


# ----------------------------------------------------------------------------- built-in


def builtin_corpus() -> Corpus:
    """The Python Language Reference's help topics, as shipped with this Python (no network).

    The topics are joined in sorted order, so the text is fixed for a given Python version.
    """
    import pydoc_data.topics

    topics: dict[str, str] = pydoc_data.topics.topics
    text = DOCUMENT_SEPARATOR.join(topics[k].strip() for k in sorted(topics)) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Corpus("python-docs", lambda: iter([text]), size=len(text), fingerprint=digest)


# ----------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class MarkovSource:
    """A stationary Markov chain of order ``order`` over ``vocab_size`` symbols, from a seed.

    Each context (the last ``order`` symbols) has its own next-symbol distribution, drawn from a
    symmetric Dirichlet(``concentration``): small concentrations give peaked, predictable rows.
    Sequences start from the stationary distribution, so every window is statistically alike.

    The loss floor of next-token prediction is computed exactly: :meth:`entropy_rate` is
    ``H = -Σ_s π(s) Σ_x P(x|s) log P(x|s)`` (nats/token) with π the stationary distribution of
    contexts; :meth:`loss_floor` accounts for a window's first ``order - 1`` positions, which see
    less than a full context.

    Example::

        >>> src = MarkovSource(vocab_size=4, order=1, seed=0)
        >>> tokens = src.sample(10, seed=1)           # np.ndarray of 10 ids in [0, 4)
        >>> src.entropy_rate() <= float(np.log(4))   # at most log(vocab_size) nats
        True
    """

    vocab_size: int = 8
    order: int = 2
    concentration: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.vocab_size <= 256:
            raise ValueError(f"MarkovSource vocab_size must be in [2, 256], got {self.vocab_size}")
        if not 1 <= self.order <= 6:
            raise ValueError(f"MarkovSource order must be in [1, 6], got {self.order}")
        if self.vocab_size**self.order > 1 << 16:
            raise ValueError(
                f"vocab_size ** order = {self.vocab_size**self.order} contexts is too many "
                "(at most 65536)"
            )
        if not self.concentration > 0:
            raise ValueError(f"MarkovSource concentration must be > 0, got {self.concentration}")

    @property
    def n_contexts(self) -> int:
        return int(self.vocab_size**self.order)

    @cached_property
    def transition(self) -> npt.NDArray[np.float64]:
        """``P[s, x]``: probability of symbol x after context s, shape (K**order, K).

        Context ``s`` encodes the last ``order`` symbols in base K, the oldest most significant.
        """
        rng = np.random.default_rng(self.seed)
        alpha = np.full(self.vocab_size, self.concentration)
        p = rng.dirichlet(alpha, size=self.n_contexts)
        p = np.maximum(p, 1e-12)  # keep the chain irreducible: every transition possible
        out: npt.NDArray[np.float64] = p / p.sum(axis=1, keepdims=True)
        return out

    @cached_property
    def stationary(self) -> npt.NDArray[np.float64]:
        """π(s): the stationary distribution over contexts, shape (K**order,)."""
        k, n = self.vocab_size, self.n_contexts
        # Context s followed by x becomes context (s * K + x) mod K**order.
        nxt = (np.arange(n)[:, None] * k + np.arange(k)[None, :]) % n  # (n, K)
        pi = np.full(n, 1.0 / n)
        for _ in range(100_000):
            new = np.zeros(n)
            np.add.at(new, nxt, pi[:, None] * self.transition)
            if np.abs(new - pi).sum() < 1e-15:
                pi = new
                break
            pi = new
        out: npt.NDArray[np.float64] = pi / pi.sum()
        return out

    def entropy_rate(self) -> float:
        """The exact entropy rate in nats per token: the floor of the expected loss."""
        p = self.transition
        row_entropy = -(p * np.log(p)).sum(axis=1)  # (n,)
        return float(self.stationary @ row_entropy)

    def _block_entropy(self, length: int) -> float:
        """H(X_1..X_length) for ``length <= order`` consecutive symbols of the stationary chain."""
        if length == 0:
            return 0.0
        # Marginalise π over the newest (order - length) symbols of the context.
        joint = self.stationary.reshape(self.vocab_size ** length, -1).sum(axis=1)
        joint = joint[joint > 0]
        return float(-(joint * np.log(joint)).sum())

    def loss_floor(self, block_size: int) -> float:
        """The least mean loss over windows of ``block_size`` predictions (nats/token).

        Position t of a window predicts token t + 1 from t + 1 tokens of context; with fewer than
        ``order`` of them the conditional entropy H(X_{t+2} | X_1..X_{t+1}) exceeds the rate.
        """
        per_position = []
        for t in range(block_size):
            seen = t + 1
            if seen >= self.order:
                per_position.append(self.entropy_rate())
            else:
                per_position.append(self._block_entropy(seen + 1) - self._block_entropy(seen))
        return float(np.mean(per_position))

    def sample(self, n: int, seed: int = 0) -> npt.NDArray[np.uint8]:
        """``n`` symbols of the chain, started from its stationary distribution (uint8)."""
        rng = np.random.default_rng(seed)
        k, n_ctx = self.vocab_size, self.n_contexts
        cdf = np.cumsum(self.transition, axis=1)
        cdf[:, -1] = 1.0
        context = int(rng.choice(n_ctx, p=self.stationary))
        out = np.empty(n, dtype=np.uint8)
        # The first `order` symbols are the starting context itself.
        start = [(context // k**i) % k for i in reversed(range(self.order))]
        m = min(n, self.order)
        out[:m] = start[:m]
        uniforms = rng.random(max(n - self.order, 0))
        rows = cdf.tolist()
        for i, u in enumerate(uniforms.tolist()):
            x = bisect_right(rows[context], u)
            x = min(x, k - 1)
            out[self.order + i] = x
            context = (context * k + x) % n_ctx
        return out


# ----------------------------------------------------------------------------- Tiny Shakespeare


def cache_dir() -> Path:
    """Downloads go to ``$LLMFS_CACHE``, else ``$XDG_CACHE_HOME/llm-from-scratch``."""
    if env := os.environ.get("LLMFS_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "llm-from-scratch"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` unless it is already there with the right SHA-256.

    The bytes go to a temporary file beside ``dest`` and are moved into place only when their
    SHA-256 matches, so ``dest`` is never a partial or wrong file.
    """
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with atomic_open(dest, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
            if digest.hexdigest() != sha256:  # inside the block: the file is then discarded
                raise ValueError(
                    f"{url}: SHA-256 {digest.hexdigest()} does not match the expected {sha256}"
                )
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"could not download {url} ({e}); no network? Give a local copy instead "
            "(e.g. data.path=/path/to/input.txt)"
        ) from e
    return dest


def tiny_shakespeare(
    path: str | os.PathLike[str] | None = None,
    *,
    url: str = SHAKESPEARE_URL,
    cache: Path | None = None,
    verify: bool = True,
) -> Corpus:
    """Tiny Shakespeare from ``path``, else ``$LLMFS_DATA``, else the cache, else the network.

    A local file must have the published SHA-256 unless ``verify=False``.
    """
    if path is not None:
        local = Path(path)
        if not local.is_file():
            raise FileNotFoundError(f"Tiny Shakespeare file {local} not found")
        if verify and (actual := sha256_file(local)) != SHAKESPEARE_SHA256:
            raise ValueError(
                f"{local} is not Tiny Shakespeare: SHA-256 {actual}, expected {SHAKESPEARE_SHA256}"
            )
    elif (shared := _shared_copy()) is not None:
        local = shared
    else:
        local = download(url, (cache or cache_dir()) / "tinyshakespeare" / "input.txt",
                         SHAKESPEARE_SHA256)
    corpus = text_file(local)
    return Corpus("tinyshakespeare", corpus.pieces, corpus.size, SHAKESPEARE_SHA256)


def _shared_copy() -> Path | None:
    """The project's shared test copy (``$LLMFS_DATA/tinyshakespeare/input.txt``), if right."""
    env = os.environ.get("LLMFS_DATA")
    if not env:
        return None
    candidate = Path(env) / "tinyshakespeare" / "input.txt"
    if candidate.is_file() and sha256_file(candidate) == SHAKESPEARE_SHA256:
        return candidate
    return None


# ----------------------------------------------------------------------------- local files


def read_utf8(path: Path, block_bytes: int = 1 << 20) -> Iterator[str]:
    """The text of a UTF-8 file in pieces of about ``block_bytes``, never split inside a
    character; a byte that is not UTF-8 is a ValueError naming the file and its byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file given to the decoder so far
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_bytes), b""):
            buffered = decoder.getstate()[0]  # the start of a character cut by the last block
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as e:
                at = offset - len(buffered) + e.start
                raise ValueError(
                    f"{path}: not UTF-8 text: byte {at:,} is {(buffered + block)[e.start]:#04x} "
                    f"({e.reason}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            if "\x00" in text:
                raise ValueError(f"{path}: a NUL byte near byte {offset + block.index(0):,}: "
                                 "this looks like a binary file, not text")
            offset += len(block)
            if text:
                yield text
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text: it ends inside a character "
                             f"(byte {offset - len(decoder.getstate()[0]):,})") from None
        if tail:
            yield tail


def text_file(path: str | os.PathLike[str], *, chunk_chars: int = 1 << 20) -> Corpus:
    """A UTF-8 text file, read in pieces of about ``chunk_chars`` characters.

    A file that is not UTF-8 (or is binary) is a ValueError naming it and the byte offset.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file {p} not found")

    def pieces() -> Iterator[str]:
        return read_utf8(p, block_bytes=chunk_chars)

    stat = p.stat()
    return Corpus(p.name, pieces, size=stat.st_size,
                  fingerprint=f"file:{p.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")


def _lines(pieces: Iterator[str]) -> Iterator[str]:
    """The ``\\n``-separated lines of a text given in pieces (cut anywhere)."""
    rest = ""
    for piece in pieces:
        *whole, rest = (rest + piece).split("\n")
        yield from whole
    if rest:
        yield rest


def jsonl_file(path: str | os.PathLike[str], *, field: str = "text") -> Corpus:
    """JSON Lines: one object per line; each one's ``field`` is a document.

    Documents are separated by a blank line. A line that is not an object with a string
    ``field`` is an error naming the line.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"JSONL file {p} not found")

    def pieces() -> Iterator[str]:
        for lineno, line in enumerate(_lines(read_utf8(p)), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise ValueError(f"{p}:{lineno}: expected an object with a string {field!r}")
            yield obj[field] + DOCUMENT_SEPARATOR

    stat = p.stat()
    return Corpus(p.name, pieces, size=None,
                  fingerprint=f"jsonl:{p.resolve()}:{field}:{stat.st_size}:{stat.st_mtime_ns}")


# ----------------------------------------------------------------------------- Hugging Face


def hf_dataset(
    name: str = "openwebtext",
    *,
    config: str | None = None,
    split: str = "train",
    field: str = "text",
    max_documents: int | None = None,
) -> Corpus:
    """A Hugging Face dataset streamed document by document (needs ``datasets`` and a network)."""
    try:
        import datasets  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise ImportError(
            "data.source=hf streams with Hugging Face `datasets`, which is not installed: "
            "pip install datasets"
        ) from None

    def pieces() -> Iterator[str]:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        for i, row in enumerate(stream):
            if max_documents is not None and i >= max_documents:
                return
            yield str(row[field]) + DOCUMENT_SEPARATOR

    return Corpus(f"hf:{name}", pieces, size=None,
                  fingerprint=f"hf:{name}:{config}:{split}:{field}:{max_documents}")
