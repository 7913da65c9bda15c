"""The exporter's hot path to Nexus: writes over one httpcore connection per thread.

Nexus has no batch endpoint, so the exporter sends one request per span, thousands a
second in a burst, from a process the GIL holds to about one core. `httpx.Client` spends
more CPU per request than the request itself (cookies, auth and redirect plumbing, URL and
header models, a pool lock the worker threads contend for). httpcore is httpx's own
transport engine: the same HTTP/1.1 code, TLS and timeouts, without those layers. Here
each thread keeps its own single-connection pool and the fixed header lines are built
once, which more than halves the client's CPU per request.

The Nexus client (`wire.NexusWire`) uses this for POST and PATCH only, and only when
nothing in between needs httpx: no transport injected (tests' `httpx.MockTransport`) and
no proxy in the environment. Reads and lookups keep `httpx.Client`. Either way the answer
is an `Answer`, and errors are httpcore's, which httpx maps one to one to its own.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.request import getproxies

import httpcore
import httpx

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
    """The writes may skip `httpx.Client`: plain http(s) and no proxy from the environment.

    httpx honours ``HTTP(S)_PROXY``/``ALL_PROXY``; rather than reimplement its rules
    (``NO_PROXY`` included), any proxy setting keeps every request on httpx.
    """
    scheme = httpx.URL(base_url).scheme
    proxies = getproxies()
    return scheme in ("http", "https") and not (scheme in proxies or "all" in proxies)


class _OneWriteStream(httpcore.NetworkStream):
    """httpcore's socket stream, sending each request in one write instead of two.

    h11 hands over the head and then the body, and ends a message with an empty write.
    Two sends cost two wake-ups of the server and, here, two GIL hand-overs per request;
    holding the pieces until that end (or until the answer is read) costs nothing.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner
        self._pending: list[bytes] = []

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._pending.append(buffer)
        else:
            self._flush(timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._flush(timeout)
        return self._inner.read(max_bytes, timeout)

    def _flush(self, timeout: float | None) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._inner.write(data, timeout)

    def close(self) -> None:
        self._pending.clear()
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _OneWriteStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _OneWriteBackend(httpcore.SyncBackend):
    """httpcore's socket backend with `_OneWriteStream` connections."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = super().connect_tcp(host, port, timeout, local_address, socket_options)
        return _OneWriteStream(stream)


class ThreadConnections:
    """One keep-alive httpcore pool of one connection per calling thread, to one service.

    Args:
        base_url: the service root (a path prefix is kept).
        headers: header lines sent with every request (Accept, Authorization).
        timeout: httpx's timeouts for connect, read, write and pool.
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
        self._scheme = url.raw_scheme
        self._host = url.raw_host
        self._port = url.port
        # httpx joins a base path and a request path with exactly one slash.
        self._prefix = url.raw_path.rstrip(b"/")
        self._ssl_context = ssl_context
        self._headers = [(b"Host", url.netloc)] + [
            (name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()
        ]
        self._headers += [
            (b"User-Agent", f"python-httpx/{httpx.__version__}".encode()),
            (b"Content-Type", b"application/json"),
        ]
        self._extensions = {"timeout": timeout.as_dict()}
        self._backend = _OneWriteBackend()
        self._local = threading.local()
        # Each pool with the thread it belongs to: a pool outliving its thread is closed
        # when the next thread opens one, so short-lived caller threads leak no sockets.
        self._pools: list[tuple[threading.Thread, httpcore.ConnectionPool]] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, path: str, content: bytes) -> Answer:
        """Send one request with a JSON body and read the whole answer.

        Raises:
            httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError: as
                httpx would raise its versions of them (see `TRANSPORT_ERRORS`).
            RuntimeError: `close` was called.
        """
        pool: httpcore.ConnectionPool | None = getattr(self._local, "pool", None)
        if pool is None or self._closed:
            pool = self._new_pool()
        headers = [*self._headers, (b"Content-Length", str(len(content)).encode("ascii"))]
        target = path.encode("ascii") if _PLAIN_PATH.fullmatch(path) else httpx.URL(path).raw_path
        url = httpcore.URL(
            scheme=self._scheme,
            host=self._host,
            port=self._port,
            target=self._prefix + b"/" + target.lstrip(b"/"),
        )
        request = httpcore.Request(
            method.encode("ascii"),
            url,
            headers=headers,
            content=content,
            extensions=self._extensions,
        )
        response = pool.handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        reason = response.extensions.get("reason_phrase", b"")
        return Answer(response.status, response.headers, body, reason.decode("ascii", "ignore"))

    def _new_pool(self) -> httpcore.ConnectionPool:
        pool = httpcore.ConnectionPool(
            ssl_context=self._ssl_context,
            max_connections=1,
            max_keepalive_connections=1,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=self._backend,
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("Cannot send a request, as the client has been closed.")
            stale = [old for thread, old in self._pools if not thread.is_alive()]
            self._pools = [(t, p) for t, p in self._pools if t.is_alive()]
            self._pools.append((threading.current_thread(), pool))
        for old in stale:
            old.close()
        self._local.pool = pool
        return pool

    def close(self) -> None:
        """Close every thread's connection; later requests raise RuntimeError."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, []
        for _, pool in pools:
            pool.close()
