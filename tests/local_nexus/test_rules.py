"""Pure parts of the local server: the service's quirks, OTLP time conversion, span trees."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from nexus_bedrock_tasks.local.nexus.otlp import parse_export_request
from nexus_bedrock_tasks.local.nexus.store import SpanRow
from nexus_bedrock_tasks.local.nexus.timeline import place_spans, span_tree
from nexus_bedrock_tasks.local.nexus.validation import (
    BodyError,
    is_iso8601,
    js_parse_int,
    js_string,
    parse_body,
    parse_iso8601,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "value"),
    [("50", 50), ("  7", 7), ("-3", -3), ("12abc", 12), ("1.9", 1), ("", None), ("x1", None)],
)
def test_js_parse_int(text: str, value: int | None) -> None:
    assert js_parse_int(text) == value


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (1.5, "1.5"), (False, "false"), ([1, None, "a"], "1,,a"), ({}, "[object Object]")],
)
def test_js_string(value: object, text: str) -> None:
    assert js_string(value) == text


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("2026-05-01T12:00:00Z", True),
        ("2026-13-45T99:00:00Z", True),  # a pattern check, as upstream
        ("2026-05-01T12:00:00Z\n", False),
        ("2026-05-01T12:00:00+0200", False),
        ("\uff12\uff10\uff12\uff16-05-01T12:00:00Z", False),  # full-width digits are not \d
    ],
)
def test_iso8601_pattern(value: str, accepted: bool) -> None:
    assert is_iso8601(value) is accepted


def test_parse_iso8601_keeps_offsets_and_refuses_impossible_dates() -> None:
    assert parse_iso8601("2026-05-01T14:00:00.1234567+02:00") == datetime(
        2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc
    )
    assert parse_iso8601("2026-13-45T99:00:00Z") is None


def test_json_arrays_pass_the_object_check_with_no_fields() -> None:
    assert parse_body(b"[1, 2]") == {}
    with pytest.raises(BodyError, match="Invalid JSON body"):
        parse_body(b'{"x": NaN}')


def test_otlp_nanoseconds_become_millisecond_iso_times() -> None:
    span = {
        "traceId": "t",
        "spanId": "s",
        "name": "n",
        "startTimeUnixNano": 1_777_636_800_123_456_789,
    }
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    (resource,) = parse_export_request(body, NOW)
    (trace,) = resource.traces
    assert (trace.started_at, trace.ended_at) == ("2026-05-01T12:00:00.123Z", None)
    assert resource.agent_name == "unknown"
    without_start = {
        "resourceSpans": [{"scopeSpans": [{"spans": [{**span, "startTimeUnixNano": ""}]}]}]
    }
    assert parse_export_request(without_start, NOW)[0].traces[0].started_at == (
        "2026-05-01T12:00:00.000Z"
    )


def span(span_id: str, parent: str | None, start: str, end: str | None = None) -> SpanRow:
    return SpanRow(span_id, span_id, parent, "ok", start, end, None, None, None)


def test_span_tree_keeps_orphans_and_cycles() -> None:
    spans = [
        span("a", None, "2026-05-01T12:00:00Z"),
        span("b", "a", "2026-05-01T12:00:01Z"),
        span("c", "b", "2026-05-01T12:00:02Z"),
        span("orphan", "gone", "2026-05-01T12:00:03Z"),
        span("x", "y", "2026-05-01T12:00:04Z"),
        span("y", "x", "2026-05-01T12:00:05Z"),
        span("self", "self", "2026-05-01T12:00:06Z"),
    ]
    assert [(s.id, depth) for s, depth in span_tree(spans)] == [
        ("a", 0),
        ("b", 1),
        ("c", 2),
        ("orphan", 0),
        ("x", 0),
        ("y", 1),
        ("self", 0),
    ]


def test_timeline_widens_to_spans_outside_the_trace_and_marks_open_spans() -> None:
    spans = [
        span("early", None, "2026-05-01T11:59:59Z", "2026-05-01T12:00:00Z"),
        span("open", None, "2026-05-01T12:00:01Z"),
        span("instant", None, "2026-05-01T12:00:03Z", "2026-05-01T12:00:03Z"),
    ]
    timeline = place_spans("2026-05-01T12:00:00Z", "2026-05-01T12:00:03Z", spans)
    assert timeline.range_ms == 4000
    early, open_span, instant = timeline.spans
    assert (early.left_pct, early.width_pct, early.duration_ms) == (0, 25, 1000)
    assert (open_span.left_pct, open_span.width_pct, open_span.open_ended) == (50, 50, True)
    assert instant.width_pct > 0 and instant.left_pct + instant.width_pct <= 100


def test_timeline_without_parsable_times_still_lists_spans() -> None:
    timeline = place_spans("garbage", None, [span("a", None, "2026-13-45T99:00:00Z")])
    assert [(p.span.id, p.open_ended) for p in timeline.spans] == [("a", True)]
