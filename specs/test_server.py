# ruff: noqa: E501 -- the rows of the contract table are one line each
"""Spec: the server (issue 13): the API-key check, the SSE framing of a token stream, the ``/generate`` route.

The app under test is ``impl.basic_app(run, keys)`` (given code around the implementation's
``generate`` and ``check_api_key``), driven through httpx's ``ASGITransport`` on a tiny model
with random weights built here (no file, no network).

Contract:

| clause | tests | oracle |
|---|---|---|
| ``Bearer <key>`` (scheme case-insensitive, surrounding spaces ignored) is accepted exactly when the key is one of ``keys``; the matched key is returned | `test_check_api_key_hand_worked_example`, `test_check_api_key_accepts_exactly_the_accepted_keys` | hand-worked; ``hmac.compare_digest`` over the keys |
| a missing, malformed or empty key, another scheme, or an empty key list: None (deny by default) | `test_check_api_key_refuses_missing_malformed_and_empty_keys` | the documented refusals |
| every key is compared through ``hmac.compare_digest``, all of them whichever matched (no early exit) | `test_check_api_key_compares_every_key_in_constant_time` | a counting ``compare_digest`` |
| an event is ``data: <line>`` per line of the data, then a blank line; ``\\r\\n``/``\\r``/``\\n`` end lines; UTF-8 | `test_sse_event_hand_worked_examples`, `test_sse_event_round_trips_through_the_openai_decoder`, `test_sse_event_lines_as_httpx_reads_them` | hand-worked; the ``openai`` package's ``SSEDecoder`` (fed byte by byte); ``httpx.Response.iter_lines`` |
| a stream is one event per piece (empty, multi-line, unicode, ``[DONE]`` pieces included), then ``data: [DONE]``; each piece is sent as it arrives | `test_sse_stream_hand_worked_example`, `test_sse_stream_frames_each_piece_then_done`, `test_sse_stream_sends_each_piece_as_it_arrives` | hand-worked; ``SSEDecoder``; a producer that waits for the consumer |
| the route's text and token counts: what the inference path generates for the same prompt and settings (greedy and seeded; char and chat tokenizers; prompts past ``block_size``) | `test_generate_hand_worked_example`, `test_generate_matches_the_inference_path`, `test_generate_counts_the_prompt_as_the_model_sees_it` | hand-worked (an all-zero model: argmax is id 0); ``reference.generate.generate`` + ``reference.inference.prompt_ids`` |
| ``"stream": true``: ``text/event-stream`` of ``{"text": piece}`` events with the same text, ending ``data: [DONE]`` | `test_generate_streams_the_same_text_as_sse` | ``SSEDecoder`` + the non-streamed answer |
| generation runs in a worker thread, never on the event loop | `test_generate_runs_the_model_off_the_event_loop` | the thread each forward pass runs in |
| no valid key: 401 with an OpenAI-shaped error, on every request | `test_requests_without_a_valid_key_get_401` | the documented error |
| a bad body: 422 naming the field; a prompt the tokenizer cannot encode: 400 naming the character | `test_bad_bodies_get_422_naming_the_field`, `test_an_unencodable_prompt_is_a_400` | the documented errors |
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from reference.chat import ChatTokenizer
from reference.generate import generate as oracle_generate
from reference.inference import Loaded, SampleSettings, prompt_ids
from reference.model import GPT, GPTConfig
from reference.tokenizers import CharTokenizer, Tokenizer

COMPONENT = "server"
pytestmark = pytest.mark.server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ALPHABET = "abcdefgh é\n"
# characters where str.splitlines (httpx's line iteration) splits but SSE does not
NOT_SSE_LINE_ENDS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def make_run(tokenizer: Tokenizer, block_size: int = 16, seed: int = 0) -> Loaded:
    torch.manual_seed(seed)
    config = GPTConfig(block_size=block_size, vocab_size=tokenizer.vocab_size, n_layer=1,
                       n_head=2, n_embd=16)
    return Loaded(GPT(config).eval(), tokenizer, Path("."), SampleSettings(),
                  torch.device("cpu"))


@pytest.fixture(scope="module")
def char_run() -> Loaded:
    return make_run(CharTokenizer(ALPHABET))


@pytest.fixture(scope="module")
def chat_run() -> Loaded:
    return make_run(ChatTokenizer(CharTokenizer(ALPHABET)), block_size=32, seed=1)


def post(app: Any, body: Any = None, *, headers: dict[str, str] | None = None,
         content: bytes | None = None, path: str = "/generate") -> httpx.Response:
    """One request to ``app`` through httpx's ASGI transport, on a fresh event loop."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json=body, content=content,
                                     headers=AUTH if headers is None else headers)

    return asyncio.run(go())


def decode_events(raw: bytes, chunk: int = 1) -> list[str]:
    """The data of each event in ``raw``, by the ``openai`` package's decoder, fed ``chunk``
    bytes at a time (so no framing relies on one read holding a whole event)."""
    chunks = [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    return [event.data for event in SSEDecoder().iter_bytes(iter(chunks))]


def sse_lines(text: str) -> str:
    """What SSE's line splitting makes of ``text``: \\r\\n and \\r become \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


async def from_list(pieces: list[str]) -> AsyncIterator[str]:
    for piece in pieces:
        yield piece


async def frames(stream: Any) -> AsyncIterator[bytes]:
    """The events of ``impl.sse_stream(...)``. A stub's body has no ``yield``, so it is a plain
    coroutine: awaiting it raises its NotImplementedError (and a coroutine that returns an
    async iterator is read as well)."""
    if inspect.iscoroutine(stream):
        stream = await stream
    async for event in stream:
        yield event


def collect(stream: Any) -> list[bytes]:
    async def go() -> list[bytes]:
        return [chunk async for chunk in frames(stream)]

    return asyncio.run(go())


def expected_answer(run: Loaded, prompt: str, max_tokens: int, temperature: float,
                    top_k: int | None, top_p: float | None, seed: int) -> tuple[str, int, int]:
    """(text, prompt tokens, completion tokens) by the inference path's own ``generate``."""
    ids = prompt_ids(run.tokenizer, prompt, run.model.config.block_size)
    eos = run.tokenizer.eot_id
    out = oracle_generate(run.model, torch.tensor([ids]), max_tokens, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=seed, eos_id=eos)
    drawn = out[0, len(ids):].tolist()
    shown = drawn[:drawn.index(eos)] if eos in drawn else drawn
    text = run.tokenizer.decode_bytes(shown).decode("utf-8", errors="replace")
    return text, len(ids), len(drawn)


# ---------------------------------------------------------------- the API-key check


def test_check_api_key_hand_worked_example(impl: Any) -> None:
    keys = ["alpha", "beta"]
    scheme = "the scheme compared case-sensitively: 'bearer' and 'BEARER' are Bearer too"
    whole = "the key is compared whole: hmac.compare_digest(given, key) for each accepted key"
    for header, want, cause in [
        ("Bearer beta", "beta", "the matched key is returned: 'Bearer <key>' with <key> in keys"),
        ("Bearer alpha", "alpha", "the matched key is returned: 'Bearer <key>' with <key> in keys"),
        ("bearer beta", "beta", scheme),
        ("BEARER alpha", "alpha", scheme),
        ("  Bearer beta  ", "beta", "the header not stripped: spaces around it are ignored"),
        ("Bearer   beta", "beta", "the key not stripped: spaces around the key are ignored"),
        ("Bearer gamma", None, whole),
        ("Bearer bet", None, "a prefix of a key accepted: " + whole),
        ("Bearer betaa", None, whole),
        ("Bearer Beta", None, "keys compared case-insensitively: keys are case-sensitive"),
    ]:
        got = impl.check_api_key(header, keys)
        assert got == want, f"likely cause: {cause}: check_api_key({header!r}) = {got!r}, want {want!r}"


KEY_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")),
                   min_size=1, max_size=12)


@given(keys=st.lists(KEY_TEXT, max_size=4), given_key=KEY_TEXT,
       scheme=st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]), pick=st.booleans())
def test_check_api_key_accepts_exactly_the_accepted_keys(
        impl: Any, keys: list[str], given_key: str, scheme: str, pick: bool) -> None:
    if pick and keys:
        given_key = keys[len(given_key) % len(keys)]
    expected = any(hmac.compare_digest(given_key.encode(), k.encode()) for k in keys)
    got = impl.check_api_key(f"{scheme} {given_key}", keys)
    cause = ("any key accepted when no keys are configured: no keys accept nothing (deny by "
             "default)" if not keys and got is not None else
             "a key accepted that is not one of the keys" if got is not None and not expected else
             "an accepted key refused, or another key returned")
    assert got == (given_key if expected else None), \
        f"likely cause: {cause}: {(scheme, given_key, keys)}, got {got!r}"


def test_check_api_key_refuses_missing_malformed_and_empty_keys(impl: Any) -> None:
    keys = ["k", ""]
    for header in [None, "", " ", "Bearer", "Bearer ", "Bearer   ", "k", "Bearerk", "Basic k",
                   "Token k", "Bearer: k", "Bearer\tk\t"]:
        got = impl.check_api_key(header, keys)
        assert got is None, (
            "likely cause: an empty key accepted: nothing after 'Bearer' is no key, even with '' "
            "in keys" if got == "" else "likely cause: a malformed header accepted: only "
            "'Bearer <key>' (one space-separated scheme, then the key) is read"
        ) + f": {header!r} was accepted as {got!r}"
    for header in ["Bearer k", "Bearer ", "Bearer anything"]:
        assert impl.check_api_key(header, []) is None, (
            f"likely cause: any key accepted when no keys are configured (deny by default): "
            f"{header!r} accepted with no keys")


def test_check_api_key_compares_every_key_in_constant_time(
        impl: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = ["first", "second", "third", "fourth"]
    for header, expected in [("Bearer first", "first"), ("Bearer third", "third"),
                             ("Bearer fourth", "fourth"), ("Bearer none", None)]:
        calls.clear()
        assert impl.check_api_key(header, keys) == expected
        assert len(calls) == len(keys), (
            "likely cause: keys compared with == (or `in`): the time taken leaks how much of a "
            "key matched; use hmac.compare_digest" if not calls else
            "likely cause: an early exit on a match: the time taken tells which key matched"
        ) + (f"; {header!r}: {len(calls)} calls of hmac.compare_digest for {len(keys)} keys: "
             "compare with every key, whichever matches")


# ---------------------------------------------------------------- SSE framing


def sse_cause(data: str, got: Any) -> str:
    """The likely cause of a wrong event for ``data``: the classic wrong framing that gives it."""
    def lines(parts: list[str]) -> bytes:
        return "".join(f"data: {line}\n" for line in parts).encode()

    wrong = [
        (lines(sse_lines(data).split("\n")), "no blank line after the event: an event ends with "
                                             "an empty line (data: ...\\n\\n)"),
        (f"data: {data}\n\n".encode(), "newlines in the data not split: each line of the data "
                                        "is its own 'data: ' line"),
        (lines(data.splitlines() or [""]) + b"\n", "str.splitlines drops a trailing empty line "
                                                    "(and splits at more than line ends): split at "
                                                    "\\r\\n, \\r and \\n only"),
        (lines(data.split("\n")) + b"\n", "carriage returns not split: \\r\\n and \\r end a "
                                           "line too"),
    ]
    return "likely cause: " + next((cause for value, cause in wrong if value == got),
                                   "an event is 'data: <line>\\n' per line of the data, then "
                                   "'\\n'")


def test_sse_event_hand_worked_examples(impl: Any) -> None:
    for data, want in [("Hello", b"data: Hello\n\n"), ("", b"data: \n\n"),
                       ("a\nb", b"data: a\ndata: b\n\n"),
                       ("a\r\nb\rc", b"data: a\ndata: b\ndata: c\n\n"),
                       ("end\n", b"data: end\ndata: \n\n"), ("é€", "data: é€\n\n".encode()),
                       ("[DONE]", b"data: [DONE]\n\n")]:
        got = impl.sse_event(data)
        assert got == want, f"{sse_cause(data, got)}: sse_event({data!r}) = {got!r}, want {want!r}"


@given(data=st.text())
def test_sse_event_round_trips_through_the_openai_decoder(impl: Any, data: str) -> None:
    raw = impl.sse_event(data)
    assert isinstance(raw, bytes)
    assert raw.endswith(b"\n\n")
    assert decode_events(raw) == [sse_lines(data)]
    assert decode_events(raw * 2, chunk=7) == [sse_lines(data)] * 2


@given(data=st.text(st.characters(blacklist_characters=NOT_SSE_LINE_ENDS, codec="utf-8")))
def test_sse_event_lines_as_httpx_reads_them(impl: Any, data: str) -> None:
    lines = list(httpx.Response(200, content=impl.sse_event(data)).iter_lines())
    assert lines == [f"data: {line}" for line in sse_lines(data).split("\n")] + [""]


def test_sse_stream_hand_worked_example(impl: Any) -> None:
    events = collect(impl.sse_stream(from_list(["Hel", "lo\nworld", ""])))
    got = b"".join(events)
    want = b"data: Hel\n\ndata: lo\ndata: world\n\ndata: \n\ndata: [DONE]\n\n"
    wrong = {want.removesuffix(b"data: [DONE]\n\n"): "no 'data: [DONE]' event at the end: the "
                                                     "client reads it as the end of the stream",
             want.replace(b"data: \n\n", b""): "an empty piece dropped: every piece is one "
                                                "event, an empty one too"}
    assert got == want, (f"likely cause: {wrong.get(got, 'one sse_event per piece, then DONE')}: "
                         f"the stream {got!r}, want {want!r}")
    assert collect(impl.sse_stream(from_list([]))) == [b"data: [DONE]\n\n"], \
        "likely cause: no 'data: [DONE]' event at the end of an empty stream"


PIECES = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["", "[DONE]", "\n", "a\r\nb"])),
                  max_size=6)


@given(pieces=PIECES)
def test_sse_stream_frames_each_piece_then_done(impl: Any, pieces: list[str]) -> None:
    raw = b"".join(collect(impl.sse_stream(from_list(pieces))))
    assert raw.endswith(b"\n\ndata: [DONE]\n\n") or raw == b"data: [DONE]\n\n"
    assert decode_events(raw) == [sse_lines(p) for p in pieces] + ["[DONE]"]


def test_sse_stream_sends_each_piece_as_it_arrives(impl: Any) -> None:
    async def go() -> list[bytes]:
        seen = asyncio.Event()

        async def pieces() -> AsyncIterator[str]:
            yield "first"
            await asyncio.wait_for(seen.wait(), timeout=5)  # the consumer must have it by now
            yield "second"

        got = []
        async for event in frames(impl.sse_stream(pieces())):
            got.append(event)
            seen.set()
        return got

    try:
        events = asyncio.run(go())
    except TimeoutError:
        pytest.fail("likely cause: the stream is buffered: yield each event as its piece "
                    "arrives; the first piece was not sent before the second arrived")
    assert events == [b"data: first\n\n", b"data: second\n\n", b"data: [DONE]\n\n"]


# ---------------------------------------------------------------- the /generate route


def test_generate_hand_worked_example(impl: Any) -> None:
    run = make_run(CharTokenizer("abc"), block_size=8)
    for p in run.model.parameters():
        p.data.zero_()  # every logit 0: greedy picks id 0, "a", at every step
    app = impl.basic_app(run, [KEY])
    answer = post(app, {"prompt": "cab", "max_tokens": 4, "temperature": 0})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got == {"generated_text": "aaaa", "prompt_tokens": 3, "completion_tokens": 4}, (
        "likely cause: the request's sampling options never reach the sampler (temperature 0 "
        "is greedy: sample_settings(body))" if got.get("generated_text") not in (None, "aaaa")
        else "likely cause: the answer is not the generated text and the two token counts"
    ) + f": {got}"
    answer = post(app, {"prompt": "cab", "max_tokens": 2, "temperature": 0, "stream": True})
    want = 'data: {"text": "a"}\n\ndata: {"text": "a"}\n\ndata: [DONE]\n\n'
    assert answer.text == want, (
        'likely cause: "stream": true ignored: answer text/event-stream, a StreamingResponse '
        "over sse_stream" if not answer.text.startswith("data: ") else
        "likely cause: stream events are not JSON: each event's data is "
        'json.dumps({"text": piece})' if answer.text == 'data: a\n\ndata: a\n\ndata: [DONE]\n\n'
        else "likely cause: the stream is not one {\"text\": piece} event per piece, then DONE"
    ) + f": {answer.text!r}"


SETTINGS = st.fixed_dictionaries({
    "max_tokens": st.integers(1, 12),
    "temperature": st.sampled_from([0.0, 0.7, 1.0, 1.5]),
    "top_k": st.sampled_from([None, 1, 3]),
    "top_p": st.sampled_from([None, 0.5, 0.9]),
    "seed": st.integers(0, 2**31),
})


GREEDY = {"max_tokens": 12, "temperature": 0.0, "top_k": None, "top_p": None, "seed": 0}


@settings(max_examples=15)
@given(prompt=st.text(ALPHABET, min_size=1, max_size=20), options=SETTINGS, chat=st.booleans())
@example(prompt="abc", options=GREEDY, chat=False)
@example(prompt="abc", options=GREEDY, chat=True)
def test_generate_matches_the_inference_path(
        impl: Any, char_run: Loaded, chat_run: Loaded, prompt: str, options: dict[str, Any],
        chat: bool) -> None:
    run = chat_run if chat else char_run
    answer = post(impl.basic_app(run, [KEY]), {"prompt": prompt, **options})
    assert answer.status_code == 200, answer.text
    text, n_prompt, n_drawn = expected_answer(run, prompt, **options)
    got = answer.json()
    want = {"generated_text": text, "prompt_tokens": n_prompt, "completion_tokens": n_drawn}
    causes = []
    if got.get("prompt_tokens") != n_prompt:
        causes.append("prompt_tokens counted before the template and truncation: count the ids "
                      "the model sees (prompt_ids)" if got.get("prompt_tokens") ==
                      len(run.tokenizer.encode(prompt)) else "prompt_tokens is not the number of "
                      "ids the model sees (prompt_ids)")
    if got.get("completion_tokens") != n_drawn:
        causes.append("completion_tokens counted from the text: count the tokens drawn "
                      "(on_token), not characters" if got.get("completion_tokens") ==
                      len(got.get("generated_text", "")) else "completion_tokens is not the "
                      "number of tokens drawn (eos included)")
    if got.get("generated_text") != text:
        causes.append("the text is not what the inference path generates for the same prompt "
                      "and settings (sample_settings(body), stream_text)")
    assert got == want, f"likely cause: {'; '.join(causes) or 'another answer'}: {got}, want {want}"


def test_generate_counts_the_prompt_as_the_model_sees_it(
        impl: Any, char_run: Loaded, chat_run: Loaded) -> None:
    long = "abcdefgh" * 5  # 40 characters, block_size 16
    answer = post(impl.basic_app(char_run, [KEY]), {"prompt": long, "max_tokens": 3, "seed": 3})
    assert answer.json()["prompt_tokens"] == 16
    assert answer.json()["generated_text"] == expected_answer(char_run, long, 3, 1.0, None, None, 3)[0]
    # a chat model sees the prompt as a user turn: <|user|>ab<|end|><|assistant|> (2 + 3 ids)
    answer = post(impl.basic_app(chat_run, [KEY]), {"prompt": "ab", "max_tokens": 3, "seed": 3})
    assert answer.json()["prompt_tokens"] == len(prompt_ids(chat_run.tokenizer, "ab", 32)) == 5


@settings(max_examples=8)
@given(prompt=st.text(ALPHABET, min_size=1, max_size=10), options=SETTINGS)
def test_generate_streams_the_same_text_as_sse(
        impl: Any, char_run: Loaded, prompt: str, options: dict[str, Any]) -> None:
    app = impl.basic_app(char_run, [KEY])
    whole = post(app, {"prompt": prompt, **options}).json()
    answer = post(app, {"prompt": prompt, **options, "stream": True})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = decode_events(answer.content, chunk=5)
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["text"] for e in events[:-1]]
    assert all(pieces), f"an empty piece was sent: {pieces}"
    assert "".join(pieces) == whole["generated_text"]


def test_generate_runs_the_model_off_the_event_loop(impl: Any, char_run: Loaded) -> None:
    threads: list[int] = []
    hook = char_run.model.register_forward_pre_hook(
        lambda module, args: threads.append(threading.get_ident()))
    try:
        app = impl.basic_app(char_run, [KEY])
        loop_thread = threading.get_ident()  # asyncio.run runs the loop in this thread
        for stream in (False, True):
            threads.clear()
            answer = post(app, {"prompt": "abc", "max_tokens": 4, "seed": 0, "stream": stream})
            assert answer.status_code == 200, answer.text
            assert threads, "the model never ran"
            assert loop_thread not in threads, (
                "likely cause: generation runs on the event loop and blocks it: draw the tokens "
                f"in a worker thread (iterate_in_threadpool); stream={stream}: a forward pass ran "
                "on the event loop's thread")
    finally:
        hook.remove()


def test_requests_without_a_valid_key_get_401(impl: Any, char_run: Loaded) -> None:
    body = {"prompt": "ab", "max_tokens": 2}
    app = impl.basic_app(char_run, [KEY, "other-key"])
    for headers in [{}, {"Authorization": ""}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": KEY}]:
        answer = post(app, body, headers=headers)
        assert answer.status_code == 401, (headers, answer.status_code)
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert KEY not in answer.text
    answer = post(app, {"prompt": 5}, headers={})  # not even validated without a key
    assert answer.status_code == 401
    assert post(app, body, headers={"Authorization": "Bearer other-key"}).status_code == 200
    assert post(app, body, headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    nobody = impl.basic_app(char_run, [])
    assert post(nobody, body).status_code == 401
    assert post(nobody, body, headers={"Authorization": "Bearer "}).status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ({"max_tokens": 2}, "prompt"),
    ({"prompt": "ab", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "ab", "max_tokens": -3}, "max_tokens"),
    ({"prompt": "ab", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "ab", "max_tokens": 10**9}, "max_tokens"),
    ({"prompt": "ab", "temperature": -1}, "temperature"),
    ({"prompt": "ab", "seed": -1}, "seed"),
    ({"prompt": "ab", "top_p": 0}, "top_p"),
    ({"prompt": "ab", "max_token": 2}, "max_token"),
    ({"prompt": ["ab"]}, "prompt"),
])
def test_bad_bodies_get_422_naming_the_field(
        impl: Any, char_run: Loaded, body: dict[str, Any], field: str) -> None:
    answer = post(impl.basic_app(char_run, [KEY]), body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == field and field in error["message"], error
    answer = post(impl.basic_app(char_run, [KEY]), content=b'{"prompt": "ab",',
                  headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text


def test_an_unencodable_prompt_is_a_400(impl: Any, char_run: Loaded) -> None:
    answer = post(impl.basic_app(char_run, [KEY]), {"prompt": "abz", "max_tokens": 2})
    assert answer.status_code == 400, answer.text
    assert "'z'" in answer.json()["error"]["message"]

