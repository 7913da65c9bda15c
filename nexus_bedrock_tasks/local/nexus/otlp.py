"""OTLP/HTTP JSON export requests → Nexus traces and spans (pure; the service's mapping).

Per resource, the agent is the `service.name` attribute (else `unknown`). Spans are grouped
by OTel `traceId`; each group becomes one Nexus trace named after its root span (no parent,
or the all-zero parent), with the root's attributes (plus its status message as `error`) as
metadata. Every span of the group, the root too, becomes a Nexus span whose `input` is its
attributes as a JSON object of strings; status code 2 means error. Times are cut to
milliseconds. Unlike the service, a time that is not a number answers 400, not 500.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Final

from nexus_bedrock_tasks.local.nexus.validation import BodyError, js_string, to_json_text
from nexus_bedrock_tasks.nexus.records import iso

OTEL_STATUS_ERROR: Final = 2
_ZERO_SPAN_ID: Final = "0000000000000000"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_JS_DATE_MS: Final = 8.64e15


@dataclass(frozen=True, slots=True)
class OtlpSpan:
    """One span to store; `key`/`parent_key` are OTel span ids, mapped to Nexus ids on insert."""

    key: str
    parent_key: str | None
    name: str
    status: str
    started_at: str
    ended_at: str | None
    input: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class OtlpTrace:
    """One Nexus trace made of the spans sharing an OTel trace id."""

    name: str
    status: str
    started_at: str
    ended_at: str | None
    metadata: str | None
    spans: list[OtlpSpan] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OtlpResource:
    """The traces of one `resourceSpans` entry, filed under one agent name."""

    agent_name: str
    traces: list[OtlpTrace]


def parse_export_request(body: Mapping[str, object], now: datetime) -> list[OtlpResource]:
    """Turn an `ExportTraceServiceRequest` into traces to store.

    Args:
        body: the decoded JSON object.
        now: stands in for a missing start or end time, as the service does.

    Raises:
        BodyError: no `resourceSpans` array, or a time that is not a number.
    """
    resource_spans = body.get("resourceSpans")
    if not isinstance(resource_spans, list):
        raise BodyError("Missing resourceSpans array")
    resources: list[OtlpResource] = []
    for entry in _objects(resource_spans):
        resource = entry.get("resource")
        resource_attrs = resource.get("attributes") if isinstance(resource, dict) else None
        agent_name = _attributes(resource_attrs).get("service.name", "unknown")
        groups: dict[str, list[Mapping[str, object]]] = {}
        for scope in _objects(entry.get("scopeSpans")):
            for span in _objects(scope.get("spans")):
                trace_key = span.get("traceId")
                if trace_key:
                    groups.setdefault(js_string(trace_key), []).append(span)
        traces = [_trace(spans, now) for spans in groups.values()]
        resources.append(OtlpResource(agent_name, traces))
    return resources


def _trace(spans: list[Mapping[str, object]], now: datetime) -> OtlpTrace:
    root = next((span for span in spans if _is_root(span)), spans[0])
    status, message = _status(root)
    metadata = _attributes(root.get("attributes"))
    if message:
        metadata["error"] = message
    return OtlpTrace(
        name=_text(root.get("name")),
        status="error" if status == OTEL_STATUS_ERROR else "success",
        started_at=_nano_to_iso(root.get("startTimeUnixNano"), now),
        ended_at=_optional_time(root.get("endTimeUnixNano"), now),
        metadata=to_json_text(metadata) if metadata else None,
        spans=[_span(span, now) for span in spans],
    )


def _span(span: Mapping[str, object], now: datetime) -> OtlpSpan:
    status, message = _status(span)
    attributes = _attributes(span.get("attributes"))
    failed = status == OTEL_STATUS_ERROR
    return OtlpSpan(
        key=_text(span.get("spanId")),
        parent_key=None if _is_root(span) else _text(span.get("parentSpanId")),
        name=_text(span.get("name")),
        status="error" if failed else "ok",
        started_at=_nano_to_iso(span.get("startTimeUnixNano"), now),
        ended_at=_optional_time(span.get("endTimeUnixNano"), now),
        input=to_json_text(attributes) if attributes else None,
        error=(message if message is not None else "error") if failed else None,
    )


def _objects(value: object) -> list[Mapping[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str:
    return "" if value is None else js_string(value)


def _is_root(span: Mapping[str, object]) -> bool:
    parent = span.get("parentSpanId")
    return not parent or parent == _ZERO_SPAN_ID


def _status(span: Mapping[str, object]) -> tuple[object, str | None]:
    """The status code and message (the message as text, `None` when absent)."""
    status = span.get("status")
    if not isinstance(status, dict):
        return None, None
    message = status.get("message")
    return status.get("code"), None if message is None else js_string(message)


def _attributes(attrs: object) -> dict[str, str]:
    """OTel key/value attributes as strings; arrays, maps and bytes are dropped, as upstream."""
    out: dict[str, str] = {}
    for attr in _objects(attrs):
        key, value = attr.get("key"), attr.get("value")
        if not isinstance(key, str) or not isinstance(value, dict):
            continue
        for kind in ("stringValue", "intValue", "doubleValue", "boolValue"):
            if kind in value:
                out[key] = js_string(value[kind])
                break
    return out


def _optional_time(nano: object, now: datetime) -> str | None:
    return _nano_to_iso(nano, now) if nano else None


def _nano_to_iso(nano: object, now: datetime) -> str:
    """Unix nanoseconds (string or number) → ISO-8601 with milliseconds, like JS `toISOString`."""
    if not nano:
        return iso(now)
    try:
        millis = math.floor(float(js_string(nano)) / 1_000_000)
        if abs(millis) > _MAX_JS_DATE_MS:
            raise OverflowError(nano)
        return iso(_EPOCH + timedelta(milliseconds=millis))
    except (ValueError, OverflowError) as exc:
        raise BodyError(f"Invalid time in unix nanoseconds: {nano!r}") from exc
