"""The audit log's hash chain: the canonical encoding of an event and its link hash.

Within one scope, events are linked in `seq` order. Each event's `hash` is

    link_hash = SHA-256(LINK_DOMAIN || seq || recorded_at || content || prev_hash)

where `seq` and `recorded_at` (microseconds since the Unix epoch) are signed 64-bit
big-endian integers, `content` is `content_digest` of the event's other stored fields, and
`prev_hash` is the previous event's hash in the scope (nothing for a scope's first event,
whose `prev_hash` is NULL). The application computes the content digest when it writes;
the database assigns `seq` and `recorded_at` and links (`audit_events_append` in
migrations/0002_audit.sql, the same formula). `app.audit.verify.verify_chain` recomputes
both from what is stored, so an edited, removed or inserted row shows as the first broken
link.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

CONTENT_DOMAIN = b"bff-audit-event/v1\x00"
LINK_DOMAIN = b"bff-audit-link/v1:"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT64 = 2**63

# (column, kind) in content order: the table's column order, without the columns the
# database assigns (seq, recorded_at) and the chain's own (prev_hash, hash).
CONTENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("occurred_at", "time"),
    ("scope", "text"),
    ("actor", "text"),
    ("client_id", "text"),
    ("session_id", "text"),
    ("token_id", "text"),
    ("source_ip", "inet"),
    ("user_agent", "text"),
    ("action", "text"),
    ("crud", "text"),
    ("outcome", "text"),
    ("outcome_reason", "text"),
    ("entity_type", "text"),
    ("entity_id", "text"),
    ("patient_id", "uuid"),
    ("request_id", "text"),
    ("detail", "bytes"),
)


def _micros(value: datetime) -> int:
    micros: int = (value - _EPOCH) // _MICROSECOND
    return micros


def _time(value: datetime) -> bytes:
    return _micros(value).to_bytes(8, "big", signed=True)


def _uuid(value: Any) -> bytes:
    return value.bytes if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).bytes


def _inet(value: Any) -> bytes:
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return value.packed + bytes([value.network.prefixlen])  # only ever by tampering
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.packed
    return ipaddress.ip_address(value).packed


def _text(value: Any) -> bytes:
    return str(value).encode()


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "text": _text,
    "bytes": bytes,
    "time": _time,
    "uuid": _uuid,
    "inet": _inet,
}
_CONTENT_ENCODERS = tuple((name, _ENCODERS[kind]) for name, kind in CONTENT_COLUMNS)
# The columns every event of one request shares (scope .. user_agent, then request_id):
# a writer encodes them once per request (`actor_blocks`), not once per event.
_OWN_HEAD = _CONTENT_ENCODERS[:2]  # id, occurred_at
_ACTOR = _CONTENT_ENCODERS[2:9]  # scope .. user_agent
_OWN_BODY = _CONTENT_ENCODERS[9:16]  # action .. patient_id
_REQUEST = _CONTENT_ENCODERS[16:17]  # request_id
_DETAIL = _CONTENT_ENCODERS[17:]  # detail
assert [name for name, _ in _ACTOR] == ["scope", "actor", "client_id", "session_id",
    "token_id", "source_ip", "user_agent"]  # fmt: skip
assert _REQUEST[0][0] == "request_id" and _DETAIL[0][0] == "detail"
_PRESENT = struct.Struct(">BI").pack  # 0x01, then the length as 4 bytes big-endian


def _encode(
    row: Mapping[str, Any], encoders: tuple[tuple[str, Callable[[Any], bytes]], ...]
) -> bytes:
    parts: list[bytes] = []
    for name, encode in encoders:
        value = row[name]
        if value is None:
            parts.append(b"\x00")
        else:
            data = encode(value)
            parts += (_PRESENT(1, len(data)), data)
    return b"".join(parts)


def actor_blocks(actor: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The encoded actor columns and the encoded request id, for `content_digest`."""
    return _encode(actor, _ACTOR), _encode(actor, _REQUEST)


def content_digest(row: Mapping[str, Any], blocks: tuple[bytes, bytes] | None = None) -> bytes:
    """SHA-256 of an event's own fields; `row["detail"]` is its canonical JSON.

    The digest is taken over `CONTENT_DOMAIN` followed by each of `CONTENT_COLUMNS`, in that
    order, each encoded as one byte 0x00 when NULL, else one byte 0x01, the length of the
    value's bytes as a 4-byte big-endian integer, and the bytes:

    - `id`, `patient_id`: the UUID's 16 bytes;
    - `occurred_at`: microseconds since 1970-01-01T00:00:00Z, signed 64-bit big-endian
      (exactly what a `timestamptz` stores);
    - `source_ip`: the packed address, 4 bytes (IPv4) or 16 bytes (IPv6);
    - `detail`: `canonical_detail` of the stored JSON value;
    - every other column (text, and `crud` as one letter): its UTF-8 bytes.

    `blocks` (from `actor_blocks` of the same row's actor columns) saves re-encoding them.
    """
    actor, request = blocks if blocks is not None else actor_blocks(row)
    return hashlib.sha256(
        b"".join(
            (
                CONTENT_DOMAIN,
                _encode(row, _OWN_HEAD),
                actor,
                _encode(row, _OWN_BODY),
                request,
                _encode(row, _DETAIL),
            )
        )
    ).digest()


_OCCURRED = _CONTENT_ENCODERS[1:2]  # occurred_at
_FIXED = _CONTENT_ENCODERS[9:14]  # action .. entity_type
assert [name for name, _ in _CONTENT_ENCODERS[14:16]] == ["entity_id", "patient_id"]
_UUID_PRESENT = _PRESENT(1, 16)


class DigestEncoder:
    """`content_digest` for the events of one request, faster: the actor's columns are
    encoded once, and so is each distinct run of the columns a page's events share (time,
    action, outcome, entity type, detail); per event only `id`, `entity_id` and `patient_id`
    are encoded. The bytes hashed are exactly `content_digest`'s (a test holds them equal).
    """

    __slots__ = ("_actor", "_request", "_shared")

    def __init__(self, actor: Mapping[str, Any]) -> None:
        self._actor, self._request = actor_blocks(actor)
        self._shared: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}

    def digest(self, row: Mapping[str, Any]) -> bytes:
        key = (
            row["occurred_at"],
            row["action"],
            row["crud"],
            row["outcome"],
            row["outcome_reason"],
            row["entity_type"],
            row["detail"],
        )
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = (
                _encode(row, _OCCURRED) + self._actor + _encode(row, _FIXED),
                self._request + _encode(row, _DETAIL),
            )
        entity_id, patient_id = row["entity_id"], row["patient_id"]
        if entity_id is None:
            entity = b"\x00"
        else:
            data = entity_id.encode()
            entity = _PRESENT(1, len(data)) + data
        return hashlib.sha256(
            b"".join(
                (
                    CONTENT_DOMAIN,
                    _UUID_PRESENT,
                    row["id"].bytes,
                    shared[0],
                    entity,
                    b"\x00" if patient_id is None else _UUID_PRESENT + _uuid(patient_id),
                    shared[1],
                )
            )
        ).digest()


def link_hash(seq: int, recorded_at: datetime, content: bytes, prev_hash: bytes | None) -> bytes:
    """An event's `hash`: its seq, recording time and content digest, after `prev_hash`."""
    return hashlib.sha256(
        LINK_DOMAIN
        + seq.to_bytes(8, "big", signed=True)
        + _micros(recorded_at).to_bytes(8, "big", signed=True)
        + content
        + (prev_hash or b"")
    ).digest()


def event_hash(row: Mapping[str, Any]) -> bytes:
    """The `hash` an event's stored fields call for (`row["detail"]` as canonical JSON)."""
    return link_hash(row["seq"], row["recorded_at"], content_digest(row), row["prev_hash"])


def _normalise(value: Any) -> Any:
    """Numbers as Postgres `jsonb` gives them back: integral floats become integers."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError("audit detail integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= _INT64:
            raise ValueError("audit detail numbers must be finite and fit in 64 bits")
        return int(value) if value.is_integer() else value
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, dict | Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    return value  # UUIDs, dates: orjson writes them as strings, read back as strings


def canonical_detail(detail: Mapping[str, Any]) -> bytes:
    """The canonical JSON of a detail object: normalised numbers, sorted keys, no spaces.

    `jsonb` keeps neither key order nor number spelling (`1e16` comes back as
    `10000000000000000`); normalised, the value read back gives the bytes the writer hashed.
    """
    return orjson.dumps(_normalise(detail), option=orjson.OPT_SORT_KEYS)
