"""`nexus-bedrock outbox status|flush` against a fake Nexus served over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nexus_bedrock_tasks.nexus import exporter as exporter_module
from nexus_bedrock_tasks.nexus.commands import register
from nexus_bedrock_tasks.nexus.exporter import NexusExporter, get_exporter, shutdown_exporter
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.conftest import assert_delivered_once, make_tree, spool_tree
from tests.nexus.fake_nexus import API_KEY, FakeNexus

outbox_app = typer.Typer()
register(outbox_app)


@pytest.fixture
def served(fake: FakeNexus, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The fake on a local port, and the environment of a user pointing at it."""
    outbox = tmp_path / "cli" / "outbox.sqlite3"
    with fake.serve() as url:
        monkeypatch.setenv("NEXUS_BASE_URL", url)
        monkeypatch.setenv("NEXUS_API_KEY", API_KEY)
        monkeypatch.setenv("NEXUS_MAX_RETRIES", "0")
        monkeypatch.setenv("NEXUS_BEDROCK_OUTBOX", str(outbox))
        yield outbox


def leave_spooled(
    fake: FakeNexus, outbox: Path, prefix: str = ""
) -> tuple[TraceRecord, list[SpanRecord]]:
    """A process that ran while Nexus was down, then exited."""
    fake.down = True
    exporter = NexusExporter(NexusSettings(), outbox, redelivery_delay=0.01)
    exporter.start()
    trace, spans = make_tree(prefix)
    spool_tree(exporter, trace, spans)
    exporter.close(0.2)
    fake.down = False
    return trace, spans


def test_status_of_an_empty_outbox(served: Path) -> None:
    result = CliRunner().invoke(outbox_app, ["status", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output) == {"pending": 0, "oldest": None, "last_error": None}


def test_flush_delivers_what_a_dead_process_left(fake: FakeNexus, served: Path) -> None:
    trace, spans = leave_spooled(fake, served)
    status = json.loads(CliRunner().invoke(outbox_app, ["status", "--json"]).output)
    assert status["pending"] == len(spans) + 2 and status["last_error"]

    result = CliRunner().invoke(outbox_app, ["flush", "--timeout", "10"])

    assert result.exit_code == 0, result.output
    assert f"delivered: {len(spans) + 2}, remaining: 0" in result.output
    assert_delivered_once(fake, trace, spans)
    assert "pending:    0" in CliRunner().invoke(outbox_app, ["status"]).output


def test_flush_exits_1_with_the_error_when_nexus_refuses(fake: FakeNexus, served: Path) -> None:
    leave_spooled(fake, served)
    fake.api_key = "nxs_other_key_0000000"
    result = CliRunner().invoke(outbox_app, ["flush", "--timeout", "10"])
    assert result.exit_code == 1
    assert "remaining: " in result.output
    assert "Invalid API key" in result.output  # the error line (stderr is mixed in)


def test_process_wide_exporter_delivers_and_shuts_down(
    fake: FakeNexus, served: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another test's process-wide exporter (if any) comes back afterwards, untouched.
    monkeypatch.setattr(exporter_module, "_exporter", None)
    exporter = get_exporter()
    assert get_exporter() is exporter
    trace, spans = make_tree()
    spool_tree(exporter, trace, spans)
    assert shutdown_exporter(10) == 0
    assert_delivered_once(fake, trace, spans)
    assert shutdown_exporter(1) == 0  # nothing left to close
