"""Mutable builders the reader fills while events arrive, and pure trace-part extractors.

Each builder is opened by an input event and completed by the matching output event
(same `traceId`); `build()` freezes it into a step of `bedrock.model`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

from nexus_bedrock_tasks.bedrock.model import (
    ActionGroupCall,
    Citation,
    CodeInterpreterCall,
    CollaboratorCall,
    Failure,
    GenericStep,
    GuardrailCheck,
    KnowledgeBaseLookup,
    ModelCall,
    Phase,
    Reference,
    ReturnControlCall,
    ReturnControlParameter,
    ReturnControlRequest,
    Step,
    Timing,
    Usage,
)

_FRACTION = re.compile(r"(\.\d{6})\d+")
KB_SOURCE_URI = "x-amz-bedrock-kb-source-uri"
_LOCATION_URL_KEYS = (
    ("webLocation", "url"),
    ("confluenceLocation", "url"),
    ("salesforceLocation", "url"),
    ("sharePointLocation", "url"),
    ("kendraDocumentLocation", "uri"),
)


def as_datetime(value: Any) -> datetime | None:
    """A timezone-aware datetime from boto3's parsed timestamp or an ISO-8601 string."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    # Python < 3.11 rejects "Z" and more than 6 fractional digits (AWS sends 9).
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def timing(metadata: Any, started: Any = None, ended: Any = None) -> Timing:
    """Step timing from trace `metadata`, falling back to event times."""
    meta = metadata if isinstance(metadata, Mapping) else {}
    duration = meta.get("totalTimeMs", meta.get("operationTotalTimeMs"))
    return Timing(
        started_at=as_datetime(meta.get("startTime")) or as_datetime(started),
        ended_at=as_datetime(meta.get("endTime")) or as_datetime(ended),
        duration_ms=int(duration) if isinstance(duration, int | float) else None,
    )


def alias_label(alias_arn: str) -> str:
    """A readable name for an agent alias ARN (``agent-alias/AGENT/ALIAS`` → ``AGENT/ALIAS``)."""
    return alias_arn.split("agent-alias/", 1)[-1] or alias_arn


def reference(raw: Mapping[str, Any]) -> Reference:
    """One `retrievedReferences[]` entry; the URI rule of BEDROCK_AGENT_STREAM.md."""
    content = raw.get("content") or {}
    location = raw.get("location") or {}
    metadata = dict(raw.get("metadata") or {})
    uri: str | None = None
    if location.get("type") == "S3":
        uri = (location.get("s3Location") or {}).get("uri")
    elif metadata.get(KB_SOURCE_URI) is not None:
        uri = str(metadata[KB_SOURCE_URI])
    else:
        for key, field_name in _LOCATION_URL_KEYS:
            if isinstance(location.get(key), Mapping) and location[key].get(field_name):
                uri = str(location[key][field_name])
                break
    score = metadata.get("score")
    return Reference(
        text=content.get("text"),
        uri=uri,
        score=float(score) if isinstance(score, int | float) else None,
        metadata=metadata,
    )


def citation(raw: Mapping[str, Any]) -> Citation:
    """One `attribution.citations[]` entry of a chunk."""
    part = (raw.get("generatedResponsePart") or {}).get("textResponsePart") or {}
    span = part.get("span") or {}
    return Citation(
        text=part.get("text"),
        span_start=span.get("start"),
        span_end=span.get("end"),
        references=tuple(reference(r) for r in raw.get("retrievedReferences") or ()),
    )


def guardrail_check(body: Mapping[str, Any]) -> GuardrailCheck:
    """A `guardrailTrace`."""
    return GuardrailCheck(
        trace_id=body.get("traceId"),
        action=body.get("action"),
        input_assessments=tuple(body.get("inputAssessments") or ()),
        output_assessments=tuple(body.get("outputAssessments") or ()),
        timing=timing(body.get("metadata")),
    )


def failure(body: Mapping[str, Any]) -> Failure:
    """A `failureTrace`."""
    code = body.get("failureCode")
    return Failure(
        trace_id=body.get("traceId"),
        reason=str(body.get("failureReason") or "unknown failure"),
        code=None if code is None else str(code),
        timing=timing(body.get("metadata")),
    )


def return_control_request(body: Mapping[str, Any]) -> ReturnControlRequest:
    """The `returnControl` event's payload."""
    calls: list[ReturnControlCall] = []
    for entry in body.get("invocationInputs") or ():
        function_input = entry.get("functionInvocationInput")
        api_input = entry.get("apiInvocationInput")
        source = function_input or api_input or {}
        calls.append(
            ReturnControlCall(
                action_group=str(source.get("actionGroup", "")),
                function=source.get("function") if function_input else None,
                api_path=source.get("apiPath") if api_input else None,
                http_method=source.get("httpMethod") if api_input else None,
                parameters=tuple(
                    ReturnControlParameter(
                        name=str(p.get("name", "")), type=p.get("type"), value=p.get("value")
                    )
                    for p in source.get("parameters") or ()
                ),
                request_body=source.get("requestBody"),
                invocation_type=source.get("actionInvocationType"),
            )
        )
    return ReturnControlRequest(invocation_id=str(body.get("invocationId", "")), calls=tuple(calls))


def parse_raw_response(content: Any) -> tuple[str | None, str | None, str | None]:
    """(text, stop_reason, model) of `rawResponse.content`.

    Anthropic-style JSON carries `stop_reason`, `model` and `content[].text`; any other
    content is the model's plain text and has no stop reason.
    """
    if not isinstance(content, str):
        return None, None, None
    if content.startswith("{"):
        try:
            data = json.loads(content)
        except ValueError:
            return content, None, None
        if isinstance(data, dict):
            texts = [
                block["text"]
                for block in data.get("content") or ()
                if isinstance(block, dict) and isinstance(block.get("text"), str)
            ]
            return "".join(texts), data.get("stop_reason"), data.get("model")
    return content, None, None


class ModelCallBuilder:
    """A model call opened by `modelInvocationInput`, completed by its output."""

    def __init__(self, phase: str, value: Mapping[str, Any], event_time: Any) -> None:
        self.phase = phase
        self.trace_id: str | None = value.get("traceId")
        self.model: str | None = value.get("foundationModel")
        self.prompt_type: str | None = value.get("type")
        self.rationale: str | None = None
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.text: str | None = None
        self.timing = Timing(started_at=as_datetime(event_time))

    def complete(self, value: Mapping[str, Any], event_time: Any) -> None:
        """Take `modelInvocationOutput`."""
        metadata = value.get("metadata") or {}
        usage = metadata.get("usage")
        if isinstance(usage, Mapping):
            self.usage = Usage(
                input_tokens=int(usage.get("inputTokens") or 0),
                output_tokens=int(usage.get("outputTokens") or 0),
            )
        text, self.stop_reason, raw_model = parse_raw_response(
            (value.get("rawResponse") or {}).get("content")
        )
        parsed = value.get("parsedResponse") or {}
        self.text = text if text is not None else parsed.get("text") or parsed.get("rationale")
        self.model = self.model or raw_model
        self.timing = timing(metadata, self.timing.started_at, event_time)

    def build(self) -> ModelCall:
        """Freeze."""
        phase: Phase = self.phase  # type: ignore[assignment]
        return ModelCall(
            phase=phase,
            trace_id=self.trace_id,
            model=self.model,
            usage=self.usage,
            stop_reason=self.stop_reason,
            text=self.text,
            prompt_type=self.prompt_type,
            rationale=self.rationale,
            timing=self.timing,
        )


class Builder:
    """An invocation opened by `invocationInput.<kind>`, closed by `observation.<output>`."""

    OUTPUT_KEY: ClassVar[str] = ""

    def __init__(self, trace_id: str | None, payload: Mapping[str, Any], event_time: Any) -> None:
        self.trace_id = trace_id
        self.payload = payload
        self.completed = False
        self.timing = Timing(started_at=as_datetime(event_time))

    def complete(self, payload: Mapping[str, Any], event_time: Any) -> None:
        """Take the observation's output."""
        self.completed = True
        self.output = payload
        self.timing = timing(payload.get("metadata"), self.timing.started_at, event_time)

    def out(self, key: str) -> Any:
        """A field of the output, or None before completion."""
        return self.output.get(key) if self.completed else None

    def build(self) -> Step:
        """Freeze."""
        raise NotImplementedError


class KnowledgeBaseBuilder(Builder):
    OUTPUT_KEY = "knowledgeBaseLookupOutput"

    def build(self) -> Step:
        return KnowledgeBaseLookup(
            trace_id=self.trace_id,
            knowledge_base_id=self.payload.get("knowledgeBaseId"),
            query=self.payload.get("text"),
            references=tuple(reference(r) for r in self.out("retrievedReferences") or ()),
            completed=self.completed,
            timing=self.timing,
        )


class ActionBuilder(Builder):
    OUTPUT_KEY = "actionGroupInvocationOutput"

    def build(self) -> Step:
        return ActionGroupCall(
            trace_id=self.trace_id,
            action_group=self.payload.get("actionGroupName"),
            function=self.payload.get("function"),
            api_path=self.payload.get("apiPath"),
            verb=self.payload.get("verb"),
            parameters=tuple(self.payload.get("parameters") or ()),
            request_body=self.payload.get("requestBody"),
            execution_type=self.payload.get("executionType"),
            result=self.out("text"),
            completed=self.completed,
            input_seen=bool(self.payload),
            timing=self.timing,
        )


class CodeInterpreterBuilder(Builder):
    OUTPUT_KEY = "codeInterpreterInvocationOutput"

    def build(self) -> Step:
        return CodeInterpreterCall(
            trace_id=self.trace_id,
            code=self.payload.get("code"),
            files=tuple(str(f) for f in self.payload.get("files") or ()),
            output=self.out("executionOutput"),
            error=self.out("executionError")
            or ("execution timed out" if self.out("executionTimeout") else None),
            completed=self.completed,
            timing=self.timing,
        )


class CollaboratorBuilder(Builder):
    OUTPUT_KEY = "agentCollaboratorInvocationOutput"

    def __init__(self, trace_id: str | None, payload: Mapping[str, Any], event_time: Any) -> None:
        super().__init__(trace_id, payload, event_time)
        self.name = str(payload.get("agentCollaboratorName") or "collaborator")
        self.alias_arn: str | None = payload.get("agentCollaboratorAliasArn")
        self.container = Container(name=self.name)

    def build(self) -> Step:
        output = self.out("output") or {}
        return CollaboratorCall(
            trace_id=self.trace_id,
            name=self.name,
            alias_arn=self.alias_arn,
            input_text=(self.payload.get("input") or {}).get("text"),
            output_text=output.get("text") if isinstance(output, Mapping) else None,
            steps=self.container.build_steps(),
            completed=self.completed,
            timing=self.timing,
        )


_BUILDER_FOR_OUTPUT: dict[str, type[Builder]] = {
    cls.OUTPUT_KEY: cls
    for cls in (KnowledgeBaseBuilder, ActionBuilder, CodeInterpreterBuilder, CollaboratorBuilder)
}


class Container:
    """The steps of one agent: the invoked agent (root) or one collaborator."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self.chain: tuple[str, ...] = ()
        self.items: list[Builder | ModelCallBuilder | Step] = []
        self.open_models: dict[tuple[str, str | None], ModelCallBuilder] = {}
        self.open_invocations: list[Builder] = []
        self.final_response: str | None = None
        self.last_observation_type: str | None = None
        self.error: tuple[str, str] | None = None

    def add(self, step: Step) -> None:
        """Append a finished step."""
        self.items.append(step)

    def open_model(self, phase: str, value: Mapping[str, Any], event_time: Any) -> None:
        """A `modelInvocationInput` arrived."""
        builder = ModelCallBuilder(phase, value, event_time)
        self.items.append(builder)
        self.open_models[(phase, builder.trace_id)] = builder

    def close_model(self, phase: str, value: Mapping[str, Any], event_time: Any) -> None:
        """A `modelInvocationOutput` arrived: complete its input's call (same traceId)."""
        trace_id = value.get("traceId")
        builder = self.open_models.pop((phase, trace_id), None)
        if builder is None:
            builder = ModelCallBuilder(phase, {"traceId": trace_id}, None)
            self.items.append(builder)
        builder.complete(value, event_time)

    def attach_rationale(self, value: Mapping[str, Any]) -> None:
        """A `rationale`: belongs to the latest model call with its traceId."""
        trace_id = value.get("traceId")
        for item in reversed(self.items):
            if isinstance(item, ModelCallBuilder) and item.trace_id == trace_id:
                item.rationale = value.get("text")
                return
        self.add(GenericStep(name="rationale", trace_id=trace_id, payload=dict(value)))

    def open_invocation(self, builder: Builder) -> None:
        """An `invocationInput` arrived."""
        self.items.append(builder)
        self.open_invocations.append(builder)

    def close_invocation(
        self, key: str, trace_id: str | None, payload: Any, event_time: Any
    ) -> Builder | None:
        """An `observation.<key>` arrived: complete the latest matching open invocation."""
        if not isinstance(payload, Mapping):
            return None
        candidates = [b for b in self.open_invocations if b.OUTPUT_KEY == key]
        same_trace = [b for b in candidates if b.trace_id == trace_id]
        if isinstance(payload.get("agentCollaboratorName"), str):
            named = [
                b
                for b in same_trace
                if getattr(b, "name", None) == payload["agentCollaboratorName"]
            ]
            same_trace = named or same_trace
        pool = same_trace or candidates
        if pool:
            # Outputs answer their calls in order: with parallel calls in one turn (same
            # traceId) the oldest open call is the one this output belongs to.
            builder = pool[0]
            self.open_invocations.remove(builder)
        else:
            builder = _BUILDER_FOR_OUTPUT[key](trace_id, {}, None)
            self.items.append(builder)
        builder.complete(payload, event_time)
        return builder

    def build_steps(self) -> tuple[Step, ...]:
        """Freeze every item, in arrival order."""
        return tuple(
            item.build() if isinstance(item, Builder | ModelCallBuilder) else item
            for item in self.items
        )
