"""Server-sent events: the framing of a token stream (``text/event-stream``).

One event is one or more ``data: <line>`` lines ended by a blank line; a data string that
holds newlines becomes one ``data:`` line per line, and the client joins them back with
``\\n``. OpenAI-style streams end with the sentinel event ``data: [DONE]``.

>>> sse_event("hello")
b'data: hello\\n\\n'
>>> sse_event("a\\nb")
b'data: a\\ndata: b\\n\\n'
>>> DONE
b'data: [DONE]\\n\\n'
"""

from __future__ import annotations

from collections.abc import AsyncIterator

DONE: bytes = b"data: [DONE]\n\n"


def sse_event(data: str) -> bytes:
    """One SSE event carrying ``data``: a ``data:`` line per line of it, then a blank line.

    ``\\r\\n``, ``\\r`` and ``\\n`` all end a line (the SSE grammar), so each becomes a
    ``data:`` line break; the empty string is one empty ``data:`` line.

    >>> sse_event("")
    b'data: \\n\\n'
    >>> sse_event("é")
    b'data: \\xc3\\xa9\\n\\n'
    """
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


async def sse_stream(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """Frame a stream of text ``pieces`` as SSE: one event per piece, then ``data: [DONE]``.

    The pieces are framed as they come (nothing is buffered), so a client sees each one as soon
    as it is drawn. A piece is sent as it is: a route whose pieces could read ``[DONE]`` sends
    JSON objects instead.

    >>> import asyncio
    >>> async def pieces():
    ...     yield "Hel"
    ...     yield "lo"
    >>> async def collect():
    ...     return b"".join([event async for event in sse_stream(pieces())])
    >>> asyncio.run(collect())
    b'data: Hel\\n\\ndata: lo\\n\\ndata: [DONE]\\n\\n'
    """
    async for piece in pieces:
        yield sse_event(piece)
    yield DONE
