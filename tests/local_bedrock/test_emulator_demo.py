"""The demo agent (DEMO000001) through stock boto3: returnControl, knowledge base, traces."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.local_bedrock.emulator_helpers import answer, demo, drain, function_result, steps, traces

KB_PACKING = (
    "When you pack for a city trip, bring layers rather than one heavy coat, comfortable "
    "walking shoes, a universal power adapter and a small day bag. Keep medicines and a "
    "change of clothes in your carry-on bag."
)
ORCHESTRATION = "orchestrationTrace"


def test_weather_prompt_returns_control_and_the_answer_quotes_the_tool_result(
    client: Any, session_id: str
) -> None:
    first = demo(client, session_id, "What's the weather in Paris tomorrow?")

    control = first[-1]["returnControl"]
    assert not any("chunk" in event for event in first)
    assert control["invocationInputs"] == [
        {
            "functionInvocationInput": {
                "actionGroup": "weather",
                "actionInvocationType": "RESULT",
                "agentId": "DEMO000001",
                "function": "get_forecast",
                "parameters": [{"name": "city", "type": "string", "value": "Paris"}],
            }
        }
    ]
    [action] = steps(first, ORCHESTRATION, "invocationInput")
    assert action["invocationType"] == "ACTION_GROUP"
    assert action["actionGroupInvocationInput"]["executionType"] == "RETURN_CONTROL"
    assert action["actionGroupInvocationInput"]["invocationId"] == control["invocationId"]

    second = demo(client, session_id, "", sessionState=function_result(control, "Sunny, 24°C"))

    expected = "Here is the weather forecast for Paris: Sunny, 24°C"
    assert answer(second) == expected
    [observation, final] = steps(second, ORCHESTRATION, "observation")
    assert observation["actionGroupInvocationOutput"]["text"] == "Sunny, 24°C"
    assert observation["type"] == "ACTION_GROUP"
    assert final["finalResponse"]["text"] == expected
    assert final["type"] == "FINISH"
    prefix = action["traceId"].rsplit("-", 1)[0]
    assert action["traceId"] == f"{prefix}-0"
    assert observation["traceId"] == f"{prefix}-0"
    assert final["traceId"] == f"{prefix}-1"


@pytest.mark.parametrize(
    ("prompt", "city"),
    [
        ("Weather for Tokyo?", "Tokyo"),
        ("what is the weather like in New York City this weekend", "New York City"),
        ("how is the weather in lisbon today", "lisbon"),
        ("weather city=Oslo", "Oslo"),
    ],
)
def test_city_is_taken_from_the_prompt(
    client: Any, session_id: str, prompt: str, city: str
) -> None:
    control = demo(client, session_id, prompt)[-1]["returnControl"]
    parameters = control["invocationInputs"][0]["functionInvocationInput"]["parameters"]
    assert parameters == [{"name": "city", "type": "string", "value": city}]


def test_weather_without_a_city_asks_the_user(client: Any, session_id: str) -> None:
    events = demo(client, session_id, "what will the weather be like?")

    expected = "To use weather.get_forecast I need the city. Please tell me the city."
    assert answer(events) == expected
    [final] = steps(events, ORCHESTRATION, "observation")
    assert final["type"] == "ASK_USER"
    assert final["finalResponse"]["text"] == expected


def test_knowledge_base_prompt_answers_with_the_best_passage_and_cites_it(
    client: Any, session_id: str
) -> None:
    events = demo(client, session_id, "What should I pack for a city trip?")

    assert answer(events) == KB_PACKING
    [lookup] = steps(events, ORCHESTRATION, "invocationInput")
    assert lookup["knowledgeBaseLookupInput"] == {
        "knowledgeBaseId": "TRAVELKB01",
        "text": "What should I pack for a city trip?",
    }
    observation = steps(events, ORCHESTRATION, "observation")[0]
    assert observation["type"] == "KNOWLEDGE_BASE"
    references = observation["knowledgeBaseLookupOutput"]["retrievedReferences"]
    scores = [reference["metadata"]["score"] for reference in references]
    assert 1 <= len(references) <= 3
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)
    best = references[0]
    uri = "s3://nexus-demo-travel-kb/guides/packing.txt"
    assert best["location"] == {"type": "S3", "s3Location": {"uri": uri}}
    assert best["metadata"]["x-amz-bedrock-kb-source-uri"] == uri
    assert best["content"]["text"] == KB_PACKING

    [chunk] = [event["chunk"] for event in events if "chunk" in event]
    [citation] = chunk["attribution"]["citations"]
    part = citation["generatedResponsePart"]["textResponsePart"]
    assert part["span"] == {"start": 0, "end": len(KB_PACKING) - 1}
    assert citation["retrievedReferences"] == [best]

    generation = [
        call
        for call in steps(events, ORCHESTRATION, "modelInvocationInput")
        if call["type"] == "KNOWLEDGE_BASE_RESPONSE_GENERATION"
    ]
    assert [call["traceId"].split("-", 5)[-1] for call in generation] == ["KB-null-0"]


def test_a_question_the_knowledge_base_cannot_answer(client: Any, session_id: str) -> None:
    events = demo(client, session_id, "xyzzy plugh")

    assert answer(events) == "I could not find an answer to that in the knowledge base."
    observation = steps(events, ORCHESTRATION, "observation")[0]
    assert observation["knowledgeBaseLookupOutput"]["retrievedReferences"] == []


def _completion(raw: dict[str, Any]) -> str:
    text = "".join(block["text"] for block in raw["content"] if block["type"] == "text")
    for block in raw["content"]:
        if block["type"] == "tool_use":
            text += json.dumps(block["input"], separators=(",", ":"), sort_keys=True)
    return text


def test_trace_parts_and_model_calls_have_the_aws_shapes(
    make_client: Any, emulator_url: str, session_id: str
) -> None:
    client = make_client(emulator_url, region="eu-west-2")
    response = client.invoke_agent(
        agentId="DEMO000001",
        agentAliasId="TSTALIASID",
        sessionId=session_id,
        inputText="Which museum in Paris has the Mona Lisa?",
        enableTrace=True,
    )
    assert response["sessionId"] == session_id
    assert response["contentType"] == "application/json"
    events = drain(response)

    arn = "arn:aws:bedrock:eu-west-2:123456789012:agent-alias/DEMO000001/TSTALIASID"
    for part in traces(events):
        assert part["agentId"] == "DEMO000001"
        assert part["agentAliasId"] == "TSTALIASID"
        assert part["agentVersion"] == "DRAFT"
        assert part["sessionId"] == session_id
        assert part["callerChain"] == [{"agentAliasArn": arn}]
        assert isinstance(part["eventTime"], datetime)
        assert "collaboratorName" not in part

    inputs = {
        call["traceId"]: call for call in steps(events, ORCHESTRATION, "modelInvocationInput")
    }
    outputs = steps(events, ORCHESTRATION, "modelInvocationOutput")
    assert len(outputs) == len(inputs) == 3
    for output in outputs:
        prompt = inputs[output["traceId"]]
        assert prompt["foundationModel"] == "anthropic.claude-3-5-haiku-20241022-v1:0"
        raw = json.loads(output["rawResponse"]["content"])
        assert raw["model"] == "claude-3-5-haiku-20241022"
        assert raw["stop_reason"] in ("tool_use", "end_turn")
        usage = output["metadata"]["usage"]
        assert usage["inputTokens"] == math.ceil(len(prompt["text"]) / 4)
        assert usage["outputTokens"] == math.ceil(len(_completion(raw)) / 4)
        assert raw["usage"] == {
            "input_tokens": usage["inputTokens"],
            "output_tokens": usage["outputTokens"],
        }
        metadata = output["metadata"]
        assert metadata["startTime"] <= metadata["endTime"]
        assert metadata["totalTimeMs"] >= 0
    stop_reasons = [json.loads(o["rawResponse"]["content"])["stop_reason"] for o in outputs]
    assert stop_reasons == ["tool_use", "end_turn", "end_turn"]
    rationales = steps(events, ORCHESTRATION, "rationale")
    assert [r["traceId"] for r in rationales] == [
        o["traceId"] for o in outputs if not o["traceId"].split("-")[-2] == "null"
    ]


def test_without_enable_trace_only_chunks_and_return_control_arrive(
    client: Any, session_id: str
) -> None:
    events = demo(client, session_id, "What should I pack?", enableTrace=False)
    assert [list(event) for event in events] == [["chunk"]]

    events = demo(client, session_id, "Weather in Rome?", enableTrace=False)
    assert [list(event) for event in events] == [["returnControl"]]


def test_stream_final_response_splits_the_answer_into_chunks(client: Any, session_id: str) -> None:
    events = demo(
        client,
        session_id,
        "What should I pack for a city trip?",
        streamingConfigurations={"streamFinalResponse": True},
    )
    chunks = [event["chunk"] for event in events if "chunk" in event]
    assert len(chunks) > 3
    assert answer(events) == KB_PACKING
    assert all("attribution" not in chunk for chunk in chunks[:-1])
    assert chunks[-1]["attribution"]["citations"]


@pytest.mark.parametrize(
    ("agent_id", "alias_id"), [("NOSUCHAGNT", "TSTALIASID"), ("DEMO000001", "NOALIAS")]
)
def test_unknown_agent_or_alias_is_resource_not_found(
    client: Any, agent_id: str, alias_id: str
) -> None:
    with pytest.raises(ClientError) as caught:
        client.invoke_agent(
            agentId=agent_id, agentAliasId=alias_id, sessionId="s-unknown", inputText="hi"
        )
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
