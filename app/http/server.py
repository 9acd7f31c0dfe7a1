"""The uvicorn server the CLI runs."""

from __future__ import annotations

from types import FrameType

import uvicorn


class GracefulServer(uvicorn.Server):
    """SIGTERM/SIGINT drain in-flight requests, then exit 0 (uvicorn would re-raise them)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
