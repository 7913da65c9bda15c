"""The exporter's hot path to Nexus: writes over one lean HTTP/1.1 connection per thread.

Nexus has no batch endpoint, so the exporter sends one request per span, thousands a
second in a burst, from a process the GIL holds to about one core: the client's CPU per
request bounds the export rate. Measured on the development machine (one thread,
sequential POSTs of a span to the local Nexus, client CPU per request): `httpx.Client`
0.65-0.90 ms (cookies, auth and redirect plumbing, URL and header models, a pool lock),
httpcore alone (httpx's engine, used here before) 0.34-0.42 ms (h11's pure-Python
parser and state machine, the pool's bookkeeping, a stream object per layer), a blocking
socket with httptools' C parser 0.04-0.06 ms. The engine in `http1` is that socket and
parser with what the exporter needs around them, 0.05-0.09 ms per request (https:
0.15-0.18 ms against httpcore's 0.53-0.64 ms); the export benchmark went from ~1,100 to
~2,000 spans/s.

The Nexus client (`wire.NexusWire`) uses this for POST and PATCH only, and only when
nothing in between needs httpx: no transport injected (tests' `httpx.MockTransport`) and
no proxy in the environment. Reads and lookups keep `httpx.Client`. Either way the answer
is an `Answer`, and errors are httpcore's classes with httpcore's meanings (see `http1`),
which httpx maps one to one to its own: only `UNSENT_ERRORS` prove nothing was sent.
"""

from __future__ import annotations

import json
import re
import select
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.request import getproxies

import httpcore
import httpx

from nexus_bedrock_tasks.nexus.http1 import Http1Connection

# Failures that prove nothing was sent (as httpx's ConnectError/ConnectTimeout/PoolTimeout).
UNSENT_ERRORS: Final = (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.PoolTimeout)
# Every httpcore failure that httpx turns into an `httpx.TransportError`.
TRANSPORT_ERRORS: Final = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)
# httpx's idle-connection lifetime (`httpx.Limits().keepalive_expiry`).
KEEPALIVE_EXPIRY_S: Final = 5.0
# Paths made of these characters are sent as they are; httpx would not re-encode them.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/_.~-]*")
_CHARSET = re.compile(r"charset=([\w-]+)", re.IGNORECASE)
_UNSAFE_HEADER = re.compile(r"[\r\n\0]")


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, read completely: what the Nexus client needs of either path.

    Attributes:
        status_code: the HTTP status.
        raw_headers: the header lines as received.
        content: the body.
        reason: the status line's reason phrase.
    """

    status_code: int
    raw_headers: list[tuple[bytes, bytes]]
    content: bytes
    reason: str = ""

    @classmethod
    def of(cls, response: httpx.Response) -> Answer:
        """The answer an `httpx.Response` (already read) carries."""
        return cls(
            response.status_code, response.headers.raw, response.content, response.reason_phrase
        )

    def header(self, name: str) -> str | None:
        """The first header called `name` (any case), or None."""
        wanted = name.lower().encode("ascii")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def is_error(self) -> bool:
        """A 4xx or 5xx status."""
        return self.status_code >= 400

    @property
    def reason_phrase(self) -> str:
        """The reason phrase, or the standard one when the server sent none."""
        return self.reason or httpx.codes.get_reason_phrase(self.status_code)

    @property
    def text(self) -> str:
        """The body decoded with its declared charset (UTF-8 when none)."""
        declared = _CHARSET.search(self.header("content-type") or "")
        charset = declared.group(1) if declared else "utf-8"
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not."""
        return json.loads(self.content)


def lean_path_applies(base_url: str) -> bool:
    """The writes may skip `httpx.Client`: plain http(s), no proxy from the environment.

    httpx honours ``HTTP(S)_PROXY``/``ALL_PROXY``; rather than reimplement its rules
    (``NO_PROXY`` included), any proxy setting keeps every request on httpx. So does a
    platform without ``select.poll`` (Windows), which `http1` needs.
    """
    scheme = httpx.URL(base_url).scheme
    proxies = getproxies()
    return (
        scheme in ("http", "https")
        and not (scheme in proxies or "all" in proxies)
        and hasattr(select, "poll")
    )


class ThreadConnections:
    """One keep-alive HTTP/1.1 connection per calling thread, to one service.

    Args:
        base_url: the service root (a path prefix is kept).
        headers: header lines sent with every request (Accept, Authorization).
        timeout: httpx's timeouts: connect (TCP and TLS handshake), read and write.
        ssl_context: for https: the verified context `httpx.Client` uses too; None for
            http (no CA bundle is loaded).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeout: httpx.Timeout,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._host = url.raw_host.decode("ascii")
        self._port = url.port or (443 if url.scheme == "https" else 80)
        # httpx joins a base path and a request path with exactly one slash.
        self._prefix = url.raw_path.rstrip(b"/")
        self._ssl_context = ssl_context if url.scheme == "https" else None
        if url.scheme == "https" and ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(verify=True)
        if self._ssl_context is not None:
            # What httpcore sets on the same context: this client speaks HTTP/1.1 only.
            self._ssl_context.set_alpn_protocols(["http/1.1"])
        self._timeout = timeout
        lines = [
            ("Host", url.netloc.decode("ascii")),
            *headers.items(),
            ("User-Agent", f"python-httpx/{httpx.__version__}"),
            ("Content-Type", "application/json"),
        ]
        for name, value in lines:
            if _UNSAFE_HEADER.search(name) or _UNSAFE_HEADER.search(value):
                raise ValueError(f"header {name!r} has a line break or NUL")
        # Every request's header lines but its Content-Length, built once.
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in lines).encode("ascii")
        self._local = threading.local()
        # Each connection with the thread it belongs to: one outliving its thread is
        # closed when the next thread opens one, so short-lived caller threads leak no
        # sockets.
        self._connections: list[tuple[threading.Thread, Http1Connection]] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, path: str, content: bytes) -> Answer:
        """Send one request with a JSON body and read the whole answer.

        Raises:
            httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError: as
                httpx would raise its versions of them (see `TRANSPORT_ERRORS`); only
                `UNSENT_ERRORS` prove that nothing was sent.
            RuntimeError: `close` was called.
        """
        connection: Http1Connection | None = getattr(self._local, "connection", None)
        if connection is None or self._closed:
            connection = self._new_connection()
        target = path.encode("ascii") if _PLAIN_PATH.fullmatch(path) else httpx.URL(path).raw_path
        data = b"%b %b/%b HTTP/1.1\r\n%bContent-Length: %d\r\n\r\n%b" % (
            method.encode("ascii"),
            self._prefix,
            target.lstrip(b"/"),
            self._fixed,
            len(content),
            content,
        )
        return Answer(*connection.request(data))

    def _new_connection(self) -> Http1Connection:
        timeout = self._timeout
        connection = Http1Connection(
            self._host,
            self._port,
            self._ssl_context,
            connect_timeout=timeout.connect,
            read_timeout=timeout.read,
            write_timeout=timeout.write,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("Cannot send a request, as the client has been closed.")
            stale = [old for thread, old in self._connections if not thread.is_alive()]
            self._connections = [(t, c) for t, c in self._connections if t.is_alive()]
            self._connections.append((threading.current_thread(), connection))
        for old in stale:
            old.close()
        self._local.connection = connection
        return connection

    def close(self) -> None:
        """Close every thread's connection; later requests raise RuntimeError."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for _, connection in connections:
            connection.close()
