"""python -m bench [--quick] [--profile SECONDS] [...]: see docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.kit.loopback import check_loopback

ALL_SCENARIOS = (
    "read",
    "read_dpop",
    "read_cookie",
    "read_cold",
    "me",
    "post",
    "profile",
    "insert",
    "proxy",
)


def _list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        return [kind(item) for item in text.split(",") if item.strip()]

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 min)")
    parser.add_argument("--duration", type=float, help="seconds per measured cell (5)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds, first round (2)")
    parser.add_argument("--rounds", type=int, help="measure every cell this often (3)")
    parser.add_argument("--pool-max", type=int, default=10, help="DB pool size per process")
    parser.add_argument(
        "--management-rate",
        default="2/1",
        help="ours' Auth0 Management API budget, AUTH0_MANAGEMENT_RATE (2/1: the free plan's "
        "limit; 15/1 a paid self-service plan's)",
    )
    parser.add_argument("--connections", type=_list(int), help="wrk connections (32,64)")
    parser.add_argument("--workers", type=_list(int), default=[1, 2], help="uvicorn workers")
    parser.add_argument("--targets", type=_list(str), default=["floor", "ours", "peer"])
    parser.add_argument("--scenarios", type=_list(str), default=list(ALL_SCENARIOS))
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000, help="users = scopes = tokens")
    parser.add_argument("--cold-tokens", type=int, help="never-seen tokens to mint (30000)")
    parser.add_argument(
        "--sessions",
        type=int,
        default=200,
        help="cookie sessions the cookie read rotates through, signed in through the "
        "stand-in tenant's form (200; at most --users)",
    )
    parser.add_argument(
        "--audit-events",
        type=int,
        metavar="N",
        help="grow the audit log by N synthetic events before measuring "
        "(2000000; --quick: 100000; 0: no growth)",
    )
    parser.add_argument(
        "--audit-indexes",
        choices=("grow", "rebuild"),
        default="grow",
        help="grow: the indexes in place while the events load, so they split as under "
        "traffic (default); rebuild: dropped and built after the load (faster, but packed "
        "tighter than a production log's)",
    )
    parser.add_argument(
        "--open-loop",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="then read at a fixed rate of SHARE x our read's saturation throughput, ours "
        "and the floor (0.5; 0: skip)",
    )
    parser.add_argument("--open-loop-connections", type=int, default=64, metavar="N",
                        help="connections of the fixed-rate load (64)")  # fmt: skip
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL"),
        help="a Postgres on loopback where databases may be created "
        "(default: BENCH_ADMIN_URL, else 127.0.0.1:5432, else an embedded server)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for our service, and base's (repeatable)",
    )
    parser.add_argument(
        "--base-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for base only, after --service-env (repeatable): with --base the same "
        "checkout, it measures one setting's cost in one run",
    )
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                        help="then profile our read path with py-spy for SECONDS")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--markdown", type=Path, help="write the report here too")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    parser.add_argument(
        "--db-role-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a diagnostic: a Postgres setting for every session of the app role in the run's "
        "database, all targets (e.g. synchronous_commit=off; repeatable)",
    )
    parser.add_argument(
        "--base",
        type=Path,
        metavar="DIR",
        help="also measure the service of another checkout (e.g. a git worktree of the "
        "commit before a change) as target `base`, in the same run: ours' read, DPoP read, "
        "profile and post next to it",
    )
    return parser


def finish_options(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.duration = args.duration or (3.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.rounds = args.rounds or (1 if quick else 3)
    args.connections = args.connections or ([64] if quick else [32, 64])
    if args.cold_tokens is None:
        args.cold_tokens = 3_000 if quick else 30_000
    if args.audit_events is None:
        args.audit_events = 100_000 if quick else 2_000_000
    if args.audit_events < 0 or args.open_loop < 0 or args.open_loop_connections < 1:
        raise SystemExit("--audit-events and --open-loop take no negative values")
    if args.sessions < 1:
        raise SystemExit("--sessions wants at least 1")
    args.sessions = min(args.sessions, args.users)
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    unknown |= set(args.targets) - {"floor", "ours", "peer", "base"}
    if args.base is not None:
        if not (args.base / "app" / "__main__.py").is_file():
            raise SystemExit(f"--base {args.base}: no app/ there")
        args.base = args.base.resolve()
        if "base" not in args.targets:
            args.targets.append("base")
    elif "base" in args.targets:
        raise SystemExit("target base needs --base DIR")
    if unknown:
        raise SystemExit(f"unknown scenario or target: {', '.join(sorted(unknown))}")
    for item in [*args.service_env, *args.base_env, *args.db_role_setting]:
        if "=" not in item:
            raise SystemExit(f"--service-env wants KEY=VALUE, not {item!r}")
    if args.base_env and not args.base:
        raise SystemExit("--base-env needs --base DIR")
    return args


@contextlib.contextmanager
def admin_database(url: str | None) -> Iterator[str]:
    import asyncio

    from devkit.db import LOCAL_SERVER_URL, embedded_server, server_answers

    if url:
        check_loopback(url)
        yield url
    elif asyncio.run(server_answers(LOCAL_SERVER_URL)):
        yield LOCAL_SERVER_URL
    else:
        with embedded_server() as embedded:
            yield embedded


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = finish_options(build_parser().parse_args(argv))
    from bench.kit.deps import MissingTool, ensure_py_spy, ensure_python_packages, ensure_wrk

    try:
        ensure_python_packages()
        ensure_wrk()
        if args.profile:
            ensure_py_spy()
    except MissingTool as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from bench.harness.model import Run
    from bench.harness.report import markdown
    from bench.harness.runner import execute, results_json
    from bench.kit.log import log

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    run_dir = Path(tempfile.mkdtemp(prefix="bff-bench-"))
    run = Run(args, run_dir)
    try:
        with admin_database(args.admin_url) as admin_url:
            args.admin_url = admin_url
            execute(run)
    except KeyboardInterrupt:
        log("interrupted: servers stopped, database dropped")
        return 130
    finally:
        (run_dir / "results.json").write_text(json.dumps(results_json(run), indent=1, default=str))
        if args.json:
            shutil.copy(run_dir / "results.json", args.json)
        if args.keep:
            log(f"logs and results kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    report = markdown(run)
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
