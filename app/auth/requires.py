"""Route permissions: `requires(...)` on an endpoint.

    @requires("read:patients")
    async def list_patients(request: Request) -> Response:
        scope = principal(request).org_id or principal(request).sub

Only decorated endpoints read the `Authorization` header or touch the verifier, so public
routes (`/healthz`, the password-reset form) work with Auth0 down or a garbage header.

What it needs at run time is the process's `AuthRuntime` (app/auth/runtime.py): the
verifier, the route policy, the per-user limit, and, when they are wired, the cookie sessions
and a `DenialHook`, which every 401/403 raised here first awaits with the request, the
principal (or None) and the error. The hook runs before the error response is sent; if it
fails, the failure is logged and the denial still goes out.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from app.auth.dpop import Presented, as_dpop_refusal
from app.auth.runtime import AuthRuntime, CookieSessions, auth_of
from app.auth.tokens import Principal
from app.core.errors import (
    AppError,
    EmailNotVerified,
    Forbidden,
    InsufficientScope,
    StepUpRequired,
    Unauthorized,
)
from app.core.settings.auth import AuthSettings

logger = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class AuthRequirement:
    """What a route needs; read by the OpenAPI generator from `endpoint.__auth__`."""

    permissions: tuple[str, ...] = ()
    verified_email: bool = False
    mfa: bool = False


def credentials(conn: HTTPConnection, *, dpop: bool = False) -> tuple[str, str]:
    """The request's Authorization scheme (lower case) and token, or `Unauthorized` (bare
    challenge when none sent). `dpop`: the DPoP scheme is accepted beside Bearer."""
    values = conn.headers.getlist("authorization")
    if not values:
        raise Unauthorized(error=None)
    if len(values) > 1:
        raise Unauthorized("send exactly one Authorization header")
    scheme, _, token = values[0].partition(" ")
    scheme = scheme.lower()
    if scheme != "bearer" and not (dpop and scheme == "dpop"):
        raise Unauthorized(
            f"the Authorization scheme must be {'Bearer or DPoP' if dpop else 'Bearer'}"
        )
    token = token.strip()
    if not token:
        raise Unauthorized(f"the {'bearer' if scheme == 'bearer' else 'DPoP'} token is empty")
    return scheme, token


def presented(conn: HTTPConnection, scheme: str, token: str) -> Presented:
    """What the request presents for DPoP: its method, raw path (the query is in another
    field of the ASGI scope) and the origin of the socket it came in on."""
    scope = conn.scope
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"])
    local = ""
    if server := scope.get("server"):
        host, port = server
        host = f"[{host}]" if ":" in host else host
        local = f"{scope['scheme']}://{host}" + (f":{port}" if port else "")
    return Presented(scheme, token, conn.headers.getlist("dpop"), scope["method"], path, local)


def check_requirement(
    principal: Principal, requirement: AuthRequirement, policy: AuthSettings | None = None
) -> None:
    """Raise the 403 a frontend can act on, checked in the order that makes sense to fix.

    Besides what the route declares, settings may demand a verified email
    (REQUIRE_VERIFIED_EMAIL_FOR) or MFA (REQUIRE_MFA_FOR) for routes needing a permission.
    """
    missing = [p for p in requirement.permissions if p not in principal.permissions]
    if missing:
        raise InsufficientScope(" ".join(requirement.permissions))
    routed = set(requirement.permissions)
    needs_email = requirement.verified_email or bool(
        policy and routed & set(policy.require_verified_email_for)
    )
    needs_mfa = requirement.mfa or bool(policy and routed & set(policy.require_mfa_for))
    if needs_email and principal.email_verified is not True:
        if principal.email_verified is None:
            raise EmailNotVerified("the access token does not say the email address is verified")
        raise EmailNotVerified()
    if needs_mfa and "mfa" not in principal.amr:
        raise StepUpRequired()


async def authenticate(request: Request, requirement: AuthRequirement) -> Principal:
    """Verify the request's token (and DPoP proof) against `requirement`; store the result on
    the request. A cookie session's token is the service's own, used in process: it needs
    no proof, bound or not."""
    runtime = auth_of(request)
    found: Principal | None = None
    sessions = _cookie_sessions(request, runtime)
    proofs = runtime.proofs
    dpop_challenge = False
    try:
        if sessions is not None:  # the session cookie, when the request sends no token
            found = await runtime.verifier.verify_access_token(await sessions.access_token(request))
        else:
            if proofs is not None:
                sent = request.headers.get("authorization", "").partition(" ")[0].lower()
                dpop_challenge = proofs.asked_for(sent, request.headers.getlist("dpop"))
            scheme, token = credentials(request, dpop=proofs is not None)
            found = await runtime.verifier.verify_access_token(token)
            if proofs is not None:
                shown = presented(request, scheme, token)
                request.state.dpop_nonce = await proofs.check(shown, found)
        if runtime.per_user_limit is not None:  # before the permission check: 403s count too
            runtime.per_user_limit.enforce(found.sub)
        check_requirement(found, requirement, runtime.policy)
    except (Unauthorized, Forbidden) as error:  # a 503 is not a denial
        if dpop_challenge:
            as_dpop_refusal(error)
        if sessions is not None and found is None:
            await sessions.refused(request, error)
        await _report_denial(runtime, request, found, error)
        raise
    request.state.principal = found
    return found


def _cookie_sessions(request: Request, runtime: AuthRuntime) -> CookieSessions | None:
    """The cookie sessions, when cookie mode is on and this request should use them: it
    carries the session cookie and no Authorization header."""
    sessions = runtime.sessions
    if sessions is None or request.headers.getlist("authorization"):
        return None
    return sessions if sessions.has_cookie(request) else None


def requires(
    *permissions: str, verified_email: bool = False, mfa: bool = False
) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint that needs a valid token, and optionally more.

    `requires()` needs only a valid token; `requires("read:patients")` also that
    permission (all listed permissions are needed); `verified_email=True` a true
    email-verified claim; `mfa=True` an `amr` containing "mfa" (else RFC 9470 step-up).
    """
    requirement = AuthRequirement(tuple(permissions), verified_email, mfa)

    def decorator(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            await authenticate(request, requirement)
            response = await endpoint(request)
            nonce = getattr(request.state, "dpop_nonce", None)
            if nonce is not None:  # the proof used the previous nonce: here is the current one
                response.headers["DPoP-Nonce"] = nonce
            return response

        cast(Any, wrapper).__auth__ = requirement
        return wrapper

    return decorator


def auth_requirement(endpoint: Callable[..., Any]) -> AuthRequirement | None:
    """The requirement `requires` attached to an endpoint; None for a public one."""
    found = getattr(endpoint, "__auth__", None)
    return found if isinstance(found, AuthRequirement) else None


def principal(request: Request) -> Principal:
    """The verified caller; only valid inside an endpoint decorated with `requires`."""
    found = getattr(request.state, "principal", None)
    if not isinstance(found, Principal):
        raise RuntimeError("principal() used on a route without @requires")
    return found


async def _report_denial(
    runtime: AuthRuntime, request: Request, found: Principal | None, error: AppError
) -> None:
    if runtime.on_denied is None:
        return
    try:
        await runtime.on_denied(request, found, error)
    except Exception:
        logger.exception("recording a denied request failed")
