"""What `/openapi.json` says a route under `requires` accepts on this instance: a bearer
token (unless DPOP_MODE=required), a DPoP-bound token with its proof (unless DPOP_MODE=off),
the session cookie with its CSRF header (cookie mode). Each is one alternative in every
such operation's `security`; the document lists only what the instance takes.

OpenAPI has no DPoP type: the token is `type: http, scheme: DPoP` (the Authorization
scheme) and the `DPoP` proof header is described there rather than declared as a
parameter: a proof is new for every request, so a generated one (a client generator's, or
schemathesis's in tests/test_fuzz.py) could only be refused. The cookie's `X-CSRF: 1` is a
scheme of its own, required together with the cookie, so it can be set once in Swagger UI's
"Authorize" dialog.
"""

from __future__ import annotations

from typing import Any

from app.auth.dpop import ALGS
from app.auth.proofkeys import ALGORITHMS
from app.core.settings.dpop import DPoPSettings
from app.http.openapi import BEARER_SCHEME, Access

_STRING = {"type": "string"}
_ALG_LIST = ", ".join(ALGORITHMS[:-1]) + " or " + ALGORITHMS[-1]


def _dpop_scheme(settings: DPoPSettings) -> dict[str, Any]:
    required = settings.mode == "required"
    text = (
        "A DPoP-bound Auth0 access token (RFC 9449), sent as `Authorization: DPoP <token>` "
        "with a `DPoP` request header: a new proof for every request, a JWT with header "
        f"`typ: dpop+jwt`, an `alg` of {_ALG_LIST} and the client's public `jwk`, "
        "and the claims `jti` (new each time), `htm` (the method), `htu` (the URL on the "
        "service's public origin, without query or fragment), `iat` (now) and `ath` "
        "(base64url SHA-256 of the token). A proof is refused with 401 "
        '`error="invalid_dpop_proof"`. docs/dpop.md says what to send. '
        + (
            "DPOP_MODE=required: bearer tokens are refused. "
            if required
            else "A token bound to a key (`cnf`) is accepted only this way, never as a bearer "
            "token. "
        )
    )
    if settings.nonce:
        text += (
            'DPOP_NONCE is on: a proof without the current nonce gets 401 `error="use_dpop_nonce"` '
            "and a `DPoP-Nonce` header; sign the proof again with that `nonce` claim."
        )
    return {"type": "http", "scheme": "DPoP", "description": text.strip()}


def _cookie_schemes(cookie: str, csrf_header: str) -> dict[str, dict[str, Any]]:
    return {
        "cookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": cookie,
            "description": "The session cookie of a browser signed in through /auth/login "
            f"(cookie mode); the browser sends it, a page cannot read it. Every call with it "
            f"must also send `{csrf_header}: 1` (403 otherwise), and a cross-site one "
            "(`Sec-Fetch-Site: cross-site`) is refused. Used only when the request has no "
            "Authorization header.",
        },
        "csrf": {
            "type": "apiKey",
            "in": "header",
            "name": csrf_header,
            "description": "Must be `1` on every call that uses the session cookie.",
        },
    }


def _challenge(settings: DPoPSettings) -> dict[str, Any]:
    if settings.mode == "off":
        text = 'The RFC 6750 challenge, e.g. `Bearer realm="api", error="invalid_token"`.'
    elif settings.mode == "allowed":
        text = (
            'The RFC 6750 challenge (`Bearer realm="api", ...`), or the RFC 9449 one '
            f'(`DPoP algs="{ALGS}", ...`) to a request that used the DPoP scheme or sent a '
            "`DPoP` header."
        )
    else:
        text = f'The RFC 9449 challenge: `DPoP algs="{ALGS}", realm="api", ...`.'
    return {"description": text, "required": True, "schema": _STRING}


def api_access(
    dpop: DPoPSettings, *, cookie: str | None = None, csrf_header: str = "X-CSRF"
) -> Access:
    """The `Access` for DPOP_MODE and the nonce setting in `dpop`; `cookie` names the session
    cookie when cookie mode is on."""
    schemes: dict[str, dict[str, Any]] = {}
    alternatives: list[tuple[str, ...]] = []
    if dpop.mode != "required":
        schemes["bearerAuth"] = dict(BEARER_SCHEME)
        alternatives.append(("bearerAuth",))
    if dpop.mode != "off":
        schemes["dpop"] = _dpop_scheme(dpop)
        alternatives.append(("dpop",))
    if cookie is not None:
        schemes.update(_cookie_schemes(cookie, csrf_header))
        alternatives.append(("cookie", "csrf"))
    headers = {"WWW-Authenticate": _challenge(dpop)}
    if dpop.mode != "off" and dpop.nonce:
        headers["DPoP-Nonce"] = {
            "description": 'The nonce to sign into the next proof (with `error="use_dpop_nonce"`).',
            "schema": _STRING,
        }
    return Access(schemes, tuple(alternatives), headers)
