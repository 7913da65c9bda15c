"""`nexus-bedrock outbox status|flush`: inspect and deliver the durable Nexus spool.

Imports stay light (no httpx, no Prefect) until `flush` needs them, so `status` is fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import typer

from nexus_bedrock_tasks.nexus.outbox import read_status
from nexus_bedrock_tasks.settings import BedrockTasksSettings


def outbox_status(as_json: bool) -> str:
    """The text `outbox status` prints."""
    path = BedrockTasksSettings().outbox
    status = read_status(path)
    if as_json:
        return json.dumps(status)
    return "\n".join(
        [
            f"outbox:     {path}",
            f"pending:    {status['pending']}",
            f"oldest:     {status['oldest'] or '-'}",
            f"last error: {status['last_error'] or '-'}",
        ]
    )


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What `outbox flush` did.

    Attributes:
        error: why items of this run stay in the outbox (the command exits 1).
        note: anything else worth saying (rows of processes still running).
    """

    delivered: int
    remaining: int
    error: str | None = None
    note: str | None = None


def flush_outbox(timeout: float) -> FlushReport:
    """Deliver what the outbox holds, except rows of processes still running."""
    from nexus_bedrock_tasks.nexus.exporter import NexusExporter

    path = BedrockTasksSettings().outbox
    exporter = NexusExporter(outbox_path=path)
    if not exporter.enabled:
        exporter.close(0)
        pending = read_status(path)["pending"]
        return FlushReport(0, pending, "Nexus export is disabled" if pending else None)
    exporter.start()
    left_here = exporter.close(timeout)
    delivered = exporter.stats()["delivered"]
    status = read_status(path)
    if left_here:
        error = status["last_error"] or f"not delivered within {timeout:g} s"
        return FlushReport(delivered, status["pending"], error=error)
    if status["pending"]:
        note = "the rest belongs to processes still running; they deliver it themselves"
        return FlushReport(delivered, status["pending"], note=note)
    return FlushReport(delivered, 0)


def register(app: typer.Typer) -> None:
    """Add `status` and `flush` to the `outbox` command group."""

    @app.command("status")
    def status(
        as_json: Annotated[
            bool, typer.Option("--json", help='Print {"pending", "oldest", "last_error"}.')
        ] = False,
    ) -> None:
        """How many traces/spans wait for Nexus, since when, and the last delivery error."""
        typer.echo(outbox_status(as_json))

    @app.command("flush")
    def flush(
        timeout: Annotated[
            float, typer.Option("--timeout", min=0, help="Seconds to keep delivering.")
        ] = 30.0,
    ) -> None:
        """Deliver the spooled traces and spans now, in order, without posting any twice.

        Exits 1 when items remain because of an error, printing it on one line.
        """
        report = flush_outbox(timeout)
        typer.echo(f"delivered: {report.delivered}, remaining: {report.remaining}")
        if report.note:
            typer.echo(report.note)
        if report.error:
            typer.echo(f"error: {' '.join(report.error.split())}", err=True)
            raise typer.Exit(1)
