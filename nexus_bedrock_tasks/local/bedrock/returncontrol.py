"""returnControl: the event that hands tool calls to the caller, and the checks on the
``returnControlInvocationResults`` that resume it.

One event holds every call the agent returns at that point (parallel calls), one
``invocationInputs`` entry each: ``functionInvocationInput`` for a function,
``apiInvocationInput`` (``apiPath``, ``httpMethod``, ``parameters`` and
``requestBody.content["application/json"].properties``) for an API operation. The
resume request answers all of them under the event's ``invocationId``, in any order:
a ``functionResult`` (``responseBody.TEXT.body``) or an ``apiResult``
(``responseBody["application/json"].body``) per call.

A call of a RETURN_CONTROL action group has ``actionInvocationType`` ``RESULT`` (the
caller runs it and returns the body). A tool with ``require_confirmation`` asks for
``confirmationState`` first: ``USER_CONFIRMATION`` when the agent then runs it itself
(LAMBDA), ``USER_CONFIRMATION_AND_RESULT`` when the caller also returns the result.

A result with ``responseState`` ``FAILURE`` or ``REPROMPT`` is not quoted as a success:
the answer says ``<group>.<tool> failed: <body>`` or ``<group>.<tool> rejected the
request: <body>`` (see `steps.outcome_answer`), and its ``then:`` chain stops.

A missing, extra, duplicate or mismatched result, a missing body or confirmation, or an
unknown ``responseState`` is a ``ValidationException``, sent before the stream as AWS
does; the returnControl then stays pending.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nexus_bedrock_tasks.local.bedrock.config import ApiOperationSpec
from nexus_bedrock_tasks.local.bedrock.errors import validation_error
from nexus_bedrock_tasks.local.bedrock.planner import FunctionCall
from nexus_bedrock_tasks.local.bedrock.sessions import PendingReturnControl, ReturnedCall
from nexus_bedrock_tasks.local.bedrock.traces import JsonDict

RESULT = "RESULT"
USER_CONFIRMATION = "USER_CONFIRMATION"
USER_CONFIRMATION_AND_RESULT = "USER_CONFIRMATION_AND_RESULT"
RESPONSE_STATES = ("FAILURE", "REPROMPT")
JSON_CONTENT = "application/json"
FUNCTION_RESULT = "functionResult"
API_RESULT = "apiResult"
_ARTICLED = {FUNCTION_RESULT: "a functionResult", API_RESULT: "an apiResult"}


def invocation_type(call: FunctionCall) -> str:
    """The ``actionInvocationType`` of a call that returns control."""
    if call.function.require_confirmation:
        return (
            USER_CONFIRMATION if call.group.executor == "LAMBDA" else USER_CONFIRMATION_AND_RESULT
        )
    return RESULT


def return_control_event(pending: PendingReturnControl, agent_id: str | None) -> JsonDict:
    """The ``returnControl`` event payload for `pending`."""
    return {
        "invocationId": pending.invocation_id,
        "invocationInputs": [_invocation_input(returned, agent_id) for returned in pending.calls],
    }


def _invocation_input(returned: ReturnedCall, agent_id: str | None) -> JsonDict:
    call, tool = returned.call, returned.call.function
    value: JsonDict = {
        "actionGroup": call.group.name,
        "actionInvocationType": returned.invocation_type,
        "parameters": call.typed_parameters(tool.parameters),
    }
    if agent_id is not None:
        value["agentId"] = agent_id
    if not isinstance(tool, ApiOperationSpec):
        return {"functionInvocationInput": {**value, "function": tool.name}}
    value |= {"apiPath": tool.path, "httpMethod": tool.method}
    if tool.request_body:
        properties = call.typed_parameters(tool.request_body)
        value["requestBody"] = {"content": {JSON_CONTENT: {"properties": properties}}}
    return {"apiInvocationInput": value}


@dataclass(frozen=True)
class ToolOutcome:
    """What the caller answered for one call of a returnControl."""

    confirmed: bool
    body: str | None
    response_state: str | None = None


def validate_resume(
    pending: PendingReturnControl | None,
    invocation_id: str | None,
    results: list[Mapping[str, Any]],
) -> tuple[ToolOutcome, ...]:
    """Check a resume request against the pending returnControl.

    Returns:
        One outcome per call of `pending`, in the order of its calls.

    Raises:
        AwsError: ``ValidationException`` for no pending returnControl, a missing or wrong
            ``invocationId``, a missing, extra, duplicate or mismatched result, or a
            missing body or confirmation.
    """
    if pending is None:
        raise validation_error(
            "returnControlInvocationResults were sent, but the session has no pending "
            "returnControl."
        )
    if not invocation_id:
        raise validation_error(
            "sessionState.invocationId is required with returnControlInvocationResults."
        )
    if invocation_id != pending.invocation_id:
        raise validation_error(
            f"The invocationId {invocation_id} doesn't match the pending returnControl "
            f"invocationId {pending.invocation_id}."
        )
    if len(results) != len(pending.calls):
        raise validation_error(
            f"Expected {len(pending.calls)} returnControlInvocationResults for invocationId "
            f"{invocation_id}, got {len(results)}."
        )
    expected = {_call_key(returned.call): returned for returned in pending.calls}
    received: dict[tuple[str, str], Mapping[str, Any]] = {}
    for entry in results:
        kind, result = _kind_and_result(entry)
        key = (kind, _result_name(kind, result))
        if key not in expected:
            raise _mismatch(key, list(expected))
        if key in received:
            raise validation_error(f"Two results for {key[1]}.")
        received[key] = result
    return tuple(_outcome(returned, key[0], received[key]) for key, returned in expected.items())


def _call_key(call: FunctionCall) -> tuple[str, str]:
    kind = API_RESULT if isinstance(call.function, ApiOperationSpec) else FUNCTION_RESULT
    return kind, call.name


def _kind_and_result(entry: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    found = [(k, entry.get(k)) for k in (FUNCTION_RESULT, API_RESULT) if entry.get(k) is not None]
    if len(found) != 1 or not isinstance(found[0][1], Mapping):
        raise validation_error(
            "Each returnControlInvocationResult holds one functionResult or apiResult."
        )
    return found[0][0], found[0][1]


def _result_name(kind: str, result: Mapping[str, Any]) -> str:
    group = result.get("actionGroup")
    if kind == FUNCTION_RESULT:
        return f"{group}.{result.get('function')}"
    return f"{group}.{str(result.get('httpMethod', '')).upper()} {result.get('apiPath')}"


def _mismatch(key: tuple[str, str], expected: list[tuple[str, str]]) -> Exception:
    kind, name = key
    wanted = [expected_name for expected_kind, expected_name in expected if expected_kind == kind]
    if not wanted:
        names = ", ".join(expected_name for _, expected_name in expected)
        return validation_error(
            f"Expected {_ARTICLED[expected[0][0]]} for {names}, got {_ARTICLED[kind]}."
        )
    return validation_error(
        f"The {kind} is for {name}, but returnControl asked for {', '.join(wanted)}."
    )


def _outcome(returned: ReturnedCall, kind: str, result: Mapping[str, Any]) -> ToolOutcome:
    name = returned.call.name
    confirmation = result.get("confirmationState")
    if returned.invocation_type != RESULT and confirmation not in ("CONFIRM", "DENY"):
        raise validation_error(
            f"confirmationState CONFIRM or DENY is required for {returned.invocation_type} "
            f"({name})."
        )
    confirmed = confirmation != "DENY"
    content = "TEXT" if kind == FUNCTION_RESULT else JSON_CONTENT
    body = ((result.get("responseBody") or {}).get(content) or {}).get("body")
    if confirmed and returned.invocation_type != USER_CONFIRMATION and not isinstance(body, str):
        raise validation_error(f"{kind}.responseBody.{content}.body is required ({name}).")
    state = result.get("responseState")
    if state is not None and state not in RESPONSE_STATES:
        raise validation_error(f"responseState must be FAILURE or REPROMPT, not {state!r}.")
    return ToolOutcome(confirmed, body if isinstance(body, str) else None, state)
