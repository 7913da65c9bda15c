"""Durable run state: tool results, unanswered returnControl requests, open traces.

- Exactly-once tools: results stored by (session, invocationId, call index). A retried
  task or a re-run flow finds the stored result and does not run the tool again. A tool
  that started but never finished (its process was killed) has no result and runs again:
  tools should themselves be idempotent for that window.
- A returnControl request is kept until the agent got its answer, so a re-run in the
  same session answers it (reusing finished tools) instead of leaving the session stuck.
- Traces are recorded while open, so `nexus-bedrock reconcile` can end the traces of
  processes that died without running any hook (SIGKILL).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tool_calls (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    outcome TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS pending_return_control (
    session_id TEXT PRIMARY KEY,
    invocation_id TEXT NOT NULL,
    request TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS open_traces (
    key TEXT PRIMARY KEY,
    flow_run_id TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    trace TEXT NOT NULL,
    started_at TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OpenTrace:
    """A trace whose process had not ended it when last seen."""

    key: str
    flow_run_id: str | None
    pid: int
    host: str
    trace: dict[str, Any]
    started_at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@functools.lru_cache(maxsize=8)
def get_ledger(path: Path) -> ToolLedger:
    """The process's ledger for `path` (one connection per file)."""
    return ToolLedger(path)


def call_key(session_id: str, invocation_id: str, index: int) -> str:
    """The idempotency key of one returnControl call."""
    return f"{session_id}:{invocation_id}:{index}"


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    """A finished tool call as stored."""

    outcome: dict[str, Any]
    finished_at: str


class ToolLedger:
    """SQLite store of tool outcomes; safe across threads and processes (WAL)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()

    def get(self, key: str) -> StoredOutcome | None:
        """The stored outcome of a finished call, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT outcome, finished_at FROM tool_calls WHERE key = ? AND status = 'done'",
                (key,),
            ).fetchone()
        return None if row is None else StoredOutcome(json.loads(row[0]), row[1])

    def begin(self, key: str) -> None:
        """Record that the call started (kept for `reconcile` and post-mortems)."""
        now = datetime.now(timezone.utc).isoformat()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO tool_calls (key, status, started_at) VALUES (?, 'running', ?) "
                "ON CONFLICT(key) DO UPDATE SET started_at = excluded.started_at "
                "WHERE tool_calls.status = 'running'",
                (key, now),
            )

    def finish(self, key: str, outcome: dict[str, Any]) -> None:
        """Store the outcome; later lookups of `key` return it."""
        now = datetime.now(timezone.utc).isoformat()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO tool_calls (key, status, outcome, started_at, finished_at) "
                "VALUES (?, 'done', ?, ?, ?) ON CONFLICT(key) DO UPDATE SET status = 'done', "
                "outcome = excluded.outcome, finished_at = excluded.finished_at",
                (key, json.dumps(outcome), now, now),
            )

    def unfinished(self) -> list[str]:
        """Keys of calls that started and never finished."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM tool_calls WHERE status = 'running'"
            ).fetchall()
        return [row[0] for row in rows]

    def save_pending(self, session_id: str, invocation_id: str, request: dict[str, Any]) -> None:
        """Keep an unanswered returnControl request of a session."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO pending_return_control VALUES (?, ?, ?, ?)",
                (session_id, invocation_id, json.dumps(request), _now()),
            )

    def pending(self, session_id: str) -> dict[str, Any] | None:
        """The session's unanswered returnControl request (the event payload), if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT request FROM pending_return_control WHERE session_id = ?", (session_id,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def clear_pending(self, session_id: str, invocation_id: str) -> None:
        """The agent got the answer to `invocation_id`."""
        with self._lock, self._db:
            self._db.execute(
                "DELETE FROM pending_return_control WHERE session_id = ? AND invocation_id = ?",
                (session_id, invocation_id),
            )

    def open_trace(self, key: str, flow_run_id: str | None, trace: dict[str, Any]) -> None:
        """Record a trace as open by this process."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO open_traces VALUES (?, ?, ?, ?, ?, ?)",
                (key, flow_run_id, os.getpid(), socket.gethostname(), json.dumps(trace), _now()),
            )

    def close_trace(self, key: str) -> None:
        """The trace was ended."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM open_traces WHERE key = ?", (key,))

    def open_traces(self) -> list[OpenTrace]:
        """Every trace recorded as open."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, flow_run_id, pid, host, trace, started_at FROM open_traces"
            ).fetchall()
        return [OpenTrace(r[0], r[1], int(r[2]), r[3], json.loads(r[4]), r[5]) for r in rows]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
