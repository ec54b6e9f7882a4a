"""A small HTTP API around one model: ``POST /generate`` behind API keys (the server chapter).

The app answers one route::

    POST /generate  {"prompt": "The ", "max_tokens": 16, "temperature": 0.8, "seed": 1}
    -> {"generated_text": "...", "prompt_tokens": 4, "completion_tokens": 16}

With ``"stream": true`` the answer is ``text/event-stream``: one SSE event ``{"text": piece}``
per piece of text as it is drawn, then ``data: [DONE]``. Generation runs in a worker thread,
never on the event loop, so one slow request does not stall the others.

Every request needs ``Authorization: Bearer <key>`` with one of the app's keys (a pure ASGI
middleware, so every route, the OpenAPI page included, is protected and a stream is never
buffered): otherwise 401. A body that does not validate is a 422 naming the field, a prompt
the tokenizer cannot encode a 400; errors have OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}``.

The production server (``reference/server/app.py``) adds the batching engine, rate limits,
metrics and the OpenAI-compatible routes on top of the same pieces.

>>> import asyncio, httpx, torch
>>> from pathlib import Path
>>> from reference.inference import Loaded, SampleSettings
>>> from reference.model import GPT, GPTConfig
>>> from reference.tokenizers import CharTokenizer
>>> model = GPT(GPTConfig(block_size=16, vocab_size=3, n_layer=1, n_head=1, n_embd=8)).eval()
>>> run = Loaded(model, CharTokenizer("abc"), Path("."), SampleSettings(), torch.device("cpu"))
>>> async def ask() -> httpx.Response:
...     transport = httpx.ASGITransport(app=basic_app(run, ["s3cret"]))
...     async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
...         return await client.post("/generate", json={"prompt": "ab", "max_tokens": 3},
...                                  headers={"Authorization": "Bearer s3cret"})
>>> answer = asyncio.run(ask())
>>> answer.status_code, sorted(answer.json())
(200, ['completion_tokens', 'generated_text', 'prompt_tokens'])
>>> answer.json()["prompt_tokens"], answer.json()["completion_tokens"]
(2, 3)
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from ..inference import Loaded, SampleSettings, prompt_ids, stream_text
from .auth import check_api_key
from .sse import sse_stream

__all__ = ["MAX_TOKENS", "ApiKeys", "GenerateRequest", "GenerateResponse", "basic_app",
           "error_body", "generate", "sample_settings"]

MAX_TOKENS = 4096  # the most tokens one request may ask for


class GenerateRequest(BaseModel):
    """The body of ``POST /generate``; an unknown field is an error (a typo is not ignored)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    max_tokens: int = Field(default=16, ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # 0: greedy
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # None: a fresh random seed
    stream: bool = False


class GenerateResponse(BaseModel):
    """The answer of ``POST /generate`` without streaming."""

    generated_text: str
    prompt_tokens: int  # the prompt as the model sees it (template, truncation included)
    completion_tokens: int  # every token drawn, the end-of-text token included


Route = Callable[[GenerateRequest, Loaded], Awaitable[GenerateResponse | Response]]
Check = Callable[[str | None, Sequence[str]], str | None]


def sample_settings(body: GenerateRequest) -> SampleSettings:
    """The inference path's settings for ``body``; no seed draws a fresh one.

    >>> sample_settings(GenerateRequest(prompt="hi", max_tokens=2, seed=7)).seed
    7
    """
    seed = body.seed if body.seed is not None else secrets.randbelow(2**63)
    return SampleSettings(prompt=body.prompt, max_new_tokens=body.max_tokens,
                          temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                          seed=seed)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape.

    >>> error_body("no", param="prompt")["error"]["param"]
    'prompt'
    """
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


async def generate(body: GenerateRequest, run: Loaded) -> GenerateResponse | Response:
    """The ``/generate`` route: ``body``'s continuation by ``run``'s model, whole or streamed.

    The prompt is encoded first (a ValueError, such as a character the tokenizer lacks, is the
    client's error: 400); the tokens are drawn by :func:`reference.inference.stream_text` in a
    worker thread, one ``next`` at a time, so the event loop stays free.
    """
    settings = sample_settings(body)
    prompt = prompt_ids(run.tokenizer, body.prompt, run.model.config.block_size)
    drawn: list[int] = []
    pieces = iterate_in_threadpool(
        stream_text(run.model, run.tokenizer, settings, on_token=drawn.append))
    if body.stream:
        return StreamingResponse(sse_stream(_json_pieces(pieces)), media_type="text/event-stream")
    text = "".join([piece async for piece in pieces])
    return GenerateResponse(generated_text=text, prompt_tokens=len(prompt),
                            completion_tokens=len(drawn))


async def _json_pieces(pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    async for piece in pieces:
        yield json.dumps({"text": piece})


class ApiKeys:
    """Pure ASGI middleware: every HTTP request needs ``Authorization: Bearer <key>`` with an
    accepted key (checked by ``check``), else 401 in OpenAI's error shape."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], check: Check) -> None:
        self.app, self.keys, self.check = app, tuple(keys), check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            raw = headers.get(b"authorization")
            header = raw.decode("latin-1") if raw is not None else None
            if self.check(header, self.keys) is None:
                why = "missing" if header is None else "invalid"
                response = JSONResponse(
                    error_body(f"{why} API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key"),
                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def basic_app(run: Loaded, keys: Sequence[str], *, route: Route | None = None,
              check: Check | None = None) -> FastAPI:
    """The app: ``POST /generate`` answered by ``route`` (default :func:`generate`), behind the
    API ``keys`` checked by ``check`` (default :func:`reference.server.auth.check_api_key`)."""
    answer = route or generate
    app = FastAPI(title="llm-from-scratch: basic generate API")

    @app.post("/generate", response_model=None)
    async def generate_route(body: GenerateRequest) -> GenerateResponse | Response:
        return await answer(body, run)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ())[1:]]
        param = ".".join(loc) if loc and first.get("type") != "json_invalid" else None
        message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
        return JSONResponse(error_body(message, param=param), status_code=422)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(error_body(str(exc)), status_code=400)

    app.add_middleware(ApiKeys, keys=keys, check=check or check_api_key)
    return app
