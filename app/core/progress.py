"""A long command's progress on a terminal: events done, rate and time left, redrawn in
place on stderr, then a last line when it ends. Nothing at all when stderr is not a
terminal (piped, a file, cron), so what a script reads stays the command's result."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`update(done)` as the work goes; `finish()` once at the end. `total` may be an
    estimate (or None: the time left is then unknown unless `update` is given the fraction
    done, as a reader of a file of known size can)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        every: float = 0.5,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.shown = _is_terminal(self.stream)
        self.label, self.total, self.every = label, total, every
        self.started = self.last = time.monotonic()
        self.done, self.fraction = 0, 0.0
        self.drawn, self.width = False, 0

    def update(self, done: int, fraction: float | None = None) -> None:
        """`done` events so far (and, when the total is unknown, the part of the work done)."""
        if not self.shown:
            return
        self.done = done
        if fraction is not None:
            self.fraction = fraction
        elif self.total:
            self.fraction = min(done / self.total, 1.0)
        now = time.monotonic()
        if self.drawn and now - self.last < self.every:
            return
        self.last = now
        self._draw(now, end="")

    def finish(self) -> None:
        """The last line (done, rate, time taken), ending with a newline; only if drawn."""
        if self.shown and self.drawn:
            self.fraction = 1.0
            self._draw(time.monotonic(), end="\n")

    def _draw(self, now: float, *, end: str) -> None:
        elapsed = max(now - self.started, 1e-6)
        rate = self.done / elapsed
        of = f"/{self.total:,}" if self.total and end == "" else ""
        if end:
            tail = f"done in {elapsed:,.1f} s"
        elif self.fraction > 0:
            tail = f"about {elapsed * (1 - self.fraction) / self.fraction:,.0f} s left"
        else:
            tail = "time left unknown"
        line = f"{self.label}: {self.done:,}{of} events, {rate:,.0f}/s, {tail}"
        # Padded to the last line's width, so nothing of a longer one stays on the screen.
        print(f"\r{line:<{self.width}}", end=end, file=self.stream, flush=True)
        self.drawn, self.width = True, len(line)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file at all
        return False
