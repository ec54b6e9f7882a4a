"""From the engine's tokens to text on the wire: incremental decoding, stop sequences, n choices.

* :class:`StopMatcher`: cuts a text stream at the first stop string and, while streaming,
  holds back a tail that could be the start of one, so a partial stop string never leaks;
* :class:`TextStream`: one request's :class:`reference.batching.Stream` as text pieces (a
  character whose UTF-8 bytes span tokens is sent once whole; the end-of-text token is not
  shown), with its token count, log-probabilities and finish reason (``"stop"`` or
  ``"length"``, as OpenAI names them); leaving it early cancels the request;
* :func:`merge`: several choices' pieces as one stream of ``(index, piece)``.

The law the tests check: whatever the split of the text into pieces, the pieces sent join to
the text before the first stop string (all of it when there is none).

Example::

    >>> m = StopMatcher(["END"])
    >>> [m.feed(t) for t in ["ab", "cE", "N"]]  # "E", then "EN", held back
    ['ab', 'c', '']
    >>> m.feed("D!"), m.stopped
    ('', True)
    >>> m = StopMatcher(["END"])
    >>> m.feed("xE"), m.feed("Nd"), m.flush()  # "EN" was not the start of "END" after all
    ('x', 'ENd', '')
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..batching import EngineStopped, Stream
from ..tokenizers import Tokenizer

__all__ = ["FINISH", "StopMatcher", "TextStream", "TokenLogprob", "merge"]

FINISH = {"eos": "stop", "length": "length"}  # the engine's reasons -> OpenAI's
T = TypeVar("T")


class StopMatcher:
    """Text in, text out: everything before the first of ``stops``; nothing after it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""  # a tail that may be the start of a stop string
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is now safe to send (never part of a stop string)."""
        if self.stopped:
            return ""
        buf = self.held + text
        hits = [i for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return buf[:min(hits)]
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(buf) + 1))
                    if buf.endswith(s[:k])), default=0)
        self.held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        """The held-back tail, at the end of the text (it was no stop string)."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out


@dataclass(frozen=True)
class TokenLogprob:
    """One drawn token: its text, bytes and log-probability under the model."""

    token: str
    bytes: bytes
    logprob: float


@dataclass
class TextStream:
    """``stream``'s tokens as text pieces, stopping at ``stops`` and at ``eos_id`` (not shown).

    Iterate it once (``async for piece in text``); then ``finish_reason`` is ``"stop"`` (the
    end-of-text token or a stop string) or ``"length"``, ``completion_tokens`` counts the
    tokens drawn (an end-of-text token included) and ``logprobs`` holds one entry per token when
    the request asked for them. A stream the engine could not finish (stopped, failed) raises
    :class:`EngineStopped`. ``on_token(seconds)`` is called per token with the time since the
    previous one (since the start for the first): the server's latency metrics.
    """

    stream: Stream
    tokenizer: Tokenizer
    stops: Sequence[str] = ()
    eos_id: int | None = None
    on_token: Callable[[int, float], None] | None = None  # (index, seconds)
    completion_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)

    async def __aiter__(self) -> AsyncIterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stop = StopMatcher(self.stops)
        last = time.perf_counter()
        try:
            async for token in self.stream:
                now = time.perf_counter()
                if self.on_token is not None:
                    self.on_token(self.completion_tokens, now - last)
                last = now
                self.completion_tokens += 1
                if token == self.eos_id:
                    continue  # the engine ends the stream right after it
                raw = self.tokenizer.decode_bytes([token])
                if self.stream.request.logprobs:
                    lp = self.stream.logprobs[len(self.logprobs)]
                    text = raw.decode("utf-8", errors="replace")
                    self.logprobs.append(TokenLogprob(text, raw, lp))
                piece = stop.feed(decoder.decode(raw))
                if piece:
                    yield piece
                if stop.stopped:
                    self.finish_reason = "stop"
                    self.stream.cancel()  # no more tokens for this request
                    return
            reason = self.stream.finish_reason or "cancelled"
            if reason not in FINISH:
                raise EngineStopped(f"the generation ended early ({reason}): the engine stopped")
            tail = stop.feed(decoder.decode(b"", final=True))
            tail += stop.flush()
            self.finish_reason = "stop" if stop.stopped else FINISH[reason]
            if tail:
                yield tail
        finally:
            if self.finish_reason is None:
                self.stream.cancel()

    async def text(self) -> str:
        """The whole text (iterates the stream)."""
        return "".join([piece async for piece in self])


async def merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """``(i, item)`` for every item of ``streams[i]``, as they come, until every one ends.

    Each stream is read by its own task; an error in one is raised here; leaving early (or
    an error) cancels every task, so their requests are cancelled too.
    """
    items: asyncio.Queue[tuple[int, T] | tuple[int, None, BaseException | None]] = \
        asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await items.put((i, item))
        except Exception as e:  # raised in the reader
            await items.put((i, None, e))
        else:
            await items.put((i, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            got = await items.get()
            if len(got) == 3:  # a stream ended
                running -= 1
                if got[2] is not None:
                    raise got[2]
                continue
            yield got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
