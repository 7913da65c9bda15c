"""Pure: an `AgentTurn` → the Nexus spans of ../shared/SPANS.md, parents before children."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock.model import (
    ActionGroupCall,
    AgentTurn,
    CodeInterpreterCall,
    CollaboratorCall,
    Failure,
    GenericStep,
    GuardrailCheck,
    KnowledgeBaseLookup,
    ModelCall,
    ReturnControlRequest,
    Step,
    Timing,
)
from nexus_bedrock_tasks.nexus.records import SpanRecord
from nexus_bedrock_tasks.summary import InvocationSummary


@dataclass(frozen=True, slots=True)
class TurnSpans:
    """The spans of one turn and the local id of its `return_control` span, if any."""

    spans: tuple[SpanRecord, ...]
    return_control_span_id: str | None


def _window(timing: Timing, fallback: datetime) -> tuple[datetime, datetime]:
    start = timing.started_at or timing.ended_at or fallback
    end = timing.ended_at or start
    return start, max(start, end)


def return_control_output(request: ReturnControlRequest) -> dict[str, Any]:
    """`{invocation_id, calls:[...]}` of a `return_control` span."""
    return {
        "invocation_id": request.invocation_id,
        "calls": [
            {
                "action_group": call.action_group,
                "function": call.function,
                "api_path": call.api_path,
                "http_method": call.http_method,
                "parameters": {p.name: p.value for p in call.parameters},
                "confirmation_required": call.confirmation_required,
            }
            for call in request.calls
        ],
    }


def _span_for(step: Step, parent: str | None, fallback: datetime) -> SpanRecord | None:
    if isinstance(step, ReturnControlRequest):
        return SpanRecord(
            name=semconv.RETURN_CONTROL_SPAN,
            started_at=fallback,
            ended_at=fallback,
            parent_local_id=parent,
            output=return_control_output(step),
        )
    start, end = _window(step.timing, fallback)
    base: dict[str, Any] = {"started_at": start, "ended_at": end, "parent_local_id": parent}
    if isinstance(step, ModelCall):
        usage = step.usage
        return SpanRecord(
            name=f"{semconv.LLM_SPAN_PREFIX}{step.phase}",
            status="ok" if usage is not None else "error",
            input={"trace_id": step.trace_id, "prompt_type": step.prompt_type},
            output={
                "model": step.model,
                "input_tokens": usage.input_tokens if usage else 0,
                "output_tokens": usage.output_tokens if usage else 0,
                "stop_reason": step.stop_reason,
                "text": step.text,
                "rationale": step.rationale,
            },
            error=None if usage is not None else "model call has no output: stream ended",
            **base,
        )
    if isinstance(step, KnowledgeBaseLookup):
        return SpanRecord(
            name=semconv.KB_SPAN,
            status="ok" if step.completed else "error",
            input={"kb_id": step.knowledge_base_id, "query": step.query},
            output={
                "num_references": len(step.references),
                "references": [
                    {"uri": ref.uri, "score": ref.score, "text": ref.text}
                    for ref in step.references
                ],
            },
            error=None if step.completed else "lookup has no output: stream ended",
            **base,
        )
    if isinstance(step, ActionGroupCall):
        if not step.is_lambda:
            return None  # shown by the return_control span and its tool spans
        return SpanRecord(
            name=f"{semconv.ACTION_SPAN_PREFIX}{step.action_group}.{step.operation}",
            status="ok" if step.completed else "error",
            input={"verb": step.verb, "request_body": step.request_body},
            output={"parameters": list(step.parameters), "result": step.result},
            error=None if step.completed else "action has no output: stream ended",
            **base,
        )
    if isinstance(step, CodeInterpreterCall):
        failed = step.error is not None or not step.completed
        return SpanRecord(
            name=semconv.CODE_INTERPRETER_SPAN,
            status="error" if failed else "ok",
            input={"files": list(step.files)},
            output={"code": step.code, "output": step.output},
            error=step.error or (None if step.completed else "no output: stream ended"),
            **base,
        )
    if isinstance(step, CollaboratorCall):
        return SpanRecord(
            name=f"{semconv.COLLABORATOR_SPAN_PREFIX}{step.name}",
            status="ok" if step.completed else "error",
            input={"alias_arn": step.alias_arn},
            output={"input": step.input_text, "output": step.output_text},
            error=None if step.completed else "collaborator has no output: stream ended",
            **base,
        )
    if isinstance(step, GuardrailCheck):
        return SpanRecord(
            name=semconv.GUARDRAIL_SPAN,
            status="error" if step.intervened else "ok",
            output={
                "action": step.action,
                "input_assessments": list(step.input_assessments),
                "output_assessments": list(step.output_assessments),
            },
            error="guardrail intervened" if step.intervened else None,
            **base,
        )
    if isinstance(step, Failure):
        return SpanRecord(
            name=semconv.FAILURE_SPAN,
            status="error",
            output={"code": step.code},
            error=step.reason,
            **base,
        )
    assert isinstance(step, GenericStep)
    return SpanRecord(name=f"{semconv.OTHER_SPAN_PREFIX}{step.name}", output=step.payload, **base)


def _walk(
    steps: Sequence[Step],
    parent: str | None,
    fallback: datetime,
    include_return_control: bool,
    out: list[SpanRecord],
) -> str | None:
    return_control_id: str | None = None
    for step in steps:
        if isinstance(step, ReturnControlRequest) and not include_return_control:
            continue
        span = _span_for(step, parent, fallback)
        if span is None:
            continue
        out.append(span)
        if isinstance(step, ReturnControlRequest):
            return_control_id = span.local_id
        if isinstance(step, CollaboratorCall):
            start, _ = _window(step.timing, fallback)
            _walk(step.steps, span.local_id, start, include_return_control, out)
    return return_control_id


def turn_spans(
    turn: AgentTurn,
    parent_local_id: str | None,
    *,
    fallback_time: datetime,
    include_return_control: bool = True,
) -> TurnSpans:
    """The Bedrock step spans of `turn`, nested under `parent_local_id`.

    Args:
        turn: what the reader produced.
        parent_local_id: the drain task's span, or None for the trace root.
        fallback_time: start time for steps whose stream carried no timing
            (e.g. a returnControl event).
        include_return_control: False when the flow posts the `return_control` span itself
            once the tools have answered.
    """
    out: list[SpanRecord] = []
    rc_id = _walk(turn.steps, parent_local_id, fallback_time, include_return_control, out)
    return TurnSpans(spans=tuple(out), return_control_span_id=rc_id)


def summary_span(
    summary: InvocationSummary, *, started_at: datetime, ended_at: datetime
) -> SpanRecord:
    """The `summary` span: the trace root's last span, totals in its output."""
    failed = summary.finish_reason in (semconv.FINISH_ERROR, semconv.FINISH_TIMEOUT)
    return SpanRecord(
        name=semconv.SUMMARY_SPAN,
        started_at=started_at,
        ended_at=max(started_at, ended_at),
        status="error" if failed else "ok",
        parent_local_id=None,
        output=summary.as_dict(),
    )
