"""Processes that die: real `nexus-bedrock invoke` processes get SIGTERM or SIGKILL in the
middle of a stream or of a tool; many invocations run at once while Nexus flaps."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from subprocess import Popen
from typing import Any

import pytest

from nexus_bedrock_tasks.ledger import get_ledger
from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from nexus_bedrock_tasks.reconcile import prefect_state_lookup, reconcile
from nexus_bedrock_tasks.results import InvocationFailed, InvocationResult
from nexus_bedrock_tasks.tracing import get_tracer
from tests.faults.conftest import DEMO, TRIP, Scenario, scaled
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS
from tests.flow.test_process_signals import TRIP_TOOLS

pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]
MakeScenario = Callable[..., Scenario]
ITINERARY = "Check free dates for an itinerary in Rome for 3 nights"


@dataclass
class Killed:
    """One process of the kill test and what it is waiting for."""

    scenario: Scenario
    sig: signal.Signals
    in_tool: bool
    session: str
    process: Popen[str]
    sent_at: float | None = None
    output: list[str] = field(default_factory=list)

    def ready(self) -> bool:
        """Inside the tool (its log says so) or inside the drain (invoke_agent's span)."""
        if self.in_tool:
            return any(line.startswith("find_hotels start") for line in self.scenario.tool_lines())
        return any(
            span["name"] == "task:invoke_agent"
            for trace in self.scenario.traces()
            if trace["metadata"].get("session_id") == self.session
            for span in trace["spans"]
        )


def start(
    scenario: Scenario, sig: signal.Signals, in_tool: bool, emulator: str, slow_tool_s: int
) -> Killed:
    from prefect.settings import PREFECT_API_URL

    session = f"kill-{uuid.uuid4().hex[:8]}"
    if in_tool:
        args = ["invoke", "--agent-id", TRIP["agent_id"], "--alias-id", TRIP["agent_alias_id"],
                "--session-id", session, "--tools", str(TRIP_TOOLS), ITINERARY]  # fmt: skip
        env = scenario.process_env(str(PREFECT_API_URL.value()), TRIP_SLOW_HOTELS=str(slow_tool_s))
    else:
        set_session_faults(emulator, session, step_latency_ms=3000)
        args = ["invoke", "--agent-id", DEMO["agent_id"], "--alias-id", DEMO["agent_alias_id"],
                "--session-id", session, "What should I pack for a city trip?"]  # fmt: skip
        env = scenario.process_env(str(PREFECT_API_URL.value()))
    return Killed(scenario, sig, in_tool, session, scenario.cli(args, env))


def test_sigterm_and_sigkill_during_drain_and_sigkill_during_a_tool(
    scenario_factory: MakeScenario, fault_aws: str, trip_registry: None
) -> None:
    combos = [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGKILL, True)]
    run_kills(scenario_factory, fault_aws, combos, slow_tool_s=120)


def test_sigterm_during_a_tool(
    scenario_factory: MakeScenario, fault_aws: str, trip_registry: None
) -> None:
    run_kills(scenario_factory, fault_aws, [(signal.SIGTERM, True)], slow_tool_s=8)


def run_kills(
    scenario_factory: MakeScenario,
    fault_aws: str,
    combos: list[tuple[signal.Signals, bool]],
    slow_tool_s: int,
) -> None:
    """Start one process per (signal, in a tool?) at once, signal each at its moment."""
    where = {False: "during drain", True: "during a tool"}
    how = {
        (signal.SIGTERM, False): "A real `nexus-bedrock invoke` process streams a session "
        "whose every step takes 3 s (`step_latency_ms`); once Nexus holds the "
        "`task:invoke_agent` span the process is inside the drain and gets SIGTERM. Its "
        "flow hooks must end the trace as error; what it left spooled is flushed by the "
        "next process.",
        (signal.SIGKILL, False): "As SIGTERM during drain, but SIGKILL: no hook runs. "
        "`reconcile` (in-process, same ledger and outbox) marks the run Crashed and ends "
        "the trace; the next exporter on the outbox delivers the dead process's rows.",
        (signal.SIGTERM, True): "The TRIP agent's itinerary needs two rounds: check_dates, "
        "then find_hotels, which sleeps 120 s (`TRIP_SLOW_HOTELS`); when the tool log says "
        "find_hotels started the process gets SIGTERM. A re-run in the same session must "
        "reuse check_dates' stored result and run find_hotels once to completion.",
        (signal.SIGKILL, True): "As SIGTERM during a tool (the tool sleeps 120 s), but "
        "SIGKILL, then `reconcile`, then the re-run in the same session.",
    }
    procs = [
        start(
            scenario_factory("Process", f"{sig.name} {where[in_tool]}", how[(sig, in_tool)]),
            sig,
            in_tool,
            fault_aws,
            slow_tool_s,
        )  # fmt: skip
        for sig, in_tool in combos
    ]
    try:
        deadline = time.monotonic() + 240
        while any(p.sent_at is None for p in procs) and time.monotonic() < deadline:
            for p in procs:
                if p.sent_at is None and p.process.poll() is None and p.ready():
                    p.process.send_signal(p.sig)
                    p.sent_at = time.monotonic()
                elif p.sent_at is None and p.process.poll() is not None:
                    p.sent_at = -1.0  # ended before its moment: reported below
            time.sleep(0.2)
        for p in procs:
            out, err = p.process.communicate(timeout=120)
            p.output += [out, err]
    finally:
        for p in procs:
            if p.process.poll() is None:
                p.process.kill()
                p.process.communicate()

    failures = []
    for p in procs:
        scenario = p.scenario
        scenario.activate()
        scenario.texts.append(("process output", "\n".join(p.output)))
        scenario.start_export()  # adopts the dead process's spooled rows
        reconciled = []
        if p.sig is signal.SIGKILL:
            ledger = get_ledger(scenario.ledger)
            reconciled = reconcile(ledger, get_tracer(), prefect_state_lookup())
        assert scenario.flush() == 0
        first = next(t for t in scenario.traces() if t["metadata"].get("session_id") == p.session)
        rerun: InvocationResult | None = None
        if p.in_tool:
            rerun = scenario.invoke(**TRIP, prompt=ITINERARY, session_id=p.session)
            assert scenario.flush() == 0
        lines = scenario.tool_lines()
        ok = (
            p.sent_at is not None and p.sent_at > 0
            and p.process.returncode != 0
            and first["status"] == "error"
            and [s["name"] for s in first["spans"]].count("summary") == 1
            and (p.sig is signal.SIGTERM or [r.status for r in reconciled] == ["error"])
            and (not p.in_tool or (
                rerun is not None and rerun.finish_reason == "end_turn"
                and "Hotels in Rome for 3 nights" in rerun.text
                # SIGKILL cuts the tool short: it starts again. Under SIGTERM the
                # interpreter lets the tool finish and its result is kept: reused.
                and lines.count("find_hotels start Rome 3")
                == (2 if p.sig is signal.SIGKILL else 1)
            ))
        )  # fmt: skip
        outcome = (
            f"exit {p.process.returncode}; first trace {first['status']}"
            + (f"; reconciled {len(reconciled)}" if p.sig is signal.SIGKILL else "")
            + (f"; re-run {rerun.finish_reason if rerun else 'none'}, "
               f"find_hotels started {lines.count('find_hotels start Rome 3')}x"
               if p.in_tool else "")
        )  # fmt: skip
        try:
            scenario.record(
                runs=2 if p.in_tool else 1,
                outcome=outcome,
                outcome_ok=ok,
                tools_expected=2 if p.in_tool else 0,
            )
        except AssertionError as exc:
            failures.append(str(exc))
        scenario.stop_export(5)
    assert not failures, failures


def test_concurrent_invocations_with_nexus_flapping(
    scenario_factory: MakeScenario, trip_registry: None
) -> None:
    count = scaled(6, 50)
    scenario = scenario_factory(
        "Process",
        f"{count} concurrent invocations, Nexus flapping",
        f"{count} invocation flows of the TRIP agent run at once on one event loop (each a "
        "returnControl round with two local tools), while every 3rd request to the local "
        "Nexus answers 503 (`flap_every=3`). Prefect's client retries are raised to 20 for "
        "this test: the session's temporary SQLite-backed Prefect server otherwise answers "
        "503 to some of 50 simultaneous flow-run creations.",
    )
    scenario.nexus.faults.flap_every = 3
    scenario.start_export()
    cities = ["Lisbon", "Porto", "Rome", "Paris", "Oslo", "Madrid", "Vienna", "Prague"]

    async def all_runs() -> list[Any]:
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

        from flows.invoke_agent import invoke_agent_flow

        # The session's temporary Prefect server (SQLite) answers 503 when 50 flow runs
        # are created at once; more client retries let it catch up. Nexus is not involved.
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 20}):
            return await gather_runs(invoke_agent_flow)

    async def gather_runs(invoke_agent_flow: Any) -> list[Any]:
        done: list[Any] = await asyncio.gather(
            *[
                invoke_agent_flow(
                    agent_id=TRIP["agent_id"],
                    agent_alias_id=TRIP["agent_alias_id"],
                    prompt=f"What's the weather in {cities[n % len(cities)]} and are there "
                    "hotels for 3 nights?",
                    session_id=f"conc{n}-{uuid.uuid4().hex[:8]}",
                )
                for n in range(count)
            ],
            return_exceptions=True,
        )
        return done

    outcomes = scenario.loop.run(all_runs(), timeout=900)
    results = [o.result if isinstance(o, InvocationFailed) else o for o in outcomes]
    good = [
        r for r in results
        if isinstance(r, InvocationResult) and r.finish_reason == "end_turn"
        and r.counts["tool_calls"] == 2
    ]  # fmt: skip
    left = scenario.flush(300)
    scenario.nexus.faults.clear()
    errors = Counter(
        (r.error or r.finish_reason)[:120] if isinstance(r, InvocationResult) else repr(r)[:120]
        for r in results
        if r not in good
    )
    scenario.record(
        runs=count,
        outcome=f"{len(good)}/{count} answered with 2 tools each; {left} items left"
        + "".join(f"; {n}x {error}" for error, n in errors.items()),
        outcome_ok=len(good) == count and left == 0,
        tools_expected=2 * count,
    )
