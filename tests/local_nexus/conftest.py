"""Fixtures of the local Nexus tests: one shared server, per-test agent names, HTTP helpers.

Most tests share one in-memory server (starting uvicorn per test would cost more than the
tests); each test files its traces under its own agent name, so filters by agent isolate
it. Tests of plan limits and faults start a server of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from nexus_bedrock_tasks.nexus.records import iso

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(ms: float) -> str:
    """`T0 + ms` as the ISO-8601 text clients send."""
    return iso(T0 + timedelta(milliseconds=ms))


def trace_body(agent: str, started_ms: float = 0, **fields: Any) -> dict[str, Any]:
    """A valid `POST /api/v1/traces` body; `fields` override or add."""
    body = {
        "agent_id": agent,
        "name": "invoke: hi",
        "status": "running",
        "started_at": at(started_ms),
    }
    return {**body, **fields}


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib (the official SDK) and httpx both honour proxy variables; a CI proxy must not
    # intercept requests to the local server.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def shared_nexus() -> Iterator[LocalNexus]:
    """A local Nexus for the whole session (unlimited plan, no faults)."""
    with run_local_nexus() as nexus:
        yield nexus


@pytest.fixture
def agent() -> str:
    """An agent name no other test uses."""
    return f"agent-{uuid.uuid4().hex[:12]}"


class Api:
    """Raw HTTP access to a local Nexus with its key, plus builders of valid bodies."""

    def __init__(self, nexus: LocalNexus) -> None:
        self.nexus = nexus
        self.http = httpx.Client(
            base_url=nexus.url,
            headers={"Authorization": f"Bearer {nexus.api_key}"},
            trust_env=False,
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def new_trace(self, agent: str, *, started_ms: float = 0, **fields: Any) -> str:
        """POST a valid trace (fields override the defaults); returns its id."""
        response = self.http.post("/api/v1/traces", json=trace_body(agent, started_ms, **fields))
        assert response.status_code == 201, response.text
        return str(response.json()["trace_id"])

    def new_span(self, trace_id: str, **fields: Any) -> str:
        """POST a valid span (fields override the defaults); returns its id."""
        body = {"name": "task:x", "status": "ok", "started_at": at(0), "ended_at": at(5)}
        response = self.http.post(f"/api/v1/traces/{trace_id}/spans", json={**body, **fields})
        assert response.status_code == 201, response.text
        return str(response.json()["span_id"])

    def detail(self, trace_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/traces/{trace_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail


@pytest.fixture
def api(shared_nexus: LocalNexus) -> Iterator[Api]:
    """Raw HTTP client of the shared server."""
    with Api(shared_nexus) as client:
        yield client


@pytest.fixture(scope="module")
def faulty_nexus() -> Iterator[LocalNexus]:
    """A local Nexus with fault injection on (one per test module)."""
    with run_local_nexus(faults=True) as nexus:
        yield nexus


@pytest.fixture
def faulty(faulty_nexus: LocalNexus) -> Iterator[Api]:
    """A client of `faulty_nexus`, its faults cleared before and after the test."""
    faulty_nexus.faults.clear()
    with Api(faulty_nexus) as client:
        yield client
    faulty_nexus.faults.clear()
