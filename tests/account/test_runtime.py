"""The account's per-process runtime (app/account/runtime.py) and its keyed email hash
(app/account/emails.py): the after-response runner, and what the settings make of them."""

from __future__ import annotations

import asyncio

from app.account.emails import email_hash
from app.account.runtime import AfterResponse, account_runtime
from app.core.settings import Settings
from app.ratelimit.buckets import Rate


class TestEmailHash:
    def test_keyed_stable_and_case_insensitive(self) -> None:
        one = email_hash(b"k1", "Ada@Example.com ")
        assert one == email_hash(b"k1", "ada@example.com")
        assert one != email_hash(b"k2", "ada@example.com")
        assert "ada" not in one and len(one) == 64


class TestAfterResponse:
    async def test_bounded(self) -> None:
        runner = AfterResponse(limit=1)
        gate = asyncio.Event()
        assert runner.spawn(gate.wait)
        assert not runner.spawn(gate.wait)
        assert runner.dropped == 1
        gate.set()
        await runner.drain()


class TestAccountRuntimeFromSettings:
    def test_defaults(self, settings: Settings) -> None:
        services = account_runtime(settings)
        assert services.limiter.password_reset_per_email == Rate(5, 900)
        assert services.limiter.password_reset_per_ip == Rate(20, 900)
        assert services.limiter.verification_email_per_user == Rate(3, 900)
        assert services.revocations.leeway_seconds == settings.auth.leeway_seconds
        assert [p.name for p in services.purges()] == [
            "revocations",
            "flow rate limits",
            "auth0 log ids",
            "sign-in sessions",
        ]
