"""Pure pieces of one invocation: input checks, InvokeAgent requests, returnControl answers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel

from nexus_bedrock_tasks.bedrock.model import ReturnControlCall, ReturnControlRequest
from nexus_bedrock_tasks.exceptions import ConfigError

MAX_PROMPT_CHARS = 25_000
_ID = re.compile(r"^[0-9a-zA-Z]{1,10}$")
_SESSION = re.compile(r"^[0-9a-zA-Z._:-]{2,100}$")


def session_id_for(seed: UUID | str) -> str:
    """The session id a run uses when none was given (derived, so hooks agree on it)."""
    try:
        return f"nbt-{UUID(str(seed)).hex}"
    except ValueError:
        return f"nbt-{uuid4().hex}"


def validate_invocation(
    *, agent_id: str, agent_alias_id: str, prompt: str, session_id: str | None
) -> None:
    """Check inputs before anything is sent to AWS.

    Raises:
        ConfigError: naming the field and how to fix it.
    """
    if not _ID.match(agent_id or ""):
        raise ConfigError(
            f"agent_id {agent_id!r} is malformed: use the 10-character agent id from the "
            "Bedrock console (letters and digits, e.g. DEMO000001)"
        )
    if not _ID.match(agent_alias_id or ""):
        raise ConfigError(
            f"agent_alias_id {agent_alias_id!r} is malformed: use the alias id (letters and "
            "digits, at most 10, e.g. TSTALIASID for the draft alias)"
        )
    if not prompt or not prompt.strip():
        raise ConfigError("prompt is empty: give the text to send to the agent")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"prompt is {len(prompt):,} characters: Bedrock accepts at most "
            f"{MAX_PROMPT_CHARS:,}; shorten it or split it over several turns"
        )
    if session_id is not None and not _SESSION.match(session_id):
        raise ConfigError(
            f"session_id {session_id!r} is malformed: use 2-100 characters of letters, digits "
            "and . _ : -"
        )


def invoke_request(
    *,
    agent_id: str,
    agent_alias_id: str,
    session_id: str,
    input_text: str | None,
    enable_trace: bool = True,
    session_state: Mapping[str, Any] | None = None,
    memory_id: str | None = None,
    end_session: bool = False,
) -> dict[str, Any]:
    """Keyword arguments of `client.invoke_agent`."""
    request: dict[str, Any] = {
        "agentId": agent_id,
        "agentAliasId": agent_alias_id,
        "sessionId": session_id,
        "enableTrace": enable_trace,
    }
    if input_text is not None:
        request["inputText"] = input_text
    if session_state:
        request["sessionState"] = dict(session_state)
    if memory_id:
        request["memoryId"] = memory_id
    if end_session:
        request["endSession"] = True
    return request


class ToolOutcome(BaseModel):
    """The answer to one returnControl call, as stored in the tool ledger."""

    index: int
    key: str
    action_group: str
    function: str | None = None
    api_path: str | None = None
    http_method: str | None = None
    parameters: dict[str, Any] = {}
    body: str
    response_state: str | None = None
    confirmation_state: str | None = None
    error: str | None = None
    reused: bool = False
    executed: bool = False

    @property
    def tool_name(self) -> str:
        """`<actionGroup>.<function or apiPath>`."""
        return f"{self.action_group}.{self.function or self.api_path}"


def outcome_base(call: ReturnControlCall, index: int, key: str) -> dict[str, Any]:
    """The identifying fields of a call's `ToolOutcome`."""
    return {
        "index": index,
        "key": key,
        "action_group": call.action_group,
        "function": call.function,
        "api_path": call.api_path,
        "http_method": call.http_method,
        "parameters": {p.name: p.value for p in call.parameters},
    }


def invocation_result(outcome: ToolOutcome) -> dict[str, Any]:
    """One `returnControlInvocationResults[]` entry."""
    extra: dict[str, Any] = {}
    if outcome.response_state:
        extra["responseState"] = outcome.response_state
    if outcome.confirmation_state:
        extra["confirmationState"] = outcome.confirmation_state
    if outcome.function is not None:
        return {
            "functionResult": {
                "actionGroup": outcome.action_group,
                "function": outcome.function,
                "responseBody": {"TEXT": {"body": outcome.body}},
                **extra,
            }
        }
    status = 200 if outcome.response_state is None else 400
    if outcome.response_state == "FAILURE":
        status = 500
    return {
        "apiResult": {
            "actionGroup": outcome.action_group,
            "apiPath": outcome.api_path,
            "httpMethod": outcome.http_method,
            "httpStatusCode": status,
            "responseBody": {"application/json": {"body": outcome.body}},
            **extra,
        }
    }


def resume_session_state(
    invocation_id: str,
    outcomes: Sequence[ToolOutcome],
    session_attributes: Mapping[str, str] | None = None,
    prompt_session_attributes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`sessionState` of the request that answers a returnControl event."""
    state: dict[str, Any] = {
        "invocationId": invocation_id,
        "returnControlInvocationResults": [
            invocation_result(o) for o in sorted(outcomes, key=lambda o: o.index)
        ],
    }
    if session_attributes:
        state["sessionAttributes"] = dict(session_attributes)
    if prompt_session_attributes:
        state["promptSessionAttributes"] = dict(prompt_session_attributes)
    return state


def return_control_event(request: ReturnControlRequest) -> dict[str, Any]:
    """The `returnControl` event payload of a request (stored until it is answered)."""
    inputs: list[dict[str, Any]] = []
    for call in request.calls:
        body: dict[str, Any] = {
            "actionGroup": call.action_group,
            "parameters": [
                {"name": p.name, "type": p.type, "value": p.value} for p in call.parameters
            ],
        }
        if call.invocation_type:
            body["actionInvocationType"] = call.invocation_type
        if call.function is not None:
            inputs.append({"functionInvocationInput": {**body, "function": call.function}})
        else:
            api = {**body, "apiPath": call.api_path, "httpMethod": call.http_method}
            if call.request_body is not None:
                api["requestBody"] = call.request_body
            inputs.append({"apiInvocationInput": api})
    return {"invocationId": request.invocation_id, "invocationInputs": inputs}
