"""`return_to`: whatever a sign-in is asked to come back to, the browser lands on a path of
this site that no URL parser reads as another host, not even after one more decoding.

Each accepted value is checked with a WHATWG URL parser (ada, the parser of Node.js), as a
browser resolves a `Location`: against PUBLIC_URL, against another base (it must be a path,
never a network path), its resolved path read again as a reference, and once percent-decoded.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg
import httpx
import pytest
from ada_url import URL

from app.session.cookies import TX_COOKIE
from tests.helpers import assert_problem
from tests.session.support import (
    PUBLIC_URL,
    callback,
    set_cookies,
    start_login,
    tenant_redirect,
)

# Each would leave the site, or read as `//host`, at some step of some parser.
TRICKY = [
    "/.%2e/%2e%2e//evil.com",
    "/.%2E/%2E%2E//evil.com",
    "/%2e%2e//evil.com",
    "/..//evil.com",
    "/./..//evil.com",
    "/.//evil.com",
    "/x/..//evil.com",
    "/a/../..//evil.com",
    "/a/b/../../../../evil.com",
    "/%2e%2e%2f%2e%2e%2f/evil.com",
    "/..%2f..%2f/evil.com",
    "/%2f%2fevil.com",
    "/%2F/evil.com",
    "/%5c%5cevil.com",
    "/%5C/evil.com",
    "/%2e%2e%5c%2e%2e%5cevil.com",
    "/%2e/%2e%2e/%2f/evil.com",
    "/%252e%252e//evil.com",
    "/%252f%252fevil.com",
    "/x/%252e%252e/%252e%252e//evil.com",
    "/\uff0e\uff0e//evil.com",
    "/%ef%bc%8e%ef%bc%8e//evil.com",
    "/..;/evil.com",
    "/@evil.com",
    "/:@evil.com",
    "/http://evil.com",
    "/https:evil.com",
    "/?next=//evil.com",
    "/#//evil.com",
    "/path?x=/../..//evil.com#/..//evil.com",
    "/.",
    "/..",
    "/%2e",
    "/%2e%2e/",
]
# Refused outright: not a path of this site, or a control character once decoded.
REFUSED = [
    "https://evil.example/",
    "//evil.example/path",
    "/\\evil.example",
    "evil.example",
    "javascript:alert(1)",
    "/path with space",
    "",
    "/\t/evil.com",
    "/%09/evil.com",
    "/%0a/evil.com",
    "/%0D%0A/evil.com",
    "/%00/evil.com",
    "/%7f/evil.com",
]
ORIGIN = URL(PUBLIC_URL).origin
ELSEWHERE = "https://other.example/deep/path/here"


def stays_home(value: str) -> None:
    """`value` resolves on PUBLIC_URL's origin, however it is read."""
    resolved = URL(value, base=PUBLIC_URL)
    assert resolved.origin == ORIGIN, (value, resolved.href)
    assert not resolved.pathname.startswith("//"), (value, resolved.href)
    assert URL(resolved.pathname, base=PUBLIC_URL).origin == ORIGIN, (value, resolved.href)
    assert URL(value, base=ELSEWHERE).host == "other.example", value  # a path, not //host
    assert urlsplit(value).netloc == "" and urlsplit(unquote(value)).netloc == "", value
    assert URL(unquote(value), base=PUBLIC_URL).origin == ORIGIN, value


async def test_every_accepted_return_to_stays_on_this_site(
    app: httpx.AsyncClient, owner: asyncpg.Connection
) -> None:
    for value in TRICKY:
        await owner.execute("DELETE FROM login_transactions")
        await start_login(app, return_to=value)
        stored = await owner.fetchval("SELECT return_to FROM login_transactions")
        stays_home(stored)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/.%2e/%2e%2e//evil.com", "/evil.com"),
        ("/%2f%2fevil.com", "/evil.com"),
        ("/a//b/./c/../d?x=//y#/..//z", "/a/b/d?x=//y#/..//z"),
        ("/patients?page=2", "/patients?page=2"),
        ("/caf%C3%A9/%7Euser", "/caf%C3%A9/%7Euser"),
        ("/a/..", "/"),
    ],
)
async def test_the_sign_in_keeps_the_normalised_path_and_returns_there(
    app: httpx.AsyncClient, owner: asyncpg.Connection, given: str, kept: str
) -> None:
    started = await start_login(app, return_to=given)
    assert await owner.fetchval("SELECT return_to FROM login_transactions") == kept
    response = await callback(app, started, await tenant_redirect(started))
    assert response.status_code == 302, response.text
    assert response.headers["location"] == kept


@pytest.mark.parametrize("value", REFUSED)
async def test_a_return_to_that_is_no_path_of_this_site_is_400(
    app: httpx.AsyncClient, owner: asyncpg.Connection, value: str
) -> None:
    response = await app.get("/auth/login", params={"return_to": value})
    assert_problem(response, 400, "return_to")
    assert TX_COOKIE not in set_cookies(response)
    assert await owner.fetchval("SELECT count(*) FROM login_transactions") == 0
