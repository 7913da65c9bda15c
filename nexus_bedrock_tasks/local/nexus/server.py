"""The uvicorn server of the local Nexus; sockets and background threads: `local.serving`."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from nexus_bedrock_tasks.local.serving import GRACEFUL_SHUTDOWN_S, bind_socket, socket_url

# bind_socket and socket_url stay importable from here for the CLI (commands.py).
__all__ = ["bind_socket", "make_server", "socket_url"]


def make_server(app: FastAPI, *, quiet: bool) -> uvicorn.Server:
    """A uvicorn server for `app` (not started), without an access log.

    A log line per request would cost more than the span request it records; for the
    same reason answers carry no ``server`` and ``date`` lines (the hosted Nexus's
    clients need neither, and every header line is parsed again by the client).

    Args:
        app: the ASGI app.
        quiet: warnings only, and the process's logging config left alone (in-process use);
            otherwise uvicorn's info logging (the CLI).
    """
    config = uvicorn.Config(
        app,
        log_level="warning" if quiet else "info",
        access_log=False,
        server_header=False,
        date_header=False,
        lifespan="on",
        proxy_headers=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_config=None if quiet else LOGGING_CONFIG,
    )
    return uvicorn.Server(config)
