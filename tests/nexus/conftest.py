"""Fixtures of the Nexus client tests: the fake Nexus, clients and exporters on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.exporter import NexusExporter
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.fake_nexus import API_KEY, FakeNexus

BASE_URL = "http://nexus.test"
T0 = datetime(2025, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NEXUS_* variable of the machine running the tests leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith("NEXUS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NEXUS_BEDROCK_OUTBOX", str(tmp_path / "env-outbox.sqlite3"))


@pytest.fixture
def fake() -> FakeNexus:
    return FakeNexus()


@pytest.fixture
def settings() -> NexusSettings:
    return NexusSettings(api_key=API_KEY, base_url=BASE_URL, max_retries=3)


class Sleeps(list[float]):
    """Records what the retry loop would have slept."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_client(
    fake: FakeNexus, settings: NexusSettings, sleeps: Sleeps
) -> Iterator[Callable[..., NexusClient]]:
    clients: list[NexusClient] = []

    def make(**overrides: Any) -> NexusClient:
        options: dict[str, Any] = {"transport": fake.transport(), "sleep": sleeps}
        custom = overrides.pop("settings", settings)
        options.update(overrides)
        client = NexusClient(custom, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite3"


@pytest.fixture
def make_exporter(
    make_client: Callable[..., NexusClient], settings: NexusSettings, outbox_path: Path
) -> Iterator[Callable[..., NexusExporter]]:
    exporters: list[NexusExporter] = []

    def make(**options: Any) -> NexusExporter:
        client = options.pop("client", None) or make_client()
        options.setdefault("redelivery_delay", 0.01)
        exporter = NexusExporter(
            options.pop("settings", settings),
            options.pop("path", outbox_path),
            client=client,
            **options,
        )
        exporters.append(exporter)
        return exporter

    yield make
    for exporter in exporters:
        exporter.close(timeout=5)


def make_tree(prefix: str = "", spans: int = 6) -> tuple[TraceRecord, list[SpanRecord]]:
    """A trace and a span tree in the order a flow spools it: children before parents.

    Shape: ``task`` at the root; ``llm`` spans under it; each odd llm span has a ``tool``
    child. Names and start times are unique, so the fake's rows map back to local spans.
    """
    trace = TraceRecord(f"invoke: {prefix}hello", "bedrock-agent", T0, metadata={"turn": 1})
    root = SpanRecord(f"{prefix}task:drain", T0, T0 + timedelta(seconds=60))
    out: list[SpanRecord] = []
    for n in range(spans):
        start = T0 + timedelta(seconds=n + 1)
        llm = SpanRecord(
            f"{prefix}llm:{n}",
            start,
            start + timedelta(milliseconds=500),
            parent_local_id=root.local_id,
            output={"text": f"answer {n}"},
        )
        if n % 2:
            out.append(
                SpanRecord(
                    f"{prefix}tool:{n}",
                    start + timedelta(milliseconds=100),
                    start + timedelta(milliseconds=200),
                    parent_local_id=llm.local_id,
                    input={"n": n},
                )
            )
        out.append(llm)
    out.append(root)
    return trace, out


def spool_tree(
    exporter: NexusExporter, trace: TraceRecord, spans: list[SpanRecord], *, end: bool = True
) -> None:
    exporter.start_trace(trace)
    for span in spans:
        exporter.add_span(trace.local_id, span)
    if end:
        exporter.end_trace(trace.local_id, "success", T0 + timedelta(seconds=90))


def assert_delivered_once(
    fake: FakeNexus, trace: TraceRecord, spans: list[SpanRecord], *, ended: bool = True
) -> None:
    """Every span is in Nexus exactly once, under its trace, below the right parent."""
    stored = fake.trace_by_local_id(trace.local_id)
    assert stored is not None, "trace not delivered"
    rows = fake.spans[stored["id"]]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    assert sorted(by_name) == sorted(s.name for s in spans)
    assert all(len(found) == 1 for found in by_name.values()), "a span was posted twice"
    names = {s.local_id: s.name for s in spans}
    for span in spans:
        row = by_name[span.name][0]
        expected = by_name[names[span.parent_local_id]][0]["id"] if span.parent_local_id else None
        assert row["parent_span_id"] == expected, f"{span.name} under the wrong parent"
    if ended:
        assert stored["status"] == "success"
        assert stored["patched_after_spans"] == len(spans), "trace ended before its spans"
