"""SQLite storage of the local Nexus server: agents, traces, spans and plan limits.

One connection shared by all threads behind a lock: the server handles requests on one
event loop, so the lock is rarely contended. Writes are committed in groups: a write joins
the open transaction and a background thread commits it within `COMMIT_DELAY_S` (and on
`close()`). Every read goes through the same connection, so a write is visible to the next
request as soon as it is acknowledged; only a killed process loses the last few
milliseconds of writes. A commit per span cost three quarters of the span's SQLite time
(WAL pages appended for the table and both indexes), a group commit writes each page once.
The schema is created once when the store opens, never per request. Queries, including the
duration arithmetic, are the hosted service's (which runs on SQLite too), so answers match.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

from nexus_bedrock_tasks.local.nexus.config import PlanLimits
from nexus_bedrock_tasks.local.nexus.otlp import OtlpResource
from nexus_bedrock_tasks.local.nexus.validation import DEFAULT_LIST_LIMIT
from nexus_bedrock_tasks.nexus.records import iso
from nexus_bedrock_tasks.semconv import SUMMARY_SPAN

COMMIT_DELAY_S: Final = 0.02
"""How long a write may wait for its commit (other writes join it meanwhile)."""

_log = logging.getLogger(__name__)

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


# The same insert, made only when the trace exists: its row count answers "was it there?"
# without a query of its own.
_INSERT_SPAN_INTO_EXISTING = (
    f"INSERT INTO spans (trace_id, {', '.join(_SPAN_COLUMNS)})"
    f" SELECT {', '.join('?' * (len(_SPAN_COLUMNS) + 1))}"
    " WHERE EXISTS (SELECT 1 FROM traces WHERE id = ?)"
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


_UUID_VARIANT_DIGITS: Final = "89ab"


def new_id() -> str:
    """A fresh trace/span/agent id: a random (version 4) UUID, like the service's.

    The text `str(uuid.uuid4())` gives (122 random bits, version digit 4, variant digit one
    of 8, 9, a, b), built from hex digits without a `UUID` object: under half the cost.
    """
    digits = os.urandom(16).hex()
    variant = _UUID_VARIANT_DIGITS[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


class NexusStore:
    """The server's database. `open()` before use, `close()` after (the app's lifespan does).

    Args:
        path: SQLite file, created if missing; `None` keeps everything in memory.
        limits: the emulated plan's limits.
        commit_delay_s: how long a write may wait for its commit (see the module's notes).
    """

    def __init__(
        self, path: Path | None, limits: PlanLimits, commit_delay_s: float = COMMIT_DELAY_S
    ) -> None:
        self.path = path
        self.limits = limits
        self.commit_delay_s = commit_delay_s
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # Set (under `_lock`) while a write transaction is open; the committer waits for it.
        self._uncommitted = threading.Event()
        self._closing = threading.Event()
        self._committer: threading.Thread | None = None

    def open(self) -> None:
        """Connect, create the schema if the file is new, start the committer thread."""
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        self._closing.clear()
        self._committer = threading.Thread(
            target=self._commit_loop, name="local-nexus-commit", daemon=True
        )
        self._committer.start()

    def close(self) -> None:
        """Commit what is pending and close the connection (idempotent)."""
        self._closing.set()
        self._uncommitted.set()  # wakes the committer, which sees `_closing` and ends
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.join()
        with self._lock:
            if self._db is not None:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
                self._db.close()
                self._db = None
            self._uncommitted.clear()

    def commit(self) -> None:
        """Commit the open write transaction now, if there is one."""
        with self._lock:
            db = self._db
            try:
                if db is not None and db.in_transaction:
                    db.execute("COMMIT")
            finally:
                if db is None or not db.in_transaction:
                    self._uncommitted.clear()

    def _commit_loop(self) -> None:
        while True:
            self._uncommitted.wait()
            # Let more writes join the transaction; `close()` cuts the wait short.
            if self._closing.wait(self.commit_delay_s):
                return
            try:
                self.commit()
            except sqlite3.Error:
                _log.exception("local Nexus: commit failed; trying again shortly")

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, for a read."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("NexusStore is not open")
            yield self._db

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """The connection inside the open write transaction (begun if none is open)."""
        with self._locked() as db:
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
                self._uncommitted.set()
            yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Like `_writing`, all or nothing: limit checks and inserts stay atomic."""
        with self._writing() as db:
            db.execute("SAVEPOINT write")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                raise
            db.execute("RELEASE write")

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

    def update_trace(self, trace_id: str, status: str | None, ended_at: str | None) -> bool:
        """Set the given fields of a trace (`None` leaves a field as it is).

        Returns:
            Whether the trace exists (nothing is written when it does not).
        """
        with self._writing() as db:
            cursor = db.execute(
                "UPDATE traces SET status = coalesce(?, status), ended_at = coalesce(?, ended_at)"
                " WHERE id = ?",
                (status, ended_at, trace_id),
            )
            return cursor.rowcount > 0

    def create_span(self, trace_id: str, span: SpanRow) -> bool:
        """Insert `span` (its `id` included) into trace `trace_id`.

        Returns:
            Whether the trace exists (nothing is written when it does not).
        """
        with self._writing() as db:
            cursor = db.execute(
                _INSERT_SPAN_INTO_EXISTING, (*_span_params(trace_id, span), trace_id)
            )
            return cursor.rowcount > 0

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
