"""The official ``openai`` client against the server on a real uvicorn (127.0.0.1, a free port):
completions and chat, streamed and not, ``include_usage``, errors as the client's exception
classes; and a client that closes its socket mid-stream cancels its generation.

The oracle is the client itself: it parses our responses and chunks into its own typed models
(it raises on a shape it does not know), and maps our status codes to its exception classes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from reference.batching import Stream
from reference.server.app import create_app
from tests.test_server_api import KEY, running, server_settings, tiny_run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    run = tiny_run(tmp_path_factory.mktemp("openai") / "tiny-chat", block_size=64)
    app = create_app(server_settings(run))
    with running(app) as url:
        yield url, app


@pytest.fixture()
def client(server: tuple[str, FastAPI]) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=30)


def test_the_client_lists_the_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny-chat"]


def test_completions_streamed_and_not_give_the_same_text(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny-chat", prompt="bad", max_tokens=12, seed=4)
    assert whole.object == "text_completion" and whole.usage is not None
    assert whole.usage.completion_tokens <= 12
    chunks = list(client.completions.create(model="tiny-chat", prompt="bad", max_tokens=12,
                                            seed=4, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_chat_streamed_and_not_give_the_same_message(client: openai.OpenAI) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": "cab"}]
    whole = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=10,
                                           temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model="tiny-chat", messages=messages,
                                            max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens  # type: ignore[union-attr]


def test_errors_surface_as_the_clients_exception_classes(server: tuple[str, FastAPI]) -> None:
    url = server[0] + "/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        good.completions.create(model="tiny-chat", prompt="a", max_tokens=5000)
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        good.chat.completions.create(model="tiny-chat", temperature=9,
                                     messages=[{"role": "user", "content": "a"}])


def test_a_client_gone_mid_stream_cancels_its_generation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no end-of-text token, and 1,000 steps of a wider model: the stream is surely mid-way
    run = tiny_run(tmp_path / "slow", chat=False, block_size=1024, n_layer=2, n_embd=64)
    app = create_app(server_settings(run, max_tokens_limit=1000))
    streams: list[Stream] = []
    with running(app) as url:
        engine = app.state.served.engine
        submit = engine.submit

        def spy(request: object) -> Stream:
            streams.append(submit(request))
            return streams[-1]

        monkeypatch.setattr(engine, "submit", spy)
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps({"prompt": "ab", "max_tokens": 1000, "stream": True}).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data: ") < 3:  # a few chunks: the generation is running
            received += sock.recv(65536)
        assert engine.active == 1
        sock.close()
        at_close = streams[0]._sent  # the engine's side: tokens handed over so far
        deadline = time.monotonic() + 10
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.active == 0
        assert streams[0].cancelled
        drawn = streams[0]._sent  # the engine's side: tokens it handed over before leaving
        # one more step here when idle (measured: 1); the bound leaves room for a loaded
        # machine, where the event loop may notice the closed socket a few steps late
        assert drawn - at_close < 100


def test_the_client_streams_from_python_m_reference_serve(tmp_path: Path) -> None:
    run = tiny_run(tmp_path / "served")
    with socket.socket() as s:  # a free port for the subprocess
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLMFS_SERVE_API_KEYS": json.dumps([KEY]), "LLMFS_SERVE_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "reference", "serve", str(run), "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                               max_retries=0, timeout=30)
        chunks = list(client.chat.completions.create(
            model="served", messages=[{"role": "user", "content": "abc"}], max_tokens=5,
            seed=1, stream=True))
        assert chunks[0].model == "served" and chunks[-1].choices[0].finish_reason
    finally:
        server.terminate()
        server.wait(30)
