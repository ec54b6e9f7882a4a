"""Prometheus metrics for the server: what ``/metrics`` shows (prometheus-client).

One :class:`ServerMetrics` per app, each with its own registry by default, so several apps in
one process (tests) never clash. The names follow vLLM's where they mean the same thing:

========================================  =========  ========================================
``llmfs_requests_total``                  counter    by ``route`` (template), method, status
``llmfs_request_duration_seconds``        histogram  by ``route``: the HTTP exchange, whole
``llmfs_time_to_first_token_seconds``     histogram  request received -> first token out
``llmfs_inter_token_latency_seconds``     histogram  between two tokens of one stream
``llmfs_e2e_request_latency_seconds``     histogram  request received -> last token out
``llmfs_prompt_tokens_total``             counter    prompt tokens of generation requests
``llmfs_generation_tokens_total``         counter    tokens generated
``llmfs_num_requests_waiting``            gauge      the engine's queue
``llmfs_num_requests_running``            gauge      the engine's active batch
========================================  =========  ========================================

Routes are labelled by their *template* (``/v1/models/{model}``), never the raw path, and
paths that match no route share the label ``"unmatched"``: a client cannot grow the label set.

>>> m = ServerMetrics()
>>> m.request("/v1/completions", "POST", 200, 0.25)
>>> m.tokens(prompt=5, generated=7)
>>> body, content_type = m.render()
>>> b'llmfs_generation_tokens_total 7.0' in body, content_type.startswith("text/plain")
(True, True)
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["LATENCY_BUCKETS", "TOKEN_LATENCY_BUCKETS", "ServerMetrics"]

# milliseconds (a cached health check) to minutes (a long generation on a CPU)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# one decode step: sub-millisecond on a GPU to seconds on a loaded CPU
TOKEN_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15,
                         0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The server's counters, gauges and histograms, in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.requests_total = Counter(
            "llmfs_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=r)
        self.request_duration = Histogram(
            "llmfs_request_duration_seconds", "HTTP request latency (to the last byte sent).",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            "llmfs_time_to_first_token_seconds", "Time from the request to its first token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "llmfs_inter_token_latency_seconds", "Time between two tokens of one stream.",
            buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "llmfs_e2e_request_latency_seconds", "Time from the request to its last token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter(
            "llmfs_prompt_tokens", "Prompt tokens of generation requests.", registry=r)
        self.generation_tokens = Counter(
            "llmfs_generation_tokens", "Tokens generated.", registry=r)
        self.waiting = Gauge(
            "llmfs_num_requests_waiting", "Requests queued in the engine.", registry=r)
        self.running = Gauge(
            "llmfs_num_requests_running", "Requests in the engine's active batch.", registry=r)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished HTTP exchange on ``route`` (a template) and its latency."""
        self.requests_total.labels(route=route, method=method, status=str(status)).inc()
        self.request_duration.labels(route=route).observe(seconds)

    def first_token(self, seconds: float) -> None:
        """Observe one request's time to first token."""
        self.time_to_first_token.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        """Observe the time between two consecutive tokens of one stream."""
        self.inter_token_latency.observe(seconds)

    def end_to_end(self, seconds: float) -> None:
        """Observe one generation's whole latency (request to last token)."""
        self.e2e_latency.observe(seconds)

    def tokens(self, prompt: int, generated: int) -> None:
        """Count one generation's prompt and generated tokens."""
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)

    def queue(self, waiting: int, active: int) -> None:
        """Set the engine's queue length and active batch size (gauges)."""
        self.waiting.set(waiting)
        self.running.set(active)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
