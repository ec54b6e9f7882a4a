"""The routes' request and response bodies (pydantic): the seed's ``/generate`` and OpenAI's
``/v1/completions`` and ``/v1/chat/completions``, with the fields this server honours.

Bounds that do not depend on the model are checked here (a 422 naming the field); the ones that
do (``max_tokens`` against the context window, the prompt's length, ``n``) are checked by the
app against the settings and the model (a 400 naming the field).

Example::

    >>> CompletionRequest(prompt="ab", max_tokens=4, stop="\\n").stop_list()
    ['\\n']
    >>> ChatRequest(messages=[{"role": "user", "content": "hi"}]).max_tokens is None
    True
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatMessage", "ChatRequest", "CompletionRequest", "ErrorBody", "ErrorResponse",
           "GenerateRequest", "GenerateResponse", "ModelCard", "ModelList", "Sampling",
           "StreamOptions", "Usage"]

MAX_STOPS = 4  # as OpenAI: up to four stop sequences
Stop = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    include_usage: bool = False  # a last chunk with the usage and no choice


class Sampling(BaseModel):
    """What every generation route shares: how many tokens, how to draw them, where to stop."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None  # None: as many as fit (the limit)
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0  # 0: greedy
    top_k: Annotated[int, Field(ge=1)] | None = None  # an extension to OpenAI's API
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None  # None: a random draw
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    stream: bool = False

    def stop_list(self) -> list[str]:
        """``stop`` as a list (a single string is a list of one)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class GenerateRequest(Sampling):
    """``POST /generate``: the prompt (a user turn on a chat model) and how to continue it."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    max_tokens: Annotated[int, Field(ge=1)] | None = 16


class GenerateResponse(BaseModel):
    generated_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class Choices(Sampling):
    """OpenAI's fields beside the sampling ones: the model's name and ``n`` choices."""

    model: str | None = None  # accepted, not checked: this server serves one model
    n: Annotated[int, Field(ge=1)] = 1  # choice i is drawn with seed + i
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored


class CompletionRequest(Choices):
    """``POST /v1/completions``. ``logprobs``: 0 gives each drawn token's log-probability
    (alternatives, > 0, are not offered)."""

    prompt: str
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # OpenAI's default
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Choices):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` is the newer name of
    ``max_tokens``; ``logprobs`` gives each drawn token's log-probability (``top_logprobs`` > 0
    is not offered)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-from-scratch"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody


def error_json(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The body of an OpenAI-shaped error.

    >>> error_json("too large", "invalid_request_error", "max_tokens")["error"]["param"]
    'max_tokens'
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
