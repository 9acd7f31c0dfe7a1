"""Secrets of cookie sessions: random cookie values, their hashes, and tokens encrypted at rest.

Cookie values are 256 random bits; the database stores only their SHA-256, so a leaked
table cannot be replayed as cookies. Tokens (access, refresh, ID) and PKCE verifiers are
encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under SESSION_ENCRYPTION_KEY: a
`MultiFernet` encrypts with the first key and decrypts with any, so a new key is put first
and an old one removed once the sessions it encrypted have expired (docs/sessions.md).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.core.settings.values import parse_fernet_keys

# `secrets.token_urlsafe(32)`: 43 characters of base64url.
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")


class Undecryptable(Exception):
    """A stored value no configured key opens (a key removed too early, or tampering)."""


def new_secret() -> str:
    """A fresh cookie value, state, nonce or PKCE verifier: 256 random bits, base64url."""
    return secrets.token_urlsafe(32)


def cookie_hash(value: str) -> bytes | None:
    """What the database stores for a cookie value; None for a value we never issue."""
    if not _COOKIE_VALUE.fullmatch(value):
        return None
    return hashlib.sha256(value.encode()).digest()


def new_cookie() -> tuple[str, bytes]:
    """A fresh cookie value and the hash the database stores for it."""
    value = new_secret()
    return value, hashlib.sha256(value.encode()).digest()


class TokenBox:
    """Encrypts and decrypts tokens with the configured keys; one per process."""

    def __init__(self, keys_setting: str) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in parse_fernet_keys(keys_setting)])

    def seal(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def open(self, sealed: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(sealed)).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise Undecryptable("a stored token cannot be decrypted with any key") from None
