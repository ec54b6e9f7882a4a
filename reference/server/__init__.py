"""The HTTP server: the reference model behind FastAPI and uvicorn (``pip install -e '.[serve]'``).

See ``reference/server/app.py`` for the routes and ``reference/server/settings.py`` for the
settings (environment variables ``LLMFS_SERVE_*``).
"""
