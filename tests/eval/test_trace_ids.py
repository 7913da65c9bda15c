"""Nexus trace ids reach the results without a case waiting for them (`with_trace_ids`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

import nexus_bedrock_tasks.evaluation.localrun as localrun
from nexus_bedrock_tasks.evaluation.localrun import with_trace_ids
from nexus_bedrock_tasks.evaluation.results import CaseResult


class AcknowledgingTracer:
    """Nexus as the tracer sees it: the ids of the traces acknowledged so far."""

    def __init__(self, enabled: bool = True) -> None:
        self.exporter = SimpleNamespace(enabled=enabled)
        self.acknowledged: dict[str, str] = {}
        self.waits: list[float] = []

    def nexus_trace_id(self, key: str, timeout: float = 0.0) -> str | None:
        if timeout:
            self.waits.append(timeout)
        return self.acknowledged.get(key)


def result(case_id: str, trace_id: str | None = None) -> CaseResult:
    return CaseResult(id=case_id, passed=True, trace_id=trace_id, local_trace_id=f"k-{case_id}")


async def cases(tracer: AcknowledgingTracer, acks: list[list[str]]) -> AsyncIterator[CaseResult]:
    """Cases finishing one by one; after each, Nexus acknowledges the listed traces."""
    for number, acked in enumerate(acks):
        yield result(str(number), trace_id="given" if number == 3 else None)
        tracer.acknowledged.update({f"k-{case}": f"n-{case}" for case in acked})


def collect(tracer: AcknowledgingTracer, acks: list[list[str]], wait_s: float) -> list[CaseResult]:
    async def run() -> list[CaseResult]:
        return [r async for r in with_trace_ids(cases(tracer, acks), wait_s)]

    return asyncio.run(run())


def test_results_wait_for_their_ids_in_order_and_the_rest_wait_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracer = AcknowledgingTracer()
    monkeypatch.setattr(localrun, "get_tracer", lambda: tracer)
    # Case 0 is acknowledged after case 1 finished; case 2 never; case 3 had its id.
    out = collect(tracer, [[], ["1", "0"], [], []], wait_s=0.01)
    assert [(r.id, r.trace_id) for r in out] == [
        ("0", "n-0"),
        ("1", "n-1"),
        ("3", "given"),
        ("2", None),
    ]
    assert tracer.waits and max(tracer.waits) <= 0.01  # one bounded wait after the last case


def test_without_export_results_pass_straight_through(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = AcknowledgingTracer(enabled=False)
    monkeypatch.setattr(localrun, "get_tracer", lambda: tracer)
    out = collect(tracer, [[], [], [], []], wait_s=5)
    assert [(r.id, r.trace_id) for r in out] == [
        ("0", None),
        ("1", None),
        ("2", None),
        ("3", "given"),
    ]
    assert tracer.waits == []


def test_past_the_cap_the_oldest_goes_on_without_its_id(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = AcknowledgingTracer()
    monkeypatch.setattr(localrun, "get_tracer", lambda: tracer)
    monkeypatch.setattr(localrun, "MAX_AWAITING_TRACE_ID", 1)
    out = collect(tracer, [[], ["1"], ["2"], []], wait_s=0)
    assert [(r.id, r.trace_id) for r in out] == [
        ("0", None),
        ("1", "n-1"),
        ("3", "given"),
        ("2", "n-2"),
    ]
