"""Auth0's log type codes, and the audit action and outcome each becomes.

Actions are `idp.*` (action codes are `[a-z_]` segments, so "auth0" cannot be one), e.g.
`idp.login.failed`; unknown codes are kept as `idp.log.other`, failed by their leading `f`.
"""

from __future__ import annotations

from app.audit.events import Outcome

# Auth0 log type code -> (action, outcome, reason for a non-success outcome).
EVENT_TYPES: dict[str, tuple[str, Outcome, str | None]] = {
    "s": ("idp.login.success", "success", None),
    "scoa": ("idp.login.success", "success", None),
    "f": ("idp.login.failed", "failed", "sign-in failed"),
    "fp": ("idp.login.failed", "failed", "wrong password"),
    "fu": ("idp.login.failed", "failed", "unknown email or username"),
    "fc": ("idp.login.failed", "failed", "connector failure"),
    "fco": ("idp.login.failed", "failed", "origin not allowed"),
    "fcoa": ("idp.login.failed", "failed", "cross-origin sign-in failed"),
    "limit_wc": ("idp.login.blocked", "denied", "account blocked after failed attempts"),
    "limit_sul": ("idp.login.blocked", "denied", "user blocked after failed attempts"),
    "limit_mu": ("idp.login.blocked", "denied", "IP address blocked"),
    "pwd_leak": ("idp.login.breached_password", "denied", "breached password"),
    "ss": ("idp.signup.success", "success", None),
    "fs": ("idp.signup.failed", "failed", "sign-up failed"),
    "slo": ("idp.logout.success", "success", None),
    "flo": ("idp.logout.failed", "failed", "sign-out failed"),
    "gd_auth_succeed": ("idp.mfa.success", "success", None),
    "gd_auth_failed": ("idp.mfa.failed", "failed", "wrong second factor"),
    "gd_auth_rejected": ("idp.mfa.failed", "denied", "second factor rejected"),
    "gd_otp_rate_limit_exceed": ("idp.mfa.failed", "denied", "too many second-factor codes"),
    "gd_enrollment_complete": ("idp.mfa.enrolled", "success", None),
    "ssa": ("idp.silent_auth.success", "success", None),
    "fsa": ("idp.silent_auth.failed", "failed", "silent authentication failed"),
    "scp": ("idp.password_change.success", "success", None),
    "fcp": ("idp.password_change.failed", "failed", "password change failed"),
    "scpr": ("idp.password_reset.requested", "success", None),
    "fcpr": ("idp.password_reset.failed", "failed", "password reset request failed"),
    "sv": ("idp.email_verification.success", "success", None),
    "fv": ("idp.email_verification.failed", "failed", "email verification failed"),
    "svr": ("idp.email_verification.requested", "success", None),
    "fvr": ("idp.email_verification.failed", "failed", "verification email failed"),
    "seacft": ("idp.token_exchange.success", "success", None),
    "feacft": ("idp.token_exchange.failed", "failed", "code exchange failed"),
    "sertft": ("idp.refresh_token.success", "success", None),
    "fertft": ("idp.refresh_token.failed", "failed", "refresh token exchange failed"),
}
OTHER_ACTION = "idp.log.other"
# The log types after which a user's record at Auth0 may differ from our copy of it: a
# Management API operation (`sapi`), an email, password, phone number or user name changed,
# an email verified. Their users' cached profiles are refetched (app/account/cached_profiles).
PROFILE_CHANGING = frozenset({"sapi", "sce", "scp", "scpn", "scu", "sv"})
# The actions that are sign-in history (GET /api/me/logins), besides the service's own.
SIGN_IN_ACTIONS = (
    "idp.login.success",
    "idp.login.failed",
    "idp.login.blocked",
    "idp.login.breached_password",
    "idp.signup.success",
    "idp.signup.failed",
    "idp.logout.success",
    "idp.logout.failed",
    "idp.mfa.success",
    "idp.mfa.failed",
)


def classify(code: str) -> tuple[str, Outcome, str | None]:
    """The audit action and outcome of an Auth0 log type; unknown codes by their letter."""
    known = EVENT_TYPES.get(code)
    if known is not None:
        return known
    if code.startswith("f"):
        return OTHER_ACTION, "failed", f"Auth0 log type {code}"
    return OTHER_ACTION, "success", None
