"""Small helpers of the local-stack tests: free ports and open-port checks."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

CliRun = Callable[..., subprocess.CompletedProcess[str]]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
