"""Target URIs compared as RFC 3986 section 6 says: what a DPoP proof's `htu` names and the
URI a request was sent to are the same resource when they normalise alike."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_URI_CHARACTERS = re.compile(r"[\x21-\x7e]+")


def normalize_uri(uri: str) -> str | None:
    """An absolute http(s) URI without query or fragment, normalised as RFC 3986 sections
    6.2.2 and 6.2.3 say (scheme and host in lower case, no default port, percent-encodings
    in upper case and unreserved characters decoded, dot segments removed, an empty path
    as "/"); None when `uri` is not one."""
    if not _URI_CHARACTERS.fullmatch(uri) or "?" in uri or "#" in uri:
        return None
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # a port that is not a number, or a broken IPv6 literal
        return None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != (443 if parts.scheme == "https" else 80):
        host += f":{port}"
    return f"{parts.scheme}://{host}{_normalize_path(parts.path)}"


def _normalize_path(path: str) -> str:
    def percent(match: re.Match[str]) -> str:
        value = int(match.group(1), 16)
        return chr(value) if value in _UNRESERVED else f"%{value:02X}"

    path = _PERCENT.sub(percent, path) or "/"
    kept: list[str] = []
    segments = path.split("/")[1:]
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments and segments[-1] in (".", ".."):
        kept.append("")
    return "/" + "/".join(kept)
