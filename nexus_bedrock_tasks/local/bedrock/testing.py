"""Run the emulator inside a test or benchmark, and steer its faults.

Example:
    >>> with run_emulator() as url:
    ...     client = boto3.client(
    ...         "bedrock-agent-runtime", endpoint_url=url, region_name="us-east-1",
    ...         aws_access_key_id="test", aws_secret_access_key="test",
    ...     )
    ...     set_session_faults(url, "s-1", stream_error_after=2)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from nexus_bedrock_tasks.local.bedrock.errors import AwsError
from nexus_bedrock_tasks.local.bedrock.faults import header_name, parse_faults
from nexus_bedrock_tasks.local.bedrock.server import build_server
from nexus_bedrock_tasks.local.serving import serve_in_background

STARTUP_TIMEOUT_S = 10.0
HEALTH_PATH = "/_emulator/health"


@contextmanager
def run_emulator(
    agents_file: Path | None = None,
    replay_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[str]:
    """Serve the emulator from a background thread; yield its endpoint URL.

    Args:
        agents_file: the agents YAML (default ``deployments/agents.yaml``).
        replay_dir: a recordings directory to replay by agent id.
        host: the interface to listen on.
        port: the port; 0 picks a free one.

    Raises:
        ValueError: a bad agents file or replay directory.
        OSError: the address cannot be bound.
        RuntimeError: the server stopped during startup or did not answer within
            `STARTUP_TIMEOUT_S`.

    Example:
        >>> with run_emulator() as url:
        ...     httpx.get(url + "/_emulator/health").json()["status"]
        'ok'
    """
    server = build_server(agents_file, replay_dir)
    with serve_in_background(
        server,
        host,
        port,
        name="Bedrock emulator",
        health_path=HEALTH_PATH,
        startup_timeout_s=STARTUP_TIMEOUT_S,
    ) as url:
        yield url


def set_session_faults(url: str, session_id: str, **faults: Any) -> None:
    """Give every later call with `session_id` these faults (see `faults.FaultSpec`).

    Raises:
        ValueError: an unknown fault field or value.
        httpx.HTTPStatusError: the emulator refused them.
    """
    _check(faults)
    response = httpx.put(f"{url}/_emulator/sessions/{session_id}/faults", json=faults)
    response.raise_for_status()


def clear_session_faults(url: str, session_id: str) -> None:
    """Remove the faults of `session_id`."""
    httpx.delete(f"{url}/_emulator/sessions/{session_id}/faults").raise_for_status()


def fault_headers(**faults: Any) -> dict[str, str]:
    """The ``x-emulator-*`` request headers for these faults (see `add_request_headers`).

    Raises:
        ValueError: an unknown fault field or value.
    """
    _check(faults)
    return {header_name(name): str(value) for name, value in faults.items()}


def add_request_headers(client: Any, headers: Mapping[str, str]) -> None:
    """Send `headers` with every request of a boto3 ``bedrock-agent-runtime`` client.

    Example:
        >>> add_request_headers(client, fault_headers(step_latency_ms=200))
    """

    def _add(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register("before-sign.bedrock-agent-runtime", _add)


def _check(faults: Mapping[str, Any]) -> None:
    try:
        parse_faults(faults)
    except AwsError as exc:
        raise ValueError(exc.message) from exc
