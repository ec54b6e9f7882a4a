"""Classic learner bugs in the server chapter; specs/test_server.py must catch every one.

Each mutant replaces functions of ``solutions.server`` (patched in place: the given
``basic_app`` looks them up when it builds the app). Named for the bug; grouped by what they
break, each group commented with the spec tests expected to catch it. ``EQUIVALENT`` lists the
mutation tool's survivors that no test can tell from the solution (``scripts/mutation.py``),
with the reason.

Not a mutant here: ``==`` where ``hmac.compare_digest`` belongs leaks timing, which a test
cannot measure reliably; the spec sees it as a missing call of ``compare_digest``
(``plain_equality``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from reference.inference import Loaded, prompt_ids, stream_text
from solutions import server as sol
from solutions.server import DONE, GenerateRequest, GenerateResponse, sample_settings

# The originals, kept before any mutant replaces them.
sse_event, sse_stream = sol.sse_event, sol.sse_stream


# ---------------------------------------------------------------- the key check
# (test_check_api_key_hand_worked_example, test_check_api_key_refuses_missing_malformed_and_
# empty_keys, test_check_api_key_compares_every_key_in_constant_time, the 401 test)


def _check(
    case_sensitive: bool = False,
    allow_empty: bool = False,
    open_when_no_keys: bool = False,
    early_exit: bool = False,
    compare: Callable[[bytes, bytes], bool] = lambda a, b: hmac.compare_digest(a, b),
    strip: bool = True,
) -> Callable[[str | None, Sequence[str]], str | None]:
    """check_api_key with one knob turned the wrong way."""

    def check_api_key(authorization: str | None, keys: Sequence[str]) -> str | None:
        if authorization is None:
            return None
        text = authorization.strip() if strip else authorization
        scheme, _, key = text.partition(" ")
        key = key.strip() if strip else key
        if (scheme if case_sensitive else scheme.lower()) != ("Bearer" if case_sensitive
                                                              else "bearer"):
            return None
        if not key and not allow_empty:
            return None
        if not keys and open_when_no_keys:
            return key  # "no keys configured" read as "no check"
        matched = None
        for candidate in keys:
            if compare(key.encode(), candidate.encode()):
                if early_exit:
                    return candidate
                matched = candidate
        return matched

    return check_api_key


def _key_is_a_prefix(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b[:len(a)])  # "bet" opens "beta"


def _plain_equality(a: bytes, b: bytes) -> bool:
    return a == b  # right answers, but the time taken leaks the matching prefix


# ---------------------------------------------------------------- SSE framing
# (test_sse_event_hand_worked_examples, test_sse_event_round_trips_through_the_openai_decoder,
# test_sse_event_lines_as_httpx_reads_them, and the stream tests)


def _event_no_blank_line(data: str) -> bytes:
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode()  # events run together


def _event_newlines_not_split(data: str) -> bytes:
    return f"data: {data}\n\n".encode()  # a second line is no data line at all


def _event_splitlines(data: str) -> bytes:
    lines = data.splitlines() or [""]  # drops a trailing empty line, splits at \u2028
    return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


def _event_only_newline_splits(data: str) -> bytes:
    return "".join(f"data: {line}\n" for line in data.split("\n")).encode() + b"\n"  # \r left in


async def _stream_no_done(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        yield sol.sse_event(piece)


async def _stream_buffered(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    events = [sol.sse_event(piece) async for piece in pieces]  # waits for the whole answer
    for event in events:
        yield event
    yield DONE


async def _stream_skips_empty(pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        if piece:  # "nothing to send": but the client counts events
            yield sol.sse_event(piece)
    yield DONE


# ---------------------------------------------------------------- the route
# (test_generate_runs_the_model_off_the_event_loop, test_generate_matches_the_inference_path,
# test_generate_counts_the_prompt_as_the_model_sees_it, test_generate_streams_the_same_text_as_sse)


async def _pieces_on_the_loop(run: Loaded, body: GenerateRequest,
                              on_token: Callable[[int], None]) -> AsyncIterator[str]:
    for piece in stream_text(run.model, run.tokenizer, sample_settings(body), on_token=on_token):
        yield piece  # each forward pass blocks the event loop


def _route(
    on_the_loop: bool = False,
    count_prompt: Callable[[Loaded, str], int] = lambda run, prompt: len(
        prompt_ids(run.tokenizer, prompt, run.model.config.block_size)),
    count_text: bool = False,
    default_settings: bool = False,
    raw_events: bool = False,
    never_streams: bool = False,
) -> Callable[[GenerateRequest, Loaded], Any]:
    """generate with one knob turned the wrong way."""

    async def generate(body: GenerateRequest, run: Loaded) -> GenerateResponse | Response:
        if default_settings:  # the request's sampling options never reach the sampler
            body = GenerateRequest(prompt=body.prompt, max_tokens=body.max_tokens,
                                   stream=body.stream, seed=body.seed)
        n_prompt = count_prompt(run, body.prompt)
        drawn: list[int] = []
        pieces = (_pieces_on_the_loop(run, body, drawn.append) if on_the_loop else
                  iterate_in_threadpool(stream_text(run.model, run.tokenizer,
                                                    sample_settings(body),
                                                    on_token=drawn.append)))
        if body.stream and not never_streams:

            async def as_json() -> AsyncIterator[str]:
                async for piece in pieces:
                    yield piece if raw_events else json.dumps({"text": piece})

            return StreamingResponse(sol.sse_stream(as_json()), media_type="text/event-stream")
        text = "".join([piece async for piece in pieces])
        return GenerateResponse(generated_text=text, prompt_tokens=n_prompt,
                                completion_tokens=len(text) if count_text else len(drawn))

    return generate


MUTANTS: dict[str, dict[str, Any]] = {
    # the key check
    "empty_bearer_key_accepted": {"check_api_key": _check(allow_empty=True)},
    "any_key_when_no_keys": {"check_api_key": _check(open_when_no_keys=True)},
    "case_sensitive_scheme": {"check_api_key": _check(case_sensitive=True)},
    "early_exit_on_match": {"check_api_key": _check(early_exit=True)},
    "plain_equality": {"check_api_key": _check(compare=_plain_equality)},
    "key_prefix_accepted": {"check_api_key": _check(compare=_key_is_a_prefix)},
    "header_not_stripped": {"check_api_key": _check(strip=False)},
    # SSE framing
    "no_blank_line_between_events": {"sse_event": _event_no_blank_line},
    "newlines_in_data_not_split": {"sse_event": _event_newlines_not_split},
    "splitlines_for_data_lines": {"sse_event": _event_splitlines},
    "carriage_returns_not_split": {"sse_event": _event_only_newline_splits},
    "no_done": {"sse_stream": _stream_no_done},
    "stream_buffered": {"sse_stream": _stream_buffered},
    "empty_pieces_dropped": {"sse_stream": _stream_skips_empty},
    # the route
    "blocking_generation_on_the_event_loop": {"generate": _route(on_the_loop=True)},
    "prompt_tokens_before_the_template": {"generate": _route(
        count_prompt=lambda run, prompt: len(run.tokenizer.encode(prompt)))},
    "completion_tokens_from_the_text": {"generate": _route(count_text=True)},
    "sampling_options_ignored": {"generate": _route(default_settings=True)},
    "stream_events_not_json": {"generate": _route(raw_events=True)},
    "stream_ignored": {"generate": _route(never_streams=True)},
}

# Hints that teach: for each classic bug, a regex of the cause the first spec test that catches
# it must name in its failure message (tests/test_mutants.py checks it).
HINTS: dict[str, str] = {
    "empty_bearer_key_accepted": r"an empty key accepted",
    "any_key_when_no_keys": r"any key accepted when no keys are configured",
    "case_sensitive_scheme": r"scheme compared case-sensitively",
    "early_exit_on_match": r"early exit on a match",
    "plain_equality": r"compared with ==",
    "key_prefix_accepted": r"prefix of a key accepted",
    "header_not_stripped": r"header not stripped",
    "no_blank_line_between_events": r"no blank line after the event",
    "newlines_in_data_not_split": r"newlines in the data not split",
    "splitlines_for_data_lines": r"splitlines",
    "carriage_returns_not_split": r"carriage returns not split",
    "no_done": r"no 'data: \[DONE\]' event",
    "stream_buffered": r"stream is buffered",
    "empty_pieces_dropped": r"empty piece dropped",
    "blocking_generation_on_the_event_loop": r"runs on the event loop",
    "prompt_tokens_before_the_template": r"prompt_tokens counted before the template",
    "completion_tokens_from_the_text": r"completion_tokens counted from the text",
    "sampling_options_ignored": r"sampling options never reach the sampler",
    "stream_events_not_json": r"stream events are not JSON",
    "stream_ignored": r'"stream": true ignored',
}

EQUIVALENT: dict[tuple[str, str], str] = {}
