"""Schemathesis over the full app's ``/openapi.json``: >= 1,000 generated requests, no 5xx.

A real uvicorn on 127.0.0.1 serves a tiny chat model (``conftest.py``), with a key, the rate
limits out of the way and ``max_tokens`` bounded small so that a case costs milliseconds. Every
operation in the schema gets schemathesis' positive cases (valid by the schema) and negative
ones (each violating it somewhere); every response is checked to be below 500, a 4xx to be
an OpenAI-shaped error, and a 200 stream to end with ``data: [DONE]`` and carry no error event
(an engine failing mid-stream shows only there). The figures (cases, statuses, 5xx) are
printed (``-s``).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from .conftest import AUTH, serve

CASES_PER_MODE = 250  # per operation with a body and per generation mode
MIN_CASES = 1_000

statuses: collections.Counter[int] = collections.Counter()
server_errors: list[str] = []
bad_errors: list[str] = []


@pytest.fixture(scope="module")
def server(chat_run: Path) -> Iterator[str]:
    with serve(chat_run, requests_per_minute=10**9, tokens_per_minute=10**9,
               max_tokens_limit=16, max_waiting=1024, max_batch=8) as running:
        yield running.url


@pytest.fixture(scope="module")
def operations(server: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", headers=AUTH)
    return [result.ok() for result in schema.get_all_operations()]


def check(case: Any, url: str) -> None:
    response = case.call(base_url=url, headers=AUTH, timeout=60)
    statuses[response.status_code] += 1
    if response.status_code == 200 and "text/event-stream" in response.headers.get(
            "content-type", ""):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        if events[-1:] != ["[DONE]"] or any('"error"' in e[:12] for e in events):
            server_errors.append(f"an error event in a 200 stream: {case.as_curl_command()}\n"
                                 f"  {response.text[-300:]}")
    if response.status_code >= 500:
        server_errors.append(f"{response.status_code}: {case.as_curl_command()}\n"
                             f"  {response.text[:300]}")
    elif response.status_code >= 400:
        try:
            error = json.loads(response.text)["error"]
            assert {"message", "type", "param", "code"} <= set(error)
        except (ValueError, KeyError, TypeError, AssertionError):
            bad_errors.append(f"{response.status_code}: {case.as_curl_command()}\n"
                              f"  {response.text[:300]}")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_5xx(server: str, operations: list[Any],
                                            mode: GenerationMode) -> None:
    for operation in operations:
        has_input = operation.method.upper() == "POST"
        if mode is GenerationMode.NEGATIVE and not has_input:
            continue  # nothing to violate

        @settings(max_examples=CASES_PER_MODE if has_input else 20, deadline=None,
                  database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            check(case, server)

        run()
    print(f"\nfuzz ({mode.value}): {sum(statuses.values())} cases so far, statuses "
          f"{dict(sorted(statuses.items()))}, 5xx: {len(server_errors)}")
    assert not server_errors, "the first 5xx:\n" + "\n".join(server_errors[:3])


def test_enough_cases_ran_and_every_refusal_was_openai_shaped() -> None:
    total = sum(statuses.values())
    print(f"\nfuzz: {total} cases, statuses {dict(sorted(statuses.items()))}, "
          f"5xx: {len(server_errors)}, non-OpenAI errors: {len(bad_errors)}")
    assert total >= MIN_CASES
    assert not server_errors
    assert not bad_errors, "\n".join(bad_errors[:10])
