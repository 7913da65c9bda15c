"""Pure builders of the stream's payloads, in the shapes of ../shared/BEDROCK_AGENT_STREAM.md.

Token counts: ``count_tokens(text) = ceil(len(text) / 4)`` (characters, not bytes).
``usage.inputTokens`` is ``count_tokens(modelInvocationInput.text)`` and
``usage.outputTokens`` is ``count_tokens`` of the model's completion: the text of the
``text`` block of ``rawResponse.content``, followed by the input of each tool the model
calls, as compact JSON with sorted keys (see `ModelReply.completion`).
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

JsonDict = dict[str, Any]

INFERENCE_TYPE = "com.amazon.bedrock.agent.common.types#InferenceConfiguration"
ORCHESTRATION_STOP = ("</invoke>", "</answer>", "</error>")
PROCESSING_STOP = ("\n\nHuman:",)


def count_tokens(text: str) -> int:
    """The emulator's token count of `text`: ceil(characters / 4)."""
    return math.ceil(len(text) / 4)


def utc_now() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    """AWS trace timestamp style: nanosecond digits and a ``Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def timing(started: datetime, ended: datetime) -> JsonDict:
    """``startTime``/``endTime``/``totalTimeMs`` of a metadata block."""
    return {
        "startTime": iso(started),
        "endTime": iso(ended),
        "totalTimeMs": round((ended - started).total_seconds() * 1000),
    }


def model_name(model_id: str) -> str:
    """``anthropic.claude-3-5-haiku-20241022-v1:0`` → ``claude-3-5-haiku-20241022``."""
    name = model_id.split(".", 1)[-1]
    return name.rsplit("-v", 1)[0] if "-v" in name else name


@dataclass(frozen=True)
class ToolUse:
    """One tool the model calls, with its input."""

    name: str
    input: JsonDict


@dataclass(frozen=True)
class ModelReply:
    """What the model "said": text, and the tools it calls (several: parallel calls)."""

    text: str
    tool_uses: tuple[ToolUse, ...] = ()

    @property
    def completion(self) -> str:
        """The text the output tokens are counted on."""
        inputs = (
            json.dumps(use.input, separators=(",", ":"), sort_keys=True) for use in self.tool_uses
        )
        return self.text + "".join(inputs)

    def raw_response(self, model_id: str, input_tokens: int, output_tokens: int) -> str:
        """``rawResponse.content``: an Anthropic Messages API response as a JSON string."""
        content: list[JsonDict] = [{"type": "text", "text": self.text}]
        content += [
            {
                "type": "tool_use",
                "id": "toolu_bdrk_" + uuid.uuid4().hex[:24],
                "name": use.name,
                "input": use.input,
            }
            for use in self.tool_uses
        ]
        message = {
            "id": "msg_bdrk_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model_name(model_id),
            "content": content,
            "stop_reason": "tool_use" if self.tool_uses else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
        return json.dumps(message, separators=(",", ":"))


def model_input(trace_id: str, prompt_type: str, prompt: str, model_id: str) -> JsonDict:
    """A ``modelInvocationInput``."""
    processing = prompt_type in ("PRE_PROCESSING", "POST_PROCESSING")
    return {
        "modelInvocationInput": {
            "foundationModel": model_id,
            "inferenceConfiguration": {
                "__type": INFERENCE_TYPE,
                "maximumLength": 2048,
                "stopSequences": list(PROCESSING_STOP if processing else ORCHESTRATION_STOP),
                "temperature": 0.0,
                "topK": 250,
                "topP": 1.0,
            },
            "text": prompt,
            "traceId": trace_id,
            "type": prompt_type,
        }
    }


def model_output(
    trace_id: str,
    prompt: str,
    reply: ModelReply,
    model_id: str,
    span: tuple[datetime, datetime],
    parsed_response: JsonDict | None = None,
) -> JsonDict:
    """A ``modelInvocationOutput`` with usage, timings and the raw response."""
    usage = {
        "inputTokens": count_tokens(prompt),
        "outputTokens": count_tokens(reply.completion),
    }
    output: JsonDict = {
        "metadata": {
            "clientRequestId": str(uuid.uuid4()),
            **timing(*span),
            "usage": usage,
        },
        "rawResponse": {
            "content": reply.raw_response(model_id, usage["inputTokens"], usage["outputTokens"])
        },
        "traceId": trace_id,
    }
    if parsed_response is not None:
        output["parsedResponse"] = parsed_response
    return {"modelInvocationOutput": output}


def rationale(trace_id: str, text: str) -> JsonDict:
    """A ``rationale``."""
    return {"rationale": {"text": text, "traceId": trace_id}}


def invocation_input(trace_id: str, invocation_type: str, key: str, value: JsonDict) -> JsonDict:
    """An ``invocationInput`` (action group, knowledge base or collaborator)."""
    return {"invocationInput": {"invocationType": invocation_type, key: value, "traceId": trace_id}}


def observation(trace_id: str, observation_type: str, key: str, value: JsonDict) -> JsonDict:
    """An ``observation`` of a tool, knowledge base or collaborator."""
    return {"observation": {key: value, "traceId": trace_id, "type": observation_type}}


def final_response(
    trace_id: str, text: str, span: tuple[datetime, datetime], observation_type: str = "FINISH"
) -> JsonDict:
    """The ``observation.finalResponse`` that ends orchestration (FINISH or ASK_USER)."""
    started, ended = span
    metadata = {
        "startTime": iso(started),
        "endTime": iso(ended),
        "operationTotalTimeMs": round((ended - started).total_seconds() * 1000),
    }
    return {
        "observation": {
            "finalResponse": {"metadata": metadata, "text": text},
            "traceId": trace_id,
            "type": observation_type,
        }
    }


def failure(trace_id: str, reason: str, span: tuple[datetime, datetime]) -> JsonDict:
    """A ``failureTrace`` body."""
    return {
        "failureCode": 424,
        "failureReason": reason,
        "metadata": {"clientRequestId": str(uuid.uuid4()), **timing(*span)},
        "traceId": trace_id,
    }


def chunk(text: str, citations: list[JsonDict]) -> JsonDict:
    """A ``chunk`` payload; the blob ``bytes`` is base64 in the JSON, as on the wire."""
    payload: JsonDict = {"bytes": base64.b64encode(text.encode()).decode("ascii")}
    if citations:
        payload["attribution"] = {"citations": citations}
    return payload


def citation(text: str, start: int, references: list[JsonDict]) -> JsonDict:
    """One citation; like AWS, ``span.end`` is inclusive."""
    span = {"end": start + len(text) - 1, "start": start}
    return {
        "generatedResponsePart": {"textResponsePart": {"span": span, "text": text}},
        "retrievedReferences": references,
    }


@dataclass(frozen=True)
class Envelope:
    """Who emits a trace event: the TracePart fields around ``trace``."""

    session_id: str
    caller_chain: tuple[str, ...]
    agent_id: str
    alias_id: str
    version: str
    collaborator_name: str | None = None
    inline: bool = False

    def wrap(self, trace: JsonDict) -> JsonDict:
        """A ``trace`` event payload (TracePart or InlineAgentTracePart)."""
        part: JsonDict = {
            "callerChain": [{"agentAliasArn": arn} for arn in self.caller_chain],
            "eventTime": iso(utc_now()),
            "sessionId": self.session_id,
            "trace": trace,
        }
        if not self.inline:
            part |= {
                "agentAliasId": self.alias_id,
                "agentId": self.agent_id,
                "agentVersion": self.version,
            }
        if self.collaborator_name is not None:
            part["collaboratorName"] = self.collaborator_name
        return part
