"""Pure pieces of an orchestration turn: the model's tool choice, action-group trace
bodies, answer parts and citations."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from nexus_bedrock_tasks.local.bedrock import prompts, traces
from nexus_bedrock_tasks.local.bedrock.config import ApiOperationSpec
from nexus_bedrock_tasks.local.bedrock.planner import (
    Action,
    Delegation,
    FunctionCall,
    KnowledgeLookup,
    render,
)
from nexus_bedrock_tasks.local.bedrock.sessions import AnswerPart, PlanState
from nexus_bedrock_tasks.local.bedrock.traces import JsonDict, ModelReply, ToolUse

# The parts of the final answer are joined with this separator.
PART_SEPARATOR = "\n\n"
WORDS_PER_STREAMED_CHUNK = 6


def tool_reply(action: FunctionCall | KnowledgeLookup | Delegation) -> tuple[str, ModelReply]:
    """The rationale and model reply (with its ``tool_use``) that choose `action`."""
    if isinstance(action, FunctionCall):
        return calls_reply([action])
    if isinstance(action, KnowledgeLookup):
        why = f"I will search knowledge base {action.kb_id} for: {action.query}"
        tool_use = ToolUse(
            prompts.KB_TOOL.format(kb_id=action.kb_id), {"searchQuery": action.query}
        )
        return why, ModelReply(f"<thinking>{why}</thinking>", (tool_use,))
    why = f"I will ask {action.collaborator.name} to handle this request."
    tool_input = {"recipient": action.collaborator.name, "content": action.text}
    tool_use = ToolUse(prompts.COLLABORATOR_TOOL, tool_input)
    return why, ModelReply(f"<thinking>{why}</thinking>", (tool_use,))


def calls_reply(calls: Sequence[FunctionCall]) -> tuple[str, ModelReply]:
    """The rationale and model reply that make `calls` in one turn (one ``tool_use`` each)."""
    described = [
        f"{call.name}({', '.join(f'{name}={value}' for name, value in call.parameters.items())})"
        for call in calls
    ]
    why = f"I will call {' and '.join(described)}."
    tool_uses = tuple(
        ToolUse(prompts.tool_name(call.group.name, call.function), dict(call.parameters))
        for call in calls
    )
    return why, ModelReply(f"<thinking>{why}</thinking>", tool_uses)


def returned_batch(actions: Sequence[Action], start: int) -> list[FunctionCall]:
    """The calls that return control together: the run of them from `start` on."""
    batch: list[FunctionCall] = []
    for action in actions[start:]:
        if not (isinstance(action, FunctionCall) and action.returns_control):
            break
        batch.append(action)
    return batch


def action_input(trace_id: str, call: FunctionCall, invocation_id: str | None) -> JsonDict:
    """The ``actionGroupInvocationInput`` of a call (with the returnControl id, if any)."""
    tool = call.function
    value: JsonDict = {
        "actionGroupName": call.group.name,
        "executionType": call.group.executor,
        "parameters": call.typed_parameters(tool.parameters),
    }
    if isinstance(tool, ApiOperationSpec):
        value |= {"apiPath": tool.path, "verb": tool.method}
        if tool.request_body:
            properties = call.typed_parameters(tool.request_body)
            value["requestBody"] = {"content": {"application/json": properties}}
    else:
        value["function"] = tool.name
    if invocation_id is not None:
        value["invocationId"] = invocation_id
    return traces.invocation_input(trace_id, "ACTION_GROUP", "actionGroupInvocationInput", value)


def action_output(
    trace_id: str, text: str, span: tuple[datetime, datetime] | None = None
) -> JsonDict:
    """The ``actionGroupInvocationOutput`` observation (timed when the agent ran it)."""
    value: JsonDict = {"text": text}
    if span is not None:
        value["metadata"] = {"clientRequestId": str(uuid.uuid4()), **traces.timing(*span)}
    return traces.observation(trace_id, "ACTION_GROUP", "actionGroupInvocationOutput", value)


def render_answer(call: FunctionCall, result: str) -> str:
    """The tool's ``answer`` template filled with its parameters and `result`."""
    values: dict[str, object] = {**call.parameters, "function": call.function.label}
    return render(call.function.answer, values | {"result": result})


def outcome_answer(call: FunctionCall, body: str, response_state: str | None) -> str:
    """The answer part of a caller's result: the ``answer`` template, or what went wrong."""
    if response_state == "FAILURE":
        return f"{call.name} failed: {body}"
    if response_state == "REPROMPT":
        return f"{call.name} rejected the request: {body}"
    return render_answer(call, body)


def record(state: PlanState, call: FunctionCall, result: str, answer: str) -> None:
    """Keep a tool's answer part and its call/result for the next prompts."""
    state.parts.append(AnswerPart(answer))
    name = prompts.tool_name(call.group.name, call.function)
    state.scratchpad += exchange(name, dict(call.parameters), result)


def exchange(tool: str, tool_input: JsonDict, result: str) -> list[JsonDict]:
    """A tool call and its result as prompt messages."""
    return [
        {"role": "assistant", "content": f"<function_call>{tool}({tool_input})</function_call>"},
        {"role": "user", "content": f"<function_result>{result}</function_result>"},
    ]


def citations(parts: list[AnswerPart]) -> list[JsonDict]:
    """Citations of the parts that have references; spans index the joined answer."""
    citations: list[JsonDict] = []
    offset = 0
    for part in parts:
        if part.references:
            citations.append(traces.citation(part.text, offset, list(part.references)))
        offset += len(part.text) + len(PART_SEPARATOR)
    return citations


def chunk_texts(answer: str, streamed: bool) -> list[str]:
    """The texts of the answer's ``chunk`` events: one, or a few words each when streamed."""
    if not streamed:
        return [answer]
    words = answer.split(" ")
    step = WORDS_PER_STREAMED_CHUNK
    pieces = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    return [piece + " " for piece in pieces[:-1]] + pieces[-1:]
