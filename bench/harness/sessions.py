"""Cookie sessions for the cookie-authenticated read, made without a browser.

Each session is a real sign-in through the service and the stand-in tenant, as a browser
makes it: `GET /auth/login` (its transaction cookie kept), the tenant's `/authorize` form
posted with a user name, then `GET /auth/callback` with the code, which starts the session
and sets `__Host-bff_session`. The user name is the part of a benchmark user's `sub` after
`auth0|`, so the session's access token names the same user, with the same patients, as
the bearer read's token; an organisation's user signs in to that organisation.

The cookie is read from `Set-Cookie` by hand: a cookie jar would not send a `Secure`
cookie over the loopback's plain HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlsplit

import httpx

from bench.harness.data import User

SESSION_COOKIE = "__Host-bff_session"


class SignInFailed(RuntimeError):
    pass


def _cookies(response: httpx.Response) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


def _redirect(response: httpx.Response, step: str) -> str:
    if response.status_code not in (302, 303) or "location" not in response.headers:
        raise SignInFailed(f"{step}: HTTP {response.status_code}, {response.text[:200]}")
    return response.headers["location"]


def sign_in(client: httpx.Client, service: str, user: User) -> str:
    """One session for `user` through `service`'s /auth/login; its cookie value."""
    query = {"return_to": "/"}
    if user.org_id:
        query["organization"] = user.org_id
    login = client.get(f"{service}/auth/login", params=query)
    authorize = _redirect(login, "GET /auth/login")
    transaction = _cookies(login)
    form = dict(parse_qsl(urlsplit(authorize).query))
    form["username"] = user.sub.split("|", 1)[1]
    tenant = authorize.split("?", 1)[0]
    callback = _redirect(client.post(tenant, data=form), "POST /authorize")
    if not callback.startswith(service):
        raise SignInFailed(f"the tenant sent the browser elsewhere: {callback.split('?')[0]}")
    done = client.get(callback, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in
                                                               transaction.items())})  # fmt: skip
    _redirect(done, "GET /auth/callback")
    cookie = _cookies(done).get(SESSION_COOKIE)
    if not cookie:
        raise SignInFailed("GET /auth/callback set no session cookie")
    return cookie


def make_sessions(service: str, users: Sequence[User], *, parallel: int = 4) -> list[str]:
    """A session cookie for every user in `users`, in order (a few sign-ins at a time)."""
    with (
        httpx.Client(timeout=10.0, follow_redirects=False) as client,
        ThreadPoolExecutor(parallel) as pool,
    ):
        return list(pool.map(lambda user: sign_in(client, service, user), users))


def write_cookies(path: str, cookies: Sequence[str], users: Sequence[User]) -> None:
    """The file bench/wrk/rotate.lua rotates through: `<cookie>\\t<scope>` a line."""
    with open(path, "w", encoding="utf-8") as out:
        for cookie, user in zip(cookies, users, strict=True):
            out.write(f"{cookie}\t{user.scope}\n")
