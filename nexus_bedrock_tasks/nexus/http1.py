"""One HTTP/1.1 keep-alive client connection: a blocking socket, answers parsed by httptools.

The engine under `transport.ThreadConnections`: it sends a request its caller built
completely (head and body, one ``sendall``) and reads the whole answer with httptools'
`HttpResponseParser` (llhttp, the C parser uvicorn uses). Nothing else: no pool, no
redirects, no compression, no HTTP/2, no proxies, no request streaming.

Failures are httpcore's exception classes, with httpcore's meanings, so httpx users and
`wire.NexusWire` classify them as before:

- `httpcore.ConnectError` / `httpcore.ConnectTimeout`: opening the connection failed (TCP
  or TLS handshake); not a byte of the request was sent.
- `httpcore.WriteError` / `httpcore.WriteTimeout`: sending failed; part of the request
  may have reached the server.
- `httpcore.ReadError` / `httpcore.ReadTimeout`: the request went out, its answer did not
  arrive.
- `httpcore.RemoteProtocolError`: the server closed the connection before the answer was
  complete, or sent something that is not HTTP/1.x (an upgrade included).

As httpcore does, an answer the server sent before a write failed (a 413 for a body too
large, then the connection closed) is still read and returned, and informational (1xx)
answers before the final one are skipped.

Timeouts apply to each connect, TLS handshake, send and receive, as httpcore's do. On
plain sockets (Linux, macOS) the kernel enforces the read and write timeouts
(``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking socket): Python's own socket timeouts cost
a ``poll`` before every ``send`` and ``recv``, ~15 µs of CPU per request. TLS sockets keep
Python's timeouts (the ssl module retries EAGAIN on a blocking socket forever). One
difference: a kernel write timeout bounds each ``send`` call, so a server that keeps
reading a large body slowly can stretch ``sendall`` beyond the write timeout.

Reuse: the connection is kept after an answer unless the server asked to close it (a
``Connection: close`` header, HTTP/1.0 without keep-alive, a body delimited by the end of
the connection). Before reusing it, a connection idle longer than the keep-alive expiry
is reopened, and one the server has closed meanwhile (uvicorn drops idle connections
after 5 s) is noticed by a zero-timeout ``poll``: a socket with something to read while
no answer is due has its end-of-file (or garbage) waiting, and is reopened too.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import sys
import time

import httpcore
import httptools

# What one `recv` may return; answers are small JSON documents.
_READ_SIZE = 65536
# A `struct timeval` (SO_RCVTIMEO/SO_SNDTIMEO) on Linux and macOS.
_TIMEVAL = struct.Struct("@ll")
# Plain sockets get their read and write timeouts from the kernel (SO_RCVTIMEO and
# SO_SNDTIMEO); one that expires surfaces as EAGAIN (BlockingIOError), not TimeoutError.
_KERNEL_TIMEOUTS = sys.platform in ("linux", "darwin")


def _timeval(seconds: float | None) -> bytes:
    """A SO_RCVTIMEO/SO_SNDTIMEO value: zero means none, so 0 s becomes 1 µs."""
    if seconds is None:
        return _TIMEVAL.pack(0, 0)
    micros = max(1, round(seconds * 1e6))
    return _TIMEVAL.pack(micros // 1_000_000, micros % 1_000_000)


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """The answer's length is declared (Content-Length or chunked), not its connection's end."""
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


class Http1Connection:
    """A keep-alive HTTP/1.1 connection to one server, opened when first needed.

    Not thread-safe: one per thread.

    Args:
        host: the server's name or address; also the TLS server name (SNI and the
            certificate check).
        port: its TCP port.
        ssl_context: wraps the socket in TLS; None for plain http.
        connect_timeout: seconds for the TCP connect and the TLS handshake each (None:
            no limit).
        read_timeout: seconds any one read of the answer may wait (None: no limit).
        write_timeout: seconds any one write of the request may wait (None: no limit).
        keepalive_expiry: an idle connection older than this is reopened, not reused.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        write_timeout: float | None,
        keepalive_expiry: float,
    ) -> None:
        self._address = (host, port)
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._keepalive_expiry = keepalive_expiry
        self._sock: socket.socket | None = None
        self._poll = select.poll()
        self._parser: httptools.HttpResponseParser | None = None
        self._idle_since = 0.0
        self._switch_timeouts = False
        # The answer being read (the parser's callbacks fill these in).
        self._status = 0
        self._reason: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._head_done = False
        self._done = False
        self._keep_alive = False

    # -- the parser's callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:  # bytes beyond the answer: the connection's state is unknown
            self._keep_alive = False

    def on_status(self, status: bytes) -> None:
        self._reason.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:  # not a chunked body's trailer
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._done:
            return
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # informational: the answer follows
            self._reason = []
            self._headers = []
            self._body = []
            self._head_done = False
            return
        self._status = status
        # Only valid here: llhttp resets what it depends on once the message is done.
        self._keep_alive = parser.should_keep_alive()
        self._done = True

    # -- the connection --------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """A socket is open (it may still turn out closed by the server)."""
        return self._sock is not None

    def request(self, data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
        """Send one complete request and read its whole answer.

        Args:
            data: the request's head and body, exactly as they go on the wire.

        Returns:
            The status, the header lines as received, the body and the reason phrase.

        Raises:
            httpcore.ConnectError, httpcore.ConnectTimeout: nothing was sent.
            httpcore.WriteError, httpcore.WriteTimeout, httpcore.ReadError,
                httpcore.ReadTimeout, httpcore.RemoteProtocolError: the request may
                have reached the server.
        """
        sock = self._sock
        if sock is not None and (
            time.monotonic() - self._idle_since > self._keepalive_expiry or self._poll.poll(0)
        ):
            self.close()
            sock = None
        if sock is None:
            sock = self._connect()
        try:
            answer = self._exchange(sock, data)
        except BaseException:
            self.close()
            raise
        if self._keep_alive:
            self._idle_since = time.monotonic()
        else:
            self.close()
        return answer

    def close(self) -> None:
        """Close the socket; the next request opens a new one."""
        sock, self._sock = self._sock, None
        self._parser = None  # it refers back to this object
        if sock is not None:
            try:
                self._poll.unregister(sock)
            except (KeyError, ValueError):  # ValueError: the socket is closed already
                pass
            sock.close()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection(self._address, timeout=self._connect_timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self._address[0])
            if self._ssl_context is None and _KERNEL_TIMEOUTS:
                # A blocking socket whose reads and writes the kernel times out (see the
                # module's docstring).
                sock.settimeout(None)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self._read_timeout))
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(self._write_timeout)
                )
                self._switch_timeouts = False
            else:
                sock.settimeout(self._read_timeout)
                self._switch_timeouts = self._write_timeout != self._read_timeout
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:  # ssl.SSLError (a failed certificate check) included
            sock.close()
            raise httpcore.ConnectError(exc) from exc
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._poll.register(sock, select.POLLIN)
        self._parser = httptools.HttpResponseParser(self)
        return sock

    def _exchange(
        self, sock: socket.socket, data: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
        self._reason = []
        self._headers = []
        self._body = []
        self._head_done = self._done = self._keep_alive = False
        try:
            self._send(sock, data)
        except httpcore.WriteError as exc:
            failed = exc
        else:
            return self._receive(sock)
        # As httpcore: a server may answer before reading the whole request (413 for a
        # body too large) and close; that answer is worth more than the write error.
        try:
            answer = self._receive(sock)
        except (httpcore.ReadError, httpcore.ReadTimeout, httpcore.RemoteProtocolError):
            raise failed from failed.__cause__
        self._keep_alive = False
        return answer

    def _send(self, sock: socket.socket, data: bytes) -> None:
        switch = self._switch_timeouts
        try:
            if switch:
                sock.settimeout(self._write_timeout)
            try:
                sock.sendall(data)
            finally:
                if switch:
                    sock.settimeout(self._read_timeout)
        except (TimeoutError, BlockingIOError) as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    def _receive(self, sock: socket.socket) -> tuple[int, list[tuple[bytes, bytes]], bytes, str]:
        parser = self._parser
        assert parser is not None
        received = False
        while not self._done:
            try:
                chunk = sock.recv(_READ_SIZE)
            except (TimeoutError, BlockingIOError) as exc:
                raise httpcore.ReadTimeout(exc) from exc
            except OSError as exc:
                raise httpcore.ReadError(exc) from exc
            if not chunk:
                if self._head_done and not _framed(self._headers):
                    break  # the body ends with the connection (not kept: see _keep_alive)
                if not received:
                    raise httpcore.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                raise httpcore.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            received = True
            try:
                parser.feed_data(chunk)
            except httptools.HttpParserUpgrade as exc:
                raise httpcore.RemoteProtocolError(f"unexpected protocol upgrade: {exc}") from exc
            except httptools.HttpParserError as exc:
                raise httpcore.RemoteProtocolError(f"malformed answer: {exc}") from exc
        if not self._done:  # ended by the end of the connection
            self._status = parser.get_status_code()
        body = self._body
        content = body[0] if len(body) == 1 else b"".join(body)
        reason = b"".join(self._reason).decode("ascii", "ignore")
        return self._status, self._headers, content, reason
