"""InvokeInlineAgent through stock boto3."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from nexus_bedrock_tasks.local.bedrock.handlers import get_forecast
from tests.local_bedrock.emulator_helpers import answer, drain, steps, traces

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
FORECAST_FUNCTION = {
    "name": "get_forecast",
    "description": "Weather forecast for a city",
    "parameters": {"city": {"type": "string", "required": True}},
}


def _group(executor: dict[str, str], **function: Any) -> dict[str, Any]:
    return {
        "actionGroupName": "weather",
        "actionGroupExecutor": executor,
        "functionSchema": {"functions": [{**FORECAST_FUNCTION, **function}]},
    }


def _inline(client: Any, session_id: str, text: str, **kwargs: Any) -> list[dict[str, Any]]:
    request = {
        "sessionId": session_id,
        "foundationModel": MODEL,
        "instruction": "You are a helpful travel assistant for inline tests.",
        "inputText": text,
        "enableTrace": True,
        **kwargs,
    }
    return drain(client.invoke_inline_agent(**request))


def test_inline_return_control_round_trip(client: Any, session_id: str) -> None:
    groups = [_group({"customControl": "RETURN_CONTROL"})]
    first = _inline(client, session_id, "What is the weather in Rome?", actionGroups=groups)

    control = first[-1]["returnControl"]
    request = control["invocationInputs"][0]["functionInvocationInput"]
    assert request["parameters"] == [{"name": "city", "type": "string", "value": "Rome"}]
    assert "agentId" not in request
    for part in traces(first):
        assert "agentId" not in part
        assert part["sessionId"] == session_id
        assert part["callerChain"][0]["agentAliasArn"].endswith(":inline-agent/inline-agent")

    state = {
        "invocationId": control["invocationId"],
        "returnControlInvocationResults": [
            {
                "functionResult": {
                    "actionGroup": "weather",
                    "function": "get_forecast",
                    "responseBody": {"TEXT": {"body": "Cloudy"}},
                }
            }
        ],
    }
    second = _inline(client, session_id, "", actionGroups=groups, inlineSessionState=state)
    assert answer(second) == "get_forecast returned: Cloudy"


def test_inline_confirmation_and_result(client: Any, session_id: str) -> None:
    groups = [_group({"customControl": "RETURN_CONTROL"}, requireConfirmation="ENABLED")]
    control = _inline(client, session_id, "forecast for Nice", actionGroups=groups)[-1]
    request = control["returnControl"]["invocationInputs"][0]["functionInvocationInput"]
    assert request["actionInvocationType"] == "USER_CONFIRMATION_AND_RESULT"

    result = {
        "actionGroup": "weather",
        "function": "get_forecast",
        "confirmationState": "CONFIRM",
        "responseBody": {"TEXT": {"body": "Mistral wind"}},
    }
    state = {
        "invocationId": control["returnControl"]["invocationId"],
        "returnControlInvocationResults": [{"functionResult": result}],
    }
    events = _inline(client, session_id, "", actionGroups=groups, inlineSessionState=state)
    assert answer(events) == "get_forecast returned: Mistral wind"


def test_inline_lambda_runs_a_built_in_handler(client: Any, session_id: str) -> None:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:get_forecast"
    events = _inline(client, session_id, "weather in Kyoto", actionGroups=[_group({"lambda": arn})])

    assert answer(events) == f"get_forecast returned: {get_forecast({'city': 'Kyoto'})}"
    [action] = steps(events, "orchestrationTrace", "invocationInput")
    assert action["actionGroupInvocationInput"]["executionType"] == "LAMBDA"


def test_inline_knowledge_base_processing_and_guardrail(client: Any, session_id: str) -> None:
    processing = {
        "promptConfigurations": [
            {"promptType": "PRE_PROCESSING", "promptState": "ENABLED"},
            {"promptType": "POST_PROCESSING", "promptState": "ENABLED"},
        ]
    }
    events = _inline(
        client,
        session_id,
        "Which Tokyo neighbourhood is known for street fashion?",
        knowledgeBases=[{"knowledgeBaseId": "TRAVELKB01", "description": "Travel guides"}],
        promptOverrideConfiguration=processing,
        guardrailConfiguration={"guardrailIdentifier": "travelguard", "guardrailVersion": "1"},
    )
    assert answer(events).startswith("Tokyo is a city of neighbourhoods")
    phases = {next(iter(part["trace"])) for part in traces(events)}
    assert phases == {
        "guardrailTrace",
        "preProcessingTrace",
        "orchestrationTrace",
        "postProcessingTrace",
    }

    blocked = _inline(
        client,
        f"{session_id}-2",
        "Tell me about politics",
        guardrailConfiguration={"guardrailIdentifier": "travelguard", "guardrailVersion": "1"},
    )
    assert answer(blocked) == "Sorry, the model cannot answer this question."


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        (
            {"knowledgeBases": [{"knowledgeBaseId": "NOPE", "description": "x"}]},
            "ResourceNotFoundException",
        ),
        (
            {"guardrailConfiguration": {"guardrailIdentifier": "nope", "guardrailVersion": "1"}},
            "ResourceNotFoundException",
        ),
        (
            {"actionGroups": [_group({"lambda": "arn:aws:lambda:us-east-1:1:function:nope"})]},
            "ValidationException",
        ),
        (
            {
                "collaborators": [
                    {
                        "foundationModel": MODEL,
                        "instruction": "You answer every question about trains and timetables.",
                        "agentName": "x",
                    }
                ]
            },
            "ValidationException",
        ),
    ],
)
def test_inline_definitions_the_emulator_cannot_serve_are_refused(
    client: Any, session_id: str, kwargs: dict[str, Any], code: str
) -> None:
    with pytest.raises(ClientError) as caught:
        _inline(client, session_id, "hello", **kwargs)
    assert caught.value.response["Error"]["Code"] == code
