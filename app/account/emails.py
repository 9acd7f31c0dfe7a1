"""Email addresses, never stored in clear: a keyed hash links one person's requests in the
audit log and the rate limits without revealing the address."""

from __future__ import annotations

import hashlib
import hmac

# Derives the key of `email_hash` from the service's secret (`Settings.derived_key`).
EMAIL_HASH_KEY = "email-hash"


def normalise_email(email: str) -> str:
    return email.strip().lower()


def email_hash(key: bytes, email: str) -> str:
    """A keyed hash of an address: the same person's requests can be linked in the audit
    log and rate-limited, but the address cannot be recovered or guessed by hashing a list
    of candidates without the key."""
    return hmac.new(key, normalise_email(email).encode(), hashlib.sha256).hexdigest()
