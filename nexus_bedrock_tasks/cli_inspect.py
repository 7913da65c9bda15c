"""`nexus-bedrock inspect FILE`: read a recorded InvokeAgent body, show its span tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from nexus_bedrock_tasks.bedrock.model import AgentTurn
from nexus_bedrock_tasks.exceptions import StreamDecodeError
from nexus_bedrock_tasks.nexus.records import SpanRecord, utcnow
from nexus_bedrock_tasks.nexus.span_builder import summary_span, turn_spans
from nexus_bedrock_tasks.summary import summarize


def inspect_turn(data: bytes) -> tuple[AgentTurn, list[SpanRecord]]:
    """Read a raw body strictly: corrupt framing raises instead of giving a partial turn.

    Raises:
        StreamDecodeError: the bytes are not a complete AWS event stream, or hold no event.
    """
    from botocore.exceptions import EventStreamError

    from nexus_bedrock_tasks.bedrock.events import decode_completion
    from nexus_bedrock_tasks.bedrock.reader import TurnReader
    from nexus_bedrock_tasks.settings import BedrockTasksSettings

    reader = TurnReader()
    error: EventStreamError | None = None
    try:
        for event in decode_completion(data):
            reader.feed(event)
    except EventStreamError as exc:
        error = exc
    turn = reader.finish(error=error)
    if turn.event_count == 0 and error is None:
        raise StreamDecodeError("the file holds no InvokeAgent event")
    now = utcnow()
    start = turn.started_at or now
    end = turn.ended_at or start
    spans = list(turn_spans(turn, None, fallback_time=start).spans)
    summary = summarize([turn], prices=BedrockTasksSettings().model_prices)
    spans.append(summary_span(summary, started_at=start, ended_at=end))
    return turn, spans


def _report(turn: AgentTurn, spans: list[SpanRecord]) -> dict[str, Any]:
    names = {span.local_id: span.name for span in spans}
    summary = next(
        span for span in spans if span.parent_local_id is None and span.name == "summary"
    )
    return {
        **summary.output,
        "text": turn.text,
        "spans": [
            {
                "name": span.name,
                "parent": names.get(span.parent_local_id) if span.parent_local_id else None,
                "status": span.status,
            }
            for span in spans
        ],
    }


def _print_tree(path: Path, turn: AgentTurn, spans: list[SpanRecord]) -> None:
    from rich.console import Console
    from rich.tree import Tree

    console = Console()
    root = Tree(f"[bold]{path.name}[/bold]  finish_reason={turn.finish_reason}")
    nodes: dict[str | None, Tree] = {None: root}
    for span in spans:
        label = span.name if span.status == "ok" else f"[red]{span.name} (error)[/red]"
        if span.name.startswith("llm:") and isinstance(span.output, dict):
            label += f"  [dim]{span.output.get('model')} in={span.output.get('input_tokens')}"
            label += f" out={span.output.get('output_tokens')}[/dim]"
        nodes[span.local_id] = nodes.get(span.parent_local_id, root).add(label)
    console.print(root)
    summary = spans[-1].output
    console.print(
        f"tokens: {summary['input_tokens']} in + {summary['output_tokens']} out = "
        f"{summary['total_tokens']}   cost_usd: {summary['cost_usd']}"
    )
    console.print(f"answer ({summary['answer_chars']} chars): {turn.text}")


def inspect_command(
    file: Annotated[
        Path, typer.Argument(help="A raw InvokeAgent response body (AWS event-stream bytes).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: summary fields, text, spans.")
    ] = False,
) -> None:
    """Show the Nexus span tree a recorded InvokeAgent response would produce.

    Example: nexus-bedrock inspect tests/recordings/kb_lookup.eventstream --json
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    try:
        turn, spans = inspect_turn(data)
    except StreamDecodeError as exc:
        typer.echo(f"error: {file} is not an InvokeAgent event stream: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(_report(turn, spans), ensure_ascii=False))
    else:
        _print_tree(file, turn, spans)


def register(app: typer.Typer) -> None:
    """Add the `inspect` command to `app`."""
    app.command("inspect")(inspect_command)
