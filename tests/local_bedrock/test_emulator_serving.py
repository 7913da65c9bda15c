"""The shared serving helpers (nexus_bedrock_tasks.local.serving) under both local servers."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import uvicorn

from nexus_bedrock_tasks.local.bedrock.server import build_server
from nexus_bedrock_tasks.local.bedrock.testing import HEALTH_PATH as EMULATOR_HEALTH
from nexus_bedrock_tasks.local.nexus.app import create_app as create_nexus_app
from nexus_bedrock_tasks.local.nexus.config import DEV_KEY
from nexus_bedrock_tasks.local.nexus.server import make_server as make_nexus_server
from nexus_bedrock_tasks.local.nexus.web import HEALTH_PATH as NEXUS_HEALTH
from nexus_bedrock_tasks.local.serving import bind_socket, serve_in_background, socket_url
from tests.local_bedrock.emulator_helpers import DEPLOYED_AGENTS


def _emulator() -> uvicorn.Server:
    return build_server(DEPLOYED_AGENTS, None)


def _nexus() -> uvicorn.Server:
    return make_nexus_server(create_nexus_app(None, DEV_KEY), quiet=True)


def _server_side_nodelay(server: uvicorn.Server, client: socket.socket) -> int:
    """TCP_NODELAY of the server's end of `client`'s connection."""
    # list() copies the set under the GIL while the server thread may change it.
    connections = list(server.server_state.connections)
    [accepted] = [
        c for c in connections if c.transport.get_extra_info("peername") == client.getsockname()
    ]
    sock = accepted.transport.get_extra_info("socket")
    value: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return value


@pytest.mark.parametrize(
    ("make_server", "health_path"),
    [(_emulator, EMULATOR_HEALTH), (_nexus, NEXUS_HEALTH)],
    ids=["bedrock-emulator", "local-nexus"],
)
def test_accepted_connections_have_tcp_nodelay(
    make_server: Callable[[], uvicorn.Server], health_path: str
) -> None:
    # Without TCP_NODELAY a streamed answer waits ~40 ms per request (Nagle + delayed ACK);
    # asyncio sets it only on connections of a socket created with IPPROTO_TCP.
    server = make_server()
    with serve_in_background(
        server, "127.0.0.1", 0, name="nodelay probe", health_path=health_path
    ) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(f"GET {health_path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert client.recv(1024).startswith(b"HTTP/1.1 200")

            assert _server_side_nodelay(server, client) != 0


def test_bind_socket_is_tcp_and_reports_its_url() -> None:
    with bind_socket("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        port = sock.getsockname()[1]
        assert socket_url(sock) == f"http://127.0.0.1:{port}"


def test_a_taken_port_is_an_os_error() -> None:
    with bind_socket("127.0.0.1", 0) as taken, pytest.raises(OSError):
        bind_socket("127.0.0.1", taken.getsockname()[1])
