"""Exactly-once tool execution: results stored by (session, invocationId, call index).

A retried task or a re-run flow finds the stored result and does not run the tool again.
A tool that was started but never finished (its process was killed) has no result and
runs again: tools should themselves be idempotent for that window.
"""

from __future__ import annotations

import json
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
)
"""


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
        self._db.execute(_SCHEMA)
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

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
