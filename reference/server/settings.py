"""The server's settings: environment variables prefixed ``LLMFS_SERVE_`` (pydantic-settings).

Every setting is a field below; ``LLMFS_SERVE_MODEL=runs/chat``, ``LLMFS_SERVE_MAX_BATCH=16``,
lists as JSON (``LLMFS_SERVE_CORS_ORIGINS='["http://localhost:3000"]'``). An unknown
``LLMFS_SERVE_*`` variable or a bad value stops start-up with one line naming it.

API keys (``api_keys``, or one per line in ``api_keys_file``) are secrets: never logged, never
shown in a repr. With no key configured the server refuses to start, unless ``allow_anonymous``
is set (for a server on 127.0.0.1 only).

Example::

    >>> ServerSettings(model="runs/main", api_keys=["k1"]).max_batch
    8
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "ServerSettings"]

ENV_PREFIX = "LLMFS_SERVE_"
Positive = Annotated[int, Field(ge=1)]


class ServerSettings(BaseSettings):
    """What the server loads and how it guards it."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid",
                                      validate_default=True)

    # -- the model
    model: str = "runs/main"  # a run directory or checkpoint (by default the main job's run)
    model_name: str | None = None  # the id in /v1/models and responses (default: the directory)
    device: str = "cpu"  # cpu, cuda, mps or auto
    int8: Literal["float", "dynamic"] | None = None  # quantize the linear layers at load
    threads: Positive | None = None  # torch CPU threads (default: torch's choice)

    # -- the batching engine
    max_batch: Positive = 8  # sequences decoded together
    max_waiting: Positive = 64  # queued requests beyond which a request gets 429

    # -- bounds on a request (4xx naming the field beyond them)
    max_request_bytes: Positive = 1_000_000
    max_tokens_limit: Positive = 1024  # the largest max_tokens a request may ask for
    max_prompt_tokens: Positive | None = None  # default: the model's block_size
    max_n: Positive = 8  # choices per request

    # -- security
    api_keys: list[SecretStr] = Field(default_factory=list)
    api_keys_file: Path | None = None  # one key per line (blank lines and # comments ignored)
    allow_anonymous: bool = False  # no key required (only for a server on 127.0.0.1)
    requests_per_minute: Positive = 120  # per API key
    tokens_per_minute: Positive = 50_000  # per API key: prompt + generated tokens
    cors_origins: list[str] = Field(default_factory=list)  # empty: CORS off

    # -- observability
    log_prompts: bool = False  # prompt and generated text in the logs (off: counts only)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    playground: bool = True  # serve the chat page at /

    # -- `python -m reference serve`
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> ServerSettings:
        # pydantic-settings ignores environment variables that match no field; a misspelt one
        # (LLMFS_SERVE_MAX_BATH) would silently leave its setting at the default.
        known = sorted(ENV_PREFIX + name.upper() for name in type(self).model_fields)
        for name in sorted(os.environ):
            if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
                close = difflib.get_close_matches(name.upper(), known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"the settings: {known}"
                raise ValueError(f"{name}: not a setting ({hint})")
        return self

    @model_validator(mode="after")
    def _some_way_in(self) -> ServerSettings:
        if not self.keys() and not self.allow_anonymous:
            raise ValueError(
                f"no API key: set {ENV_PREFIX}API_KEYS='[\"...\"]' or {ENV_PREFIX}API_KEYS_FILE, "
                f"or {ENV_PREFIX}ALLOW_ANONYMOUS=true for a server on 127.0.0.1 only")
        return self

    def keys(self) -> list[str]:
        """Every accepted API key: ``api_keys`` and the lines of ``api_keys_file``."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"{ENV_PREFIX}API_KEYS_FILE={self.api_keys_file}: cannot read "
                                 f"it ({e.strerror})") from None
            keys += [line.strip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
        return keys
