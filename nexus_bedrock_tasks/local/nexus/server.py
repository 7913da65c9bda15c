"""The uvicorn server of the local Nexus; sockets and background threads: `local.serving`."""

from __future__ import annotations

from typing import Any, ClassVar, Final

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from nexus_bedrock_tasks.local.nexus.api import first_header
from nexus_bedrock_tasks.local.nexus.app import NexusApp
from nexus_bedrock_tasks.local.nexus.fast_path import JSON_CONTENT_TYPE, FastWrites, Route
from nexus_bedrock_tasks.local.serving import GRACEFUL_SHUTDOWN_S, bind_socket, socket_url

# bind_socket and socket_url stay importable from here for the CLI (commands.py).
__all__ = ["bind_socket", "make_server", "socket_url"]

_JSON_HEAD: Final = b"content-type: " + JSON_CONTENT_TYPE[1] + b"\r\n\r\n"
# What uvicorn sends when the application fails before answering.
_SERVER_ERROR_HEADERS: Final = (
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\n"
    b"connection: close\r\n\r\n"
    b"Internal Server Error"
)


def make_server(app: FastAPI, *, quiet: bool) -> uvicorn.Server:
    """A uvicorn server for `app` (not started), without an access log.

    A log line per request would cost more than the span request it records; for the
    same reason answers carry no ``server`` and ``date`` lines (the hosted Nexus's
    clients need neither, and every header line is parsed again by the client). When
    `app` is a `NexusApp` without fault injection, its write routes are answered by
    `DirectWritesProtocol`.

    Args:
        app: the ASGI app.
        quiet: warnings only, and the process's logging config left alone (in-process use);
            otherwise uvicorn's info logging (the CLI).
    """
    writes = app.fast_writes if isinstance(app, NexusApp) else None
    http: type[HttpToolsProtocol] | str = "auto"
    if writes is not None:
        http = type("DirectNexusWrites", (DirectWritesProtocol,), {"writes": writes})
    config = uvicorn.Config(
        app,
        http=http,
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


class DirectWritesProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering `writes`' routes from the parser's callbacks.

    A keep-alive HTTP/1.1 write request, with no other request in progress on its
    connection, is answered as soon as its body is complete: `writes.answer` (the same
    key check, handlers and bodies as the ASGI path), written in one piece. That skips
    uvicorn's ASGI task, request cycle and messages, and one of its two socket writes (it
    writes head and body apart): a third of the server's CPU per span. The bytes are
    those the ASGI path sends. Every other request goes through uvicorn unchanged.
    Subclasses set `writes` (`make_server` does).
    """

    writes: ClassVar[FastWrites]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._direct: Route | None = None
        self._direct_body: list[bytes] = []
        self._close_after_direct = False

    def on_headers_complete(self) -> None:
        self._direct = self._direct_route()
        if self._direct is None:
            super().on_headers_complete()
        else:
            self._direct_body = []

    def on_body(self, body: bytes) -> None:
        if self._direct is None:
            super().on_body(body)
        else:
            self._direct_body.append(body)

    def on_message_complete(self) -> None:
        route, self._direct = self._direct, None
        if route is None:
            super().on_message_complete()
        else:
            self._answer(route, b"".join(self._direct_body))
            self._direct_body = []

    def shutdown(self) -> None:
        if self._direct is None:
            super().shutdown()
        else:
            self._close_after_direct = True  # answer the request in progress, then close

    def _direct_route(self) -> Route | None:
        """The write route to answer directly, or `None` to leave the request to uvicorn."""
        parser = self.parser
        previous = self.cycle
        if (
            parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or self.expect_100_continue
            or self.root_path
            or self.limit_concurrency is not None
            or self.pipeline
            or (previous is not None and not previous.response_complete)
        ):
            return None
        raw_path = httptools.parse_url(self.url).path
        if b"%" in raw_path:
            return None  # uvicorn decodes it: leave such a path to uvicorn and the app
        try:
            method, path = parser.get_method().decode("ascii"), raw_path.decode("ascii")
        except UnicodeDecodeError:
            return None
        return self.writes.route(method, path)

    def _answer(self, route: Route, raw_body: bytes) -> None:
        defaults = self.server_state.default_headers  # none unless configured
        head = [b"".join(name + b": " + value + b"\r\n" for name, value in defaults)]
        try:
            status, body = self.writes.answer(
                route, first_header(self.headers, b"authorization"), raw_body
            )
        except Exception as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            self.transport.write(b"".join([STATUS_LINE[500], *head, _SERVER_ERROR_HEADERS]))
            self.transport.close()
            return
        head.append(b"content-length: " + str(len(body)).encode("latin-1") + b"\r\n")
        if self._close_after_direct:
            head.append(b"connection: close\r\n")
        self.transport.write(b"".join([STATUS_LINE[status], *head, _JSON_HEAD, body]))
        if self._close_after_direct:
            self.transport.close()
        self.on_response_complete()
