"""Abuse over real HTTP: auth on every route in the OpenAPI schema, malformed JSON, huge bodies,
invalid UTF-8, negative or absurd parameters, rate limits; each refused with a 4xx that is an
OpenAI-shaped error naming the field, never a 5xx, and the server still serves afterwards.

A real uvicorn on 127.0.0.1 serves a tiny chat model (``conftest.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import AUTH, KEY, Server, serve

PUBLIC = {"/health", "/livez"}
SMALL = {"max_tokens": 4, "seed": 1}


@pytest.fixture(scope="module")
def server(chat_run: Path) -> Iterator[str]:
    with serve(chat_run, requests_per_minute=10**6, tokens_per_minute=10**9,
               max_request_bytes=100_000, max_tokens_limit=32) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def refused(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text)
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    return dict(error)


def still_serving(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    ok = client.post("/v1/completions", headers=AUTH, json={"prompt": "ab", **SMALL})
    assert ok.status_code == 200, ok.text


def test_every_route_in_the_schema_needs_a_key(client: httpx.Client) -> None:
    paths = client.get("/openapi.json", headers=AUTH).json()["paths"]
    assert {"/generate", "/v1/completions", "/v1/chat/completions", "/v1/models",
            "/metrics"} <= set(paths)
    checked = 0
    for path, methods in paths.items():
        for method in methods:
            for headers in ({}, {"Authorization": "Bearer wrong"},
                            {"Authorization": AUTH["Authorization"].replace("Bearer", "Basic")}):
                response = client.request(method.upper(), path, headers=headers, json={})
                if path in PUBLIC:
                    assert response.status_code in (200, 503)
                else:
                    assert refused(response, 401)["code"] == "invalid_api_key"
                    checked += 1
    for path in ("/openapi.json", "/docs", "/redoc", "/no-such-route", "/v1/embeddings"):
        assert client.get(path).status_code == 401  # deny by default, even what is not there
    assert checked >= 3 * 5


@pytest.mark.parametrize("body", [
    b'{"prompt": ', b"not json", b"", b"[]", b'"a string"', b"null", b'{"prompt": "a",}',
    b'{"prompt": NaN, "max_tokens": 4}', b"\x00\x01\x02",
])
@pytest.mark.parametrize("route", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_malformed_json_is_a_4xx(client: httpx.Client, route: str, body: bytes) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    refused(client.post(route, headers=headers, content=body), 400, 422)


@pytest.mark.parametrize("body", [
    b'{"prompt": "\xff\xfe", "max_tokens": 4}', b'{"prompt": "\xc3", "max_tokens": 4}',
    b'{"\xed\xa0\x80": 1}', b'{"prompt": "\\ud800", "max_tokens": 4}',
])
def test_invalid_utf8_is_a_4xx_or_served(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v1/completions", headers={**AUTH, "Content-Type":
                                                       "application/json"}, content=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        refused(response, 400, 422)
    still_serving(client)


def test_huge_bodies_are_413_with_or_without_a_length(client: httpx.Client) -> None:
    big = json.dumps({"prompt": "a" * 200_000, "max_tokens": 4}).encode()
    error = refused(client.post("/v1/completions", headers={**AUTH, "Content-Type":
                                                            "application/json"}, content=big),
                    413)
    assert error["param"] == "max_request_bytes"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    chunked = client.post("/v1/completions", headers={**AUTH, "Content-Type":
                                                      "application/json"}, content=chunks())
    assert refused(chunked, 413)["param"] == "max_request_bytes"
    still_serving(client)


@pytest.mark.parametrize(("field", "value"), [
    ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 10**12), ("max_tokens", 33),
    ("max_tokens", "many"), ("temperature", -1), ("temperature", 1e308), ("temperature", "hot"),
    ("top_p", -0.5), ("top_p", 2), ("top_k", -5), ("n", 0), ("n", 10**6), ("seed", "x"),
    ("stop", ["s"] * 100), ("stop", 5), ("prompt", "a" * 5_000), ("prompt", 12),
    ("logprobs", 99), ("stream", "maybe"),
])
def test_absurd_parameters_are_refused_naming_the_field(client: httpx.Client, field: str,
                                                        value: Any) -> None:
    body = {"prompt": "ab", "max_tokens": 4, field: value}
    error = refused(client.post("/v1/completions", headers=AUTH, json=body), 400, 422)
    assert field in (error["param"] or "") or field in error["message"], error


@pytest.mark.parametrize("sampling", [
    {"temperature": 1e-310}, {"temperature": 5e-324, "top_p": 5e-324}, {"top_p": 1e-300},
    {"temperature": 1e-30}, {"top_k": 1, "temperature": 1e-45}, {"seed": -1},
    {"seed": 2**63 - 1}, {"temperature": 2.0, "top_p": 1e-12},
])
def test_extreme_but_valid_sampling_never_breaks_the_engine(chat_run: Path,
                                                            sampling: dict[str, Any]) -> None:
    """Each on a server of its own: one that breaks the engine must not hide the others."""
    with serve(chat_run) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        for stream in (False, True):
            response = client.post("/v1/completions", headers=AUTH, json={
                "prompt": "ab", "max_tokens": 4, "stream": stream, **sampling})
            assert response.status_code < 500, response.text
            assert '"error"' not in response.text or response.status_code >= 400, response.text
            if response.status_code >= 400:
                refused(response, 400, 422)
        still_serving(client)


def test_request_and_token_rate_limits_over_http(chat_run: Path) -> None:
    with serve(chat_run, requests_per_minute=3, tokens_per_minute=10**9) as running, \
            httpx.Client(base_url=running.url, timeout=60) as c:
        codes = [c.get("/v1/models", headers=AUTH).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = c.get("/v1/models", headers=AUTH)
        assert refused(limited, 429)["code"] == "rate_limit_exceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert c.get("/health").status_code == 200  # health checks are never limited
    with serve(chat_run, tokens_per_minute=40) as running, \
            httpx.Client(base_url=running.url, timeout=60) as c:
        first = c.post("/v1/completions", headers=AUTH, json={"prompt": "ab", **SMALL})
        assert first.status_code == 200, first.text
        over = c.post("/v1/completions", headers=AUTH,
                      json={"prompt": "ab", "max_tokens": 30, "seed": 1})
        refused(over, 429)
        assert int(over.headers["retry-after"]) >= 1


def test_the_logs_hold_no_key_and_no_prompt_and_parse_as_json(server: Server,
                                                               client: httpx.Client) -> None:
    secret = "the launch code is 0000"
    client.post("/v1/completions", headers={**AUTH, "X-Request-ID": "abuse-log-1"},
                json={"prompt": secret, "max_tokens": 2})
    client.post("/v1/completions", headers={"Authorization": "Bearer sk-guessed-key-xyz"},
                json={"prompt": secret})
    text = server.log.read_text(encoding="utf-8")
    for leaked in (KEY, "sk-guessed-key-xyz", secret):
        assert leaked not in text
    mine = [line for line in server.log_lines() if line.get("request_id") == "abuse-log-1"]
    assert {line["event"] for line in mine} >= {"request"}
