"""The server: a model behind HTTP, with API keys and a streamed answer.

Three small pieces turn the inference path into a web API (FastAPI on an asyncio event loop):

* :func:`check_api_key`: who may call. ``Authorization: Bearer <key>`` against the accepted
  keys, in constant time: comparing with ``==`` stops at the first differing byte, so the time
  an answer takes tells an attacker how many leading bytes they guessed right.
* :func:`sse_event` and :func:`sse_stream`: server-sent events, the framing with which OpenAI's
  API (and this one) streams tokens as they are drawn: ``data: <text>`` lines, a blank line
  after each event, ``data: [DONE]`` at the end.
* :func:`generate`: the ``POST /generate`` route's body. An async handler runs on the event
  loop, which serves every connection: a forward pass run there stalls them all. The tokens are
  drawn in a worker thread instead.

Given code from the library (``reference.server.basic``): the request and response models, the
app that wires the route and the key check together (:func:`basic_app`), and the sampling
settings of a request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from reference.inference import Loaded, prompt_ids, stream_text
from reference.server import basic
from reference.server.basic import GenerateRequest, GenerateResponse, sample_settings
from reference.server.sse import DONE

__all__ = ["DONE", "GenerateRequest", "GenerateResponse", "basic_app", "check_api_key",
           "generate", "sample_settings", "sse_event", "sse_stream"]


def check_api_key(authorization: str | None, keys: Sequence[str]) -> str | None:
    """The key in ``authorization`` if it is one of ``keys``, else None.

    Contract:

    * ``authorization`` is the ``Authorization`` header's value (None when there is none):
      ``<scheme> <key>``, where the scheme ``Bearer`` is case-insensitive (``bearer``,
      ``BEARER``); surrounding spaces do not count. Any other scheme is refused.
    * The key is compared with *every* accepted key through :func:`hmac.compare_digest`
      (constant time), with no early exit: the loop runs over all of ``keys`` whatever
      matched, so the time taken does not tell which key (or how much of it) matched.
    * An empty key never matches (``"Bearer "``, even if ``""`` is among ``keys``), and no key
      matches when ``keys`` is empty: deny by default.

    Example::

        >>> check_api_key("Bearer s3cret", ["other", "s3cret"])
        's3cret'
        >>> check_api_key("bearer s3cret", ["s3cret"])
        's3cret'
        >>> check_api_key("Basic s3cret", ["s3cret"]) is None
        True
        >>> check_api_key("Bearer ", [""]) is None
        True

    Hints: ``str.partition(" ")`` splits the scheme from the key; compare bytes
    (``key.encode()``), which ``compare_digest`` takes whatever the characters; remember the
    match in a variable instead of returning from inside the loop.
    """
    raise NotImplementedError("exercises/server.py::check_api_key is a stub: fill it in (task server), then run `pytest exercises -m server`")


def sse_event(data: str) -> bytes:
    """One server-sent event carrying ``data``, as UTF-8 bytes.

    Contract: each line of ``data`` becomes a line ``data: <line>\\n`` and a blank line ends
    the event; the client joins the lines back with ``\\n``. ``\\r\\n``, ``\\r`` and ``\\n`` all
    end a line (the SSE grammar), so each becomes a new ``data:`` line (a line break inside a
    line would end the event early, or be read as a field of its own). The empty string is one
    empty ``data:`` line.

    Example::

        >>> sse_event("Hello")
        b'data: Hello\\n\\n'
        >>> sse_event("two\\nlines")
        b'data: two\\ndata: lines\\n\\n'
        >>> sse_event("é")
        b'data: \\xc3\\xa9\\n\\n'

    Hints: normalize ``\\r\\n`` and ``\\r`` to ``\\n`` first, then ``split("\\n")`` (not
    ``splitlines``, which also splits at characters SSE does not, and drops a trailing empty
    line).
    """
    raise NotImplementedError("exercises/server.py::sse_event is a stub: fill it in (task server), then run `pytest exercises -m server`")


async def sse_stream(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """Frame the text ``pieces`` as a stream of server-sent events.

    Contract: one event (:func:`sse_event`) per piece, in order and as each piece arrives
    (nothing buffered: the client sees a token as soon as it is drawn), then the end marker
    ``DONE`` (``b"data: [DONE]\\n\\n"``). No pieces: just ``DONE``.

    Example::

        >>> import asyncio
        >>> async def pieces():
        ...     yield "Hel"
        ...     yield "lo"
        >>> async def collect():
        ...     return [event async for event in sse_stream(pieces())]
        >>> asyncio.run(collect())
        [b'data: Hel\\n\\n', b'data: lo\\n\\n', b'data: [DONE]\\n\\n']

    Hint: an ``async def`` with ``yield`` is an async generator; ``async for`` reads one.
    """
    raise NotImplementedError("exercises/server.py::sse_stream is a stub: fill it in (task server), then run `pytest exercises -m server`")


async def generate(body: GenerateRequest, run: Loaded) -> GenerateResponse | Response:
    """The body of the route ``POST /generate``: ``body.prompt``'s continuation by ``run``.

    Contract:

    * The text is exactly what :func:`reference.inference.stream_text` draws for
      ``sample_settings(body)`` (given): same prompt, ``max_tokens``, temperature, top-k,
      top-p and seed, so a seeded or greedy request is reproducible.
    * The tokens are drawn in a worker thread, never on the event loop (which serves every
      other client meanwhile): wrap the generator with
      ``starlette.concurrency.iterate_in_threadpool``, which runs each ``next`` in a thread.
    * Without ``body.stream``: a :class:`GenerateResponse` with ``generated_text``,
      ``prompt_tokens`` (the prompt as the model sees it: ``prompt_ids`` of it, which renders a
      chat turn and keeps the last ``block_size`` tokens) and ``completion_tokens`` (every
      token drawn, the end-of-text token included: ``stream_text``'s ``on_token`` sees each).
    * With ``body.stream``: a ``StreamingResponse`` of media type ``text/event-stream`` whose
      events are the JSON objects ``{"text": piece}``, one per piece, then ``data: [DONE]``
      (:func:`sse_stream`). JSON, so a piece that reads ``[DONE]`` is not the end marker.
    * The prompt is encoded before anything is drawn: a ValueError (a character the
      tokenizer lacks) reaches the app, which answers 400.

    Example (a model with random weights; the app is given code)::

        >>> import asyncio, httpx, torch
        >>> from pathlib import Path
        >>> from reference.inference import SampleSettings
        >>> from reference.model import GPT, GPTConfig
        >>> from reference.tokenizers import CharTokenizer
        >>> model = GPT(GPTConfig(block_size=8, vocab_size=3, n_layer=1, n_head=1, n_embd=8))
        >>> run = Loaded(model.eval(), CharTokenizer("abc"), Path("."), SampleSettings(),
        ...              torch.device("cpu"))
        >>> async def ask(body):
        ...     transport = httpx.ASGITransport(app=basic_app(run, ["k"]))
        ...     async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        ...         return await c.post("/generate", json=body, headers={"Authorization": "Bearer k"})
        >>> answer = asyncio.run(ask({"prompt": "abcabcabcabc", "max_tokens": 3, "seed": 1}))
        >>> answer.json()["prompt_tokens"], answer.json()["completion_tokens"]  # the last 8
        (8, 3)
        >>> answer = asyncio.run(ask({"prompt": "ab", "max_tokens": 2, "stream": True}))
        >>> answer.headers["content-type"].startswith("text/event-stream")
        True
        >>> answer.text.count("data: "), answer.text.endswith("data: [DONE]\\n\\n")
        (3, True)

    Hints: collect the drawn ids with ``on_token=drawn.append``; ``"".join([p async for p in
    pieces])`` collects the text; for the stream, an async generator that turns each piece
    into ``json.dumps({"text": piece})`` feeds :func:`sse_stream`.
    """  # noqa: E501
    raise NotImplementedError("exercises/server.py::generate is a stub: fill it in (task server), then run `pytest exercises -m server`")


def basic_app(run: Loaded, keys: Sequence[str]) -> FastAPI:
    """The app around your functions (given code): ``POST /generate`` answered by
    :func:`generate`, every request checked by :func:`check_api_key` against ``keys``."""
    return basic.basic_app(run, keys, route=generate, check=check_api_key)
