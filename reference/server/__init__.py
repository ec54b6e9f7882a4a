"""The HTTP server: the reference model behind FastAPI and uvicorn (``pip install -e '.[serve]'``).

See ``reference/server/app.py`` for the routes and ``reference/server/settings.py`` for the
settings (environment variables ``LLMFS_SERVE_*``).

The server chapter's pieces are re-exported here (``specs/test_server.py`` runs on this
package): the API-key check (``auth.py``), the SSE framing (``sse.py``) and the small
``/generate`` app (``basic.py``).
"""

from .auth import check_api_key, key_id
from .basic import GenerateRequest, GenerateResponse, basic_app, generate, sample_settings
from .sse import DONE, sse_event, sse_stream

__all__ = ["DONE", "GenerateRequest", "GenerateResponse", "basic_app", "check_api_key",
           "generate", "key_id", "sample_settings", "sse_event", "sse_stream"]
