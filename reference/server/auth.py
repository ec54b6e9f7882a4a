"""API keys: the ``Authorization: Bearer <key>`` check, in constant time, and key ids for logs.

>>> check_api_key("Bearer s3cret", ["other", "s3cret"])
's3cret'
>>> check_api_key("Bearer wrong", ["s3cret"]) is None
True
>>> key_id("s3cret")
'1ec1c26b50d5'
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


def check_api_key(authorization: str | None, keys: Sequence[str]) -> str | None:
    """The key in ``authorization`` (``Bearer <key>``) if it is one of ``keys``, else None.

    The scheme is case-insensitive (RFC 9110 section 11.1); the key is compared with every
    accepted key through :func:`hmac.compare_digest`, with no early exit, so the time taken
    does not tell which key (or how much of one) matched. An empty key never matches, and
    no key matches an empty ``keys``.

    >>> check_api_key("bearer k", ["k"])
    'k'
    >>> check_api_key("Bearer ", [""]) is None
    True
    >>> check_api_key(None, ["k"]) is None
    True
    """
    if authorization is None:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    given = key.encode()
    matched: str | None = None
    for candidate in keys:  # every key, every time: no early exit
        if hmac.compare_digest(given, candidate.encode()):
            matched = candidate
    return matched


def key_id(key: str) -> str:
    """A short, non-reversible id for ``key`` (the first 12 hex digits of its SHA-256).

    Safe to log, to label metrics with and to key rate limits by.

    >>> len(key_id("anything"))
    12
    """
    return hashlib.sha256(key.encode()).hexdigest()[:12]
