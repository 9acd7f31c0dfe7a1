"""The stand-in tenant's HTML pages: the sign-in form, the error page, "signed out".

Every value is HTML-escaped; the pages run no script, and their Content-Security-Policy
allows their one inline style (by hash) and a form post to the tenant itself and to the
redirect URI's origin (browsers check the redirect after a post against `form-action`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from html import escape
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse

_STYLE = (
    "body{font-family:system-ui,sans-serif;background:#f4f4f6;margin:0}"
    "main{max-width:22rem;margin:4rem auto;padding:2rem;background:#fff;border-radius:8px}"
    "label,input,button{display:block;width:100%;box-sizing:border-box;margin-top:.5rem}"
    "input,button{padding:.6rem;font-size:1rem}"
    "button{background:#3b5bdb;color:#fff;border:0;border-radius:4px;margin-top:1rem}"
    ".note{color:#555;font-size:.85rem}.error{color:#b00020}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def safe_url(url: str) -> str | None:
    """`url` if it is an absolute http(s) URL with a plain host (safe in a CSP) and no
    fragment (a redirect URI must not have one), else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    plain = parts.scheme in ("http", "https") and _HOST.fullmatch(parts.netloc)
    return url if plain and not any(c in url for c in " \t\r\n;,'\"<>\\#") else None


def _page(title: str, body: str, status: int, form_action: str = "'none'") -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} | Stand-in tenant</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    csp = (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action {form_action}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    headers = {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(html, status, headers)


def sign_in_page(
    params: Mapping[str, str],
    forwarded: Iterable[str],
    message: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The sign-in form ("Sign up" with `screen_hint=signup`), posting back to /authorize
    with the authorize request's parameters in hidden fields."""
    title = "Sign up" if params.get("screen_hint") == "signup" else "Log in"
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(params[name])}">'
        for name in forwarded
        if name in params
    )
    error = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    parts = urlsplit(params["redirect_uri"])
    body = (
        f"<h1>{title}</h1>"
        f'<p class="note">to continue to {escape(params["client_id"])}</p>{error}'
        f'<form method="post" action="/authorize">{hidden}'
        '<label for="username">User name</label>'
        '<input id="username" name="username" autocomplete="username" required autofocus>'
        '<button type="submit">Continue</button></form>'
        '<p class="note">Development tenant: any user name signs in (a new one signs up); '
        "&ldquo;deny&rdquo; refuses.</p>"
    )
    return _page(title, body, status, f"'self' {parts.scheme}://{parts.netloc}")


def error_page(error: str, description: str) -> HTMLResponse:
    """Auth0's answer to an authorize request it cannot redirect back: a 400 page."""
    body = (
        "<h1>Oops!, something went wrong</h1>"
        f'<p class="error"><strong>{escape(error)}</strong>: {escape(description)}</p>'
    )
    return _page("Error", body, 400)


def signed_out_page() -> HTMLResponse:
    return _page("Signed out", "<h1>You are signed out</h1>", 200)
