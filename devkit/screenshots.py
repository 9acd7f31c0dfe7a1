"""`python -m devkit.screenshots`: the console's main pages photographed at 1280 and 390 px
wide, from a freshly seeded dev database, into `docs/console/` (the README shows them).

It provisions a throwaway database (on the local Postgres at 127.0.0.1:5432 when it
answers, else an embedded one), starts `python -m app dev` against it, seeds it through
the service the way people would (members of the dev organisation create, search and read
patients; a clinician is refused the log), and then, in Debian's Chromium through
Playwright, signs in as the organisation's admin and photographs each page. Needs the dev
extra (playwright) and /usr/bin/chromium. The pictures hold only synthetic data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from devkit.db import (
    LOCAL_SERVER_URL,
    ProvisionedDatabase,
    drop,
    embedded_server,
    provision,
    server_answers,
)

CHROMIUM = "/usr/bin/chromium"
WIDTHS = (1280, 390)
ORG_LOGIN = "/auth/login?organization=org_dev&return_to="
PATIENTS = [
    ("Ada", "Lovelace", "1985-12-10"),
    ("Mary", "Seacole", "1975-11-23"),
    ("Florence", "Nightingale", "1990-05-12"),
    ("Elizabeth", "Blackwell", "2001-02-03"),
    ("James", "Barry", "1969-11-04"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _admin_url() -> Iterator[str]:
    if asyncio.run(server_answers(LOCAL_SERVER_URL)):
        yield LOCAL_SERVER_URL
        return
    with embedded_server() as url:
        yield url


REPO = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def _dev_server(db: ProvisionedDatabase) -> AsyncIterator[tuple[str, str]]:
    """`python -m app dev` on free ports against `db`, until its banner; (base, tenant)."""
    port, tenant_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "SESSION_"))}
    env |= {"DATABASE_URL": db.app_url, "MIGRATIONS_DATABASE_URL": db.owner_url}
    env["PYTHONPATH"] = str(REPO)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "dev", "--port", str(port), "--tenant-port", str(tenant_port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            if not line:
                raise SystemExit("the dev server stopped before its banner")
            if line.strip().startswith("Stop with Ctrl+C"):
                break
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{tenant_port}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _sign_in(page: Any, base: str, tenant: str, username: str, back: str) -> None:
    await page.goto(f"{base}{ORG_LOGIN}{back}")
    await page.wait_for_url(f"{tenant}/**")
    await page.fill("input[name=username]", username)
    await page.click("form [type=submit]")
    await page.wait_for_url(f"{base}{back}")


async def _call(page: Any, method: str, path: str, body: Any = None) -> Any:
    return await page.evaluate(
        """async ([method, path, body]) => {
            const init = {method, credentials: "same-origin", headers: {"X-CSRF": "1"}};
            if (body !== null) {
                init.headers["Content-Type"] = "application/json";
                init.body = JSON.stringify(body);
            }
            const response = await fetch(path, init);
            return [response.status, await response.text()];
        }""",
        [method, path, body],
    )


async def _seed(browser: Any, base: str, tenant: str) -> str:
    """Patients created, searched and read by carol; the clinician refused; one patient's
    id (the one read most)."""
    carol = await (await browser.new_context()).new_page()
    await _sign_in(carol, base, tenant, "carol", "/console/")
    ids = []
    for given, family, born in PATIENTS:
        status, text = await _call(
            carol, "POST", "/api/patients",
            {"given_name": given, "family_name": family, "birth_date": born},
        )  # fmt: skip
        assert status == 201, text
        ids.append(text.split('"id":"')[1].split('"')[0])
    for round_ in range(3):
        await _call(carol, "GET", "/api/patients?name=a")
        for patient_id in ids[: 5 - round_]:
            await _call(carol, "GET", f"/api/patients/{patient_id}")
    await _call(carol, "PATCH", f"/api/patients/{ids[0]}", {"phone": "+44 20 7946 0000"})
    clinician = await (await browser.new_context()).new_page()
    await _sign_in(clinician, base, tenant, "clinician", "/console/")
    for _ in range(4):
        await _call(clinician, "GET", "/api/audit-events")
        await clinician.goto(f"{base}/console/audit")
    return ids[0]


async def _photograph(admin_url: str, out: Path) -> list[Path]:
    from playwright.async_api import async_playwright

    taken: list[Path] = []
    db = await provision(admin_url, name="bff_screenshots")
    try:
        async with _dev_server(db) as (base, tenant), async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                patient = await _seed(browser, base, tenant)
                context = await browser.new_context(color_scheme="light")
                page = await context.new_page()
                await _sign_in(page, base, tenant, "admin", "/console/")
                await page.goto(f"{base}/console/audit?patient={patient}")
                first = await page.get_attribute("#events tbody a[aria-label^=Event]", "href")
                pages = {
                    "audit-log": "/console/audit",
                    "event": first,
                    "access-report": f"/console/patients/{patient}/access",
                    "integrity": "/console/integrity",
                    "activity": "/console/activity",
                    "member": "/console/members/auth0%7Ccarol",
                }
                for width in WIDTHS:
                    await page.set_viewport_size({"width": width, "height": 900})
                    for name, path in pages.items():
                        await page.goto(f"{base}{path}")
                        target = out / f"{name}-{width}.png"
                        await page.screenshot(path=str(target), full_page=True)
                        taken.append(target)
            finally:
                await browser.close()
    finally:
        await drop(db)
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/console"), help="where to write")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with _admin_url() as admin_url:
        for path in asyncio.run(_photograph(admin_url, args.out)):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
