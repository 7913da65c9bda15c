"""What is exported to Nexus: complete traces and spans, keyed by local ids.

Nexus has no span update, so a `SpanRecord` is always complete (start, end, status,
output) when it is created. Ids are local (uuid4 hex); the exporter maps them to the
ids Nexus returns, so a child can be queued before its parent is acknowledged.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nexus_bedrock_tasks.semconv import SpanStatus, TraceStatus

JsonValue = Any
"""A value `json.dumps` accepts (str, int, float, bool, None, list, dict)."""


def new_local_id() -> str:
    """A fresh local id for a trace or span."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    """ISO-8601 with milliseconds and a `Z` suffix, as Nexus stores it."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One Nexus trace (one agent invocation)."""

    name: str
    agent_name: str
    started_at: datetime
    status: TraceStatus = "running"
    ended_at: datetime | None = None
    metadata: dict[str, JsonValue] = field(default_factory=dict)
    local_id: str = field(default_factory=new_local_id)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One complete Nexus span.

    Attributes:
        parent_local_id: local id of the parent span, or None for the trace root.
    """

    name: str
    started_at: datetime
    ended_at: datetime | None
    status: SpanStatus = "ok"
    parent_local_id: str | None = None
    input: JsonValue = None
    output: JsonValue = None
    error: str | None = None
    local_id: str = field(default_factory=new_local_id)
