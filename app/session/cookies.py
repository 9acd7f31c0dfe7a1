"""The cookies of cookie mode: the session's and the sign-in transaction's, both `__Host-`
(Secure, Path=/, no Domain), HttpOnly and SameSite=Lax."""

from __future__ import annotations

SESSION_COOKIE = "__Host-bff_session"
TX_COOKIE = "__Host-bff_tx"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def set_cookie(name: str, value: str, max_age: int) -> str:
    """A `Set-Cookie` value for a `__Host-` cookie."""
    return f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax"


def clear_cookie(name: str) -> str:
    return f"{name}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"
