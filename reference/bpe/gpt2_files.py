"""GPT-2's original tokenizer files: ``vocab.json`` and ``merges.txt`` (OpenAI's, Hugging Face's).

Both files write tokens as *strings* over a 256-character alphabet: GPT-2's ``bytes_to_unicode``
maps every byte to a printable character (``"!"`` stays ``"!"``, the space becomes ``"Ġ"``, the
newline ``"Ċ"``), so that a token is readable and never contains a real space. Loading maps the
characters back to bytes.

* ``vocab.json``: ``{"token string": id, ...}``;
* ``merges.txt``: an optional ``#version`` line, then one merge per line, ``"left right"``, in
  the order learned.
"""

from __future__ import annotations

import json
from functools import cache
from os import PathLike
from pathlib import Path


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: printable Latin-1 bytes map to themselves, the other
    68 bytes to ``chr(256 + n)`` in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def token_to_string(token: bytes) -> str:
    """A token's bytes in GPT-2's file alphabet (``b" the"`` -> ``"Ġthe"``)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def load_gpt2_files(
    vocab_json: str | PathLike[str], merges_txt: str | PathLike[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Read ``(vocab, merges)`` from GPT-2-style ``vocab.json`` and ``merges.txt``.

    Raises ``ValueError`` naming the entry or line that is malformed (a character outside the
    alphabet, a merge of tokens not in the vocabulary, a line that is not two tokens).
    """
    to_byte = {ch: b for b, ch in bytes_to_unicode().items()}

    def decode(token: str, where: str) -> bytes:
        try:
            return bytes(to_byte[ch] for ch in token)
        except KeyError as e:
            raise ValueError(f"{where}: {token!r} has a character outside GPT-2's byte "
                             f"alphabet: {e.args[0]!r}") from None

    vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
    try:
        raw = json.loads(vocab_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{vocab_path}: invalid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{vocab_path}: expected a JSON object token -> id")
    vocab: dict[int, bytes] = {}
    for token, i in raw.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{vocab_path}: {token!r}: id must be a non-negative int, got {i!r}")
        if i in vocab:
            raise ValueError(f"{vocab_path}: id {i} is given to two tokens")
        vocab[i] = decode(token, f"{vocab_path}: {token!r}")
    known = set(vocab.values())

    merges: list[tuple[bytes, bytes]] = []
    with merges_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            fields = line.split(" ")
            where = f"{merges_path}:{lineno}"
            if len(fields) != 2 or not all(fields):
                raise ValueError(f"{where}: expected two tokens separated by one space, "
                                 f"got {line!r}")
            left, right = decode(fields[0], where), decode(fields[1], where)
            for part in (left, right, left + right):
                if part not in known:
                    raise ValueError(f"{where}: token {token_to_string(part)!r} is not in "
                                     f"{vocab_path.name}")
            merges.append((left, right))
    return vocab, merges
