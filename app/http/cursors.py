"""Signed, opaque page cursors: a keyset position the client hands back, which it can
neither read as meaningful nor forge (an HMAC with a key derived from the settings)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import orjson

from app.core.errors import BadRequest


def sign_cursor(key: bytes, payload: dict[str, Any]) -> str:
    """An opaque cursor: the payload and its HMAC, so a caller cannot forge or alter it."""
    body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    mac = hmac.new(key, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).rstrip(b"=").decode()


def open_cursor(key: bytes, cursor: str) -> dict[str, Any]:
    """The payload of a cursor we signed; 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        mac, body = raw[:16], raw[16:]
        good = hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:16])
        payload = orjson.loads(body) if good else None
    except (ValueError, orjson.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict):
        raise BadRequest(
            "the cursor is not valid",
            errors=[{"field": "cursor", "message": "not a cursor from this API"}],
        )
    return payload
