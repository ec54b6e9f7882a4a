"""The server's routes (reference/server/app.py) over real HTTP: a uvicorn on 127.0.0.1 in a
thread, serving tiny models with random weights written to a tmp dir; httpx as the client.

Oracles: the inference path run directly (``reference.inference.stream_text``, the same model
and seed, no server, no batching), torch's ``log_softmax`` over a full forward pass for the
log-probabilities, and for stop sequences the law ``text before the first stop string``
checked over hypothesis's stop strings and split points.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.batching import QueueFullError
from reference.chat import ChatTokenizer, render
from reference.checkpoint import save_checkpoint
from reference.inference import SampleSettings, load, stream_text
from reference.model import GPT, GPTConfig
from reference.server.app import create_app
from reference.server.background import serve_in_thread
from reference.server.settings import ServerSettings
from reference.server.streaming import StopMatcher
from reference.tokenizers import META_NAME, CharTokenizer

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ALPHABET = "abcdefgh :"


# ---------------------------------------------------------------- helpers (shared with the
# openai-client tests)


def tiny_run(directory: Path, *, chat: bool = True, seed: int = 0, block_size: int = 48,
             n_layer: int = 1, n_embd: int = 16) -> Path:
    """A checkpoint with random weights and a character tokenizer (plus chat tokens)."""
    base = CharTokenizer(ALPHABET)
    tokenizer = ChatTokenizer(base) if chat else base
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=tokenizer.vocab_size,
                          n_layer=n_layer, n_head=2, n_embd=n_embd))
    save_checkpoint(model, directory)
    (directory / META_NAME).write_text(json.dumps({"tokenizer": tokenizer.to_dict()}))
    return directory


def server_settings(model: Path, **changes: Any) -> ServerSettings:
    return ServerSettings(**{"model": str(model), "api_keys": [KEY], "max_batch": 4,
                             "threads": 1, **changes})


def running(app: FastAPI) -> AbstractContextManager[str]:
    """``app`` served by a real uvicorn on a free port of 127.0.0.1, in a thread: its URL."""
    return serve_in_thread(app, start_timeout=60, stop_timeout=30)


def sse_data(body: str) -> list[str]:
    """The data of each SSE event (``data:`` lines joined with newlines)."""
    events = []
    for block in body.split("\n\n"):
        lines = [line[len("data: "):] for line in block.split("\n") if line.startswith("data: ")]
        if lines:
            events.append("\n".join(lines))
    return events


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("chat") / "chatrun")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("plain") / "plainrun", chat=False, seed=1)


@pytest.fixture(scope="module")
def served(chat_run: Path) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(server_settings(chat_run, max_tokens_limit=40, max_prompt_tokens=30,
                                     max_n=3))
    with running(app) as url:
        yield url, app


@pytest.fixture()
def client(served: tuple[str, FastAPI]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], headers=AUTH, timeout=30) as c:
        yield c


def direct(run: Path, prompt: str, max_new_tokens: int, temperature: float,
           seed: int) -> str:
    """The oracle: the inference path alone, no server and no batching."""
    loaded = load(run)
    sample = SampleSettings(prompt=prompt, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=None, seed=seed)
    return "".join(stream_text(loaded.model, loaded.tokenizer, sample))


# ---------------------------------------------------------------- health, models


def test_health_is_503_until_the_model_is_loaded_then_200(chat_run: Path) -> None:
    app = create_app(server_settings(chat_run))

    async def before_and_after() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers=AUTH) as c:
            codes = [(await c.get("/health")).status_code, (await c.get("/livez")).status_code,
                     (await c.post("/generate", json={"prompt": "ab"})).status_code]
            async with app.router.lifespan_context(app):
                codes += [(await c.get("/health")).status_code,
                          (await c.get("/livez")).status_code]
            return codes

    assert asyncio.run(before_and_after()) == [503, 200, 503, 200, 200]


def test_models_lists_the_run_directory_name(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        ("chatrun", "model", "llm-from-scratch")]


def test_the_openapi_document_lists_every_route_with_openai_errors(
        client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    assert {"/generate", "/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
            "/livez", "/metrics"} <= set(doc["paths"])
    errors = doc["paths"]["/v1/completions"]["post"]["responses"]
    assert errors["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse")


def test_a_route_without_a_key_is_401_openai_shaped(served: tuple[str, FastAPI]) -> None:
    r = httpx.post(served[0] + "/v1/completions", json={"prompt": "ab"})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------- /generate


def test_generate_greedy_matches_the_inference_path(client: httpx.Client,
                                                    chat_run: Path) -> None:
    r = client.post("/generate", json={"prompt": "abc", "max_tokens": 12, "temperature": 0})
    body = r.json()
    assert r.status_code == 200, body
    assert body["generated_text"] == direct(chat_run, "abc", 12, 0.0, 0)
    prompt = render([{"role": "user", "content": "abc"}], add_generation_prompt=True)
    assert body["prompt_tokens"] == len(ChatTokenizer(CharTokenizer(ALPHABET)).encode(prompt))
    assert body["completion_tokens"] == 12 and body["finish_reason"] == "length"


def test_generate_sampled_with_a_seed_matches_the_inference_path_and_repeats(
        client: httpx.Client, chat_run: Path) -> None:
    ask = {"prompt": "ha", "max_tokens": 15, "temperature": 1.0, "seed": 7}
    first = client.post("/generate", json=ask).json()["generated_text"]
    assert client.post("/generate", json=ask).json()["generated_text"] == first
    assert first == direct(chat_run, "ha", 15, 1.0, 7)


def test_generate_streamed_joins_to_the_whole_text(client: httpx.Client) -> None:
    ask = {"prompt": "bad", "max_tokens": 20, "seed": 3}
    whole = client.post("/generate", json=ask).json()
    r = client.post("/generate", json={**ask, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_data(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == whole["generated_text"]
    assert chunks[-1]["finish_reason"] == whole["finish_reason"]
    assert chunks[-1]["completion_tokens"] == whole["completion_tokens"]


# ---------------------------------------------------------------- OpenAI's shapes


def test_completions_have_openai_shape_and_n_choices_use_seed_plus_i(
        client: httpx.Client) -> None:
    ask = {"prompt": "cab", "max_tokens": 10, "seed": 11, "n": 3}
    body = client.post("/v1/completions", json=ask).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "chatrun" and isinstance(body["created"], int)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for i, choice in enumerate(body["choices"]):
        alone = client.post("/v1/completions",
                            json={**ask, "n": 1, "seed": 11 + i}).json()["choices"][0]
        assert choice["text"] == alone["text"]
    r = client.post("/v1/completions", json={**ask, "stream": True})
    chunks = [json.loads(e)["choices"][0] for e in sse_data(r.text)[:-1]]
    assert ["".join(c["text"] for c in chunks if c["index"] == i) for i in range(3)] == [
        c["text"] for c in body["choices"]]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == 6  # <|user|>cab<|end|><|assistant|>, counted once
    ended = [c["finish_reason"] == "stop" for c in body["choices"]]  # at <|end|>: fewer tokens
    assert (usage["completion_tokens"] == 30) == (not any(ended))


def test_chat_renders_the_template_and_streams_with_usage(client: httpx.Client,
                                                          chat_run: Path) -> None:
    messages = [{"role": "system", "content": "be bad"}, {"role": "user", "content": "dab"}]
    ask = {"messages": messages, "max_tokens": 9, "temperature": 0}
    body = client.post("/v1/chat/completions", json=ask).json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    tokenizer = ChatTokenizer(CharTokenizer(ALPHABET))
    prompt = tokenizer.encode(render(messages, add_generation_prompt=True))
    assert body["usage"]["prompt_tokens"] == len(prompt)
    stream = client.post("/v1/chat/completions", json={
        **ask, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_data(stream.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == message["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == body["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_chat_logprobs_match_a_full_forward_pass(client: httpx.Client, chat_run: Path) -> None:
    messages = [{"role": "user", "content": "ace"}]
    body = client.post("/v1/chat/completions", json={
        "messages": messages, "max_tokens": 8, "temperature": 0, "logprobs": True}).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == body["choices"][0]["message"]["content"]
    loaded = load(chat_run)
    ids = loaded.tokenizer.encode(render(messages, add_generation_prompt=True))
    drawn = loaded.tokenizer.encode("".join(c["token"] for c in content))
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids + drawn]))[0][0]  # (T, V)
    expected = torch.log_softmax(logits, -1)[len(ids) - 1:-1].gather(
        1, torch.tensor(drawn)[:, None])[:, 0]
    # 1e-4: the KV-cache path and the full pass sum in different orders (fp32)
    assert torch.allclose(torch.tensor([c["logprob"] for c in content]), expected, atol=1e-4)


def test_chat_on_a_model_without_chat_tokens_is_400(plain_run: Path) -> None:
    with running(create_app(server_settings(plain_run))) as url:
        r = httpx.post(url + "/v1/chat/completions", headers=AUTH,
                       json={"messages": [{"role": "user", "content": "ab"}]})
        plain = httpx.post(url + "/v1/completions", headers=AUTH, json={
            "prompt": "ab", "max_tokens": 5, "temperature": 0}).json()
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    assert "chat template" in r.json()["error"]["message"]
    assert plain["choices"][0]["text"] == direct(plain_run, "ab", 5, 0.0, 0)


# ---------------------------------------------------------------- stop sequences


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abc", max_size=30),
       stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=4),
       cuts=st.lists(st.integers(0, 30), max_size=10))
def test_stop_matcher_sends_the_text_before_the_first_stop_whatever_the_split(
        text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    matcher = StopMatcher(stops)
    sent = [matcher.feed(text[a:b]) for a, b in itertools.pairwise(bounds)]
    out = "".join(sent) + matcher.flush()
    hits = [text.find(s) for s in stops if s in text]
    assert out == text[:min(hits)] if hits else out == text
    assert matcher.stopped == bool(hits)
    prefix = ""
    for piece in sent:  # never a partial stop string on the wire: each prefix is final text
        prefix += piece
        assert out.startswith(prefix)


def test_a_stop_string_cuts_the_text_streamed_or_not(client: httpx.Client) -> None:
    for seed in range(50):  # a seed whose text does not end early at <|end|>
        ask = {"prompt": "fade", "max_tokens": 30, "seed": seed}
        full = client.post("/v1/completions", json=ask).json()["choices"][0]["text"]
        if len(full) >= 14:
            break
    stop = full[10:12]
    expected = full[:full.find(stop)]
    cut = client.post("/v1/completions", json={**ask, "stop": [stop, "zz"]}).json()
    assert cut["choices"][0]["text"] == expected
    assert cut["choices"][0]["finish_reason"] == "stop"
    r = client.post("/v1/completions", json={**ask, "stop": stop, "stream": True})
    chunks = [json.loads(e) for e in sse_data(r.text)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# ---------------------------------------------------------------- bounds and errors


@pytest.mark.parametrize(("route", "ask", "status", "param"), [
    ("/generate", {"prompt": "a", "max_tokens": 41}, 400, "max_tokens"),  # > max_tokens_limit
    ("/generate", {"prompt": "a" * 25, "max_tokens": 40}, 400, "max_tokens"),  # > the window
    ("/generate", {"prompt": "a" * 40}, 400, "prompt"),  # > max_prompt_tokens
    ("/generate", {"prompt": "xyz"}, 400, "prompt"),  # not in the alphabet
    ("/generate", {"prompt": "a", "temperature": -1}, 422, "temperature"),
    ("/generate", {"prompt": "a", "max_tokens": 0}, 422, "max_tokens"),
    ("/generate", {"prompt": "a", "bogus": 1}, 422, "bogus"),
    ("/generate", {"max_tokens": 3}, 422, "prompt"),
    ("/v1/completions", {"prompt": "a", "n": 4}, 400, "n"),  # > max_n
    ("/v1/completions", {"prompt": "a", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 422, "top_p"),
    ("/v1/chat/completions", {"messages": []}, 422, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "<|end|>"}]}, 400,
     "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "a"}]}, 422,
     "messages.0.role"),
])
def test_a_bad_request_is_a_4xx_naming_the_field(client: httpx.Client, route: str,
                                                 ask: dict[str, Any], status: int,
                                                 param: str) -> None:
    r = client.post(route, json=ask)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split(".")[0] in error["message"]
    assert error["type"] == "invalid_request_error"


def test_malformed_json_and_an_unknown_route_are_openai_shaped(client: httpx.Client) -> None:
    bad = client.post("/generate", content=b'{"prompt": ', headers={
        "Content-Type": "application/json"})
    missing = client.get("/v1/nothing")
    assert (bad.status_code, missing.status_code) == (422, 404)
    assert set(bad.json()["error"]) == set(missing.json()["error"]) == {
        "message", "type", "param", "code"}


def test_a_full_queue_is_429_with_retry_after(served: tuple[str, FastAPI], client: httpx.Client,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    engine = served[1].state.served.engine

    def full(request: object) -> None:
        raise QueueFullError("the waiting queue is full (max_waiting=1)")

    monkeypatch.setattr(engine, "submit", full)
    r = client.post("/v1/completions", json={"prompt": "a", "stream": True})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"


def test_the_token_budget_is_charged_prompt_plus_max_tokens(chat_run: Path) -> None:
    with running(create_app(server_settings(chat_run, tokens_per_minute=60))) as url:
        ask = {"prompt": "ab", "max_tokens": 20, "temperature": 0}  # 9 + 20 = 29 tokens
        codes = [httpx.post(url + "/generate", headers=AUTH, json=ask) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 1
    assert codes[2].json()["error"]["type"] == "rate_limit_error"


def test_a_stopped_engine_is_503(chat_run: Path) -> None:
    app = create_app(server_settings(chat_run))
    with running(app) as url:
        app.state.served.engine.stop()
        r = httpx.post(url + "/generate", headers=AUTH, json={"prompt": "a"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"


def test_metrics_count_tokens_and_time_to_first_token(client: httpx.Client) -> None:
    def value(text: str, name: str) -> float:
        line = next(li for li in text.splitlines() if li.startswith(name + " "))
        return float(line.split()[1])

    before = client.get("/metrics").text
    client.post("/generate", json={"prompt": "ab", "max_tokens": 6, "temperature": 0})
    after = client.get("/metrics").text
    assert value(after, "llmfs_generation_tokens_total") - \
        value(before, "llmfs_generation_tokens_total") == 6
    assert value(after, "llmfs_time_to_first_token_seconds_count") == \
        value(before, "llmfs_time_to_first_token_seconds_count") + 1


def test_the_module_app_reads_its_settings_from_the_environment(
        chat_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reference.server import app as module  # imported with no settings: no error

    monkeypatch.setenv("LLMFS_SERVE_MODEL", str(chat_run))
    monkeypatch.setenv("LLMFS_SERVE_API_KEYS", json.dumps([KEY]))
    monkeypatch.setenv("LLMFS_SERVE_MODEL_NAME", "from-env")
    with running(module.create_app()) as url:
        models = httpx.get(url + "/v1/models", headers=AUTH).json()
        health = httpx.get(url + "/health")
    assert [m["id"] for m in models["data"]] == ["from-env"]
    assert health.status_code == 200


def test_the_generation_log_has_counts_and_no_prompt_unless_enabled(
        chat_run: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reference.server")
    for log_prompts in (False, True):
        with running(create_app(server_settings(chat_run, log_prompts=log_prompts))) as url:
            httpx.post(url + "/generate", headers={**AUTH, "X-Request-ID": f"req-{log_prompts}"},
                       json={"prompt": "cafe", "max_tokens": 3, "temperature": 0})
    events = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "reference.server" and '"generation"' in r.getMessage()]
    assert [e["request_id"] for e in events] == ["req-False", "req-True"]
    assert [e["completion_tokens"] for e in events] == [[3], [3]]
    assert ["cafe" in json.dumps(e) for e in events] == [False, True]
    assert all(KEY not in json.dumps(e) for e in events)


def test_serve_refuses_a_bad_setting_in_one_line(chat_run: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from reference.cli import main

    monkeypatch.setenv("LLMFS_SERVE_API_KEYS", json.dumps([KEY]))
    monkeypatch.setenv("LLMFS_SERVE_MAX_BATCH", "0")
    assert main(["serve", str(chat_run)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: LLMFS_SERVE_MAX_BATCH: Input should be greater than or equal to 1"]


def test_serve_refuses_a_misspelt_setting_variable(chat_run: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from reference.cli import main

    monkeypatch.setenv("LLMFS_SERVE_API_KEYS", json.dumps([KEY]))
    monkeypatch.setenv("LLMFS_SERVE_MAX_BATH", "3")  # MAX_BATCH misspelt: never ignored
    assert main(["serve", str(chat_run)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: LLMFS_SERVE_MAX_BATH: not a setting (did you mean LLMFS_SERVE_MAX_BATCH?)"]


def test_the_int8_setting_serves_a_quantized_model(chat_run: Path) -> None:
    from reference.quantization import Int8Linear

    app = create_app(server_settings(chat_run, int8="float"))
    with running(app) as url:
        r = httpx.post(url + "/generate", headers=AUTH, json={"prompt": "ab", "max_tokens": 4})
    assert r.status_code == 200 and r.json()["completion_tokens"] <= 4
    assert any(isinstance(m, Int8Linear) for m in app.state.served.loaded.model.modules())
