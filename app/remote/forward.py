"""What a forwarded call keeps of the browser's request and of the upstream's answer: the
path below the route's prefix (refused when it could leave it), and the headers each way.

The path is checked on the raw bytes the client sent (before any decoding) and forwarded as
it came, so what was checked is what the upstream gets. Refused: dot segments in any
spelling (`..`, `.`, `%2e%2e`, `.%2E`), an encoded slash or backslash (`%2f`, `%5c`), a
double-encoded one (`%252e`, `%252f`, `%255c`), an empty segment (`//`), a backslash, a
`@` (userinfo) or `:` before the first slash (a scheme or a host), a NUL or control byte.

Headers: the browser's cookies, `Authorization` and `DPoP` never leave; neither do
hop-by-hop headers (RFC 9110 7.6.1, and whatever `Connection` names), nor `Host` or any
forwarding header a client made up: `X-Forwarded-For`, `-Proto`, `-Host` and `-Prefix` are
set from the service's own view. The upstream's cookies, HSTS, CORS and CSP headers are
dropped: the browser sees our origin, whose policy is ours.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes, urlsplit

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROPPED = HOP_BY_HOP | {
    "host",
    "cookie",
    "authorization",
    "dpop",
    "x-csrf",
    "content-length",  # set again for the body actually sent
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-request-id",  # ours is sent instead
}
_RESPONSE_DROPPED = HOP_BY_HOP | {
    "set-cookie",
    "set-cookie2",
    "strict-transport-security",
    "content-security-policy",
    "content-security-policy-report-only",
    "x-request-id",  # ours is sent instead
    "server",  # our server sets its own, and its own date
    "date",
}
_ENCODED_ESCAPE = re.compile(rb"%(2e|2f|5c|00)|%25(2e|2f|5c)", re.IGNORECASE)
_CONTROL = re.compile(rb"[\x00-\x20\x7f]")


class PathRefused(ValueError):
    """The path could leave the route's prefix; the message says which rule, never the path."""


def remote_path(raw_rest: bytes) -> str:
    """The raw path below `/remote/NAME/`, checked, as it will be forwarded (still encoded)."""
    if _CONTROL.search(raw_rest) or b"\\" in raw_rest:
        raise PathRefused("the path holds a control character, space or backslash")
    if _ENCODED_ESCAPE.search(raw_rest):
        raise PathRefused("the path holds an encoded dot, slash, backslash or NUL")
    if raw_rest.startswith(b"/") or b"//" in raw_rest:
        raise PathRefused("the path holds an empty segment (//)")
    first = raw_rest.split(b"/", 1)[0]
    if b"@" in raw_rest or b":" in first:
        raise PathRefused("the path names a user or a host")
    for segment in raw_rest.split(b"/"):
        if unquote_to_bytes(segment) in (b".", b".."):
            raise PathRefused("the path holds a dot segment")
    try:
        return raw_rest.decode("ascii")
    except UnicodeDecodeError:
        raise PathRefused("the path holds bytes that are not percent-encoded") from None


def upstream_url(base: str, path: str, raw_query: bytes) -> str:
    """The upstream URL of a checked path: the route's base, the path, the query as sent."""
    url = f"{base}/{path}"
    if raw_query:
        url += "?" + raw_query.decode("latin-1")
    # The checks above leave no way out of the base; this says so should they ever change.
    if not urlsplit(url).path.startswith(_base_path(base)):
        raise PathRefused("the path leaves the route")
    return url


@functools.lru_cache(maxsize=256)
def _base_path(base: str) -> str:
    return urlsplit(base).path


def _named_by_connection(headers: Iterable[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named |= {token.strip().lower() for token in value.split(",") if token.strip()}
    return named


def request_headers(
    headers: list[tuple[str, str]],
    *,
    client: str | None,
    public_url: str | None,
    prefix: str,
    request_id: str | None,
) -> list[tuple[str, str]]:
    """The headers sent upstream: the browser's minus what never leaves, plus ours."""
    dropped = _REQUEST_DROPPED | _named_by_connection(headers)
    kept = [(name, value) for name, value in headers if name.lower() not in dropped]
    if client:
        kept.append(("X-Forwarded-For", client))
    if public_url:
        parts = urlsplit(public_url)
        kept += [("X-Forwarded-Proto", parts.scheme), ("X-Forwarded-Host", parts.netloc)]
    kept.append(("X-Forwarded-Prefix", prefix.rstrip("/")))
    if request_id:
        kept.append(("X-Request-ID", request_id))
    return kept


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers the browser gets: minus cookies, HSTS, CORS, CSP, hop-by-hop."""
    listed = list(headers)
    dropped = _RESPONSE_DROPPED | _named_by_connection(listed)
    return [
        (name, value)
        for name, value in listed
        if (low := name.lower()) not in dropped and not low.startswith("access-control-")
    ]
