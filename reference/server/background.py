"""A real uvicorn serving an app in a thread of this process, on a free port of 127.0.0.1.

For tests, benchmarks and notebooks that need the real server (sockets, HTTP, SSE) without a
second process::

    with serve_in_thread(create_app(settings)) as url:
        httpx.get(url + "/health")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["serve_in_thread"]


@contextmanager
def serve_in_thread(app: Any, *, start_timeout: float = 120.0,
                    stop_timeout: float = 60.0) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1 (a free port) in a daemon thread; yields its URL and
    stops it on exit. RuntimeError when it has not started within ``start_timeout`` seconds."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
