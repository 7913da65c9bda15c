"""HTML of the local Nexus web page (pure functions: rows in, markup out).

Server-rendered, no script, no external asset: the stylesheet is inline and the timeline
bars are positioned with inline percentages. Every stored value passes through `_e`
(HTML escaping) or is a number we computed, so trace content cannot inject markup.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timezone
from html import escape
from typing import Final
from urllib.parse import quote, urlencode

from nexus_bedrock_tasks.local.nexus.store import SpanRow, TraceRow
from nexus_bedrock_tasks.local.nexus.styles import STYLESHEET
from nexus_bedrock_tasks.local.nexus.timeline import PlacedSpan, place_spans
from nexus_bedrock_tasks.local.nexus.validation import (
    TRACE_STATUSES,
    from_json_text,
    parse_iso8601,
)
from nexus_bedrock_tasks.semconv import SUMMARY_FIELDS

TOKEN_FIELDS: Final = ("input_tokens", "output_tokens", "total_tokens")


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def summary_of(output: str | None) -> dict[str, object]:
    """The `summary` span's output as a dict, whether it was posted as JSON or as JSON text."""
    value = from_json_text(output)
    if isinstance(value, str):
        value = from_json_text(value)
    return value if isinstance(value, dict) else {}


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–" if value is None else _e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.6g}"


def _when(value: str | None) -> str:
    if value is None:
        return "–"
    parsed = parse_iso8601(value)
    if parsed is None:
        return _e(value)
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _trace_duration_ms(row: TraceRow) -> float | None:
    """Exact duration from the timestamps; the API's `duration_ms` truncates float days."""
    start = parse_iso8601(row.started_at)
    end = parse_iso8601(row.ended_at) if row.ended_at else None
    if start is None or end is None:
        return row.duration_ms
    return (end - start).total_seconds() * 1000


def _duration(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms:,.0f} ms" if ms < 1000 else f"{ms / 1000:,.2f} s"


def _badge(status: str) -> str:
    return f'<span class="badge {_e(status)}">{_e(status)}</span>'


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · Local Nexus</title><style>{STYLESHEET}</style></head><body>"
        '<header><a class="home" href="/">Local Nexus</a>'
        '<span class="muted">offline Nexus-compatible server</span></header>'
        f"<main>{body}</main></body></html>"
    )


def _trace_href(trace_id: str) -> str:
    return f"/traces/{quote(trace_id, safe='')}"


def _tokens_cell(summary: Mapping[str, object]) -> str:
    if not any(field in summary for field in TOKEN_FIELDS):
        return '<td class="tokens num muted">–</td>'
    tokens_in, tokens_out, total = (summary.get(field) for field in TOKEN_FIELDS)
    return (
        f'<td class="tokens num"><span class="total">{_number(total)}</span> '
        f'<span class="muted inout">{_number(tokens_in)} in / {_number(tokens_out)} out</span></td>'
    )


def _options(name: str, label: str, choices: Sequence[str], selected: str | None) -> str:
    options = [f'<option value="">any {label.lower()}</option>']
    for choice in choices:
        mark = " selected" if choice == selected else ""
        options.append(f'<option value="{_e(choice)}"{mark}>{_e(choice)}</option>')
    return f'<label>{label} <select name="{name}">{"".join(options)}</select></label>'


def render_trace_list(
    rows: Sequence[TraceRow],
    summaries: Mapping[str, str | None],
    agents: Sequence[str],
    *,
    status: str | None,
    agent: str | None,
    total: int,
    older_after: str | None,
) -> str:
    """The trace list: filters, one row per trace (newest first), a link to older ones."""
    filters = (
        '<form class="filters" method="get" action="/">'
        f"{_options('status', 'Status', TRACE_STATUSES, status)}"
        f"{_options('agent', 'Agent', agents, agent)}"
        '<button type="submit">Filter</button> <a href="/">Clear</a></form>'
    )
    body_rows = []
    for row in rows:
        summary = summary_of(summaries.get(row.id))
        finish = summary.get("finish_reason")
        body_rows.append(
            f'<tr class="trace" data-trace-id="{_e(row.id)}">'
            f'<td class="name"><a href="{_trace_href(row.id)}">{_e(row.name)}</a></td>'
            f'<td class="agent">{_e(row.agent_name)}</td>'
            f'<td class="status">{_badge(row.status)}</td>'
            f'<td class="started">{_when(row.started_at)}</td>'
            f'<td class="duration num">{_duration(_trace_duration_ms(row))}</td>'
            f'<td class="spans num">{row.span_count:,}</td>'
            f"{_tokens_cell(summary)}"
            f'<td class="finish">{"–" if finish is None else _e(finish)}</td></tr>'
        )
    if not body_rows:
        body_rows.append('<tr><td colspan="8" class="empty">No traces yet.</td></tr>')
    older = ""
    if older_after is not None:
        params = {"status": status or "", "agent": agent or "", "after": older_after}
        older = f'<p class="pager"><a href="/?{_e(urlencode(params))}">Older traces →</a></p>'
    return _page(
        "Traces",
        f"<h1>Traces</h1>{filters}"
        f'<p class="count muted"><span class="total-count">{total:,}</span> matching</p>'
        '<table class="traces"><thead><tr><th>Name</th><th>Agent</th><th>Status</th>'
        '<th>Started</th><th class="num">Duration</th><th class="num">Spans</th>'
        '<th class="num">Tokens</th><th>Finish reason</th></tr></thead>'
        f"<tbody>{''.join(body_rows)}</tbody></table>{older}",
    )


def _pretty(value: object) -> str:
    """JSON values indented; a string holding JSON is shown as that JSON."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if not isinstance(decoded, dict | list):
            return value
        value = decoded
    return json.dumps(value, indent=2, ensure_ascii=False)


def _payloads(span: SpanRow) -> str:
    parts = []
    for label, value in (
        ("input", from_json_text(span.input)),
        ("output", from_json_text(span.output)),
        ("error", span.error),
    ):
        if value is not None:
            parts.append(
                f'<details class="{label}"><summary>{label}</summary>'
                f"<pre>{_e(_pretty(value))}</pre></details>"
            )
    return f'<div class="payloads">{"".join(parts)}</div>' if parts else ""


def _span_row(placed: PlacedSpan) -> str:
    span = placed.span
    bar_class = "bar open" if placed.open_ended else "bar"
    return (
        f'<div class="span-row {_e(span.status)}" data-span-id="{_e(span.id)}"'
        f' data-depth="{placed.depth}" data-parent-id="{_e(span.parent_span_id or "")}">'
        f'<div class="label" style="padding-left:{0.6 + placed.depth * 1.25:.2f}rem">'
        f'<span class="span-name">{_e(span.name)}</span> {_badge(span.status)}'
        f' <span class="span-duration muted">{_duration(placed.duration_ms)}</span></div>'
        f'<div class="track"><div class="{bar_class}"'
        f' style="left:{placed.left_pct:.3f}%;width:{placed.width_pct:.3f}%"></div></div>'
        f"{_payloads(span)}</div>"
    )


def _facts(pairs: Sequence[tuple[str, str, str]]) -> str:
    """`(key, label HTML, value HTML)` triples as a definition list."""
    items = "".join(
        f'<div class="fact" data-field="{_e(key)}"><dt>{label}</dt><dd>{value}</dd></div>'
        for key, label, value in pairs
    )
    return f'<dl class="facts">{items}</dl>'


def render_trace(row: TraceRow, spans: Sequence[SpanRow], summary_output: str | None) -> str:
    """One trace: header facts, totals from its summary span, the span timeline."""
    summary = summary_of(summary_output)
    header = _facts(
        [
            ("agent", "Agent", _e(row.agent_name)),
            ("status", "Status", _badge(row.status)),
            ("started_at", "Started", _when(row.started_at)),
            ("ended_at", "Ended", _when(row.ended_at)),
            ("duration", "Duration", _duration(_trace_duration_ms(row))),
            ("span_count", "Spans", f"{row.span_count:,}"),
        ]
    )
    if summary:
        known = [field for field in SUMMARY_FIELDS if field in summary]
        extra = sorted(key for key in summary if key not in SUMMARY_FIELDS)
        totals = "<h2>Totals</h2>" + _facts(
            [(key, _e(key.replace("_", " ")), _number(summary[key])) for key in known + extra]
        )
    else:
        totals = '<p class="muted no-summary">No summary span (yet).</p>'
    metadata = from_json_text(row.metadata)
    meta = (
        f'<details class="metadata"><summary>metadata</summary><pre>{_e(_pretty(metadata))}</pre>'
        "</details>"
        if metadata is not None
        else ""
    )
    placed = place_spans(row.started_at, row.ended_at, spans)
    timeline = "".join(_span_row(item) for item in placed.spans) or (
        '<p class="muted">No spans.</p>'
    )
    return _page(
        row.name,
        f'<p><a href="/">← all traces</a></p><h1 class="trace-name">{_e(row.name)}</h1>'
        f'<p class="muted trace-id">{_e(row.id)}</p>{header}{totals}{meta}'
        f'<h2>Spans</h2><div class="timeline"><div class="axis"><span>0 ms</span>'
        f"<span>{_duration(placed.range_ms)}</span></div>{timeline}</div>",
    )


def render_not_found(trace_id: str) -> str:
    """The page for an unknown trace id."""
    return _page(
        "Not found",
        f"<h1>Trace not found</h1><p>No trace <code>{_e(trace_id)}</code>.</p>"
        '<p><a href="/">← all traces</a></p>',
    )
