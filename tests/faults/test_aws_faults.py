"""AWS faults, injected by the Bedrock emulator per session: the flow recovers or fails
cleanly, every span reaches Nexus once, no tool runs twice, no secret leaks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from nexus_bedrock_tasks.ledger import get_ledger
from nexus_bedrock_tasks.local.bedrock.testing import run_emulator, set_session_faults
from nexus_bedrock_tasks.results import InvocationResult
from tests.faults.conftest import (
    AWS_KEY_ID,
    AWS_SECRET,
    DEMO,
    NEXUS_KEY,
    TRIP,
    Scenario,
    scaled,
)
from tests.flow.conftest import AGENTS, PREFECT_SOCKET_WARNINGS
from tests.flow.test_invoke_flow import check_contract

pytestmark = PREFECT_SOCKET_WARNINGS
MakeScenario = Callable[..., Scenario]
PACK = "What should I pack for a city trip?"
TWO_TOOLS = "What's the weather in Lisbon and are there hotels for 3 nights?"


def session(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def delivered_contract(scenario: Scenario, results: list[InvocationResult]) -> None:
    """Each run's trace, read back from Nexus, satisfies SPANS.md (tests/flow's check)."""
    assert scenario.flush() == 0
    by_local = {t["metadata"]["nexus_bedrock_trace_id"]: t for t in scenario.traces()}
    for result in results:
        check_contract(by_local[result.local_trace_id], result)


def run_faulted(
    scenario: Scenario,
    emulator_url: str,
    faults: dict[str, Any],
    runs: int,
    **invoke: Any,
) -> list[InvocationResult]:
    results = []
    for n in range(runs):
        name = session(f"f{n}")
        set_session_faults(emulator_url, name, **faults)
        results.append(scenario.invoke(**invoke, session_id=name))
    return results


@pytest.mark.parametrize(
    ("name", "faults", "retries", "how"),
    [
        (
            "throttling burst before the stream",
            {"throttle_first": 3},
            3,
            "The emulator answers the first 3 InvokeAgent calls of the session with HTTP 429 "
            "ThrottlingException (`throttle_first`); tenacity retries them with jittered "
            "backoff, botocore's own retries being off.",
        ),
        (
            "throttling inside the stream",
            {"stream_error_after": 2, "stream_error": "throttlingException",
             "stream_faults_first": 1},
            1,
            "After 2 events the first stream carries a `throttlingException` message and "
            "ends; the flow re-invokes the turn once (the failed attempt's tokens still "
            "count).",
        ),
        (
            "5xx before the stream",
            {"error_first": 2, "error_status": 503},
            2,
            "The first 2 calls get HTTP 503 ServiceUnavailableException (`error_first`, "
            "`error_status`); retried by tenacity.",
        ),
    ],
)  # fmt: skip
def test_transient_aws_errors_are_retried_and_traced_once(
    scenario_factory: MakeScenario,
    fault_aws: str,
    name: str,
    faults: dict[str, Any],
    retries: int,
    how: str,
) -> None:
    scenario = scenario_factory("AWS", name, how)
    scenario.start_export()
    runs = scaled(1, 5)
    results = run_faulted(scenario, fault_aws, faults, runs, **DEMO, prompt=PACK)
    delivered_contract(scenario, results)
    good = [r for r in results if r.finish_reason == "end_turn" and r.counts["retries"] == retries]
    scenario.record(
        runs=runs,
        outcome=f"{len(good)}/{runs} answered after {retries} retr{'y' if retries == 1 else 'ies'}",
        outcome_ok=len(good) == runs,
        tools_expected=0,
    )


def test_connection_dropped_mid_stream_never_runs_a_tool_twice(
    scenario_factory: MakeScenario, fault_aws: str, trip_registry: None
) -> None:
    scenario = scenario_factory(
        "AWS",
        "connection dropped mid-stream",
        "The first 2 streams of the session are cut after 1 event without ending the "
        "chunked body (`drop_after`, `stream_faults_first`): the connection dies mid-stream, "
        "around a returnControl round with two local tools.",
    )
    scenario.start_export()
    runs = scaled(1, 4)
    faults = {"drop_after": 1, "stream_faults_first": 2}
    results = run_faulted(scenario, fault_aws, faults, runs, **TRIP, prompt=TWO_TOOLS)
    delivered_contract(scenario, results)
    good = [r for r in results if r.finish_reason == "end_turn" and r.counts["tool_calls"] == 2]
    scenario.record(
        runs=runs,
        outcome=f"{len(good)}/{runs} answered, 2 re-invocations each",
        outcome_ok=len(good) == runs and all(r.counts["retries"] == 2 for r in results),
        tools_expected=2 * runs,
    )


def test_slow_trickle_and_a_stall_past_the_read_timeout(
    scenario_factory: MakeScenario, fault_aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = scenario_factory(
        "AWS",
        "slow trickle past the read timeout",
        "The AWS read timeout is set to 1 s (`NEXUS_BEDROCK_AWS_READ_TIMEOUT_S`). One run "
        "gets every event in 64-byte pieces 20 ms apart (`trickle_bytes`, "
        "`trickle_delay_ms`), a stream lasting well past the timeout while bytes keep "
        "coming: the same answer, no retry. Another's first stream goes silent for 2.5 s "
        "after 2 events (`stall_after`, `stall_ms`): the read times out and the turn is "
        "re-invoked once.",
    )
    monkeypatch.setenv("NEXUS_BEDROCK_AWS_READ_TIMEOUT_S", "1")
    scenario.start_export()
    runs = scaled(1, 3)
    clean = scenario.invoke(**DEMO, prompt=PACK, session_id=session("clean"))
    trickled = run_faulted(
        scenario, fault_aws, {"trickle_bytes": 64, "trickle_delay_ms": 20}, runs,
        **DEMO, prompt=PACK,
    )  # fmt: skip
    stalled = run_faulted(
        scenario, fault_aws, {"stall_after": 2, "stall_ms": 2500, "stream_faults_first": 1},
        runs, **DEMO, prompt=PACK,
    )  # fmt: skip
    delivered_contract(scenario, [clean, *trickled, *stalled])
    same = [r for r in trickled if r.text == clean.text and r.counts["retries"] == 0]
    recovered = [r for r in stalled if r.text == clean.text and r.counts["retries"] == 1]
    scenario.record(
        runs=2 * runs + 1,
        outcome=f"trickle: {len(same)}/{runs} same answer; stall: {len(recovered)}/{runs} "
        "re-invoked once, same answer",
        outcome_ok=len(same) == runs and len(recovered) == runs,
        tools_expected=0,
    )


@pytest.fixture
def short_ttl_emulator(
    fault_aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A private emulator whose TRIP agent forgets a session after 1 idle second."""
    config = yaml.safe_load(AGENTS.read_text())
    for agent in config["agents"]:
        if agent["id"] == TRIP["agent_id"]:
            agent["idle_session_ttl_seconds"] = 1
    for kb in config.get("knowledge_bases", []):
        kb["path"] = str(AGENTS.parent / kb["path"])
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(config))
    with run_emulator(path) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME", url)
        yield url


def leave_pending_return_control(url: str, session_id: str, ledger: Path) -> dict[str, Any]:
    """What a run that died mid-round leaves: a returnControl at Bedrock and in the ledger."""
    client = boto3.client(
        "bedrock-agent-runtime", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=AWS_KEY_ID, aws_secret_access_key=AWS_SECRET,
    )  # fmt: skip
    response = client.invoke_agent(
        agentId=TRIP["agent_id"], agentAliasId=TRIP["agent_alias_id"],
        sessionId=session_id, inputText="What's the weather in Oslo?", enableTrace=True,
    )  # fmt: skip
    event = next(e["returnControl"] for e in response["completion"] if "returnControl" in e)
    get_ledger(ledger).save_pending(session_id, event["invocationId"], event)
    return {"client": client, "event": event}


def answer_directly(seeded: dict[str, Any], session_id: str) -> None:
    """Another client answers the returnControl: Bedrock's session moves on."""
    event = seeded["event"]
    call = event["invocationInputs"][0]["functionInvocationInput"]
    response = seeded["client"].invoke_agent(
        agentId=TRIP["agent_id"], agentAliasId=TRIP["agent_alias_id"],
        sessionId=session_id, enableTrace=True,
        sessionState={
            "invocationId": event["invocationId"],
            "returnControlInvocationResults": [{"functionResult": {
                "actionGroup": call["actionGroup"], "function": call["function"],
                "responseBody": {"TEXT": {"body": "cloudy"}},
            }}],
        },
    )  # fmt: skip
    for _ in response["completion"]:
        pass


@pytest.mark.parametrize(
    ("name", "how"),
    [
        (
            "session expired while a returnControl waits",
            "A private emulator whose agent has `idle_session_ttl_seconds: 1`. A direct "
            "boto3 call leaves a returnControl pending, recorded in the tool ledger as a run "
            "killed mid-round leaves it; after the TTL passes the flow runs in that session.",
        ),
        (
            "returnControl with a stale invocationId",
            "A direct boto3 call leaves a returnControl pending (recorded in the ledger); "
            "another client answers it, so Bedrock's session moves on and the ledger's "
            "invocationId is stale when the flow runs in that session.",
        ),
    ],
)
def test_stale_pending_return_control_does_not_stick_the_session(
    scenario_factory: MakeScenario,
    short_ttl_emulator: str,
    trip_registry: None,
    name: str,
    how: str,
) -> None:
    scenario = scenario_factory("AWS", name, how)
    scenario.start_export()
    runs = scaled(1, 2)
    results = []
    for n in range(runs):
        name_ = session(f"stale{n}")
        seeded = leave_pending_return_control(short_ttl_emulator, name_, scenario.ledger)
        if "expired" in name:
            time.sleep(1.5)  # the TTL itself is the fault
        else:
            answer_directly(seeded, name_)
        results.append(scenario.invoke(**TRIP, prompt="Any hotels in Rome for 2 nights?",
                                       session_id=name_))  # fmt: skip
    assert scenario.flush() == 0
    good = [r for r in results if r.finish_reason == "end_turn" and "Hotels in Rome" in r.text]
    # The stale call's own tool runs once (its answer is refused), the prompt's tool once.
    scenario.record(
        runs=runs,
        outcome=f"{len(good)}/{runs} answered the new prompt; errors: "
        f"{sorted({(r.error or '')[:80] for r in results if r.error})}",
        outcome_ok=len(good) == runs,
        tools_expected=2 * runs,
    )


def test_secrets_in_a_prompt_never_leave_the_process(scenario_factory: MakeScenario) -> None:
    scenario = scenario_factory(
        "Secrets",
        "secrets in the prompt",
        "The prompt itself carries the AWS access key id, `aws_secret_access_key=<the "
        "secret>` and the Nexus API key (and the process runs with them as credentials); "
        "the prompt is in the trace metadata, the model-call spans and the Prefect "
        "parameters. Logs, spans, Prefect artifacts, the outbox and the ledger are scanned.",
    )
    scenario.start_export()
    prompt = (
        f"What should I pack? My key is {AWS_KEY_ID}, aws_secret_access_key={AWS_SECRET} "
        f"and my Nexus key {NEXUS_KEY}."
    )
    results = [
        scenario.invoke(**DEMO, prompt=prompt, session_id=session(f"sec{n}"))
        for n in range(scaled(1, 3))
    ]
    assert scenario.flush() == 0
    redacted = [t for t in scenario.traces() if "[REDACTED]" in t["metadata"]["prompt"]]
    scenario.record(
        runs=len(results),
        outcome=f"{sum(r.finish_reason == 'end_turn' for r in results)}/{len(results)} "
        f"answered; {len(redacted)} trace(s) with the prompt redacted",
        outcome_ok=all(r.finish_reason == "end_turn" for r in results)
        and len(redacted) == len(results),
        tools_expected=0,
    )
