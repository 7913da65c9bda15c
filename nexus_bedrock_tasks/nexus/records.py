"""What is exported to Nexus: complete traces and spans, keyed by local ids.

Nexus has no span update, so a `SpanRecord` is always complete (start, end, status,
output) when it is created. Ids are local (128 random bits in hex); the exporter maps them
to the ids Nexus returns, so a child can be queued before its parent is acknowledged.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from nexus_bedrock_tasks.semconv import SpanStatus, TraceStatus

JsonValue = Any
"""A value `json.dumps` accepts (str, int, float, bool, None, list, dict)."""


# Local ids come from a generator of this module's own, seeded from the OS and again in
# every forked child: `uuid.uuid4` asks the OS for 16 bytes per id, a system call that
# hands the GIL to the exporter's threads and waits to get it back (a span costs a dozen
# ids). A generator of its own, so that a `random.seed()` in user code cannot repeat ids.
_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_local_id() -> str:
    """A fresh local id for a trace or span: 128 random bits in hex, like ``uuid4().hex``."""
    return f"{_ids.getrandbits(128):032x}"


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
