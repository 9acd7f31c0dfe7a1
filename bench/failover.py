"""`python -m bench.failover`: a Postgres primary switch and a rolling restart under load
(bench/studies/failover.py has what it does; docs/reliability.md the figures)."""

from __future__ import annotations

from bench.studies.failover import main

if __name__ == "__main__":
    raise SystemExit(main())
