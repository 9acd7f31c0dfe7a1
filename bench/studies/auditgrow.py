"""Grow a throwaway database's audit log alone, and say how long it took and its size.

    python -m bench.studies.auditgrow --events 200000 [--indexes rebuild]

The same growth as `python -m bench` runs before measuring (`bench.auditlog.grow`).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence

from bench.auditlog.grow import grow
from bench.kit.loopback import check_loopback
from devkit.db import LOCAL_SERVER_URL, drop, provision


def main(argv: Sequence[str] | None = None) -> int:
    """Grow a throwaway database's audit log and print how long it took and its size."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.auditgrow", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--indexes", choices=("grow", "rebuild"), default="grow")
    parser.add_argument("--admin-url", default=LOCAL_SERVER_URL)
    args = parser.parse_args(argv)
    check_loopback(args.admin_url)

    def log(message: str) -> None:
        print(f"[auditgrow {time.strftime('%H:%M:%S')}] {message}", flush=True)

    async def run() -> None:
        db = await provision(args.admin_url, f"bench_grow_{uuid.uuid4().hex[:6]}")
        try:
            grown = await grow(db.owner_url, args.events, indexes=args.indexes, log=log)
            print(grown.text(), flush=True)
        finally:
            await drop(db)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
