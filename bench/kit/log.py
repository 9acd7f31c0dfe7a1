"""The harness's progress line: `[bench HH:MM:SS] message`, flushed at once (runs are long and
watched as they go)."""

from __future__ import annotations

import time


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
