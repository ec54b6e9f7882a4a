"""Build and inspect a vocabulary: id -> bytes, a printable rendering, the merge list."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping, Sequence


def build_vocab(
    merges: Sequence[tuple[bytes, bytes]], special_tokens: Sequence[str] = ()
) -> dict[int, bytes]:
    """The vocabulary a trainer produces: ids 0..255 the bytes, ``256 + k`` the ``k``-th merge,
    then the special tokens in order.

    Example::

        >>> vocab = build_vocab([(b"a", b"b")], ["<|endoftext|>"])
        >>> vocab[97], vocab[256], vocab[257]
        (b'a', b'ab', b'<|endoftext|>')
    """
    vocab = {i: bytes([i]) for i in range(256)}
    for left, right in merges:
        vocab[len(vocab)] = left + right
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    return vocab


def render_token(token: bytes) -> str:
    """A printable, unambiguous rendering of a token's bytes.

    Valid UTF-8 is shown as text with control characters escaped (``\\n``, ``\\u0007``); bytes
    that are not valid UTF-8 on their own (half a character) are shown as ``\\xNN``.

    Example::

        >>> render_token(b" the"), render_token(b"\\n\\n"), render_token(b"\\xe2\\x80")
        (' the', '\\\\n\\\\n', '\\\\xe2\\\\x80')
    """
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"\\x{b:02x}" for b in token)
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch in "\n\t\r":
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch]
    if unicodedata.category(ch).startswith(("C", "Z")) and ch != " ":
        return f"\\u{ord(ch):04x}"
    return ch


def describe_vocab(
    vocab: Mapping[int, bytes],
    merges: Sequence[tuple[bytes, bytes]],
    special_tokens: Mapping[str, int] | None = None,
    *,
    limit: int | None = None,
) -> Iterator[str]:
    """One line per token, by id: ``id  [token]``, with ``<- [left] [right]`` for a merged token
    and ``(special)`` for a special token.

    Example::

        >>> list(describe_vocab({97: b"a", 256: b"aa"}, [(b"a", b"a")]))
        ['   97  [a]', '  256  [aa]  <- [a] [a]']
    """
    made_by = {left + right: (left, right) for left, right in merges}
    specials = set((special_tokens or {}).values())
    width = len(str(max(vocab, default=0)))
    for n, i in enumerate(sorted(vocab)):
        if limit is not None and n >= limit:
            break
        token = vocab[i]
        line = f"{i:>{max(width, 5)}}  [{render_token(token)}]"
        if i in specials:
            line += "  (special)"
        elif token in made_by:
            left, right = made_by[token]
            line += f"  <- [{render_token(left)}] [{render_token(right)}]"
        yield line
