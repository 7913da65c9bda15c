"""The lean HTTP/1.1 engine (`http1.Http1Connection`, under `transport.ThreadConnections`)
against a scripted server on real sockets: framing, reuse, dead connections, errors and
timeouts, with and without TLS."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
import httpx
import pytest

from nexus_bedrock_tasks.nexus.http1 import Http1Connection
from nexus_bedrock_tasks.nexus.transport import (
    TRANSPORT_ERRORS,
    UNSENT_ERRORS,
    ThreadConnections,
)
from tests.nexus.test_lean_http import self_signed

OK = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'


def request_bytes(body: bytes = b"{}", path: str = "/x") -> bytes:
    return b"POST %b HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (
        path.encode(),
        len(body),
        body,
    )


@dataclass(frozen=True)
class Step:
    """How the server answers one request.

    Attributes:
        parts: sent one after another, with a short pause between them so the client
            most likely reads them apart.
        close: close the connection after sending (without saying so in the answer).
        hang: send nothing and wait for the client to go away.
    """

    parts: Sequence[bytes] = ()
    close: bool = False
    hang: bool = False


@dataclass(frozen=True)
class Seen:
    """A request the server read: on which connection (0, 1, ...), its head and body."""

    connection: int
    head: bytes
    body: bytes


@dataclass
class RawServer:
    """An HTTP/1.1 server of a raw socket: each request it reads gets the next `Step`.

    Every connection is served by its own thread; `ended` counts connections that the
    server saw end (closed by either side).
    """

    steps: list[Step]
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    ended: int = 0
    sni: list[str | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cond: threading.Condition = field(init=False)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition(self._lock)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        if self.tls is not None:
            self.tls.sni_callback = self._record_sni
        acceptor = threading.Thread(target=self._accept, daemon=True)
        acceptor.start()
        self._threads.append(acceptor)

    def _record_sni(self, _sock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            number += 1
            worker.start()
            self._threads.append(worker)

    def _serve(self, raw: socket.socket, number: int) -> None:
        conn = raw
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(raw, server_side=True)
            while self._answer_one(conn, number):
                pass
        except OSError:
            pass
        finally:
            conn.close()
            with self._cond:
                self.ended += 1
                self._cond.notify_all()

    def _answer_one(self, conn: socket.socket, number: int) -> bool:
        """Read one request and answer it; False when the connection is done."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            body += chunk
        with self._lock:
            self.seen.append(Seen(number, head, body))
            step = self.steps.pop(0)
        if step.hang:
            while conn.recv(65536):
                pass
            return False
        for n, part in enumerate(step.parts):
            if n:
                time.sleep(0.02)
            conn.sendall(part)
        return not step.close

    def wait_ended(self, count: int) -> None:
        """Until `count` connections have ended."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.ended >= count, timeout=10)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[type[RawServer]]:
    servers: list[RawServer] = []

    def start(steps: list[Step], tls: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(steps, tls)
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


@pytest.fixture
def connect() -> Iterator[type[Http1Connection]]:
    connections: list[Http1Connection] = []

    def make(
        port: int,
        *,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        timeout: float | None = 10.0,
        write_timeout: float | None = 10.0,
        keepalive_expiry: float = 60.0,
    ) -> Http1Connection:
        connection = Http1Connection(
            host,
            port,
            ssl_context,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=write_timeout,
            keepalive_expiry=keepalive_expiry,
        )
        connections.append(connection)
        return connection

    yield make  # type: ignore[misc]
    for connection in connections:
        connection.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


# -- framing ---------------------------------------------------------------------------


def test_content_length_answer_split_anywhere_is_read_whole_and_kept(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    server = serve([Step([OK[:9], OK[9:30], OK[30:-3], OK[-3:]]), Step([OK])])
    connection = connect(server.port)

    status, headers, body, reason = connection.request(request_bytes(b'{"n":1}'))
    again = connection.request(request_bytes(b'{"n":2}'))

    assert (status, body, reason) == (201, b'{"a":1}', "Created")
    assert headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"7")]
    assert again[0] == 201
    assert [(s.connection, s.body) for s in server.seen] == [(0, b'{"n":1}'), (0, b'{"n":2}')]


def test_chunked_answer_is_joined_and_its_trailer_dropped(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Id: 7\r\n\r\n"
    chunks = [b'4\r\n{"a"\r\n', b"3\r\n:1}\r\n", b"0\r\nX-Trailer: yes\r\n\r\n"]
    server = serve([Step([head, *chunks]), Step([OK])])
    connection = connect(server.port)

    status, headers, body, _ = connection.request(request_bytes())

    assert (status, body) == (200, b'{"a":1}')
    assert headers == [(b"Transfer-Encoding", b"chunked"), (b"X-Id", b"7")]
    assert connection.request(request_bytes())[0] == 201
    assert [s.connection for s in server.seen] == [0, 0]  # kept after a chunked answer


def test_raw_headers_keep_case_order_and_repeats_and_a_missing_reason_is_empty(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    answer = b"HTTP/1.1 404 \r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    server = serve([Step([answer])])

    status, headers, body, reason = connect(server.port).request(request_bytes())

    assert (status, body, reason) == (404, b"", "")
    assert headers == [
        (b"set-cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"0"),
    ]


def test_informational_answers_are_skipped(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    early = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    server = serve([Step([early, OK]), Step([OK])])
    connection = connect(server.port)

    status, headers, body, reason = connection.request(request_bytes())

    assert (status, body, reason) == (201, b'{"a":1}', "Created")
    assert (b"Link", b"</x>") not in headers
    assert connection.request(request_bytes())[0] == 201
    assert [s.connection for s in server.seen] == [0, 0]


# -- reuse -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_an_answer_that_closes_the_connection_is_not_reused(
    serve: type[RawServer], connect: type[Http1Connection], answer: bytes
) -> None:
    server = serve([Step([answer]), Step([OK])])
    connection = connect(server.port)

    assert connection.request(request_bytes())[2] == b"hi"
    assert not connection.is_open
    assert connection.request(request_bytes())[0] == 201

    assert [s.connection for s in server.seen] == [0, 1]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_a_body_ended_by_the_connection_closing_is_complete(
    serve: type[RawServer], connect: type[Http1Connection], version: bytes
) -> None:
    answer = b"HTTP/%b 200 OK\r\nContent-Type: text/plain\r\n\r\n" % version
    server = serve([Step([answer, b"all of ", b"it"], close=True), Step([OK])])
    connection = connect(server.port)

    status, _, body, _ = connection.request(request_bytes())

    assert (status, body) == (200, b"all of it")
    assert connection.request(request_bytes())[0] == 201
    assert [s.connection for s in server.seen] == [0, 1]


def test_a_connection_the_server_closed_while_idle_is_replaced_without_error(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    # A keep-alive answer, then the server drops the connection (uvicorn after 5 s idle).
    server = serve([Step([OK], close=True), Step([OK])])
    connection = connect(server.port)
    assert connection.request(request_bytes())[0] == 201
    server.wait_ended(1)

    assert connection.request(request_bytes())[0] == 201

    assert [s.connection for s in server.seen] == [0, 1]


def test_a_connection_idle_past_the_keepalive_expiry_is_replaced(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    server = serve([Step([OK]), Step([OK])])
    connection = connect(server.port, keepalive_expiry=0.0)

    connection.request(request_bytes())
    connection.request(request_bytes())

    assert [s.connection for s in server.seen] == [0, 1]
    server.wait_ended(1)  # the client closed the expired one


def test_bytes_beyond_the_answer_make_the_connection_unusable(
    serve: type[RawServer], connect: type[Http1Connection]
) -> None:
    server = serve([Step([OK + b"HTTP/1.1 200 OK\r\n"]), Step([OK])])
    connection = connect(server.port)

    assert connection.request(request_bytes())[2] == b'{"a":1}'
    assert connection.request(request_bytes())[0] == 201

    assert [s.connection for s in server.seen] == [0, 1]


# -- broken answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"", "without sending a response"),
        (b"HTTP/1.1 201 Created\r\nContent-Le", "complete message"),
        (OK[:-3], "complete message"),
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"a"\r\n',
            "complete message",
        ),
    ],
    ids=["nothing", "half-a-head", "half-a-body", "half-the-chunks"],
)
def test_the_connection_ending_inside_an_answer_is_a_protocol_error(
    serve: type[RawServer], connect: type[Http1Connection], sent: bytes, message: str
) -> None:
    server = serve([Step([sent] if sent else [], close=True), Step([OK])])
    connection = connect(server.port)

    with pytest.raises(httpcore.RemoteProtocolError, match=message) as failure:
        connection.request(request_bytes())

    assert not isinstance(failure.value, UNSENT_ERRORS)  # the request did go out
    assert isinstance(failure.value, TRANSPORT_ERRORS)
    assert not connection.is_open
    assert connection.request(request_bytes())[0] == 201  # a new connection


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["not-http", "bad-length", "upgrade"],
)
def test_an_answer_that_is_not_http_1_is_a_protocol_error(
    serve: type[RawServer], connect: type[Http1Connection], answer: bytes
) -> None:
    server = serve([Step([answer])])
    connection = connect(server.port)

    with pytest.raises(httpcore.RemoteProtocolError):
        connection.request(request_bytes())

    assert not connection.is_open
    server.wait_ended(1)


# -- connecting and timeouts -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_refused_connection_is_an_unsent_connect_error(
    connect: type[Http1Connection],
) -> None:
    with pytest.raises(httpcore.ConnectError) as failure:
        connect(free_port()).request(request_bytes())
    assert isinstance(failure.value, UNSENT_ERRORS)


def test_a_tls_handshake_that_never_ends_is_an_unsent_connect_timeout(
    connect: type[Http1Connection], certificate: tuple[Path, Path]
) -> None:
    # The kernel completes the TCP handshake; nobody ever answers the TLS one.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        connection = connect(
            silent.getsockname()[1], ssl_context=client_tls(certificate), timeout=0.2
        )
        with pytest.raises(httpcore.ConnectTimeout) as failure:
            connection.request(request_bytes())
    assert isinstance(failure.value, UNSENT_ERRORS)
    assert not connection.is_open


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_answer_that_never_comes_is_a_read_timeout(
    serve: type[RawServer],
    connect: type[Http1Connection],
    certificate: tuple[Path, Path],
    tls: bool,
) -> None:
    server = serve([Step(hang=True), Step([OK])], server_tls(certificate) if tls else None)
    context = client_tls(certificate) if tls else None
    connection = connect(server.port, ssl_context=context, timeout=0.2)

    with pytest.raises(httpcore.ReadTimeout) as failure:
        connection.request(request_bytes())

    assert not isinstance(failure.value, UNSENT_ERRORS)
    assert not connection.is_open
    server.wait_ended(1)  # the client gave the connection up
    assert connection.request(request_bytes())[0] == 201


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_server_that_reads_nothing_is_a_write_timeout(
    connect: type[Http1Connection], certificate: tuple[Path, Path], tls: bool
) -> None:
    huge = request_bytes(b"x" * (64 << 20))  # far more than the socket buffers hold
    given_up = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        # Plain: the connection waits in the backlog, never accepted, never read.
        stalling = threading.Thread(
            target=_handshake_then_stall, args=(listener, certificate, given_up)
        )
        if tls:
            stalling.start()
        connection = connect(
            listener.getsockname()[1],
            ssl_context=client_tls(certificate) if tls else None,
            write_timeout=0.2,
        )
        try:
            with pytest.raises(httpcore.WriteTimeout) as failure:
                connection.request(huge)
        finally:
            given_up.set()
            connection.close()
            if tls:
                stalling.join()
    assert not isinstance(failure.value, UNSENT_ERRORS)
    assert not connection.is_open


def _handshake_then_stall(
    listener: socket.socket, certificate: tuple[Path, Path], given_up: threading.Event
) -> None:
    """Accept one TLS connection and finish its handshake; read nothing until told."""
    raw, _ = listener.accept()
    with server_tls(certificate).wrap_socket(raw, server_side=True):
        given_up.wait(30)


def test_an_early_answer_to_a_request_the_server_stopped_reading_is_returned(
    connect: type[Http1Connection],
) -> None:
    # A server refusing a body too large answers at once and closes (as httpcore, the
    # answer wins over the failed write).
    refused = b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"

    def refuse(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(refused)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=refuse, args=(listener,))
        server.start()
        connection = connect(listener.getsockname()[1])
        try:
            status, _, body, reason = connection.request(request_bytes(b"x" * (64 << 20)))
        finally:
            server.join()

    assert (status, body, reason) == (413, b"{}", "Payload Too Large")
    assert not connection.is_open


# -- TLS -------------------------------------------------------------------------------


def test_https_sends_the_server_name_and_checks_it(
    serve: type[RawServer], connect: type[Http1Connection], certificate: tuple[Path, Path]
) -> None:
    server = serve([Step([OK])], server_tls(certificate))
    # The certificate names 127.0.0.1 only: "localhost" is sent (SNI) but does not match.
    with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as failure:
        connect(server.port, host="localhost", ssl_context=client_tls(certificate)).request(
            request_bytes()
        )
    assert isinstance(failure.value, UNSENT_ERRORS)
    assert server.sni == ["localhost"]
    assert server.seen == []

    connection = connect(server.port, ssl_context=client_tls(certificate))
    assert connection.request(request_bytes())[:3] == (
        201,
        [(b"Content-Type", b"application/json"), (b"Content-Length", b"7")],
        b'{"a":1}',
    )


# -- ThreadConnections on the engine ---------------------------------------------------


def test_requests_carry_the_prefix_host_fixed_headers_and_one_length(
    serve: type[RawServer],
) -> None:
    server = serve([Step([OK]), Step([OK])])
    connections = ThreadConnections(
        f"http://127.0.0.1:{server.port}/nexus/",
        {"Accept": "application/json", "Authorization": "Bearer k"},
        httpx.Timeout(5.0),
        None,
    )
    try:
        answer = connections.request("POST", "/api/v1/traces", b'{"n":1}')
        connections.request("PATCH", "api/v1/traces/t 1", b"{}")
        sock = connections._local.connection._sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        connections.close()

    assert (answer.status_code, answer.reason_phrase, answer.json()) == (201, "Created", {"a": 1})
    assert answer.header("content-type") == "application/json"
    first, second = server.seen
    assert first.head.split(b"\r\n") == [
        b"POST /nexus/api/v1/traces HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}".encode(),
        b"Accept: application/json",
        b"Authorization: Bearer k",
        f"User-Agent: python-httpx/{httpx.__version__}".encode(),
        b"Content-Type: application/json",
        b"Content-Length: 7",
    ]
    assert first.body == b'{"n":1}'
    assert second.head.startswith(b"PATCH /nexus/api/v1/traces/t%201 HTTP/1.1\r\n")
    assert second.connection == 0
    server.wait_ended(1)  # close() closed the connection


def test_closed_connections_refuse_requests(serve: type[RawServer]) -> None:
    server = serve([Step([OK])])
    connections = ThreadConnections(f"http://127.0.0.1:{server.port}", {}, httpx.Timeout(5.0), None)
    connections.request("POST", "/x", b"{}")

    connections.close()

    server.wait_ended(1)
    with pytest.raises(RuntimeError, match="closed"):
        connections.request("POST", "/x", b"{}")


def test_header_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        ThreadConnections(
            "http://127.0.0.1:1", {"Authorization": "Bearer k\r\nX: y"}, httpx.Timeout(1), None
        )
