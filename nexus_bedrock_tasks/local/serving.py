"""Serving the local servers (Bedrock emulator, Nexus) with uvicorn on sockets we bind.

Binding up front makes port 0 give a known free port before uvicorn starts, and lets
early clients queue instead of being refused. `serve_in_background` runs a server in a
daemon thread for tests and benchmarks and returns only once its health route answers.

Example:
    >>> with serve_in_background(server, "127.0.0.1", 0, name="x", health_path="/health") as url:
    ...     httpx.get(url + "/health")
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import httpx
import uvicorn

GRACEFUL_SHUTDOWN_S: Final = 2
"""A request held by a delay fault must not hold up shutdown for long."""

STOP_TIMEOUT_S: Final = 10.0
"""How long stopping waits for the server thread (graceful shutdown included)."""

_POLL_S: Final = 0.02


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (`port=0`: any free port).

    Raises:
        OSError: the address is taken or not available.
    """
    # An explicit IPPROTO_TCP, because asyncio sets TCP_NODELAY on accepted connections only
    # when the socket's protocol says TCP; without it every streamed answer waits ~40 ms for
    # Nagle's algorithm and the client's delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening at once queues early clients instead of refusing them while uvicorn starts.
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def socket_url(sock: socket.socket, scheme: str = "http") -> str:
    """`http://host:port` (or `scheme`) of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@contextmanager
def serve_in_background(
    server: uvicorn.Server,
    host: str,
    port: int,
    *,
    name: str,
    health_path: str,
    startup_timeout_s: float = 10.0,
    verify: ssl.SSLContext | bool = True,
) -> Iterator[str]:
    """Run `server` on a new socket in a daemon thread until the block ends; yield its URL.

    A server configured with a certificate (`ssl_certfile`) serves https, and the URL says so.

    Args:
        server: a uvicorn server, not started.
        host: the interface to listen on.
        port: the port; 0 picks a free one.
        name: the thread's name, also used in error messages.
        health_path: a route that answers 200 once the app serves.
        startup_timeout_s: how long to wait for that answer.
        verify: how the health probe checks an https server's certificate (tests serving
            TLS pass a context trusting their own CA).

    Raises:
        OSError: the socket could not be bound.
        RuntimeError: the server stopped during startup, or did not answer in time.
    """
    sock = bind_socket(host, port)
    url = socket_url(sock, "https" if server.config.is_ssl else "http")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    try:
        wait_until_healthy(url + health_path, thread, name, startup_timeout_s, verify=verify)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=STOP_TIMEOUT_S)
        sock.close()


def wait_until_healthy(
    url: str,
    thread: threading.Thread,
    name: str,
    timeout_s: float,
    *,
    verify: ssl.SSLContext | bool = True,
) -> None:
    """Poll `url` until it answers 200, while the server `thread` lives.

    Raises:
        RuntimeError: the thread ended, or no 200 within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    # trust_env=False: a proxy from the environment must not intercept a loopback probe.
    with httpx.Client(timeout=1.0, trust_env=False, verify=verify) as client:
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError(f"{name} stopped during startup (see the log)")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(_POLL_S)
    raise RuntimeError(f"{name} did not answer {url} within {timeout_s} s")
