"""The playground page (``reference/server/static/``) in a real headless Chromium.

A real uvicorn on 127.0.0.1 serves the page; selenium drives Debian's ``chromium`` through
``chromedriver``: type a message, watch the streamed reply appear, stop a stream, see the
server's error for a bad key. Two servers:

- the project's app (``reference.server.app.create_app``) over a small chat model trained here
  (a few steps of the chat format, char-level): the reply the page renders from the SSE stream
  equals the reply the same request gets without streaming (the oracle: the server's own
  non-streaming route, read with httpx), and a bad key shows the server's OpenAI-shaped message;
- a stand-in app of a few lines that serves the same static files and scripts the stream
  exactly (a character split across two writes, a comment line, a pause until the page shows
  the first piece, an error event mid-stream, an endless stream for the stop button), so the
  page's SSE parser, its errors and its abort are pinned down byte for byte.

Without the browser the tests skip, except under CI (``CI`` or ``LLMFS_REQUIRE_DATA`` set),
where they fail with one line saying what to install (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import SecretStr

from reference.chat import ChatTokenizer
from reference.checkpoint import save_checkpoint
from reference.model import GPT, GPTConfig
from reference.server.app import create_app
from reference.server.settings import ServerSettings
from reference.tokenizers import META_NAME, CharTokenizer

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "reference" / "server" / "static"
REQUIRED = bool(os.environ.get("CI") or os.environ.get("LLMFS_REQUIRE_DATA"))
INSTALL = ("apt-get install -y chromium chromium-driver (as root) and "
           ".venv/bin/pip install selenium")
KEY = "playground-test-key"
WAIT = 60.0  # seconds a browser wait may take on a loaded 2-core machine (a bound, not a timing)


# --- the browser ---------------------------------------------------------------------------

def _browser_missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "the Python package selenium is not installed"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return "no chromium on PATH"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if REQUIRED:
            pytest.fail(f"headless browser test: {missing}; install it: {INSTALL}", pytrace=False)
        pytest.skip(f"{missing} (install: {INSTALL})")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=1200,900"):
        options.add_argument(arg)  # --no-sandbox: CI runs as root
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given: Selenium Manager never goes to the network for one.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def open_page(driver: Any, base: str, key: str) -> None:
    """Load the page fresh (sessionStorage cleared) and fill in the settings."""
    driver.get(base + "/")
    js(driver, "sessionStorage.clear()")
    driver.get(base + "/")
    wait_for(lambda: js(driver, "return document.readyState") == "complete", "the page to load")
    field = driver.find_element("id", "api-key")
    field.send_keys(key)
    js(driver, "const t = document.getElementById('temperature'); t.value = '0';"
               "t.dispatchEvent(new Event('input'));"
               "document.getElementById('max-tokens').value = arguments[0];", 12)


def send(driver: Any, text: str) -> None:
    driver.find_element("id", "message").send_keys(text)
    driver.find_element("id", "send").click()


def replies(driver: Any) -> list[str]:
    return list(js(driver, "return [...document.querySelectorAll('.message.assistant .content')]"
                           ".map(e => e.textContent)"))


def streaming(driver: Any) -> bool:
    return bool(js(driver, "return !!document.querySelector('.message.assistant.streaming')"))


def error_text(driver: Any) -> str:
    return str(js(driver, "const e = document.getElementById('error');"
                          "return e.hidden ? '' : e.textContent"))


# --- a real uvicorn on 127.0.0.1 -------------------------------------------------------------

class Served:
    """``app`` under uvicorn in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), "uvicorn to start",
                 timeout=300)
        assert self.server.started, "uvicorn did not start (see the log above)"
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# --- the stand-in server: the page's static files and a scripted stream -----------------------

SCRIPTED = "héllo, wörld ✓ 🙂 bye"
SCRIPTED_ERROR = "the scripted server says no: bad key"
MIDWAY_ERROR = "the engine stopped"


def chunk(content: str | None = None, finish: str | None = None,
          usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {},
                                 "finish_reason": finish}]
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                            "model": "scripted", "choices": choices}
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


class Script:
    """What the stand-in server saw: request bodies and whether an endless stream was left."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.endless_left = threading.Event()
        self.first_chunk_sent = threading.Event()
        self.release = threading.Event()  # the test saw the first piece: send the rest


def scripted_app(script: Script) -> FastAPI:
    app = FastAPI()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    def refused(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            error = {"message": SCRIPTED_ERROR, "type": "invalid_request_error", "param": None,
                     "code": "invalid_api_key"}
            return JSONResponse({"error": error}, status_code=401)
        return None

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return refused(request) or JSONResponse(
            {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        if (no := refused(request)) is not None:
            return no
        body = await request.json()
        script.bodies.append(body)
        endless = body["messages"][-1]["content"] == "forever"
        midway = body["messages"][-1]["content"] == "fail midway"

        async def events() -> AsyncIterator[bytes]:
            yield b": a comment line, which the parser skips\n\n"
            if endless:
                try:
                    while True:
                        yield chunk("x")
                        script.first_chunk_sent.set()
                        await asyncio.sleep(0.05)
                finally:  # the client went away: starlette cancels the generator
                    script.endless_left.set()
            if midway:  # what the app sends when its engine stops mid-stream: no [DONE]
                yield chunk("par")
                error = {"message": MIDWAY_ERROR, "type": "server_error", "param": None,
                         "code": "engine_stopped"}
                yield f"data: {json.dumps({'error': error})}\n\n".encode()
                return
            pieces = [SCRIPTED[:3], SCRIPTED[3:9], SCRIPTED[9:]]
            for i, piece in enumerate(pieces):
                data = chunk(piece)
                cut = data.index("é".encode()) + 1 if "é" in piece else len(data) // 2
                yield data[:cut]  # an event, even a character, split across two writes
                await asyncio.sleep(0.1)
                yield data[cut:]
                if i == 0:  # hold the rest until the test has seen the first piece on the page
                    await asyncio.to_thread(script.release.wait, WAIT)
                await asyncio.sleep(0.1)
            yield chunk(finish="stop")
            yield chunk(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()
    served = Served(scripted_app(script))
    try:
        yield served.base, script
    finally:
        served.close()


# --- the project's app over a small chat model trained here --------------------------------------

CHARS = "abcdefghijklmnopqrstuvwxyz :"


def train_chat_model(directory: Path, steps: int = 30) -> Path:
    """A one-layer char-level GPT with the chat tokenizer, a few steps on ``reverse: word``
    conversations (enough that it writes letters and ends its turn), saved as a run would be."""
    tok = ChatTokenizer(CharTokenizer(CHARS))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                          n_embd=32))
    words = ["cat", "dog", "tree", "moon", "river", "stone", "light", "paper"]
    rows = [tok.encode(f"<|user|>reverse: {w}<|end|><|assistant|>{w[::-1]}<|end|>")
            for w in words]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.eot_id] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_checkpoint(model, directory)
    (directory / META_NAME).write_text(json.dumps({"tokenizer": tok.to_dict()}))
    return directory


@pytest.fixture(scope="module")
def project_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model_dir = train_chat_model(tmp_path_factory.mktemp("chat"))
    settings = ServerSettings(model=str(model_dir), model_name="tiny-chat",
                              api_keys=[SecretStr(KEY)], max_batch=2, playground=True)
    served = Served(create_app(settings))
    try:
        wait_for(lambda: httpx.get(served.base + "/health").status_code == 200,
                 "/health to answer 200", timeout=300)
        yield served.base
    finally:
        served.close()


# --- the tests ---------------------------------------------------------------------------------

def test_page_loads_only_its_own_files(browser: Any, scripted: tuple[str, Script]) -> None:
    """No CDN, no web font: every resource the page fetched came from the server itself, and
    the page's script ran without an error."""
    base, _ = scripted
    open_page(browser, base, KEY)
    urls = js(browser, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(u.endswith("/static/app.js") for u in urls), urls
    assert any(u.endswith("/static/style.css") for u in urls), urls
    assert all(u.startswith(base + "/") for u in urls), urls
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text, name


def test_reply_streams_in_as_the_chunks_arrive(browser: Any,
                                               scripted: tuple[str, Script]) -> None:
    """The page shows part of the reply before the stream ends, then exactly the text the
    server sent (a character split across two network writes arrives whole), the finish reason
    and the usage; the request was a streaming chat request with the page's settings."""
    base, script = scripted
    open_page(browser, base, KEY)
    js(browser, "document.getElementById('system').value = 'be terse'")
    script.release.clear()
    send(browser, "hello")
    try:
        partial = wait_for(lambda: [r for r in replies(browser) if r], "the first chunk")[0]
        assert streaming(browser) and partial == SCRIPTED[:3]  # "hél", whose é came in two writes
    finally:
        script.release.set()
    wait_for(lambda: not streaming(browser), "the stream to end")
    assert replies(browser) == [SCRIPTED]
    meta = js(browser, "return document.querySelector('.message.assistant .meta').textContent")
    assert meta == "stop · 3 tokens"
    assert error_text(browser) == ""
    body = script.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "system", "content": "be terse"},
                                {"role": "user", "content": "hello"}]
    assert body["temperature"] == 0 and body["max_tokens"] == 12 and body["model"] == "scripted"
    assert js(browser, "return sessionStorage.getItem('llmfs.apiKey')") == KEY


def test_stop_button_aborts_the_stream(browser: Any, scripted: tuple[str, Script]) -> None:
    """Stop aborts the fetch: the server sees the client leave, the partial reply stays, and
    the page is ready for the next message."""
    base, script = scripted
    open_page(browser, base, KEY)
    send(browser, "forever")
    assert script.first_chunk_sent.wait(WAIT)
    wait_for(lambda: any(replies(browser)), "the first chunk on the page")
    assert browser.find_element("id", "send").get_attribute("disabled") is not None
    browser.find_element("id", "stop").click()
    assert script.endless_left.wait(WAIT), "the server never saw the client leave"
    wait_for(lambda: not streaming(browser), "the page to leave the streaming state")
    assert set(replies(browser)[-1]) == {"x"}
    assert browser.find_element("id", "send").get_attribute("disabled") is None
    assert browser.find_element("id", "stop").get_attribute("disabled") is not None
    assert error_text(browser) == ""


def test_error_event_mid_stream_is_shown(browser: Any, scripted: tuple[str, Script]) -> None:
    """An error event in the stream: its message is shown and the text before it stays."""
    base, _ = scripted
    open_page(browser, base, KEY)
    send(browser, "fail midway")
    assert wait_for(lambda: error_text(browser), "the error") == MIDWAY_ERROR
    wait_for(lambda: not streaming(browser), "the page to leave the streaming state")
    assert replies(browser) == ["par"]


def test_bad_key_shows_the_error_message(browser: Any, scripted: tuple[str, Script]) -> None:
    """A 401: the page shows the error JSON's message, drops the turn and gives the text back."""
    base, _ = scripted
    open_page(browser, base, "not-the-key")
    send(browser, "hello")
    assert wait_for(lambda: error_text(browser), "the error") == SCRIPTED_ERROR
    wait_for(lambda: not streaming(browser), "the page to leave the streaming state")
    assert replies(browser) == []
    assert js(browser, "return document.querySelectorAll('.message').length") == 0
    assert browser.find_element("id", "message").get_attribute("value") == "hello"


def test_project_app_streams_the_models_reply(browser: Any, project_app: str) -> None:
    """Through the project's app and a trained model: the reply the page renders from the SSE
    stream equals the one the non-streaming route gives the same request (greedy)."""
    open_page(browser, project_app, KEY)
    send(browser, "reverse: cat")
    wait_for(lambda: any(replies(browser)) and not streaming(browser), "the model's reply")
    assert error_text(browser) == ""
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "reverse: cat"}],
            "temperature": 0, "max_tokens": 12}
    answer = httpx.post(project_app + "/v1/chat/completions", json=body, timeout=WAIT,
                        headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    expected = answer.json()["choices"][0]["message"]["content"]
    assert expected and replies(browser) == [expected]
    assert js(browser, "return document.getElementById('model-name').textContent") == "tiny-chat"


def test_project_app_bad_key_shows_its_error(browser: Any, project_app: str) -> None:
    """A bad key: the page shows the message of the server's OpenAI-shaped 401 error."""
    open_page(browser, project_app, "not-the-key")
    send(browser, "reverse: cat")
    shown = wait_for(lambda: error_text(browser), "the error")
    refused = httpx.post(project_app + "/v1/chat/completions", timeout=WAIT,
                         json={"messages": [{"role": "user", "content": "x"}]},
                         headers={"Authorization": "Bearer not-the-key"})
    assert refused.status_code == 401
    assert shown == refused.json()["error"]["message"]
    assert replies(browser) == []
