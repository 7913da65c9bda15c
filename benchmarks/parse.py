"""`parse_ratio`: our stream reader + span builder against botocore's event-stream decode.

Over the recorded real InvokeAgent bodies (tests/recordings), events/s of:

- decode alone: botocore's `EventStreamBuffer` + `EventStreamJSONParser` (`decode_completion`,
  the same work ``response["completion"]`` does), every event taken and dropped;
- the pipeline: the same decode, feeding `read_turn`, then `turn_spans` over the turn.

The figure is pipeline events/s ÷ decode-alone events/s: ≥ 0.5 means reading and span
building cost at most what decoding costs. The reader + builder alone, on pre-decoded
events, is reported too. Timed with this thread's CPU clock, in alternating slices, so
other processes on the machine do not skew one side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from benchmarks.figures import Figure, Sizes
from benchmarks.harness import RECORDINGS_DIR

SLICES = 5


def load_recordings() -> list[tuple[str, bytes]]:
    """(file name, body) of every recording listed in its index."""
    index = json.loads((RECORDINGS_DIR / "index.json").read_text())
    return [(entry["file"], (RECORDINGS_DIR / entry["file"]).read_bytes()) for entry in index]


def _events(body: bytes) -> list[dict[str, Any]]:
    from botocore.exceptions import EventStreamError

    from nexus_bedrock_tasks.bedrock.events import decode_completion

    events: list[dict[str, Any]] = []
    try:
        for event in decode_completion(body):
            events.append(event)
    except EventStreamError:
        pass
    return events


def _rate(work: Callable[[], int], seconds: float, rates: list[float]) -> None:
    """Repeat `work` (which returns events handled) for `seconds` of CPU; append events/s."""
    handled = 0
    started = time.thread_time()
    while True:
        handled += work()
        spent = time.thread_time() - started
        if spent >= seconds:
            rates.append(handled / spent)
            return


def parse_figure(sizes: Sizes) -> Figure:
    """Pipeline events/s ÷ decode-alone events/s over the recordings."""
    from botocore.exceptions import EventStreamError

    from nexus_bedrock_tasks.bedrock.events import decode_completion
    from nexus_bedrock_tasks.bedrock.reader import read_turn
    from nexus_bedrock_tasks.nexus.span_builder import turn_spans

    recordings = load_recordings()
    bodies = [body for _, body in recordings]
    decoded = [_events(body) for body in bodies]
    total_events = sum(len(events) for events in decoded)
    now = datetime.now(timezone.utc)

    def decode_only() -> int:
        count = 0
        for body in bodies:
            try:
                for _ in decode_completion(body):
                    count += 1
            except EventStreamError:
                pass
        return count

    def pipeline() -> int:
        spans = 0
        for body in bodies:
            turn = read_turn(decode_completion(body))
            spans += len(turn_spans(turn, "drain", fallback_time=now).spans)
        return total_events if spans else 0

    def reader_and_builder() -> int:
        for events in decoded:
            turn = read_turn(events)
            turn_spans(turn, "drain", fallback_time=now)
        return total_events

    rates: dict[str, list[float]] = {"decode": [], "pipeline": [], "reader_builder": []}
    work = {"decode": decode_only, "pipeline": pipeline, "reader_builder": reader_and_builder}
    for _ in range(SLICES):
        for name, action in work.items():
            _rate(action, sizes.parse_seconds / SLICES, rates[name])
    decode_rate = max(rates["decode"])
    pipeline_rate = max(rates["pipeline"])
    components_rate = max(rates["reader_builder"])
    ratio = round(pipeline_rate / decode_rate, 3)
    return Figure(
        key="parse_ratio",
        value=ratio,
        measured=f"decode + reader + span builder {pipeline_rate:,.0f} events/s",
        baseline=f"botocore event-stream decode alone {decode_rate:,.0f} events/s",
        ratio=ratio,
        raw={
            "recordings": [name for name, _ in recordings],
            "events_per_pass": total_events,
            "bytes_per_pass": sum(len(body) for body in bodies),
            "decode_events_per_s": round(decode_rate),
            "pipeline_events_per_s": round(pipeline_rate),
            "reader_builder_events_per_s": round(components_rate),
            "reader_builder_vs_decode": round(components_rate / decode_rate, 3),
            "clock": "thread CPU time; best of 5 slices per side",
        },
    )
