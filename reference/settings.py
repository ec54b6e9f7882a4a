"""Typed, validated settings: the base class and field types every config of the project uses.

Settings are pydantic models (the library FastAPI is built on): frozen, unknown keys refused,
and validated field by field on construction. The field types here are strict where a silent
conversion would hide a mistake: an int field refuses ``True`` and ``3.5`` (and ``"3"``; text
from a command line is parsed first, see ``reference.trainer.config``), a float field refuses
``True``, NaN and infinities.

:func:`one_line` turns a pydantic ``ValidationError`` into the one line a command line prints:
the field's dotted path, what was expected, the value given, and the closest known key for a
typo.

Example::

    >>> class Demo(Settings):
    ...     steps: PositiveInt = 10
    >>> Demo(steps=5).steps
    5
    >>> try:
    ...     Demo(step=5)
    ... except ValidationError as e:
    ...     print(one_line(e, Demo, origin="demo.yaml"))
    demo.yaml: unknown key 'step' (did you mean 'steps'?); known keys: ['steps']
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from pydantic import ValidationError as ValidationError

__all__ = [
    "Bool",
    "Fraction",
    "Int",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Number",
    "PositiveFloat",
    "PositiveInt",
    "Settings",
    "ValidationError",
    "field_annotation",
    "one_line",
]


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


Int = StrictInt
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Number = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[Number, Field(gt=0)]
NonNegativeFloat = Annotated[Number, Field(ge=0)]
Fraction = Annotated[Number, Field(gt=0, lt=1)]  # strictly between 0 and 1
Bool = StrictBool


class Settings(BaseModel):
    """A frozen, validated group of settings; an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def field_annotation(model: type[BaseModel], path: typing.Sequence[str]) -> Any:
    """The annotation of the field at ``path`` (e.g. ``["train", "lr"]``) of nested settings,
    or None if there is no such field."""
    annotation: Any = model
    for name in path:
        cls = _settings_class(annotation)
        if cls is None or name not in cls.model_fields:
            return None
        annotation = cls.model_fields[name].annotation
    return annotation


def _settings_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if (cls := _settings_class(option)) is not None:
                return cls
    return None


def one_line(error: ValidationError, model: type[BaseModel], *, origin: str | None = None,
             prefix: str = "") -> str:
    """The first problem in ``error`` as one line naming the field, the expectation and the
    value (``"(and 2 more)"`` when there are several); ``model`` gives the known keys."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = [str(part) for part in first["loc"]]
    where = prefix + ".".join(loc)
    if first["type"] == "extra_forbidden":
        parent = _settings_class(field_annotation(model, loc[:-1]) if loc[:-1] else model)
        known = sorted(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        scope = prefix + ".".join(loc[:-1])
        hint = f" (did you mean {(scope + '.' if scope else '') + close[0]!r}?)" if close else ""
        of = f" of {scope!r}" if scope else ""
        text = f"unknown key {where!r}{hint}; known keys{of}: {known}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        message = message[0].lower() + message[1:] if message else message
        given = first.get("input")
        shown = "" if isinstance(given, dict) or first["type"] == "missing" else f", got {given!r}"
        if isinstance(given, float) and not math.isfinite(given):
            shown = f", got {given}"
        if not where or message.startswith(where):  # a check across fields names them itself
            text = f"{message}{shown}"
        else:
            text = f"{where}: {message}{shown}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return f"{origin}: {text}" if origin else text
