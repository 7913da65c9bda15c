"""Optional second transport: the same span tree as OTLP/HTTP JSON (``POST /v1/traces``).

Best effort and not spooled: the outbox guarantees delivery to Nexus proper; this copy is
sent once per finished trace, when ``NEXUS_OTLP_ENDPOINT`` is set, and never retried (a
lost answer could otherwise duplicate the whole trace).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from nexus_bedrock_tasks.exceptions import NexusError
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.nexus.wire import NexusUnavailableError
from nexus_bedrock_tasks.settings import NexusSettings

SCOPE_NAME = "nexus_bedrock_tasks"
ATTR_SERVICE_NAME = "service.name"
ATTR_TRACE_NAME = "nexus.trace.name"
ATTR_TRACE_STATUS = "nexus.trace.status"
ATTR_TRACE_LOCAL_ID = "nexus_bedrock_trace_id"
ATTR_INPUT = "input.value"
ATTR_OUTPUT = "output.value"
SPAN_KIND_INTERNAL = 1
STATUS_OK = 1
STATUS_ERROR = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def hex_id(local_id: str, length: int) -> str:
    """An OTLP id of `length` hex digits for a local id (the id itself when it fits)."""
    if len(local_id) == length and all(c in "0123456789abcdef" for c in local_id):
        return local_id
    return hashlib.sha256(local_id.encode()).hexdigest()[:length]


def unix_nanos(ts: datetime) -> str:
    """Nanoseconds since the epoch, as the decimal string OTLP JSON uses for 64-bit ints."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return str((ts - _EPOCH) // timedelta(microseconds=1) * 1000)


def attribute(key: str, value: Any) -> dict[str, Any]:
    """One OTLP ``KeyValue``; values that are not scalars become JSON strings."""
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return {"key": key, "value": {"stringValue": text}}


def to_otlp(trace: TraceRecord, spans: Sequence[SpanRecord]) -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` (JSON) for a trace and its spans.

    The trace's name, status and metadata go on the resource, so the span tree stays the
    Nexus one: a span whose parent is not among `spans` is a root.
    """
    trace_hex = hex_id(trace.local_id, 32)
    local_ids = {span.local_id for span in spans}
    resource = [
        attribute(ATTR_SERVICE_NAME, trace.agent_name),
        attribute(ATTR_TRACE_NAME, trace.name),
        attribute(ATTR_TRACE_STATUS, trace.status),
        attribute(ATTR_TRACE_LOCAL_ID, trace.local_id),
        *(attribute(f"nexus.metadata.{k}", v) for k, v in trace.metadata.items() if v is not None),
    ]
    otlp_spans = []
    for span in spans:
        item: dict[str, Any] = {
            "traceId": trace_hex,
            "spanId": hex_id(span.local_id, 16),
            "name": span.name,
            "kind": SPAN_KIND_INTERNAL,
            "startTimeUnixNano": unix_nanos(span.started_at),
            "endTimeUnixNano": unix_nanos(span.ended_at or span.started_at),
            "attributes": [
                attribute(key, value)
                for key, value in ((ATTR_INPUT, span.input), (ATTR_OUTPUT, span.output))
                if value is not None
            ],
            "status": {"code": STATUS_ERROR if span.status == "error" else STATUS_OK},
        }
        if span.parent_local_id in local_ids and span.parent_local_id is not None:
            item["parentSpanId"] = hex_id(span.parent_local_id, 16)
        if span.error:
            item["status"]["message"] = span.error
        otlp_spans.append(item)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": resource},
                "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": otlp_spans}],
            }
        ]
    }


class OtlpSender:
    """Posts OTLP JSON to ``settings.otlp_endpoint``.

    The Nexus API key goes along only when the endpoint is on the Nexus host, so a third
    party collector never sees it.

    Args:
        settings: where to send; `settings.otlp_endpoint` must be set.
        transport: an httpx transport (tests pass `httpx.MockTransport`).
    """

    def __init__(
        self, settings: NexusSettings, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        if not settings.otlp_endpoint:
            raise ValueError("OtlpSender needs settings.otlp_endpoint")
        self.endpoint = settings.otlp_endpoint
        headers = {}
        same_host = urlsplit(self.endpoint).netloc == urlsplit(settings.base_url).netloc
        if settings.api_key is not None and same_host:
            headers["x-api-key"] = settings.api_key.get_secret_value()
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            transport=transport,
        )

    def send(self, trace: TraceRecord, spans: Sequence[SpanRecord]) -> None:
        """POST one trace; raises `NexusError` on a refusal, `NexusUnavailableError` else."""
        try:
            response = self._http.post(self.endpoint, json=to_otlp(trace, spans))
        except httpx.TransportError as exc:
            raise NexusUnavailableError(f"OTLP {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise NexusUnavailableError(
                f"OTLP {response.status_code}", status_code=response.status_code
            )
        if response.is_error:
            raise NexusError(response.status_code, f"OTLP export refused: {response.text[:200]}")

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
