"""Helpers for the emulator tests: drain streams, pick trace steps, answer returnControl."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REPO = HERE.parent.parent
DEPLOYED_AGENTS = REPO / "deployments" / "agents.yaml"
TEST_AGENTS = HERE / "agents.yaml"
RECORDINGS = REPO / "tests" / "recordings"


def drain(response: dict[str, Any]) -> list[dict[str, Any]]:
    """All events of a response; the stream is closed even when iterating fails."""
    with contextlib.closing(response["completion"]) as stream:
        return list(stream)


def traces(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``trace`` payloads (TracePart dicts)."""
    return [event["trace"] for event in events if "trace" in event]


def answer(events: list[dict[str, Any]]) -> str:
    """The chunks joined into the answer text."""
    return "".join(event["chunk"]["bytes"].decode() for event in events if "chunk" in event)


def steps(events: list[dict[str, Any]], phase: str, key: str) -> list[dict[str, Any]]:
    """Every ``trace.trace[phase][key]`` in order."""
    found = []
    for part in traces(events):
        body = part["trace"].get(phase, {})
        if key in body:
            found.append(body[key])
    return found


def demo(client: Any, session_id: str, text: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Invoke the demo agent (traces on unless `kwargs` say otherwise) and drain the stream."""
    response = client.invoke_agent(
        **{
            "agentId": "DEMO000001",
            "agentAliasId": "TSTALIASID",
            "sessionId": session_id,
            "inputText": text,
            "enableTrace": True,
            **kwargs,
        }
    )
    return drain(response)


def function_result(control: dict[str, Any], body: str | None, **extra: Any) -> dict[str, Any]:
    """A ``sessionState`` answering the single function input of a returnControl event."""
    request = control["invocationInputs"][0]["functionInvocationInput"]
    result: dict[str, Any] = {
        "actionGroup": request["actionGroup"],
        "function": request["function"],
        **extra,
    }
    if body is not None:
        result["responseBody"] = {"TEXT": {"body": body}}
    return {
        "invocationId": control["invocationId"],
        "returnControlInvocationResults": [{"functionResult": result}],
    }


def trip(client: Any, session_id: str, text: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Invoke the trip-assistant agent (TRIP000001, traces on) and drain the stream."""
    response = client.invoke_agent(
        agentId="TRIP000001",
        agentAliasId="TSTALIASID",
        sessionId=session_id,
        inputText=text,
        enableTrace=True,
        **kwargs,
    )
    return drain(response)


def tool_name(invocation_input: dict[str, Any]) -> str:
    """``group.function`` or ``group.METHOD /path`` of one ``invocationInputs`` entry."""
    if "apiInvocationInput" in invocation_input:
        api = invocation_input["apiInvocationInput"]
        return f"{api['actionGroup']}.{api['httpMethod']} {api['apiPath']}"
    function = invocation_input["functionInvocationInput"]
    return f"{function['actionGroup']}.{function['function']}"


def results_for(
    control: dict[str, Any], bodies: dict[str, str], states: dict[str, str] | None = None
) -> dict[str, Any]:
    """A ``sessionState`` answering every input of a returnControl event.

    `bodies` and `states` (``responseState``) are keyed by `tool_name`; API inputs get an
    ``apiResult`` with status 200, function inputs a ``functionResult``.
    """
    answered = []
    for entry in control["invocationInputs"]:
        name = tool_name(entry)
        extra = {"responseState": states[name]} if states and name in states else {}
        if "apiInvocationInput" in entry:
            api = entry["apiInvocationInput"]
            result = {
                "actionGroup": api["actionGroup"],
                "apiPath": api["apiPath"],
                "httpMethod": api["httpMethod"],
                "httpStatusCode": 200,
                "responseBody": {"application/json": {"body": bodies[name]}},
                **extra,
            }
            answered.append({"apiResult": result})
        else:
            function = entry["functionInvocationInput"]
            result = {
                "actionGroup": function["actionGroup"],
                "function": function["function"],
                "responseBody": {"TEXT": {"body": bodies[name]}},
                **extra,
            }
            answered.append({"functionResult": result})
    return {
        "invocationId": control["invocationId"],
        "returnControlInvocationResults": answered,
    }
