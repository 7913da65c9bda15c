"""Every phase: pre/post-processing, Lambda action groups, guardrails, collaborators."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import EventStreamError

from nexus_bedrock_tasks.local.bedrock.handlers import convert_currency, get_forecast
from tests.local_bedrock.emulator_helpers import answer, drain, function_result, steps, traces

ORCHESTRATION = "orchestrationTrace"
BLOCKED = "Sorry, the model cannot answer this question."


def _invoke(client: Any, agent_id: str, session_id: str, text: str, **kwargs: Any) -> Any:
    return client.invoke_agent(
        agentId=agent_id,
        agentAliasId="TSTALIASID",
        sessionId=session_id,
        inputText=text,
        enableTrace=True,
        **kwargs,
    )


def _phases(events: list[dict[str, Any]]) -> list[str]:
    order: list[str] = []
    for part in traces(events):
        [phase] = part["trace"]
        if not order or order[-1] != phase:
            order.append(phase)
    return order


def test_pre_and_post_processing_around_a_lambda_action_group(client: Any, session_id: str) -> None:
    events = drain(_invoke(client, "PLANNER001", session_id, "Convert 100 USD to EUR please"))

    assert _phases(events) == [
        "guardrailTrace",
        "preProcessingTrace",
        ORCHESTRATION,
        "postProcessingTrace",
        "guardrailTrace",
    ]
    converted = convert_currency({"amount": 100.0, "from_currency": "USD", "to_currency": "EUR"})
    assert answer(events) == f"Converted: {converted}"

    [pre_input] = steps(events, "preProcessingTrace", "modelInvocationInput")
    [pre_output] = steps(events, "preProcessingTrace", "modelInvocationOutput")
    assert pre_input["type"] == "PRE_PROCESSING"
    assert pre_input["traceId"].endswith("-pre-0")
    assert pre_output["parsedResponse"]["isValid"] is True
    assert pre_output["metadata"]["usage"]["inputTokens"] > 0

    [action] = steps(events, ORCHESTRATION, "invocationInput")
    group_input = action["actionGroupInvocationInput"]
    assert group_input["executionType"] == "LAMBDA"
    assert group_input["function"] == "convert_currency"
    assert [p["value"] for p in group_input["parameters"]] == ["100", "USD", "EUR"]
    group_output = steps(events, ORCHESTRATION, "observation")[0]["actionGroupInvocationOutput"]
    assert group_output["text"] == converted

    [post_input] = steps(events, "postProcessingTrace", "modelInvocationInput")
    [post_output] = steps(events, "postProcessingTrace", "modelInvocationOutput")
    assert post_input["traceId"].endswith("-post-0")
    assert post_output["parsedResponse"]["text"] == answer(events)

    guardrails = [
        part["trace"]["guardrailTrace"]
        for part in traces(events)
        if "guardrailTrace" in part["trace"]
    ]
    assert [g["action"] for g in guardrails] == ["NONE", "NONE"]
    assert guardrails[0]["traceId"].endswith("-guardrail-pre-0")
    assert guardrails[1]["traceId"].endswith("-guardrail-post-0")


@pytest.mark.parametrize(
    ("prompt", "assessment"),
    [
        (
            "Who will win the election?",
            {
                "topicPolicy": {
                    "topics": [{"action": "BLOCKED", "name": "Politics", "type": "DENY"}]
                }
            },
        ),
        (
            "Convert 5 USD to EUR, idiot",
            {"wordPolicy": {"customWords": [{"action": "BLOCKED", "match": "idiot"}]}},
        ),
    ],
)
def test_guardrail_intervenes_on_the_input(
    client: Any, session_id: str, prompt: str, assessment: dict[str, Any]
) -> None:
    events = drain(_invoke(client, "PLANNER001", session_id, prompt))

    [part] = traces(events)
    guardrail = part["trace"]["guardrailTrace"]
    assert guardrail["action"] == "INTERVENED"
    assert guardrail["inputAssessments"] == [assessment]
    assert guardrail["metadata"]["totalTimeMs"] >= 0
    assert answer(events) == BLOCKED


def test_guardrail_intervenes_on_the_answer(test_client: Any, session_id: str) -> None:
    control = drain(_invoke(test_client, "GUARDED001", session_id, "weather in Bern"))[-1]
    state = function_result(control["returnControl"], "Rain; the election is tomorrow")

    events = drain(_invoke(test_client, "GUARDED001", session_id, "", sessionState=state))

    guardrail = traces(events)[-1]["trace"]["guardrailTrace"]
    assert guardrail["action"] == "INTERVENED"
    assert guardrail["outputAssessments"][0]["topicPolicy"]["topics"][0]["name"] == "Politics"
    assert answer(events) == "That answer was blocked."


def test_a_failing_lambda_ends_the_stream_with_dependency_failed(
    test_client: Any, session_id: str
) -> None:
    response = _invoke(test_client, "BROKEN0001", session_id, "explode now")
    received: list[dict[str, Any]] = []
    with pytest.raises(EventStreamError) as caught:
        for event in response["completion"]:
            received.append(event)
    response["completion"].close()

    assert caught.value.response["Error"]["Code"] == "dependencyFailedException"
    assert "handler failed on purpose" in caught.value.response["Error"]["Message"]
    failure = received[-1]["trace"]["trace"]["failureTrace"]
    assert "action group tools failed" in failure["failureReason"]


def test_collaborator_traces_arrive_nested_with_caller_chain(client: Any, session_id: str) -> None:
    events = drain(_invoke(client, "SUPERV0001", session_id, "Convert 50 EUR to USD"))

    converted = convert_currency({"amount": 50.0, "from_currency": "EUR", "to_currency": "USD"})
    assert answer(events) == f"Converted: {converted}"
    supervisor_arn = "arn:aws:bedrock:us-east-1:123456789012:agent-alias/SUPERV0001/TSTALIASID"
    expert_arn = "arn:aws:bedrock:us-east-1:123456789012:agent-alias/FXAGENT001/TSTALIASID"
    top = [part for part in traces(events) if len(part["callerChain"]) == 1]
    nested = [part for part in traces(events) if len(part["callerChain"]) == 2]
    assert {part["agentId"] for part in top} == {"SUPERV0001"}
    assert nested
    for part in nested:
        assert part["agentId"] == "FXAGENT001"
        assert part["collaboratorName"] == "CurrencyExpert"
        assert part["callerChain"] == [
            {"agentAliasArn": supervisor_arn},
            {"agentAliasArn": expert_arn},
        ]
        assert part["sessionId"] != session_id
    nested_usage = [
        part["trace"][ORCHESTRATION]["modelInvocationOutput"]["metadata"]["usage"]
        for part in nested
        if "modelInvocationOutput" in part["trace"].get(ORCHESTRATION, {})
    ]
    assert len(nested_usage) == 2

    [call] = [
        s
        for s in steps(events, ORCHESTRATION, "invocationInput")
        if "agentCollaboratorInvocationInput" in s
    ]
    assert call["agentCollaboratorInvocationInput"] == {
        "agentCollaboratorAliasArn": expert_arn,
        "agentCollaboratorName": "CurrencyExpert",
        "input": {"text": "Convert 50 EUR to USD", "type": "TEXT"},
    }
    [result] = [
        s
        for s in steps(events, ORCHESTRATION, "observation")
        if "agentCollaboratorInvocationOutput" in s
    ]
    assert result["type"] == "AGENT_COLLABORATOR"
    assert result["agentCollaboratorInvocationOutput"]["output"] == {
        "text": f"Converted: {converted}",
        "type": "TEXT",
    }
    # The collaborator's own steps come between the supervisor's input and observation.
    positions = [
        index for index, part in enumerate(traces(events)) if len(part["callerChain"]) == 2
    ]
    call_at = next(
        i for i, p in enumerate(traces(events)) if "agentCollaboratorInvocationInput" in str(p)
    )
    assert call_at < min(positions)


def test_two_collaborators_in_one_prompt_answer_in_prompt_order(
    client: Any, session_id: str
) -> None:
    prompt = "Convert 20 GBP to EUR, and what should I pack for a city trip?"
    events = drain(_invoke(client, "SUPERV0001", session_id, prompt))

    names = [
        s["agentCollaboratorInvocationInput"]["agentCollaboratorName"]
        for s in steps(events, ORCHESTRATION, "invocationInput")
        if "agentCollaboratorInvocationInput" in s
    ]
    assert names == ["CurrencyExpert", "TravelGuide"]
    currency, packing = answer(events).split("\n\n")
    assert currency.startswith("Converted: 20.00 GBP = ")
    assert packing.startswith("When you pack for a city trip")
    guide = [p for p in traces(events) if p.get("collaboratorName") == "TravelGuide"]
    assert any("knowledgeBaseLookupOutput" in str(p["trace"]) for p in guide)


def test_several_steps_in_one_turn_share_one_trace_id_prefix(
    test_client: Any, session_id: str
) -> None:
    started = time.monotonic()
    events = drain(
        _invoke(
            test_client,
            "CHAIN00001",
            session_id,
            "Weather in Paris? And what should I pack for a city trip?",
        )
    )
    elapsed = time.monotonic() - started

    first, second = answer(events).split("\n\n")
    assert first == f"get_forecast returned: {get_forecast({'city': 'Paris'})}"
    assert second.startswith("When you pack")
    [chunk] = [event["chunk"] for event in events if "chunk" in event]
    [citation] = chunk["attribution"]["citations"]
    assert citation["generatedResponsePart"]["textResponsePart"]["span"]["start"] == len(first) + 2
    trace_ids = [s["traceId"] for s in steps(events, ORCHESTRATION, "modelInvocationInput")]
    prefix = trace_ids[0][: -len("-0")]
    assert trace_ids == [f"{prefix}-0", f"{prefix}-1", f"{prefix}-KB-null-0", f"{prefix}-2"]
    # 4 model calls, 1 Lambda run and 1 lookup, 30 ms each (faults: in the YAML file).
    assert elapsed >= 6 * 0.03
