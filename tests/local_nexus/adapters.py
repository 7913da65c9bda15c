"""Two clients behind one small interface, so the contract suite is written once.

`ProjectClient` drives `nexus_bedrock_tasks.nexus.client.NexusClient`; `SdkClient` drives
the official `keylightdigital-nexus` SDK (`nexus_agent`). The interface is what both can
do: start a trace (timestamps are the client's own), add a finished span, end the trace.
A request the server refuses raises `Rejected` from both, although the SDK itself only
logs and hands back the id ``"unknown"``.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from nexus_agent import NexusClient as SdkNexusClient

from nexus_bedrock_tasks.exceptions import NexusError
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord, utcnow
from nexus_bedrock_tasks.semconv import SpanStatus, TraceStatus


class Rejected(Exception):
    """The server refused the request (as seen through the client)."""


class ContractClient(Protocol):
    """What the contract suite needs of a client."""

    def start_trace(self, name: str, metadata: dict[str, Any] | None = None) -> str: ...

    def add_span(
        self, trace_id: str, name: str, *, input: Any = None, output: Any = None, error: Any = None
    ) -> str: ...

    def end_trace(self, trace_id: str, status: str) -> None: ...

    def close(self) -> None: ...


class ProjectClient:
    """The project's own client (`NexusClient`), with retries that never sleep."""

    def __init__(self, nexus: LocalNexus, agent: str, api_key: str | None = None) -> None:
        self.agent = agent
        self.client = NexusClient(
            base_url=nexus.url, api_key=api_key or nexus.api_key, sleep=lambda _s: None
        )

    def start_trace(self, name: str, metadata: dict[str, Any] | None = None) -> str:
        record = TraceRecord(name, self.agent, utcnow(), metadata=metadata or {})
        try:
            return self.client.create_trace(record)
        except NexusError as exc:
            raise Rejected(str(exc)) from exc

    def add_span(
        self, trace_id: str, name: str, *, input: Any = None, output: Any = None, error: Any = None
    ) -> str:
        now = utcnow()
        status: SpanStatus = "error" if error else "ok"
        record = SpanRecord(name, now, now, status, input=input, output=output, error=error)
        return self.client.create_span(trace_id, record)

    def end_trace(self, trace_id: str, status: str) -> None:
        self.client.update_trace(trace_id, status=cast(TraceStatus, status), ended_at=utcnow())

    def close(self) -> None:
        self.client.close()


class SdkClient:
    """The official SDK; its swallowed errors become `Rejected`."""

    def __init__(self, nexus: LocalNexus, agent: str, api_key: str | None = None) -> None:
        self.client = SdkNexusClient(
            api_key=api_key or nexus.api_key, agent_id=agent, base_url=nexus.url
        )
        self.traces: dict[str, Any] = {}

    def start_trace(self, name: str, metadata: dict[str, Any] | None = None) -> str:
        trace = self.client.start_trace(name, metadata=metadata)
        if trace.trace_id == "unknown":
            raise Rejected(f"SDK could not start trace {name!r}")
        self.traces[trace.trace_id] = trace
        return str(trace.trace_id)

    def add_span(
        self, trace_id: str, name: str, *, input: Any = None, output: Any = None, error: Any = None
    ) -> str:
        span = self.traces[trace_id].add_span(name, input=input, output=output, error=error)
        if span.span_id == "unknown":
            raise Rejected(f"SDK could not add span {name!r}")
        return str(span.span_id)

    def end_trace(self, trace_id: str, status: str) -> None:
        self.traces[trace_id].end(status)

    def close(self) -> None:
        self.traces.clear()
