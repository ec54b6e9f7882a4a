"""The server: a trained model behind FastAPI, OpenAI-compatible, streaming, batched.

Run it with uvicorn (settings from ``LLMFS_SERVE_*`` environment variables, see
``reference/server/settings.py``)::

    LLMFS_SERVE_MODEL=runs/main LLMFS_SERVE_API_KEYS='["s3cret"]' uvicorn reference.server.app:app
    python -m reference serve runs/main --port 8000   # the same, the run directory as argument

Routes (every one needs ``Authorization: Bearer <key>`` but ``/health``, ``/livez``, ``/`` and
``/static/``; see ``guard.py``):

* ``GET /livez``: 200 while the process runs; ``GET /health``: 503 until the model is loaded
  and warmed, then 200 (readiness);
* ``GET /v1/models``: the one model (``settings.model_name`` or its run directory's name);
* ``POST /generate``: the seed's contract, ``{"prompt", "max_tokens", "temperature", "top_k",
  "top_p", "seed", "stop", "stream"}`` -> ``{"generated_text", "prompt_tokens",
  "completion_tokens", "finish_reason"}``; streamed: SSE events ``{"text": piece}``, a last
  one with the finish reason and counts, then ``data: [DONE]``;
* ``POST /v1/completions``, ``POST /v1/chat/completions``: OpenAI's shapes, streamed as SSE
  chunks ending with ``data: [DONE]`` (``stream_options.include_usage``: a last chunk with the
  usage and no choice). ``n`` choices are drawn with seeds ``seed, seed + 1, ...`` (each at
  random without a seed); ``logprobs`` gives each drawn token's log-probability under the model;
  stop strings (up to 4) end a choice and never reach the client, not even in part. The chat
  route needs a chat model (``reference/chat.py``); on a chat model a plain prompt (``/generate``,
  ``/v1/completions``) is the user's turn, as in ``python -m reference generate``;
* ``GET /metrics`` (Prometheus), ``GET /`` (the playground, if on).

Generation runs only in the batching engine's thread (``reference/batching.py``): handlers are
async and read each request's tokens as they come. A full queue answers 429 with
``Retry-After``; a client gone mid-stream cancels its request before the next decode step.
Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``, naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..batching import Engine, EngineStopped, QueueFullError
from ..batching import Request as EngineRequest
from ..chat import ChatTokenizer, render
from ..inference import Loaded, load, prompt_ids
from .guard import RateLimited, install_guards, log_event
from .metrics import ServerMetrics
from .schemas import (
    ChatRequest,
    CompletionRequest,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ModelCard,
    ModelList,
    Sampling,
    error_json,
)
from .settings import ServerSettings
from .sse import DONE, sse_event
from .streaming import TextStream, merge

__all__ = ["APIError", "EventStream", "Served", "app", "create_app"]

STATIC = Path(__file__).parent / "static"


def _run_name(path: Path) -> str:
    """The model's id by default: its run directory's name (``runs/main/checkpoints/step_9``
    and ``runs/main`` are both ``main``)."""
    path = path.resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.name


class APIError(Exception):
    """An error answered as OpenAI-shaped JSON with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, self.code, self.headers = type, code, headers


def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, APIError)
    return JSONResponse(error_json(error.message, error.type, error.param, error.code),
                        status_code=error.status, headers=error.headers)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _validation_error(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, in OpenAI's shape, naming the first bad field (``messages.0.role``)."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if isinstance(p, int) or (
        p != "body" and p.isidentifier() and p not in _TYPE_TAGS)]  # not pydantic's union tags
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return JSONResponse(error_json(message, "invalid_request_error", param, "invalid_value"),
                        status_code=422)


def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_json(str(error.detail), kind), status_code=error.status_code,
                        headers=getattr(error, "headers", None))


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response that notices a client gone at once.

    It listens for ``http.disconnect`` beside the stream (whatever the ASGI version) and closes
    the body iterator when it ends, so a generation whose client left is cancelled before the
    engine's next decode step instead of at the next token or at garbage collection.
    """

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        self._body = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client left while we sent
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            aclose = getattr(self._body, "aclose", None)
            if aclose is not None:
                await aclose()


class Served:
    """What the lifespan loads: the model, its engine, its name; readiness."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.loaded: Loaded | None = None
        self.engine: Engine | None = None
        self.name = settings.model_name or _run_name(Path(settings.model))
        self.created = int(time.time())
        self.ready = False

    async def start(self) -> None:
        s = self.settings
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        loaded = await asyncio.to_thread(_load, s)
        self.loaded = loaded
        self.engine = Engine(loaded.model, max_batch=s.max_batch, max_waiting=s.max_waiting)
        self.engine.start()
        first = prompt_ids(loaded.tokenizer, "", 1) if loaded.tokenizer.eot_id is not None \
            else [0]
        warm = self.engine.submit(EngineRequest(tuple(first), max_new_tokens=2, temperature=0))
        async for _ in warm:  # one prefill and one decode step: the first request is not slow
            pass
        self.ready = True
        log_event("ready", model=self.name, checkpoint=str(loaded.checkpoint))

    def stop(self) -> None:
        self.ready = False
        if self.engine is not None:
            self.engine.stop(timeout=10)

    def running(self) -> tuple[Loaded, Engine]:
        if not self.ready or self.loaded is None or self.engine is None:
            raise APIError(503, "the model is not loaded yet: retry shortly", type="server_error",
                           code="not_ready", headers={"Retry-After": "1"})
        return self.loaded, self.engine


def _load(settings: ServerSettings) -> Loaded:
    """The model named by ``settings``, int8 if asked (off the event loop: it is slow)."""
    loaded = load(settings.model, device=settings.device)
    if settings.int8 is not None:
        from ..quantization import quantize

        quantize(loaded.model, settings.int8)
    return loaded


# ---------------------------------------------------------------- generation, shared by routes


class _Job:
    """One route call's choices: prompt ids checked, budget charged, requests submitted."""

    def __init__(self, served: Served, http: Request, ids: list[int], body: Sampling,
                 n: int, prompt_field: str, max_tokens: int | None, logprobs: bool) -> None:
        loaded, engine = served.running()
        s, block = served.settings, loaded.model.config.block_size
        limit = min(s.max_prompt_tokens or block, block)
        if len(ids) > limit:
            raise APIError(400, f"{prompt_field} is {len(ids)} tokens long, more than the "
                           f"{limit} allowed (max_prompt_tokens / the context window)",
                           prompt_field, code="context_length_exceeded")
        room = block - len(ids)
        if room < 1:
            raise APIError(400, f"{prompt_field} fills the context window of {block} tokens: "
                           f"no room for max_tokens", prompt_field, code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(room, s.max_tokens_limit)
        elif max_tokens > s.max_tokens_limit:
            raise APIError(400, f"max_tokens={max_tokens} is more than max_tokens_limit="
                           f"{s.max_tokens_limit}", "max_tokens")
        elif max_tokens > room:
            raise APIError(400, f"max_tokens={max_tokens} does not fit: the prompt takes "
                           f"{len(ids)} of the {block} positions, {room} are left", "max_tokens",
                           code="context_length_exceeded")
        if n > s.max_n:
            raise APIError(400, f"n={n} is more than max_n={s.max_n}", "n")
        key = getattr(http.state, "key_id", "anonymous")
        try:
            http.app.state.token_budget.charge(key, n * (len(ids) + max_tokens))
        except RateLimited as e:
            raise APIError(429, str(e), type="rate_limit_error", code="tokens_rate_limit",
                           headers={"Retry-After": str(e.retry_after)}) from None
        self.served, self.ids, self.n, self.key = served, ids, n, key
        self.request_id = getattr(http.state, "request_id", None)
        self.prompt = loaded.tokenizer.decode(ids) if s.log_prompts else None
        self.sent: list[str] = [""] * n  # the text sent, kept only to log it
        self.started = time.perf_counter()
        eos = loaded.tokenizer.eot_id
        streams = []
        try:
            for i in range(n):  # choice i: seed + i, so the n choices differ yet repeat
                seed = None if body.seed is None else body.seed + i
                request = EngineRequest(tuple(ids), max_tokens, body.temperature, body.top_k,
                                        body.top_p, eos, seed, logprobs)
                streams.append(engine.submit(request))
        except QueueFullError as e:
            for stream in streams:
                stream.cancel()
            raise APIError(429, str(e), type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except EngineStopped as e:
            raise APIError(503, str(e), type="server_error", code="engine_stopped") from None
        served.metrics.queue(engine.waiting, engine.active)
        self.texts = [TextStream(st, loaded.tokenizer, body.stop_list(), eos,
                                 self._on_token) for st in streams]

    def _on_token(self, index: int, seconds: float) -> None:
        m = self.served.metrics
        if index == 0:
            m.first_token(time.perf_counter() - self.started)
        else:
            m.inter_token(seconds)

    def done(self) -> None:
        m, seconds = self.served.metrics, time.perf_counter() - self.started
        m.end_to_end(seconds)
        m.tokens(len(self.ids) * self.n, sum(t.completion_tokens for t in self.texts))
        if self.served.engine is not None:
            m.queue(self.served.engine.waiting, self.served.engine.active)
        fields: dict[str, Any] = {}
        if self.served.settings.log_prompts:  # off by default: counts only
            fields = {"prompt": self.prompt, "texts": self.sent}
        log_event("generation", request_id=self.request_id, key_id=self.key,
                  prompt_tokens=len(self.ids), n=self.n, latency_ms=round(seconds * 1000, 3),
                  completion_tokens=[t.completion_tokens for t in self.texts],
                  finish_reasons=[t.finish_reason for t in self.texts], **fields)

    def cancel(self) -> None:
        for text in self.texts:
            text.stream.cancel()

    async def texts_whole(self) -> list[str]:
        """Every choice's whole text (non-streaming)."""
        try:
            self.sent = list(await asyncio.gather(*(t.text() for t in self.texts)))
            return self.sent
        except EngineStopped as e:
            raise APIError(503, str(e), type="server_error", code="engine_stopped") from None
        finally:
            self.cancel()  # a no-op for finished ones; stops the others on an error
            self.done()

    def usage(self) -> dict[str, int]:
        completion = sum(t.completion_tokens for t in self.texts)
        prompt = len(self.ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def pieces(self) -> AsyncIterator[tuple[int, str]]:
        """``(choice, piece)`` as drawn; at the end every choice's finish reason is set."""
        try:
            async for i, piece in merge([aiter(t) for t in self.texts]):
                if self.served.settings.log_prompts:
                    self.sent[i] += piece
                yield i, piece
        finally:
            self.cancel()
            self.done()


async def _sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """JSON events as SSE, then ``[DONE]``; an engine that stops mid-stream is an error event."""
    try:
        async for event in events:
            yield sse_event(json.dumps(event, ensure_ascii=False))
    except (EngineStopped, APIError) as e:
        yield sse_event(json.dumps(error_json(str(e), "server_error", code="engine_stopped")))
    yield DONE


def _logprobs_completion(text: TextStream) -> dict[str, Any]:
    offsets, at = [], 0
    for lp in text.logprobs:
        offsets.append(at)
        at += len(lp.token)
    return {"tokens": [lp.token for lp in text.logprobs],
            "token_logprobs": [lp.logprob for lp in text.logprobs],
            "top_logprobs": None, "text_offset": offsets}


def _logprobs_chat(text: TextStream) -> dict[str, Any]:
    return {"content": [{"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes),
                         "top_logprobs": []} for lp in text.logprobs]}


# ---------------------------------------------------------------- the app


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """The server for ``settings``; with None, an app that reads them from the environment at
    start-up (in its lifespan: importing this module never fails) and then serves as
    ``create_app(settings)`` would."""
    if settings is None:
        return _deferred()
    metrics = ServerMetrics()
    served = Served(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await served.start()
            yield
        finally:
            served.stop()

    app = FastAPI(title="llm-from-scratch", version="1", lifespan=lifespan,
                  summary="A GPT trained from scratch, OpenAI-compatible.")
    app.state.served = served
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    install_guards(app, settings, metrics)
    _routes(app, served)
    if settings.playground and (STATIC / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        async def playground() -> FileResponse:
            return FileResponse(STATIC / "index.html")
    return app


def _routes(app: FastAPI, served: Served) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"description": what, "model": ErrorResponse} for code, what in (
            (400, "a bad value (named)"), (401, "no or a bad API key"),
            (413, "body too large"), (422, "a field that does not validate (named)"),
            (429, "rate limited or queue full (Retry-After)"), (503, "not ready"))}

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/health", tags=["health"], responses={503: {"description": "not ready yet"}})
    async def health() -> JSONResponse:
        """Readiness: 200 once the model is loaded and warmed, 503 before."""
        if not served.ready:
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "model": served.name})

    @app.get("/v1/models", tags=["openai"])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served.name, created=served.created)])

    @app.post("/generate", tags=["generate"], responses=errors, response_model=GenerateResponse)
    async def generate(body: GenerateRequest, http: Request) -> Any:
        """Continue ``prompt`` (a user turn on a chat model); streamed with ``stream``."""
        loaded, _ = served.running()
        job = _Job(served, http, _encode(loaded, body.prompt, "prompt"), body, 1, "prompt",
                   body.max_tokens, False)
        if not body.stream:
            text = (await job.texts_whole())[0]
            return GenerateResponse(generated_text=text, prompt_tokens=len(job.ids),
                                    completion_tokens=job.texts[0].completion_tokens,
                                    finish_reason=job.texts[0].finish_reason)  # type: ignore[arg-type]

        async def events() -> AsyncIterator[dict[str, Any]]:
            async for _, piece in job.pieces():
                yield {"text": piece}
            yield {"text": "", "finish_reason": job.texts[0].finish_reason,
                   "prompt_tokens": len(job.ids),
                   "completion_tokens": job.texts[0].completion_tokens}
        return EventStream(_sse(events()))

    @app.post("/v1/completions", tags=["openai"], responses=errors)
    async def completions(body: CompletionRequest, http: Request) -> Any:
        """OpenAI's text completions."""
        loaded, _ = served.running()
        if body.logprobs:
            raise APIError(400, "logprobs > 0 (alternatives) is not supported: use 0 for the "
                           "drawn tokens' log-probabilities", "logprobs")
        job = _Job(served, http, _encode(loaded, body.prompt, "prompt"), body, body.n, "prompt",
                   body.max_tokens, body.logprobs is not None)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": served.name}

        def logprobs(i: int) -> dict[str, Any] | None:
            return _logprobs_completion(job.texts[i]) if body.logprobs is not None else None

        if not body.stream:
            texts = await job.texts_whole()
            return {**head, "choices": [
                {"text": text, "index": i, "logprobs": logprobs(i),
                 "finish_reason": job.texts[i].finish_reason} for i, text in enumerate(texts)],
                "usage": job.usage()}
        usage = bool(body.stream_options and body.stream_options.include_usage)
        extra = {"usage": None} if usage else {}

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            async for i, piece in job.pieces():
                yield {**head, "choices": [{"text": piece, "index": i, "logprobs": None,
                                            "finish_reason": None}], **extra}
            for i, text in enumerate(job.texts):
                yield {**head, "choices": [{"text": "", "index": i, "logprobs": logprobs(i),
                                            "finish_reason": text.finish_reason}], **extra}
            if usage:
                yield {**head, "choices": [], "usage": job.usage()}
        return EventStream(_sse(chunks()))

    @app.post("/v1/chat/completions", tags=["openai"], responses=errors)
    async def chat_completions(body: ChatRequest, http: Request) -> Any:
        """OpenAI's chat completions (a model fine-tuned with the chat template)."""
        loaded, _ = served.running()
        if not isinstance(loaded.tokenizer, ChatTokenizer):
            raise APIError(400, f"the model {served.name!r} has no chat template (its tokenizer "
                           f"has no chat tokens): use /v1/completions", "messages",
                           code="no_chat_template")
        if body.top_logprobs:
            raise APIError(400, "top_logprobs > 0 (alternatives) is not supported",
                           "top_logprobs")
        try:
            text = render([m.model_dump() for m in body.messages], add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens
        job = _Job(served, http, _encode_raw(loaded, text, "messages"), body, body.n,
                   "messages", max_tokens, body.logprobs)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": served.name, "system_fingerprint": None}

        def logprobs(i: int) -> dict[str, Any] | None:
            return _logprobs_chat(job.texts[i]) if body.logprobs else None

        if not body.stream:
            texts = await job.texts_whole()
            return {**head, "object": "chat.completion", "choices": [
                {"index": i, "message": {"role": "assistant", "content": t},
                 "logprobs": logprobs(i), "finish_reason": job.texts[i].finish_reason}
                for i, t in enumerate(texts)], "usage": job.usage()}
        usage = bool(body.stream_options and body.stream_options.include_usage)
        head = {**head, "object": "chat.completion.chunk", **({"usage": None} if usage else {})}

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for i in range(job.n):
                yield {**head, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "logprobs": None, "finish_reason": None}]}
            async for i, piece in job.pieces():
                yield {**head, "choices": [{"index": i, "delta": {"content": piece},
                                            "logprobs": None, "finish_reason": None}]}
            for i, t in enumerate(job.texts):
                yield {**head, "choices": [{"index": i, "delta": {}, "logprobs": logprobs(i),
                                            "finish_reason": t.finish_reason}]}
            if usage:
                yield {**head, "choices": [], "usage": job.usage()}
        return EventStream(_sse(chunks()))


def _encode(loaded: Loaded, prompt: str, field: str) -> list[int]:
    """A plain prompt's ids (a user turn on a chat model, as the inference path does)."""
    try:
        return prompt_ids(loaded.tokenizer, prompt, 1 << 62)  # no cut: the app checks length
    except ValueError as e:
        raise APIError(400, f"{field}: {e}", field) from None


def _encode_raw(loaded: Loaded, text: str, field: str) -> list[int]:
    try:
        return loaded.tokenizer.encode(text)
    except ValueError as e:
        raise APIError(400, f"{field}: {e}", field) from None


def _deferred() -> FastAPI:
    """An app that builds the real one from the environment when it starts, and hands it every
    request (so ``uvicorn reference.server.app:app`` imports without settings)."""
    inner: list[FastAPI] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        real = create_app(ServerSettings())  # a bad setting fails start-up, naming it
        inner.append(real)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(real.router.lifespan_context(real))
            yield

    shell = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    async def forward(scope: Scope, receive: Receive, send: Send) -> None:
        if not inner:
            response = JSONResponse(error_json("the server is starting", "server_error",
                                               code="not_ready"), status_code=503)
            await response(scope, receive, send)
            return
        await inner[0](scope, receive, send)

    shell.mount("/", forward)
    return shell


app = create_app()
