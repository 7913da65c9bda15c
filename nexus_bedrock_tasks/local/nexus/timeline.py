"""Place a trace's spans on a timeline: tree order, depth, and bar offsets in percent (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from nexus_bedrock_tasks.local.nexus.store import SpanRow
from nexus_bedrock_tasks.local.nexus.validation import parse_iso8601

MIN_BAR_PCT: Final = 0.4
"""Zero-length spans still get a visible sliver."""


@dataclass(frozen=True, slots=True)
class PlacedSpan:
    """A span with its depth in the tree and its bar, in percent of the timeline.

    Attributes:
        open_ended: no usable `ended_at`; the bar runs to the end of the timeline.
    """

    span: SpanRow
    depth: int
    left_pct: float
    width_pct: float
    duration_ms: float | None
    open_ended: bool


@dataclass(frozen=True, slots=True)
class Timeline:
    """All spans in display order and the length of the time axis."""

    range_ms: float
    spans: list[PlacedSpan]


def span_tree(spans: Sequence[SpanRow]) -> list[tuple[SpanRow, int]]:
    """Depth-first order with depths: each parent before its children, siblings by start.

    The service does not check `parent_span_id`, so a span whose parent is unknown is shown
    as a root, and so is the first span of a parent cycle (no span is dropped).
    """
    ids = {span.id for span in spans}
    children: dict[str | None, list[SpanRow]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[SpanRow, int]] = []
    seen: set[str] = set()
    # Roots first; then anything only reachable through a cycle, as a root of its own.
    for start in [*children.get(None, []), *spans]:
        stack = [(start, 0)]
        while stack:
            span, depth = stack.pop()
            if span.id in seen:
                continue
            seen.add(span.id)
            ordered.append((span, depth))
            stack.extend((child, depth + 1) for child in reversed(children.get(span.id, [])))
    return ordered


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000


def place_spans(
    trace_started_at: str, trace_ended_at: str | None, spans: Sequence[SpanRow]
) -> Timeline:
    """Lay `spans` out against the trace's time range (widened to include every span)."""
    starts = {span.id: parse_iso8601(span.started_at) for span in spans}
    ends = {span.id: parse_iso8601(span.ended_at) if span.ended_at else None for span in spans}
    trace_start = parse_iso8601(trace_started_at)
    trace_end = parse_iso8601(trace_ended_at) if trace_ended_at else None
    known_starts = [t for t in (trace_start, *starts.values()) if t is not None]
    known_ends = [t for t in (trace_end, *ends.values(), *known_starts) if t is not None]
    if not known_starts:
        return Timeline(
            0.0, [PlacedSpan(s, d, 0.0, 100.0, None, True) for s, d in span_tree(spans)]
        )
    origin, finish = min(known_starts), max(known_ends)
    range_ms = max(_ms(finish, origin), 1.0)
    placed = []
    for span, depth in span_tree(spans):
        start, end = starts[span.id] or origin, ends[span.id]
        left = min(_ms(start, origin) / range_ms * 100, 100 - MIN_BAR_PCT)
        duration = None if end is None else _ms(end, start)
        right = 100.0 if end is None else _ms(end, origin) / range_ms * 100
        width = min(max(right - left, MIN_BAR_PCT), 100 - left)
        placed.append(PlacedSpan(span, depth, left, width, duration, end is None))
    return Timeline(range_ms, placed)
