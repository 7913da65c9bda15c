"""Nexus faults, injected by the local Nexus server's knobs: the agent run never fails for
them, and every span is delivered exactly once (or, when refused for good, kept)."""

from __future__ import annotations

import json
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nexus_bedrock_tasks import tool
from nexus_bedrock_tasks.local.nexus.config import PlanLimits
from nexus_bedrock_tasks.nexus.commands import flush_outbox
from nexus_bedrock_tasks.results import InvocationResult
from tests.faults.conftest import DEMO, TRIP, Scenario, scaled
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS, restored_tool_registry

pytestmark = PREFECT_SOCKET_WARNINGS
MakeScenario = Callable[..., Scenario]
PACK = "What should I pack for a city trip?"


def runs_of(scenario: Scenario, runs: int, **invoke: str) -> list[InvocationResult]:
    return [
        scenario.invoke(**DEMO, prompt=PACK, session_id=f"n{n}-{uuid.uuid4().hex[:8]}", **invoke)
        for n in range(runs)
    ]


def answered(results: list[InvocationResult]) -> int:
    return sum(r.finish_reason == "end_turn" and r.error is None for r in results)


def record_answered(scenario: Scenario, results: list[InvocationResult], left: int) -> None:
    """The row of a scenario whose runs must all answer and deliver everything."""
    runs = len(results)
    scenario.record(
        runs=runs,
        outcome=f"{answered(results)}/{runs} answered, {left} items left",
        outcome_ok=answered(results) == runs and left == 0,
        tools_expected=0,
    )


def flush_from_a_new_process(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> int:
    """What `nexus-bedrock outbox flush` does, with the scenario's Nexus settings."""
    monkeypatch.setenv("NEXUS_BASE_URL", scenario.nexus.url)
    monkeypatch.setenv("NEXUS_API_KEY", scenario.nexus.api_key)
    report = flush_outbox(60)
    return int(report.remaining)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_down_for_the_whole_run_then_back(
    scenario_factory: MakeScenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = scenario_factory(
        "Nexus",
        "down for the whole run, then back (outbox flush)",
        "The exporter points at a port where nothing listens (connection refused) for "
        "every run; the process then exits with everything spooled. Nexus is back: "
        "`nexus-bedrock outbox flush` (its function, in-process) adopts the dead owner's "
        "rows and delivers them.",
    )
    scenario.start_export(scenario.settings(f"http://127.0.0.1:{free_port()}"))
    runs = scaled(2, 6)
    results = runs_of(scenario, runs)
    left = scenario.stop_export(0.5)
    remaining = flush_from_a_new_process(scenario, monkeypatch)
    scenario.record(
        runs=runs,
        outcome=f"{answered(results)}/{runs} answered while Nexus was down; {left} items "
        f"spooled, {remaining} left after the flush",
        outcome_ok=answered(results) == runs and left > 0 and remaining == 0,
        tools_expected=0,
    )


def test_503_flapping(scenario_factory: MakeScenario) -> None:
    scenario = scenario_factory(
        "Nexus",
        "503 flapping",
        "Every 3rd API request to the local Nexus answers 503 without storing anything "
        "(`flap_every=3`), for the whole run and the delivery.",
    )
    scenario.nexus.faults.flap_every = 3
    scenario.start_export()
    runs = scaled(2, 8)
    results = runs_of(scenario, runs)
    left = scenario.flush()
    scenario.nexus.faults.clear()
    record_answered(scenario, results, left)


def test_five_second_latency(scenario_factory: MakeScenario) -> None:
    scenario = scenario_factory(
        "Nexus",
        "5 s latency",
        "Every API answer of the local Nexus waits 5 s after storing (`delay_s=5`; the "
        "client's read timeout is 10 s). Small scale keeps the latency while the run "
        "executes and lifts it when the run returns (requests in flight still take 5 s); "
        "full scale keeps it until everything is delivered.",
    )
    scenario.nexus.faults.delay_s = 5.0
    scenario.start_export()
    runs = scaled(1, 3)
    results = runs_of(scenario, runs)
    if runs == 1:
        scenario.nexus.faults.delay_s = 0.0
    left = scenario.flush(240)
    scenario.nexus.faults.clear()
    record_answered(scenario, results, left)


def test_connection_reset_after_the_span_was_stored(scenario_factory: MakeScenario) -> None:
    scenario = scenario_factory(
        "Nexus",
        "connection reset after the server stored a span",
        "Before each run the next 4 API requests are handled and stored, then the "
        "connection closes before the answer's body (`drop_next_responses=4`): the trace "
        "and the first spans exist in Nexus but the client never hears it. The client "
        "looks them up instead of posting again.",
    )
    scenario.start_export()
    runs = scaled(2, 6)
    results = []
    for _ in range(runs):
        scenario.nexus.faults.drop_next_responses(4)
        results += runs_of(scenario, 1)
    left = scenario.flush()
    dropped_left = scenario.nexus.faults.snapshot().drop_next_responses
    scenario.record(
        runs=runs,
        outcome=f"{answered(results)}/{runs} answered, {left} items left, "
        f"{4 * runs - dropped_left} answers dropped",
        outcome_ok=answered(results) == runs and left == 0 and dropped_left == 0,
        tools_expected=0,
    )


@pytest.mark.parametrize(
    ("name", "how"),
    [
        (
            "401 (key revoked)",
            "Every API request answers `401 Invalid API key` (`unauthorized=True`) for the "
            "whole run; the exporter stops at the first refusal, says so once in the log, "
            "and keeps everything. The key works again: the next process's outbox flush "
            "delivers it.",
        ),
        (
            "quota 429 (monthly trace limit)",
            "The local Nexus runs with `monthly_trace_limit=0`: every new trace answers "
            "`429 Monthly trace limit reached` (no Retry-After: not retried). The plan is "
            "upgraded (the limit lifted on the running server): the next process's outbox "
            "flush delivers everything.",
        ),
    ],
)
def test_refusals_keep_everything_until_fixed(
    scenario_factory: MakeScenario, monkeypatch: pytest.MonkeyPatch, name: str, how: str
) -> None:
    quota = "429" in name
    scenario = scenario_factory("Nexus", name, how, monthly_trace_limit=0 if quota else None)
    if not quota:
        scenario.nexus.faults.unauthorized = True
    scenario.start_export()
    runs = scaled(2, 5)
    results = runs_of(scenario, runs)
    left = scenario.stop_export(5)
    refusals = [line for line in scenario.logs.lines if "Nexus refused" in line]
    if quota:
        scenario.nexus.store.limits = PlanLimits()
    else:
        scenario.nexus.faults.unauthorized = False
    remaining = flush_from_a_new_process(scenario, monkeypatch)
    scenario.record(
        runs=runs,
        outcome=f"{answered(results)}/{runs} answered; {left} items kept; "
        f"{len(refusals)} warning(s); {remaining} left after the fix",
        outcome_ok=answered(results) == runs and left > 0 and remaining == 0,
        tools_expected=0,
    )


@pytest.fixture
def big_forecast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """weather.get_forecast answers 10,000 characters (and logs each execution)."""
    log = tmp_path / "big-tool.log"
    with restored_tool_registry():

        @tool(action_group="weather", function="get_forecast")
        def forecast(city: str) -> str:
            with log.open("a") as handle:
                handle.write(f"get_forecast {city}\n")
            return f"Forecast for {city}: " + "rain " * 2_000

        yield log


def oversized_pending(outbox: Path, limit: int) -> tuple[int, int]:
    """(span rows still spooled, those with a field longer than `limit`)."""
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        payloads = [json.loads(row[0]) for row in conn.execute(
            "SELECT payload FROM ops WHERE kind = 'span'"
        )]  # fmt: skip
    finally:
        conn.close()
    fields = ("input", "output", "error")
    big = [p for p in payloads if any(len(p.get(k) or "") > limit for k in fields)]
    return len(payloads), len(big)


@pytest.mark.parametrize(
    ("limit", "name", "how"),
    [
        (
            3_000,
            "400 on an oversized payload: truncated, retried once",
            "The local Nexus refuses a span whose input/output/error is longer than 3,000 "
            "characters with `400 Validation failed` (`max_payload_chars=3000`). A local "
            "tool answers 10,000 characters, so the tool span and the answer's llm span are "
            "too big at the client's 16,000-character cut; each is cut to 2,000 and posted "
            "once more.",
        ),
        (
            1_000,
            "400 even after truncation: kept in the outbox",
            "As above with a 1,000-character limit: the 2,000-character retry is refused too, "
            "so the span is parked in the outbox (said once in the log), its children go to "
            "the trace root, and everything else is delivered.",
        ),
    ],
)
def test_oversized_payload(
    scenario_factory: MakeScenario,
    big_forecast: Path,
    limit: int,
    name: str,
    how: str,
) -> None:
    scenario = scenario_factory("Nexus", name, how)
    scenario.tool_log = big_forecast
    scenario.nexus.faults.max_payload_chars = limit
    scenario.start_export()
    runs = scaled(1, 3)
    results = [
        scenario.invoke(**TRIP, prompt=f"What's the weather in Lisbon? ({n})",
                        session_id=f"big{n}-{uuid.uuid4().hex[:8]}")
        for n in range(runs)
    ]  # fmt: skip
    left = scenario.flush()
    pending, big = oversized_pending(scenario.outbox, limit)
    truncated = sum(
        "[truncated," in str(span["output"])
        for trace in scenario.traces()
        for span in trace["spans"]
    )
    parked = limit < 2_000
    scenario.record(
        runs=runs,
        outcome=f"{answered(results)}/{runs} answered; {truncated} span(s) stored truncated; "
        f"{pending} kept ({big} of them oversized)",
        outcome_ok=answered(results) == runs
        and pending == big
        and (pending > 0 if parked else truncated >= runs and left == 0),
        tools_expected=runs,
        kept_expected=big,
    )
