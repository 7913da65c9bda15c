"""Durable spool of Nexus writes: SQLite in WAL mode, one row per operation.

Every trace, span and trace end is written here before anything is sent, and deleted only
after Nexus acknowledged it, so a dead process, an outage or a quota error loses nothing.
Nexus ids of delivered items stay in the `ids` table, so children spooled in one process
find the parents delivered by another.

Several processes may share one file (a Prefect worker runs each flow run in its own
process). Each `Outbox` owns the rows it wrote and holds an exclusive `flock` on a lock
file of its own while open; rows whose owner's lock is free belong to a dead process and
are adopted by the next outbox that starts (see `adopt_orphans`).

Thread-safe: one connection, guarded by a lock; every transaction is short.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

from nexus_bedrock_tasks.nexus.records import iso

OpKind = Literal["trace", "span", "end"]

# Mappings of ids stay this long: enough for any late child or a delayed `outbox flush`.
ID_RETENTION_S = 30 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    trace_local_id TEXT NOT NULL,
    local_id TEXT NOT NULL,
    parent_local_id TEXT,
    payload TEXT NOT NULL,
    owner TEXT NOT NULL,
    attempted INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ids (
    local_id TEXT PRIMARY KEY,
    nexus_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class OutboxStatus(TypedDict):
    """What `nexus-bedrock outbox status --json` prints."""

    pending: int
    oldest: str | None
    last_error: str | None


@dataclass(slots=True)
class OutboxOp:
    """One spooled operation.

    Attributes:
        seq: delivery order (monotonic per file).
        kind: ``trace`` (create), ``span`` (create) or ``end`` (status + end time).
        local_id: the trace's local id for ``trace``/``end``, the span's for ``span``.
        payload: wire-ready, already redacted fields of the record.
        attempted: a POST may have reached Nexus; look it up before posting again.
    """

    seq: int
    kind: OpKind
    trace_local_id: str
    local_id: str
    parent_local_id: str | None
    payload: dict[str, Any]
    attempted: bool = False


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: autocommit; batches open their own BEGIN IMMEDIATE.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    return conn


_OP_COLUMNS = "(kind, trace_local_id, local_id, parent_local_id, payload, owner, created_at)"
# Rows of one multi-row INSERT: 7 parameters each, under SQLite's old bound of 999.
_INSERT_ROWS = 140
# INSERT … RETURNING came with SQLite 3.35 (2021); older libraries insert row by row.
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
_T = TypeVar("_T")
# Rows per statement: well under SQLite's bound on bound parameters (999 before 3.32).
_CHUNK = 250


def _chunks(items: list[_T]) -> Iterator[list[_T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _create_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Spans carry prompts and answers: the file is for its user only.
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


def read_status(path: Path) -> OutboxStatus:
    """Status of the outbox at `path` without creating, adopting or locking anything."""
    if not path.exists():
        return OutboxStatus(pending=0, oldest=None, last_error=None)
    conn = _connect(path)
    try:
        return _status(conn)
    finally:
        conn.close()


def _status(conn: sqlite3.Connection) -> OutboxStatus:
    count, oldest = conn.execute("SELECT COUNT(*), MIN(created_at) FROM ops").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_error'").fetchone()
    return OutboxStatus(
        pending=int(count),
        oldest=iso(datetime.fromtimestamp(oldest, timezone.utc)) if oldest is not None else None,
        last_error=row[0] if row else None,
    )


class Outbox:
    """The spool file, opened by one owner (one exporter of one process).

    Args:
        path: the SQLite file; created (mode 0600) with its directory when missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owner = uuid.uuid4().hex
        _create_private(path)
        self._locks_dir = path.with_name(f"{path.name}.owners")
        self._locks_dir.mkdir(exist_ok=True, mode=0o700)
        self._lock_path = self._locks_dir / f"{self.owner}.lock"
        self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = threading.Lock()
        self._conn = _connect(path)
        self._closed = False
        with self._lock:
            self._conn.execute(
                "DELETE FROM ids WHERE created_at < ?", (time.time() - ID_RETENTION_S,)
            )

    def append(
        self,
        kind: OpKind,
        trace_local_id: str,
        local_id: str,
        parent_local_id: str | None,
        payload: dict[str, Any],
    ) -> OutboxOp:
        """Spool one operation (one short transaction)."""
        (op,) = self.append_many(kind, trace_local_id, [(local_id, parent_local_id, payload)])
        return op

    def append_many(
        self,
        kind: OpKind,
        trace_local_id: str,
        items: Sequence[tuple[str, str | None, dict[str, Any]]],
    ) -> list[OutboxOp]:
        """Spool several operations of one trace atomically (a turn's spans).

        Usually one statement (an INSERT of every row, returning their seqs): the caller is
        the agent run's thread, and every statement hands the GIL to the delivery threads
        and waits to get it back.

        Args:
            items: (local id, parent local id, payload) of each operation, in order.
        """
        if not items:
            return []
        now = time.time()
        rows = [
            (
                kind,
                trace_local_id,
                local_id,
                parent_local_id,
                json.dumps(payload, ensure_ascii=False, default=str),
                self.owner,
                now,
            )
            for local_id, parent_local_id, payload in items
        ]
        local_ids = [local_id for local_id, _, _ in items]
        if _HAS_RETURNING and len(rows) <= _INSERT_ROWS and len(set(local_ids)) == len(local_ids):
            values = ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
            with self._lock:
                # RETURNING gives rows in no set order: the (unique) local ids map them.
                by_local_id = dict(
                    self._conn.execute(
                        f"INSERT INTO ops {_OP_COLUMNS} VALUES {values} RETURNING local_id, seq",
                        [value for row in rows for value in row],
                    ).fetchall()
                )
            seqs = [by_local_id[local_id] for local_id in local_ids]
        else:
            seqs = []
            with self._transaction() as conn:
                for row in rows:
                    cursor = conn.execute(
                        f"INSERT INTO ops {_OP_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?)", row
                    )
                    assert cursor.lastrowid is not None  # an INSERT always sets it
                    seqs.append(cursor.lastrowid)
        return [
            OutboxOp(seq, kind, trace_local_id, local_id, parent_local_id, payload)
            for seq, (local_id, parent_local_id, payload) in zip(seqs, items, strict=True)
        ]

    def mark_attempted(self, seqs: Sequence[int]) -> None:
        """Record that these operations are about to be sent (before the first byte goes)."""
        self.settle([], seqs)

    def acknowledge(self, acks: Sequence[tuple[OutboxOp, str | None]]) -> None:
        """Delete delivered operations and keep the Nexus ids they got, in one transaction."""
        self.settle(acks, [])

    def settle(self, acks: Sequence[tuple[OutboxOp, str | None]], attempted: Sequence[int]) -> None:
        """One dispatcher cycle's writes, in one transaction: delete delivered operations
        (keeping the Nexus ids they got) and mark those about to be sent.

        A few set-wise statements, not one per row: the exporter's dispatcher runs this
        once per cycle, and every statement hands the GIL to the busy delivery threads and
        waits to get it back. When nothing is left in the file, the stored `last_error`
        goes too: it described data that has since been delivered.

        Args:
            acks: delivered operations and the Nexus id each got (None for a trace end).
            attempted: seqs of operations about to be sent (before their first byte goes).
        """
        if not acks and not attempted:
            return
        now = time.time()
        ids = [(op.local_id, nexus_id, now) for op, nexus_id in acks if nexus_id is not None]
        with self._transaction() as conn:
            for chunk in _chunks([op.seq for op, _ in acks]):
                conn.execute(f"DELETE FROM ops WHERE seq IN ({_marks(len(chunk))})", chunk)
            for rows in _chunks(ids):
                values = ",".join(["(?, ?, ?)"] * len(rows))
                conn.execute(
                    f"INSERT OR REPLACE INTO ids (local_id, nexus_id, created_at) VALUES {values}",
                    [value for row in rows for value in row],
                )
            if acks:
                conn.execute(
                    "DELETE FROM meta WHERE key = 'last_error' AND NOT EXISTS (SELECT 1 FROM ops)"
                )
            for chunk in _chunks(list(attempted)):
                conn.execute(
                    f"UPDATE ops SET attempted = 1 WHERE seq IN ({_marks(len(chunk))})", chunk
                )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def set_last_error(self, message: str) -> None:
        """Remember the latest delivery error for `outbox status`."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_error', ?)", (message,)
            )

    def nexus_ids(self, local_ids: Iterable[str]) -> dict[str, str]:
        """Known Nexus ids of these local ids (delivered by any process)."""
        wanted = list(local_ids)
        found: dict[str, str] = {}
        with self._lock:
            for chunk in _chunks(wanted):
                found.update(
                    self._conn.execute(
                        f"SELECT local_id, nexus_id FROM ids WHERE local_id IN "
                        f"({_marks(len(chunk))})",
                        chunk,
                    ).fetchall()
                )
        return found

    def adopt_orphans(self) -> set[str]:
        """Take over the rows of owners that are gone (their lock is free).

        Safe when two processes adopt at once: the UPDATE moves each row to one of them.

        Returns:
            The local ids of the traces adopted rows belong to.
        """
        with self._lock:
            owners = [
                row[0]
                for row in self._conn.execute(
                    "SELECT DISTINCT owner FROM ops WHERE owner != ?", (self.owner,)
                )
            ]
        traces: set[str] = set()
        for owner in owners:
            if not self._owner_is_gone(owner):
                continue
            with self._transaction() as conn:
                traces.update(
                    row[0]
                    for row in conn.execute(
                        "SELECT DISTINCT trace_local_id FROM ops WHERE owner = ?", (owner,)
                    )
                )
                conn.execute("UPDATE ops SET owner = ? WHERE owner = ?", (self.owner, owner))
            (self._locks_dir / f"{owner}.lock").unlink(missing_ok=True)
        return traces

    def _owner_is_gone(self, owner: str) -> bool:
        try:
            fd = os.open(self._locks_dir / f"{owner}.lock", os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # also drops the probe's lock
        return True

    def own_ops(self) -> list[OutboxOp]:
        """This owner's operations in delivery order (after `adopt_orphans`)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, kind, trace_local_id, local_id, parent_local_id, payload, attempted"
                " FROM ops WHERE owner = ? ORDER BY seq",
                (self.owner,),
            ).fetchall()
        return [
            OutboxOp(seq, kind, trace, local, parent, json.loads(payload), bool(attempted))
            for seq, kind, trace, local, parent, payload, attempted in rows
        ]

    def status(self) -> OutboxStatus:
        """``{"pending", "oldest", "last_error"}`` over every owner's rows."""
        with self._lock:
            return _status(self._conn)

    def close(self) -> None:
        """Close the database and release the owner lock (rows left become adoptable)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
        self._lock_path.unlink(missing_ok=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
