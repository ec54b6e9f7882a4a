"""The server's guards: request ids, JSON access logs, API keys, rate limits, body size, CORS.

:func:`install_guards` wraps an app in pure ASGI middleware (never ``BaseHTTPMiddleware``, so a
streamed response passes through token by token, unbuffered), outermost first:

1. :class:`AccessLog`: a request id (``X-Request-ID`` taken if sane, else made; on the response;
   in ``scope["state"]["request_id"]``), one JSON log line per request on the logger
   ``reference.server`` (id, method, route, status, latency, key id; never a key, never a
   body; to stderr at ``settings.log_level``), and the request counted in
   :class:`ServerMetrics` by route *template*;
2. CORS (Starlette's ``CORSMiddleware``), only when ``settings.cors_origins`` is non-empty;
3. :class:`Guard`: deny by default. Every path but :data:`PUBLIC_PATHS` and ``/static/...``
   needs ``Authorization: Bearer <key>`` (checked in constant time by
   :func:`~reference.server.auth.check_api_key`), else 401; then the key's requests-per-minute
   limit (429 with ``Retry-After``); then the body, read up to ``max_request_bytes`` before the
   route sees it (413 past it, whether or not a ``Content-Length`` was sent).

A route added later is protected: nothing lists the protected routes, only the public ones.
Every refusal is OpenAI-shaped JSON, ``{"error": {"message", "type", "param", "code"}}``.

Rate limits use the ``limits`` library (moving window, in memory) rather than a hand-written
limiter: a moving window that is exact at its edges, costs per hit (tokens) and expiry of idle
keys are easy to get subtly wrong, and the library is maintained and tested for these; its
storage can later move to Redis for several replicas without touching this module.

>>> from fastapi import FastAPI
>>> from reference.server.settings import ServerSettings
>>> app = FastAPI()
>>> install_guards(app, ServerSettings(api_keys=["k"]), ServerMetrics())
>>> isinstance(app.state.token_budget, TokenBudget)
True
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import check_api_key, key_id
from .metrics import ServerMetrics
from .settings import ServerSettings

__all__ = ["PUBLIC_PATHS", "PUBLIC_PREFIX", "WINDOW_SECONDS", "AccessLog", "Guard", "RateLimited",
           "TokenBudget", "configure_logging", "error_body", "install_guards", "is_public",
           "log_event"]

PUBLIC_PATHS: frozenset[str] = frozenset({"/health", "/livez", "/"})
PUBLIC_PREFIX = "/static/"
WINDOW_SECONDS = 60  # the rate limits' moving window ("per minute"); tests shorten it
ANONYMOUS = "anonymous"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

logger = logging.getLogger("reference.server")
_HANDLER = "reference.server.json"


def is_public(path: str) -> bool:
    """Whether ``path`` is served without a key (health checks, the playground).

    >>> is_public("/health"), is_public("/static/app.js"), is_public("/metrics")
    (True, True, False)
    """
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)


def error_body(message: str, type: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error object.

    >>> error_body("too big", "invalid_request_error", "request_too_large", "max_request_bytes")
    {'error': {'message': 'too big', 'type': 'invalid_request_error', 'param': 'max_request_bytes', 'code': 'request_too_large'}}
    """  # noqa: E501
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def log_event(event: str, **fields: Any) -> None:
    """One JSON object on one line to the ``reference.server`` logger (at info level), with
    its time (UTC, ISO 8601) and ``event`` first.

    The caller decides what goes in: keys never, prompt text only if ``settings.log_prompts``.
    """
    if logger.isEnabledFor(logging.INFO):
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        logger.info(json.dumps({"ts": now, "event": event, **fields}, ensure_ascii=False,
                               default=str))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """To whatever ``sys.stderr`` is at each line (not the one it was when made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str) -> None:
    """Log the ``reference.server`` lines at ``level`` to stderr, each one bare (a JSON object
    per line); once per process, however many apps are made."""
    logger.setLevel(level.upper())
    if not any(h.get_name() == _HANDLER for h in logger.handlers):
        handler = _Stderr()
        handler.set_name(_HANDLER)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


# ---------------------------------------------------------------- rate limits

class RateLimited(Exception):
    """A key is over one of its limits; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Window:
    """``amount`` units per key over a moving window of ``WINDOW_SECONDS`` (the ``limits`` lib)."""

    def __init__(self, amount: int, what: str) -> None:
        self.item: RateLimitItem = RateLimitItemPerSecond(amount, WINDOW_SECONDS)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.what = what

    def hit(self, key: str, cost: int = 1) -> None:
        amount = self.item.amount
        if cost > amount:  # could never pass: say so instead of asking to retry forever
            raise RateLimited(f"this request needs {cost} {self.what}, more than the "
                              f"{amount} per {WINDOW_SECONDS} s this key is allowed",
                              retry_after=WINDOW_SECONDS)
        if not self.limiter.hit(self.item, key, cost=cost):
            reset = self.limiter.get_window_stats(self.item, key).reset_time
            retry = max(1, math.ceil(reset - time.time()))
            raise RateLimited(f"rate limit reached: {amount} {self.what} per {WINDOW_SECONDS} s; "
                              f"retry after {retry} s", retry_after=retry)


class TokenBudget:
    """Tokens per minute per key (prompt + generated), in a moving window.

    >>> budget = TokenBudget(10)
    >>> budget.charge("k", 8)
    >>> try:
    ...     budget.charge("k", 3)
    ... except RateLimited as e:
    ...     0 < e.retry_after <= 60
    True
    """

    def __init__(self, tokens_per_minute: int) -> None:
        self._window = _Window(tokens_per_minute, "tokens")

    def charge(self, key_id: str, tokens: int) -> None:
        """Take ``tokens`` from ``key_id``'s budget, or raise :class:`RateLimited` (then
        nothing is taken)."""
        if tokens > 0:
            self._window.hit(key_id, tokens)


# ---------------------------------------------------------------- middleware

async def _send_error(send: Send, status: int, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
    response = JSONResponse(body, status_code=status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
    return {"type": "http.disconnect"}


def _route_path(scope: Scope) -> str:
    """The path the app routes on: ``scope["path"]`` less any ``root_path`` (behind a proxy)."""
    root, path = scope.get("root_path", ""), scope["path"]
    return str(path[len(root):] or "/") if root and path.startswith(root) else str(path)


def _route_template(app: FastAPI, scope: Scope) -> str:
    """The template of the route ``scope`` goes to (``/items/{id}``), or ``"unmatched"``."""
    partial = None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "unmatched"))
        if match == Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "unmatched"))
    return partial or "unmatched"


class AccessLog:
    """Request id in and out, one JSON access-log line and the request metrics per request."""

    def __init__(self, app: ASGIApp, *, router: FastAPI, metrics: ServerMetrics) -> None:
        self.app, self.router, self.metrics = app, router, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        route = _route_template(self.router, scope)
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            self.metrics.request(route, scope["method"], status, seconds)
            log_event("request", request_id=request_id, method=scope["method"], route=route,
                      path=scope["path"], status=status, latency_ms=round(seconds * 1000, 3),
                      key_id=state.get("key_id"))


class Guard:
    """Deny by default: API key, then the key's request rate, then the body-size limit."""

    def __init__(self, app: ASGIApp, *, settings: ServerSettings) -> None:
        self.app = app
        self.keys = settings.keys()  # read once: a changed keys file needs a restart
        self.allow_anonymous = settings.allow_anonymous
        self.max_bytes = settings.max_request_bytes
        self.requests = _Window(settings.requests_per_minute, "requests")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(_route_path(scope)):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        key = check_api_key(authorization, self.keys)
        if key is None and not self.allow_anonymous:
            why = ("no API key: send 'Authorization: Bearer <key>'" if authorization is None
                   else "invalid API key")
            await _send_error(send, 401, error_body(why, "invalid_request_error",
                                                    "invalid_api_key"),
                              {"WWW-Authenticate": "Bearer"})
            return
        kid = ANONYMOUS if key is None else key_id(key)
        scope.setdefault("state", {})["key_id"] = kid
        try:
            self.requests.hit(kid)
        except RateLimited as e:
            await _send_error(send, 429, error_body(str(e), "rate_limit_error",
                                                    "rate_limit_exceeded"),
                              {"Retry-After": str(e.retry_after)})
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") and b"content-length" \
                not in headers and b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body to bound
            return
        body = await self._read_body(headers, receive)
        if body is None:
            await _send_error(send, 413, error_body(
                f"request body larger than max_request_bytes={self.max_bytes}",
                "invalid_request_error", "request_too_large", "max_request_bytes"))
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The whole body, or None past ``max_request_bytes`` (with or without a length)."""
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return None  # refused before a byte of it is read
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # chunked, or a Content-Length that lied
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then the real one (to see a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# ---------------------------------------------------------------- installing them

def install_guards(app: FastAPI, settings: ServerSettings, metrics: ServerMetrics) -> None:
    """Wrap ``app`` in the guards above, add ``GET /metrics`` (protected) and put a
    :class:`TokenBudget` in ``app.state.token_budget`` for the routes to charge."""

    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"], response_class=Response,
                      summary="Prometheus metrics", tags=["monitoring"])
    configure_logging(settings.log_level)
    app.state.token_budget = TokenBudget(settings.tokens_per_minute)
    app.state.metrics = metrics
    # add_middleware puts each one outside the ones before it
    app.add_middleware(Guard, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(AccessLog, router=app, metrics=metrics)
