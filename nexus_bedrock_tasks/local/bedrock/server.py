"""The emulator's uvicorn server; sockets and background threads: `local.serving`."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Generator
from pathlib import Path
from types import FrameType

import uvicorn

from nexus_bedrock_tasks.local.bedrock.app import create_app
from nexus_bedrock_tasks.local.serving import GRACEFUL_SHUTDOWN_S


class EmulatorServer(uvicorn.Server):
    """A uvicorn server that treats SIGINT/SIGTERM as "stop" and then returns normally.

    Plain uvicorn re-raises the signal after its graceful shutdown, so the process dies of
    it; the CLI wants to say that it stopped and exit with status 0 instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Stop on SIGINT/SIGTERM while serving (main thread only, like uvicorn)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, sig: int, frame: FrameType | None) -> None:
        # A second Ctrl-C skips the graceful wait, as in uvicorn.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def build_server(
    agents_file: Path | None, replay_dir: Path | None, log_level: str = "warning"
) -> EmulatorServer:
    """A uvicorn server for the emulator app (not started).

    Raises:
        ValueError: a bad agents file or replay directory.
    """
    app = create_app(agents_file=agents_file, replay_dir=replay_dir)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return EmulatorServer(config)
