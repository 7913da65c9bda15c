"""SQLite storage of the local Nexus server: agents, traces, spans and plan limits.

One connection shared by all threads behind a lock: the server handles requests on one
event loop, so the lock is rarely contended, and WAL with `synchronous=NORMAL` makes a
commit a page append instead of an fsync (thousands of span inserts a second). The schema
is created once when the store opens, never per request. Queries, including the duration
arithmetic, are the hosted service's (which runs on SQLite too), so answers match.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from nexus_bedrock_tasks.local.nexus.config import PlanLimits
from nexus_bedrock_tasks.local.nexus.otlp import OtlpResource
from nexus_bedrock_tasks.local.nexus.validation import DEFAULT_LIST_LIMIT
from nexus_bedrock_tasks.nexus.records import iso
from nexus_bedrock_tasks.semconv import SUMMARY_SPAN

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY, agent_id TEXT NOT NULL REFERENCES agents(id), name TEXT NOT NULL,
    status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, metadata TEXT,
    received_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (started_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS traces_by_receipt ON traces (received_at);
CREATE TABLE IF NOT EXISTS spans (
    id TEXT PRIMARY KEY, trace_id TEXT NOT NULL REFERENCES traces(id), parent_span_id TEXT,
    name TEXT NOT NULL, status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT,
    input TEXT, output TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id, started_at);
"""

_TRACE_COLUMNS = """
    t.id, t.name, a.name AS agent_name, t.status, t.started_at, t.ended_at,
    CASE WHEN t.ended_at IS NOT NULL
         THEN CAST((julianday(t.ended_at) - julianday(t.started_at)) * 86400000 AS INTEGER)
         ELSE NULL END AS duration_ms,
    (SELECT COUNT(*) FROM spans s WHERE s.trace_id = t.id) AS span_count,
    t.metadata
    FROM traces t JOIN agents a ON t.agent_id = a.id"""


class AgentLimitReached(Exception):
    """A new agent name would exceed the plan's agent limit."""

    def __init__(self, max_agents: int) -> None:
        super().__init__(f"plan allows {max_agents} agent(s)")
        self.max_agents = max_agents


class TraceLimitReached(Exception):
    """The plan's monthly trace limit is used up."""

    def __init__(self, limit: int, current: int) -> None:
        super().__init__(f"{current} of {limit} monthly traces used")
        self.limit = limit
        self.current = current


class CursorNotFound(Exception):
    """The `after` cursor names no trace."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    """A trace as listed (`metadata` is the stored JSON text)."""

    id: str
    name: str
    agent_name: str
    status: str
    started_at: str
    ended_at: str | None
    duration_ms: int | None
    span_count: int
    metadata: str | None


@dataclass(frozen=True, slots=True)
class SpanRow:
    """A stored span (`input`/`output` are JSON text)."""

    id: str
    name: str
    parent_span_id: str | None
    status: str
    started_at: str
    ended_at: str | None
    input: str | None
    output: str | None
    error: str | None


_SPAN_COLUMNS = tuple(column.name for column in fields(SpanRow))
_INSERT_SPAN = (
    f"INSERT INTO spans (trace_id, {', '.join(_SPAN_COLUMNS)})"
    f" VALUES ({', '.join('?' * (len(_SPAN_COLUMNS) + 1))})"
)


def _span_params(trace_id: str, span: SpanRow) -> tuple[str | None, ...]:
    return (trace_id, *(getattr(span, column) for column in _SPAN_COLUMNS))


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """Which traces to list, newest first; `after` is the id of the last trace already seen."""

    agent_name: str | None = None
    statuses: tuple[str, ...] | None = None
    since: str | None = None
    until: str | None = None
    after: str | None = None
    limit: int = DEFAULT_LIST_LIMIT


def new_id() -> str:
    """A fresh trace/span/agent id (a UUID, like the service's)."""
    return str(uuid.uuid4())


class NexusStore:
    """The server's database. `open()` before use, `close()` after (the app's lifespan does).

    Args:
        path: SQLite file, created if missing; `None` keeps everything in memory.
        limits: the emulated plan's limits.
    """

    def __init__(self, path: Path | None, limits: PlanLimits) -> None:
        self.path = path
        self.limits = limits
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Connect and create the schema if the file is new."""
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, for one statement (autocommit) or a read."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("NexusStore is not open")
            yield self._db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside a write transaction (limit checks and inserts stay atomic)."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _monthly_room(self, db: sqlite3.Connection) -> int | None:
        """How many more traces the plan takes this month (`None`: no limit).

        Counted by when the server received them: the service keeps a running count that
        back-dated traces raise too (it recounts by `started_at` only when its hourly cache
        expires), so a test can hit the limit with any timestamps.

        Raises:
            TraceLimitReached: no room left.
        """
        limit = self.limits.monthly_trace_limit
        if limit is None:
            return None
        month_start = datetime.now(timezone.utc).strftime("%Y-%m-01T00:00:00.000Z")
        (current,) = db.execute(
            "SELECT COUNT(*) FROM traces WHERE received_at >= ?", (month_start,)
        ).fetchone()
        if current >= limit:
            raise TraceLimitReached(limit, current)
        return int(limit - current)

    def _agent_id(self, db: sqlite3.Connection, name: str) -> str:
        """The id of the agent called `name`, created when new (within the plan's limit).

        Raises:
            AgentLimitReached: `name` is new and the plan has no room for another agent.
        """
        row = db.execute("SELECT id FROM agents WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return str(row[0])
        max_agents = self.limits.max_agents
        if max_agents is not None:
            (count,) = db.execute("SELECT COUNT(*) FROM agents").fetchone()
            if count >= max_agents:
                raise AgentLimitReached(max_agents)
        agent_id = new_id()
        db.execute(
            "INSERT INTO agents (id, name, created_at) VALUES (?, ?, ?)",
            (agent_id, name, iso(datetime.now(timezone.utc))),
        )
        return agent_id

    @staticmethod
    def _insert_trace(db: sqlite3.Connection, agent_id: str, row: Sequence[str | None]) -> str:
        """Insert `(name, status, started_at, ended_at, metadata)` and return the new id."""
        trace_id = new_id()
        db.execute(
            "INSERT INTO traces (id, agent_id, name, status, started_at, ended_at, metadata,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (trace_id, agent_id, *row, iso(datetime.now(timezone.utc))),
        )
        return trace_id

    def create_trace(
        self,
        agent_name: str,
        name: str,
        status: str,
        started_at: str,
        ended_at: str | None,
        metadata: str | None,
    ) -> str:
        """Insert a trace and return its id.

        Raises:
            TraceLimitReached: the monthly limit is used up (checked first, as upstream).
            AgentLimitReached: `agent_name` is new and the plan has no room for it.
        """
        with self._transaction() as db:
            self._monthly_room(db)
            agent_id = self._agent_id(db, agent_name)
            return self._insert_trace(db, agent_id, (name, status, started_at, ended_at, metadata))

    def trace_exists(self, trace_id: str) -> bool:
        """Whether a trace with this id is stored."""
        with self._locked() as db:
            return (
                db.execute("SELECT 1 FROM traces WHERE id = ?", (trace_id,)).fetchone() is not None
            )

    def update_trace(self, trace_id: str, status: str | None, ended_at: str | None) -> None:
        """Set the given fields of a trace (`None` leaves a field as it is)."""
        with self._locked() as db:
            db.execute(
                "UPDATE traces SET status = coalesce(?, status), ended_at = coalesce(?, ended_at)"
                " WHERE id = ?",
                (status, ended_at, trace_id),
            )

    def create_span(self, trace_id: str, span: SpanRow) -> None:
        """Insert `span` (its `id` included) into trace `trace_id`."""
        with self._locked() as db:
            db.execute(_INSERT_SPAN, _span_params(trace_id, span))

    def ingest_otlp(self, resources: Sequence[OtlpResource]) -> None:
        """Store OTLP-derived traces in one transaction.

        Traces past the monthly limit are dropped silently, as upstream does once the
        request itself was let in.

        Raises:
            TraceLimitReached: the limit was already used up before this request.
            AgentLimitReached: a resource names a new agent and the plan has no room.
        """
        stored = 0
        with self._transaction() as db:
            room = self._monthly_room(db)
            for resource in resources:
                agent_id = self._agent_id(db, resource.agent_name)
                for trace in resource.traces:
                    if room is not None and stored >= room:
                        return
                    trace_id = self._insert_trace(
                        db,
                        agent_id,
                        (
                            trace.name,
                            trace.status,
                            trace.started_at,
                            trace.ended_at,
                            trace.metadata,
                        ),
                    )
                    stored += 1
                    ids = {span.key: new_id() for span in trace.spans}
                    for span in trace.spans:
                        parent = ids.get(span.parent_key) if span.parent_key else None
                        row = SpanRow(
                            id=ids[span.key],
                            name=span.name,
                            parent_span_id=parent,
                            status=span.status,
                            started_at=span.started_at,
                            ended_at=span.ended_at,
                            input=span.input,
                            output=None,
                            error=span.error,
                        )
                        db.execute(_INSERT_SPAN, _span_params(trace_id, row))

    def list_traces(self, query: TraceFilter) -> tuple[list[TraceRow], int]:
        """One page of traces, newest first, and how many match (the cursor included).

        Raises:
            CursorNotFound: `query.after` names no trace.
        """
        where: list[str] = []
        params: list[object] = []
        if query.agent_name:
            where.append("a.name = ?")
            params.append(query.agent_name)
        if query.statuses:
            where.append(f"t.status IN ({', '.join('?' * len(query.statuses))})")
            params.extend(query.statuses)
        if query.since:
            where.append("t.started_at >= ?")
            params.append(query.since)
        if query.until:
            where.append("t.started_at <= ?")
            params.append(query.until)
        with self._locked() as db:
            if query.after:
                cursor = db.execute(
                    "SELECT started_at FROM traces WHERE id = ?", (query.after,)
                ).fetchone()
                if cursor is None:
                    raise CursorNotFound(query.after)
                where.append("(t.started_at < ? OR (t.started_at = ? AND t.id < ?))")
                params.extend((cursor[0], cursor[0], query.after))
            clause = " AND ".join(where) or "1"
            (total,) = db.execute(
                f"SELECT COUNT(*) FROM traces t JOIN agents a ON t.agent_id = a.id WHERE {clause}",
                params,
            ).fetchone()
            rows = db.execute(
                f"SELECT {_TRACE_COLUMNS} WHERE {clause}"
                " ORDER BY t.started_at DESC, t.id DESC LIMIT ?",
                (*params, query.limit),
            ).fetchall()
        return [TraceRow(*row) for row in rows], int(total)

    def get_trace(self, trace_id: str) -> tuple[TraceRow, list[SpanRow]] | None:
        """A trace and its spans ordered by `started_at` (then arrival), or `None`."""
        with self._locked() as db:
            row = db.execute(f"SELECT {_TRACE_COLUMNS} WHERE t.id = ?", (trace_id,)).fetchone()
            if row is None:
                return None
            spans = db.execute(
                f"SELECT {', '.join(_SPAN_COLUMNS)} FROM spans WHERE trace_id = ?"
                " ORDER BY started_at ASC, rowid ASC",
                (trace_id,),
            ).fetchall()
        return TraceRow(*row), [SpanRow(*span) for span in spans]

    def summary_outputs(self, trace_ids: Sequence[str]) -> dict[str, str | None]:
        """The `output` of each trace's `summary` span (the last one posted), by trace id."""
        if not trace_ids:
            return {}
        marks = ", ".join("?" * len(trace_ids))
        with self._locked() as db:
            rows = db.execute(
                f"SELECT trace_id, output FROM spans WHERE name = ? AND trace_id IN ({marks})"
                " ORDER BY rowid",
                (SUMMARY_SPAN, *trace_ids),
            ).fetchall()
        return {trace_id: output for trace_id, output in rows}

    def agent_names(self) -> list[str]:
        """Every agent name, sorted."""
        with self._locked() as db:
            return [name for (name,) in db.execute("SELECT name FROM agents ORDER BY name")]
