"""Loopback only: the benchmark never contacts anything but 127.0.0.1 (or a local socket).

`check_loopback` refuses a Postgres URL elsewhere; `http_call` and `free_port` are the
loopback's one-request client and port picker.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import parse_qsl, urlsplit

LOOPBACK = "127.0.0.1"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def check_loopback(url: str) -> None:
    parts = urlsplit(url)
    socket_dir = dict(parse_qsl(parts.query)).get("host", "")
    if parts.hostname in LOOPBACK_HOSTS or (not parts.hostname and not socket_dir):
        return
    if socket_dir.startswith("/"):
        return
    raise SystemExit("the benchmark only uses a Postgres on 127.0.0.1 (or a local socket)")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_call(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """(status, body) of one request on loopback; an HTTP error status is returned, not raised."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError("the benchmark only talks to 127.0.0.1")
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
