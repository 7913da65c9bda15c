"""Spooled payloads and sending one of them to Nexus (the exporter's worker side).

Payloads are built in the caller's thread, already redacted and truncated, because they
are written to the outbox file and secrets must never reach it. Sending posts a span's
spooled fields as they are (`span_body`: redacting and formatting them again per request
would only cost CPU), turns traces and ends back into records for `NexusClient`, looks an
item up first when an earlier POST of it may have arrived, and classifies the outcome for
the dispatcher.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from nexus_bedrock_tasks.exceptions import (
    NexusAuthError,
    NexusQuotaError,
    NexusValidationError,
)
from nexus_bedrock_tasks.nexus.client import NexusClient, NexusUnavailableError, parse_time
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord, iso
from nexus_bedrock_tasks.nexus.redact import Redactor, payload_text, truncate
from nexus_bedrock_tasks.nexus.schedule import Delivery
from nexus_bedrock_tasks.semconv import TraceStatus

OutcomeKind = Literal["ok", "retry", "fatal", "park"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery.

    Attributes:
        kind: ``ok`` (acknowledged), ``retry`` (Nexus unavailable: try again later),
            ``fatal`` (auth or quota: stop delivering for now), ``park`` (this item is
            refused for good in this process).
        nexus_id: the id Nexus gave a created trace or span.
        deduplicated: the item was found in Nexus instead of being posted again.
    """

    delivery: Delivery
    kind: OutcomeKind
    nexus_id: str | None = None
    error: BaseException | None = None
    deduplicated: bool = False


def trace_payload(trace: TraceRecord, redactor: Redactor) -> dict[str, Any]:
    """The spooled form of a new trace (redacted)."""
    return {
        "name": redactor.redact(trace.name),
        "agent_name": trace.agent_name,
        "status": trace.status,
        "started_at": iso(trace.started_at),
        "ended_at": iso(trace.ended_at) if trace.ended_at else None,
        "metadata": redactor.redact_value(trace.metadata),
    }


def span_payload(span: SpanRecord, redactor: Redactor, max_chars: int) -> dict[str, Any]:
    """The spooled form of a span: payloads as redacted, truncated strings."""
    return {
        "name": redactor.redact(span.name),
        "status": span.status,
        "started_at": iso(span.started_at),
        "ended_at": iso(span.ended_at) if span.ended_at else None,
        "input": payload_text(span.input, redactor, max_chars),
        "output": payload_text(span.output, redactor, max_chars),
        "error": payload_text(span.error, redactor, max_chars),
    }


def end_payload(status: TraceStatus, ended_at: datetime) -> dict[str, Any]:
    """The spooled form of a trace's end."""
    return {"status": status, "ended_at": iso(ended_at)}


def _time(value: Any) -> datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError(f"spooled time {value!r} is not ISO-8601")
    return parsed


def trace_from_payload(payload: dict[str, Any], local_id: str) -> TraceRecord:
    """The `TraceRecord` a spooled trace payload describes."""
    return TraceRecord(
        name=payload["name"],
        agent_name=payload["agent_name"],
        started_at=_time(payload["started_at"]),
        status=payload["status"],
        ended_at=parse_time(payload.get("ended_at")),
        metadata=payload.get("metadata") or {},
        local_id=local_id,
    )


def span_from_payload(
    payload: dict[str, Any], local_id: str, parent_local_id: str | None
) -> SpanRecord:
    """The `SpanRecord` a spooled span payload describes (payloads already strings)."""
    return SpanRecord(
        name=payload["name"],
        started_at=_time(payload["started_at"]),
        ended_at=parse_time(payload.get("ended_at")),
        status=payload["status"],
        parent_local_id=parent_local_id,
        input=payload.get("input"),
        output=payload.get("output"),
        error=payload.get("error"),
        local_id=local_id,
    )


def span_body(
    payload: dict[str, Any], parent_span_id: str | None, client: NexusClient
) -> dict[str, Any]:
    """The request body of a spooled span: its fields as spooled, plus the parent's id.

    The spooled strings are what `NexusClient.create_span` would send for the record
    they came from (redacted, truncated, ISO times), so they go as they are; a payload
    that is not a string (an outbox row written by hand) still goes through the client's
    redaction.
    """
    body: dict[str, Any] = {
        "name": payload["name"],
        "status": payload["status"],
        "started_at": payload["started_at"],
    }
    if payload.get("ended_at") is not None:
        body["ended_at"] = payload["ended_at"]
    if parent_span_id is not None:
        body["parent_span_id"] = parent_span_id
    limit = client.settings.max_payload_chars
    for key in ("input", "output", "error"):
        value = payload.get(key)
        if value is not None:
            body[key] = (
                value if isinstance(value, str) else payload_text(value, client.redactor, limit)
            )
    return body


def deliver(client: NexusClient, delivery: Delivery, *, hard_limit: int) -> Outcome:
    """Send one operation; never raises.

    Args:
        client: the shared client (it retries transient failures itself).
        delivery: the operation and the Nexus ids it needs.
        hard_limit: payload size for the single retry of a span Nexus refused with 400.
    """
    op = delivery.op
    try:
        nexus_id, found = _send(client, delivery, hard_limit)
    except NexusUnavailableError as exc:
        op.attempted = op.attempted or exc.maybe_sent
        return Outcome(delivery, "retry", error=exc)
    except (NexusAuthError, NexusQuotaError) as exc:
        op.attempted = True
        return Outcome(delivery, "fatal", error=exc)
    except Exception as exc:
        # NexusError: refused for good. Anything else is a bug or a corrupt row; the
        # exporter logs it with its traceback.
        op.attempted = True
        return Outcome(delivery, "park", error=exc)
    return Outcome(delivery, "ok", nexus_id=nexus_id, deduplicated=found)


def _send(client: NexusClient, delivery: Delivery, hard_limit: int) -> tuple[str | None, bool]:
    op = delivery.op
    if op.kind == "trace":
        trace = trace_from_payload(op.payload, op.local_id)
        found = client.find_trace(trace) if op.attempted else None
        return (found, True) if found else (client.create_trace(trace), False)
    trace_id = delivery.trace_id
    if trace_id is None:
        raise ValueError(f"{op.kind} {op.local_id} handed out before its trace was created")
    if op.kind == "end":
        client.update_trace(
            trace_id, status=op.payload["status"], ended_at=_time(op.payload["ended_at"])
        )
        return None, False
    parent = delivery.parent_span_id

    def record() -> SpanRecord:
        # Parsed only when needed: a lookup after an uncertain attempt, or a 400.
        return span_from_payload(op.payload, op.local_id, op.parent_local_id)

    if op.attempted:
        found = client.find_span(trace_id, record(), parent, exclude_ids=delivery.sibling_ids)
        if found:
            return found, True
    try:
        body = span_body(op.payload, parent, client)
        return client.post_span(
            trace_id, body, lambda: client.find_span(trace_id, record(), parent)
        ), False
    except NexusValidationError:
        smaller = _shrunk(record(), hard_limit)
        if smaller is None:
            raise
        # A 400 is a definite answer: nothing was stored, so one more POST is safe.
        return client.create_span(trace_id, smaller, parent), False


def _shrunk(span: SpanRecord, limit: int) -> SpanRecord | None:
    """`span` with its payloads cut to `limit`, or None when none is that long."""

    def cut(value: Any) -> Any:
        return truncate(value, limit) if isinstance(value, str) else value

    if not any(
        isinstance(value, str) and len(value) > limit
        for value in (span.input, span.output, span.error)
    ):
        return None
    error = cut(span.error)
    return dataclasses.replace(span, input=cut(span.input), output=cut(span.output), error=error)
