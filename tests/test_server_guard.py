"""reference.server.guard and reference.server.metrics, against small FastAPI apps of our own.

Each test builds an app with a few routes (a JSON one, a path-parameter one, a streaming one, a
public health check), wraps it with :func:`install_guards` and drives it through httpx (the
TestClient) or, where a test needs to see messages one by one (a stream not buffered, a body
sent in chunks), through the raw ASGI interface. No model, no engine: the guards only parse,
authorise, bound and count.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from reference.server import auth, guard
from reference.server.auth import key_id
from reference.server.guard import (
    PUBLIC_PATHS,
    RateLimited,
    TokenBudget,
    install_guards,
    is_public,
)
from reference.server.metrics import ServerMetrics
from reference.server.settings import ServerSettings

pytestmark = pytest.mark.server

KEY = "sk-test-4f9a1c0e7b"
OTHER = "sk-other-d2e8b6a3"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT = 30.0  # seconds: only a guard against a hang, never a timing assertion


def make_app(**overrides: Any) -> tuple[FastAPI, ServerMetrics]:
    """A small app with the guards installed (keys KEY and OTHER unless overridden)."""
    settings = ServerSettings(**{"api_keys": [KEY, OTHER], **overrides})
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"n": len(body), "request_id": request.state.request_id,
                "key_id": request.state.key_id}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk {i}\n".encode()
        return StreamingResponse(chunks(), media_type="text/plain")

    metrics = ServerMetrics()
    install_guards(app, settings, metrics)
    return app, metrics


@pytest.fixture
def client() -> Iterator[TestClient]:
    app, _ = make_app()
    with TestClient(app) as c:
        yield c


def assert_openai_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    return dict(error)


# ---------------------------------------------------------------- raw ASGI helpers

async def asgi_call(app: FastAPI, method: str, path: str, headers: dict[str, str],
                    chunks: list[bytes], on_message: Any = None,
                    root_path: str = "") -> list[dict[str, Any]]:
    """Send one request as ``chunks`` (``more_body`` between them); the messages sent back."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": root_path, "query_string": b"", "server": ("test", 80),
             "client": ("127.0.0.1", 1234),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks or [b""])]
    done = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if on_message is not None:
            on_message(message)

    async def lifespan_free() -> None:
        await app(scope, receive, send)
        done.set()

    await asyncio.wait_for(lifespan_free(), WAIT)
    return sent


def status_of(messages: list[dict[str, Any]]) -> int:
    return int(next(m["status"] for m in messages if m["type"] == "http.response.start"))


def body_of(messages: list[dict[str, Any]]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


# ---------------------------------------------------------------- auth: deny by default

def test_every_non_public_route_needs_a_key(client: TestClient) -> None:
    routes = [r.path for r in client.app.routes]  # type: ignore[attr-defined]
    protected = [p for p in routes if not is_public(p)]
    assert {"/echo", "/metrics", "/openapi.json", "/docs"} <= set(protected)
    for path in protected:
        concrete = path.replace("{item_id}", "1")
        response = client.request("POST" if path == "/echo" else "GET", concrete)
        assert_openai_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").status_code == 200  # public
    assert client.get("/static/anything.js").status_code == 404  # public prefix: no 401


def test_a_route_added_later_is_protected_unless_public() -> None:
    app, _ = make_app()

    @app.get("/added-later")
    async def later() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as c:
        assert_openai_error(c.get("/added-later"), 401, "invalid_api_key")
        assert c.get("/added-later", headers=AUTH).json() == {"ok": True}
    assert frozenset({"/health", "/livez", "/"}) == PUBLIC_PATHS


def test_public_paths_stay_public_behind_a_root_path() -> None:
    app, _ = make_app()
    health = asyncio.run(asgi_call(app, "GET", "/api/health", {}, [], root_path="/api"))
    assert status_of(health) == 200
    echo = asyncio.run(asgi_call(app, "POST", "/api/echo", {}, [], root_path="/api"))
    assert status_of(echo) == 401


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", f"Basic {KEY}", f"Token {KEY}", f"Bearer {KEY}x",
    f"Bearer {KEY[:-1]}", "Bearer wrong", f"{KEY}", f"Bearer {KEY.upper()}",
    "Bearer \u00e9t\u00e9"])
def test_missing_wrong_or_malformed_authorization_is_401(client: TestClient,
                                                         header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header.encode()}
    assert_openai_error(client.post("/echo", headers=headers), 401, "invalid_api_key")


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER  {KEY} ",
                                    f"Bearer {OTHER}"])
def test_a_valid_key_passes_and_its_id_reaches_the_route(client: TestClient,
                                                          header: str) -> None:
    response = client.post("/echo", headers={"Authorization": header}, content=b"abc")
    assert response.status_code == 200
    used = KEY if KEY in header else OTHER
    assert response.json()["key_id"] == key_id(used) != used


def test_keys_are_compared_with_hmac_compare_digest_against_every_key(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    for header in (f"Bearer {KEY}", "Bearer nope"):  # a match and a miss: no early exit
        calls.clear()
        client.post("/echo", headers={"Authorization": header})
        assert sorted(b for _, b in calls) == sorted([KEY.encode(), OTHER.encode()])
    assert guard.check_api_key is auth.check_api_key  # the guard compares no key itself


def test_keys_from_a_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# the ops team\nsk-from-file-1\n\n  sk-from-file-2  \n")
    app, _ = make_app(api_keys=[], api_keys_file=keys_file)
    with TestClient(app) as c:
        for key in ("sk-from-file-1", "sk-from-file-2"):
            ok = c.post("/echo", headers={"Authorization": f"Bearer {key}"})
            assert ok.json()["key_id"] == key_id(key)
        assert c.post("/echo", headers={"Authorization": "Bearer # the ops team"}
                      ).status_code == 401
        assert c.post("/echo", headers=AUTH).status_code == 401


def test_allow_anonymous_lets_every_request_in_as_anonymous() -> None:
    app, _ = make_app(api_keys=[], allow_anonymous=True)
    with TestClient(app) as c:
        assert c.post("/echo").json()["key_id"] == "anonymous"
        assert c.get("/metrics").status_code == 200


# ---------------------------------------------------------------- request ids and logs

def log_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "reference.server"]


def test_request_id_is_taken_when_sane_else_made(client: TestClient) -> None:
    given = client.post("/echo", headers={**AUTH, "X-Request-ID": "trace-42.a:b_c"})
    assert given.headers["x-request-id"] == "trace-42.a:b_c" == given.json()["request_id"]
    for insane in ("has space", "x" * 129, "semi;colon", "ü"):
        made = client.post("/echo", headers={**AUTH, "X-Request-ID": insane.encode()})
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
        assert made.json()["request_id"] == made.headers["x-request-id"]
    a, b = client.post("/echo", headers=AUTH), client.post("/echo", headers=AUTH)
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    assert client.post("/echo").headers["x-request-id"]  # refusals carry one too


def test_access_log_is_one_json_object_per_request(client: TestClient,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reference.server")
    ok = client.get("/items/7", headers={**AUTH, "X-Request-ID": "req-1"})
    client.get("/items/8")
    lines = log_lines(caplog)
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == "req-1" == ok.headers["x-request-id"]
    assert (first["event"], first["method"], first["route"], first["status"]) == (
        "request", "GET", "/items/{item_id}", 200)
    assert first["key_id"] == key_id(KEY) and first["latency_ms"] >= 0
    assert (second["status"], second["key_id"]) == (401, None)


def test_keys_and_bodies_never_reach_the_logs(client: TestClient,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_prompt = "my bank PIN is 9321"
    client.post("/echo", headers=AUTH, json={"prompt": secret_prompt})
    client.post("/echo", headers={"Authorization": "Bearer sk-a-wrong-key-123"})
    client.get("/metrics", headers={"Authorization": f"Bearer {OTHER}"})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in (KEY, OTHER, "sk-a-wrong-key-123", secret_prompt):
        assert secret not in text
    assert key_id(KEY) in text


def test_log_lines_go_to_stderr_one_bare_json_object_each(
        capsys: pytest.CaptureFixture[str]) -> None:
    server_logger = logging.getLogger("reference.server")
    try:
        guard.configure_logging("info")
        guard.configure_logging("info")  # once per process: no second handler
        assert [h.get_name() for h in server_logger.handlers].count(guard._HANDLER) == 1
        guard.log_event("probe", n=1, text="é")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (line["event"], line["n"], line["text"]) == ("probe", 1, "é")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00", line["ts"])
        guard.configure_logging("warning")
        guard.log_event("quiet")
        assert "quiet" not in capsys.readouterr().err
    finally:
        server_logger.setLevel(logging.INFO)


# ---------------------------------------------------------------- body size

def test_body_over_the_limit_is_413_naming_the_setting() -> None:
    app, _ = make_app(max_request_bytes=100)
    with TestClient(app) as c:
        assert c.post("/echo", headers=AUTH, content=b"x" * 100).json()["n"] == 100
        error = assert_openai_error(c.post("/echo", headers=AUTH, content=b"x" * 101),
                                    413, "request_too_large")
        assert error["param"] == "max_request_bytes" and "100" in error["message"]
        chunked = c.post("/echo", headers=AUTH, content=iter([b"x" * 60, b"y" * 60]))
        assert_openai_error(chunked, 413, "request_too_large")
        # auth first: a client without a key learns nothing about the limit
        assert c.post("/echo", content=b"x" * 101).status_code == 401


@pytest.mark.parametrize(("length", "chunks", "status"), [
    (None, [b"a" * 50, b"b" * 50], 200),  # chunked, within the limit
    (None, [b"a" * 50, b"b" * 50, b"c"], 413),  # chunked, one byte over
    ("10", [b"a" * 80, b"b" * 80], 413),  # a Content-Length that lies
    ("100000", [b"a"], 413),  # refused on the header alone
])
def test_body_limit_counts_bytes_as_they_arrive(length: str | None, chunks: list[bytes],
                                                status: int) -> None:
    app, _ = make_app(max_request_bytes=100)
    headers = {**AUTH, **({"Content-Length": length} if length else
                          {"Transfer-Encoding": "chunked"})}
    sent = asyncio.run(asgi_call(app, "POST", "/echo", headers, chunks))
    assert status_of(sent) == status
    if status == 200:
        assert json.loads(body_of(sent))["n"] == 100


def test_a_stream_passes_through_unbuffered() -> None:
    """The route holds its second chunk until the test has seen the first one go out: a
    middleware that buffered the response would never let the first one out (a hang)."""
    app, _ = make_app()
    seen_first = asyncio.Event()

    @app.get("/held")
    async def held() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            await asyncio.wait_for(seen_first.wait(), WAIT)
            yield b"second"
        return StreamingResponse(chunks(), media_type="text/plain")

    def on_message(message: dict[str, Any]) -> None:
        if message.get("body") == b"first":
            seen_first.set()

    sent = asyncio.run(asgi_call(app, "GET", "/held", AUTH, [], on_message))
    assert status_of(sent) == 200 and body_of(sent) == b"firstsecond"
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert b"x-request-id" in dict(start["headers"])


# ---------------------------------------------------------------- rate limits

def test_request_rate_limit_is_429_with_retry_after_per_key_and_recovers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "WINDOW_SECONDS", 1)  # "per minute" becomes per second
    app, _ = make_app(requests_per_minute=3)
    with TestClient(app) as c:
        assert [c.get("/items/1", headers=AUTH).status_code for _ in range(3)] == [200] * 3
        limited = c.get("/items/1", headers=AUTH)
        assert_openai_error(limited, 429, "rate_limit_exceeded")
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert int(limited.headers["retry-after"]) == 1
        other = {"Authorization": f"Bearer {OTHER}"}
        assert c.get("/items/1", headers=other).status_code == 200  # per key
        assert all(c.get("/health").status_code == 200 for _ in range(5))  # public: no limit
        asyncio.run(asyncio.sleep(1.05))  # the window moves on
        assert c.get("/items/1", headers=AUTH).status_code == 200


def test_retry_after_is_the_time_until_the_window_frees() -> None:
    app, _ = make_app(requests_per_minute=2)
    with TestClient(app) as c:
        c.get("/items/1", headers=AUTH)
        c.get("/items/1", headers=AUTH)
        limited = c.get("/items/1", headers=AUTH)
        assert limited.status_code == 429
        assert 58 <= int(limited.headers["retry-after"]) <= 60


def test_token_budget_charges_per_key_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = TokenBudget(10)
    budget.charge("a", 8)
    budget.charge("a", 0)  # nothing to charge
    with pytest.raises(RateLimited) as refused:
        budget.charge("a", 3)
    assert 58 <= refused.value.retry_after <= 60
    budget.charge("a", 2)  # a refused charge took nothing: 8 + 2 fits
    budget.charge("b", 10)  # per key
    with pytest.raises(RateLimited, match="more than the 10"):
        TokenBudget(10).charge("c", 11)  # could never fit: said so, not retried forever
    monkeypatch.setattr(guard, "WINDOW_SECONDS", 1)
    short = TokenBudget(5)
    short.charge("a", 5)
    with pytest.raises(RateLimited) as again:
        short.charge("a", 1)
    assert again.value.retry_after == 1
    asyncio.run(asyncio.sleep(1.05))
    short.charge("a", 5)


def test_the_app_gets_a_token_budget_from_settings() -> None:
    app, _ = make_app(tokens_per_minute=7)
    budget = app.state.token_budget
    assert isinstance(budget, TokenBudget)
    budget.charge(key_id(KEY), 7)
    with pytest.raises(RateLimited):
        budget.charge(key_id(KEY), 1)


# ---------------------------------------------------------------- CORS

PREFLIGHT = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


def test_cors_is_off_by_default(client: TestClient) -> None:
    preflight = client.options("/echo", headers=PREFLIGHT)
    assert preflight.status_code == 401
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.post("/echo", headers={**AUTH, "Origin": "http://ui.example"})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins() -> None:
    app, _ = make_app(cors_origins=["http://ui.example"])
    with TestClient(app) as c:
        preflight = c.options("/echo", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://ui.example"
        simple = c.post("/echo", headers={**AUTH, "Origin": "http://ui.example"})
        assert simple.headers["access-control-allow-origin"] == "http://ui.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        assert c.post("/echo", headers={"Origin": "http://ui.example"}).status_code == 401
        evil = c.options("/echo", headers={**PREFLIGHT, "Origin": "http://evil.example"})
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers


# ---------------------------------------------------------------- metrics

def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    for i in range(3):
        client.get(f"/items/{i}", headers=AUTH)
    client.get("/items/1")  # 401
    client.get("/no/such/path/123", headers=AUTH)  # 404
    client.get("/stream", headers=AUTH)
    assert_openai_error(client.get("/metrics"), 401, "invalid_api_key")
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    counts = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
              for s in got["llmfs_requests_total"]}
    assert counts[("/items/{item_id}", "GET", "200")] == 3
    assert counts[("/items/{item_id}", "GET", "401")] == 1
    assert counts[("unmatched", "GET", "404")] == 1
    assert counts[("/stream", "GET", "200")] == 1
    assert counts[("/metrics", "GET", "401")] == 1
    assert not any("/items/1" in route for route, _, _ in counts)  # no raw paths
    durations = {s.labels["route"]: s.value for s in got["llmfs_request_duration_seconds_count"]}
    assert durations["/items/{item_id}"] == 4


def test_metrics_record_generation_figures() -> None:
    metrics = ServerMetrics()
    ServerMetrics()  # a second registry in the same process does not clash
    metrics.first_token(0.05)
    for seconds in (0.01, 0.02, 0.03):
        metrics.inter_token(seconds)
    metrics.end_to_end(2.0)
    metrics.tokens(prompt=11, generated=4)
    metrics.tokens(prompt=1, generated=2)
    metrics.queue(waiting=3, active=5)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    got = {name: [s.value for s in ss] for name, ss in samples(body.decode()).items()}
    assert got["llmfs_time_to_first_token_seconds_count"] == [1]
    assert got["llmfs_time_to_first_token_seconds_sum"] == [0.05]
    assert got["llmfs_inter_token_latency_seconds_count"] == [3]
    assert got["llmfs_e2e_request_latency_seconds_count"] == [1]
    assert got["llmfs_prompt_tokens_total"] == [12]
    assert got["llmfs_generation_tokens_total"] == [6]
    assert (got["llmfs_num_requests_waiting"], got["llmfs_num_requests_running"]) == ([3], [5])
    buckets = [s for s in samples(body.decode())["llmfs_e2e_request_latency_seconds_bucket"]]
    bounds = [float(s.labels["le"]) for s in buckets]
    assert bounds[0] <= 0.001 and 300 <= bounds[-2] < bounds[-1] == float("inf")  # ms to min
