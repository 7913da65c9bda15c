"""The session flow end to end: turns in one Bedrock session, one Nexus trace per turn."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from flows.agent_session import SessionFailed, SessionTranscript, agent_session
from flows.invoke_agent import invoke_agent_flow
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from nexus_bedrock_tasks.results import InvocationResult
from tests.eval.test_eval_flow import DEMO
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS, Traced

pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]
LISBON = "What is there to see in Lisbon?"
RECALL = "What did I ask earlier?"


async def _flow_run_parameters(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
    return dict(flow_run.parameters)


def test_turns_share_a_session_each_with_its_own_trace(stack: Traced, tools: None) -> None:
    session = f"sess-{uuid.uuid4().hex[:8]}"
    attributes = {"tier": "gold"}
    transcript: SessionTranscript = stack.loop.run(
        agent_session(
            **DEMO,
            turns=[LISBON, "What's the weather in Lisbon?", RECALL],
            session_id=session,
            session_attributes=attributes,
        )
    )
    assert transcript.session_id == session and transcript.session_ended
    assert [t.turn for t in transcript.turns] == [1, 2, 3]
    assert "tram 28" in transcript.turns[0].text
    assert transcript.turns[1].text.endswith("sunny, 24°C")
    assert transcript.turns[2].text == (
        f'Earlier you asked: "{LISBON}"; "What\'s the weather in Lisbon?".'
    )
    assert transcript.usage.total_tokens == sum(t.usage.total_tokens for t in transcript.turns)
    assert transcript.cost_usd is not None and transcript.warnings == []
    for turn in transcript.turns:
        trace = stack.trace(turn.local_trace_id)
        assert trace["id"] == turn.trace_id or turn.trace_id is None
        metadata = trace["metadata"]
        assert metadata["session_id"] == session and metadata["turn"] == turn.turn
        assert metadata["session_flow_run_id"] and metadata["prompt"] == turn.prompt
        assert [s["name"] for s in trace["spans"]][-1] == "summary"
        parameters = stack.loop.run(_flow_run_parameters(turn.flow_run_id or ""))
        assert parameters["session_attributes"] == attributes
    # The session was ended: the same id starts afresh, with no history to recall.
    again: InvocationResult = stack.loop.run(
        invoke_agent_flow(**DEMO, prompt=RECALL, session_id=session)
    )
    assert "Earlier you asked" not in again.text


def test_memory_outlives_an_ended_session(stack: Traced) -> None:
    memory = f"mem-{uuid.uuid4().hex[:8]}"
    first: SessionTranscript = stack.loop.run(
        agent_session(**DEMO, turns=[LISBON], memory_id=memory)
    )
    assert first.session_ended and first.session_id.startswith("nbt-")
    second: SessionTranscript = stack.loop.run(
        agent_session(**DEMO, turns=[RECALL], memory_id=memory)
    )
    assert second.session_id != first.session_id
    assert LISBON in second.turns[0].text


def test_history_warning_once_past_the_limits(
    stack: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_BEDROCK_SESSION_WARN_TURNS", "1")
    monkeypatch.setenv("NEXUS_BEDROCK_SESSION_WARN_TOKENS", "500")
    transcript: SessionTranscript = stack.loop.run(
        agent_session(**DEMO, turns=[LISBON, LISBON, LISBON], end_session=False)
    )
    assert not transcript.session_ended
    assert len(transcript.warnings) == 2
    turns_warning, tokens_warning = sorted(transcript.warnings, key=lambda w: "TOKENS" in w)
    assert "has 2 turns (more than NEXUS_BEDROCK_SESSION_WARN_TURNS=1)" in turns_warning
    assert "(more than NEXUS_BEDROCK_SESSION_WARN_TOKENS=500)" in tokens_warning


def test_a_failed_turn_stops_the_session_and_still_ends_it(stack: Traced) -> None:
    session = f"sess-fail-{uuid.uuid4().hex[:8]}"
    set_session_faults(
        os.environ["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"],
        session,
        stream_error_after=1,
        stream_error="validationException",
        stream_faults_first=1,
    )
    with pytest.raises(SessionFailed) as caught:
        stack.loop.run(agent_session(**DEMO, turns=[LISBON, RECALL], session_id=session))
    transcript = caught.value.transcript
    assert len(transcript.turns) == 1 and transcript.session_ended
    assert transcript.turns[0].error and "validationException" in transcript.turns[0].error
    assert stack.trace(transcript.turns[0].local_trace_id)["status"] == "error"
    assert str(caught.value).startswith(f"session {session}: turn 1 failed: validationException")


@pytest.mark.parametrize(
    ("turns", "message"), [([], "turns is empty"), (["ok", ""], "prompt is empty")]
)
def test_bad_input_fails_before_any_call(stack: Traced, turns: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stack.loop.run(agent_session(**DEMO, turns=turns))
