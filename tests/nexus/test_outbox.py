"""The SQLite spool: durable rows, ids that outlive processes, owners and adoption."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from nexus_bedrock_tasks.nexus import outbox as outbox_module
from nexus_bedrock_tasks.nexus.outbox import Outbox, read_status


def test_rows_live_until_acknowledged(outbox_path: Path) -> None:
    box = Outbox(outbox_path)
    trace = box.append("trace", "T", "T", None, {"name": "t"})
    span = box.append("span", "T", "S", "P", {"name": "s"})
    box.set_last_error("NexusUnavailableError: down")

    status = box.status()
    assert status["pending"] == 2 and status["oldest"] is not None
    assert status["oldest"].endswith("Z") and status["last_error"] == "NexusUnavailableError: down"

    box.acknowledge([(trace, "N-T")])
    assert [op.local_id for op in box.own_ops()] == ["S"]
    assert box.nexus_ids(["T", "S"]) == {"T": "N-T"}
    box.acknowledge([(span, "N-S")])
    assert read_status(outbox_path) == {"pending": 0, "oldest": None, "last_error": None}
    box.close()


def test_file_is_private_and_in_wal_mode(outbox_path: Path) -> None:
    box = Outbox(outbox_path)
    box.close()
    assert stat.S_IMODE(outbox_path.stat().st_mode) == 0o600
    conn = sqlite3.connect(outbox_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


def test_attempted_mark_survives_reopening(outbox_path: Path) -> None:
    first = Outbox(outbox_path)
    op = first.append("span", "T", "S", None, {"name": "s"})
    first.mark_attempted([op.seq])
    first.close()
    second = Outbox(outbox_path)
    assert second.adopt_orphans() == {"T"}
    [loaded] = second.own_ops()
    assert loaded.attempted and loaded.payload == {"name": "s"}
    second.close()


def test_rows_of_a_live_owner_are_not_adopted(outbox_path: Path) -> None:
    alive = Outbox(outbox_path)
    alive.append("trace", "A", "A", None, {})
    other = Outbox(outbox_path)
    assert other.adopt_orphans() == set()
    assert other.own_ops() == []
    alive.close()
    assert other.adopt_orphans() == {"A"}
    assert [op.local_id for op in other.own_ops()] == ["A"]
    other.close()


def test_status_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none" / "outbox.sqlite3"
    assert read_status(path) == {"pending": 0, "oldest": None, "last_error": None}
    assert not path.exists()


def test_concurrent_appends_from_many_threads(outbox_path: Path) -> None:
    box = Outbox(outbox_path)

    def spool(n: int) -> None:
        for k in range(100):
            box.append("span", f"T{n}", f"S{n}-{k}", None, {"k": k})

    threads = [threading.Thread(target=spool, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ops = box.own_ops()
    assert len(ops) == 800 and len({op.seq for op in ops}) == 800
    box.close()


def test_append_many_writes_rows_in_order_in_one_go(outbox_path: Path) -> None:
    box = Outbox(outbox_path)
    ops = box.append_many("span", "T", [("A", None, {"n": 1}), ("B", "A", {"n": 2})])
    assert [(op.local_id, op.parent_local_id, op.payload) for op in ops] == [
        ("A", None, {"n": 1}),
        ("B", "A", {"n": 2}),
    ]
    assert ops[0].seq < ops[1].seq
    assert box.append_many("span", "T", []) == []
    # What another process reads from the file: the rows were committed.
    reader = sqlite3.connect(outbox_path)
    try:
        rows = reader.execute("SELECT local_id, parent_local_id FROM ops ORDER BY seq").fetchall()
    finally:
        reader.close()
    assert rows == [("A", None), ("B", "A")]
    box.close()


@pytest.mark.parametrize("returning", [True, False], ids=["insert-returning", "row-by-row"])
def test_append_many_gives_each_row_its_own_seq(
    outbox_path: Path, monkeypatch: pytest.MonkeyPatch, returning: bool
) -> None:
    """Both ways of spooling (SQLite < 3.35 has no RETURNING), repeated local ids included."""
    monkeypatch.setattr(outbox_module, "_HAS_RETURNING", returning)
    box = Outbox(outbox_path)
    for items in (
        [("A", None, {"n": 1}), ("B", "A", {"n": 2}), ("C", "A", {"n": 3})],
        [("D", None, {"n": 4}), ("D", None, {"n": 5})],
    ):
        ops = box.append_many("span", "T", items)
        assert [(op.local_id, op.payload) for op in ops] == [(i, p) for i, _, p in items]
        assert [op.seq for op in ops] == sorted({op.seq for op in ops})
    assert [op.payload["n"] for op in box.own_ops()] == [1, 2, 3, 4, 5]
    box.close()
