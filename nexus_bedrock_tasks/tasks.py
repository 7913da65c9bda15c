"""The Prefect tasks of one invocation: invoke, drain, resolve returnControl, tools, finalize.

Retries live in one layer: tenacity retries transient AWS errors inside `invoke_agent`
(botocore's own retries are off); an in-stream transient error is re-invoked by the
flow; Prefect task retries stay at 0. Side-effecting tasks use `NO_CACHE`, and the boto3
stream passes between tasks in memory (`persist_result=False`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock.client import call_with_retry
from nexus_bedrock_tasks.bedrock.model import AgentTurn, ReturnControlCall, ReturnControlRequest
from nexus_bedrock_tasks.bedrock.reader import read_turn
from nexus_bedrock_tasks.hooks import TASK_HOOKS
from nexus_bedrock_tasks.invocation import ToolOutcome, outcome_base
from nexus_bedrock_tasks.ledger import call_key, get_ledger
from nexus_bedrock_tasks.nexus.records import SpanRecord, utcnow
from nexus_bedrock_tasks.results import InvocationResult, TokenUsage
from nexus_bedrock_tasks.settings import BedrockTasksSettings
from nexus_bedrock_tasks.summary import InvocationSummary
from nexus_bedrock_tasks.tools import (
    ToolArgumentError,
    call_arguments,
    default_registry,
    run_tool_then,
)
from nexus_bedrock_tasks.tracing import current_task_span, describe, get_tracer, trace_key

_TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False, **TASK_HOOKS}


@dataclass(frozen=True)
class AgentResponse:
    """An InvokeAgent response whose stream has not been read yet."""

    stream: Any
    session_id: str
    retries: int


@dataclass(frozen=True)
class DrainedTurn:
    """A read turn and the local id of the drain task's span (its steps' parent)."""

    turn: AgentTurn
    span_id: str


@dataclass(frozen=True)
class PlannedCall:
    """One returnControl call with its idempotency key."""

    index: int
    key: str
    call: ReturnControlCall
    has_tool: bool


def _run_ids() -> tuple[str | None, Any]:
    """(the trace this step reports to, the id of its `task:*` span: its task run's, or
    `tracing.current_task_span` when a caller set one)."""
    context = TaskRunContext.get()
    span = current_task_span.get()
    flow_run_id = None if context is None else context.task_run.flow_run_id
    if span is not None:
        return trace_key(flow_run_id), UUID(span)
    return trace_key(flow_run_id), None if context is None else context.task_run.id


def _note(output: Any) -> None:
    trace, task_run_id = _run_ids()
    if trace is not None:
        get_tracer().task_output(trace, task_run_id, output)


def _flow_run_id() -> str | None:
    context = TaskRunContext.get()
    if context is None or context.task_run.flow_run_id is None:
        return None
    return str(context.task_run.flow_run_id)


@task(name="invoke_agent", **_TASK_OPTIONS)
async def invoke_agent(
    client: Any, request: dict[str, Any], settings: BedrockTasksSettings
) -> AgentResponse:
    """Call InvokeAgent; tenacity retries throttling, 5xx and connection errors.

    Example:
        >>> response = await invoke_agent(client, {"agentId": "DEMO000001", ...}, settings)
    """
    response, retries = await asyncio.to_thread(
        call_with_retry, lambda: client.invoke_agent(**request), settings
    )
    session_id = str(response.get("sessionId") or request["sessionId"])
    _note({"session_id": session_id, "aws_retries": retries, "resume": "inputText" not in request})
    return AgentResponse(stream=response["completion"], session_id=session_id, retries=retries)


def _drain(stream: Any) -> AgentTurn:
    try:
        return read_turn(stream)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


@task(name="drain_stream", **_TASK_OPTIONS)
async def drain_stream(response: AgentResponse) -> DrainedTurn:
    """Read the whole completion stream (closing it on every path) and post its step spans.

    Example:
        >>> drained = await drain_stream(response)
        >>> drained.turn.text
    """
    turn = await asyncio.to_thread(_drain, response.stream)
    trace, task_run_id = _run_ids()
    span_id = task_run_id.hex if task_run_id is not None else ""
    if trace is not None and task_run_id is not None:
        get_tracer().add_turn(trace, turn, task_run_id)
    _note(
        {
            "finish_reason": turn.finish_reason,
            "events": turn.event_count,
            "input_tokens": turn.usage.input_tokens,
            "output_tokens": turn.usage.output_tokens,
            "error": turn.error,
        }
    )
    return DrainedTurn(turn=turn, span_id=span_id)


@task(name="resolve_return_control", **_TASK_OPTIONS)
async def resolve_return_control(
    request: ReturnControlRequest, session_id: str
) -> list[PlannedCall]:
    """Match each requested call to a registered tool and key it for exactly-once runs.

    Example:
        >>> plan = await resolve_return_control(turn.return_control, session_id)
    """
    plan = [
        PlannedCall(
            index=index,
            key=call_key(session_id, request.invocation_id, index),
            call=call,
            has_tool=not call.caller_runs_tool or default_registry.find(call) is not None,
        )
        for index, call in enumerate(request.calls)
    ]
    _note(
        {
            "invocation_id": request.invocation_id,
            "calls": [f"{p.call.action_group}.{p.call.operation}" for p in plan],
            "unknown": [p.key for p in plan if not p.has_tool],
        }
    )
    return plan


async def _outcome(
    planned: PlannedCall, confirmed: bool | None, record: Callable[[ToolOutcome], None]
) -> ToolOutcome:
    """The call's outcome, handed to `record` (the ledger) as soon as it is known: for a
    sync tool in the tool's own thread, so a run torn down meanwhile still keeps it."""
    base = outcome_base(planned.call, planned.index, planned.key)
    confirmation = None if confirmed is None else ("CONFIRM" if confirmed else "DENY")
    spec = default_registry.find(planned.call) if planned.call.caller_runs_tool else None
    outcome: ToolOutcome | None = None
    kwargs: dict[str, Any] = {}
    if confirmed is False:
        body = "The user denied this action."
        outcome = ToolOutcome(**base, body=body, confirmation_state=confirmation)
    elif not planned.call.caller_runs_tool:
        outcome = ToolOutcome(**base, body="", confirmation_state=confirmation)
    elif spec is None:
        error = f"no local tool registered for {planned.call.action_group}.{planned.call.operation}"
        outcome = ToolOutcome(**base, body=error, response_state="REPROMPT", error=error)
    else:
        try:
            kwargs = call_arguments(spec, planned.call)
        except ToolArgumentError as exc:
            outcome = ToolOutcome(
                **base, body=str(exc), response_state="REPROMPT", error=str(exc), executed=False
            )
    if outcome is not None:
        record(outcome)
        return outcome
    assert spec is not None  # without a tool to run, a branch above made the outcome

    def finished(body: str | None, exc: Exception | None) -> ToolOutcome:
        if exc is not None:
            done = ToolOutcome(
                **base,
                body=f"The tool failed: {describe(exc)}",
                response_state="FAILURE",
                error=describe(exc),
                confirmation_state=confirmation,
                executed=True,
            )
        else:
            done = ToolOutcome(
                **base, body=body or "", confirmation_state=confirmation, executed=True
            )
        record(done)
        return done

    return await run_tool_then(spec, kwargs, finished)


@task(name="execute_tool", **_TASK_OPTIONS)
async def execute_tool(
    planned: PlannedCall,
    parent_span_id: str,
    settings: BedrockTasksSettings,
    confirmed: bool | None = None,
) -> ToolOutcome:
    """Run one requested tool, or reuse its stored result (exactly once per key).

    Example:
        >>> outcome = await execute_tool(planned, rc_span_id, settings)
    """
    ledger = get_ledger(settings.tool_ledger)
    started = utcnow()
    stored = ledger.get(planned.key)
    if stored is not None:
        outcome = ToolOutcome.model_validate({**stored.outcome, "reused": True})
    else:
        ledger.begin(planned.key)
        outcome = await _outcome(
            planned,
            confirmed,
            lambda done: ledger.finish(planned.key, done.model_dump(exclude={"reused"})),
        )
    trace, _ = _run_ids()
    if trace is not None:
        get_tracer().add_span(
            trace,
            SpanRecord(
                name=f"{semconv.TOOL_SPAN_PREFIX}{outcome.tool_name}",
                started_at=started,
                ended_at=utcnow(),
                status="error" if outcome.error else "ok",
                parent_local_id=parent_span_id,
                input={"key": outcome.key, "reused": outcome.reused},
                output={"parameters": outcome.parameters, "result": outcome.body},
                error=outcome.error,
            ),
        )
    _note({"tool": outcome.tool_name, "reused": outcome.reused, "error": outcome.error})
    return outcome


@task(name="finalize_trace", **_TASK_OPTIONS)
async def finalize_trace(
    summary: InvocationSummary,
    *,
    text: str,
    session_id: str,
    error: str | None,
    started: datetime,
    settings: BedrockTasksSettings,
    tools: list[dict[str, Any]],
) -> InvocationResult:
    """Record the summary (posted last, when the trace ends) and build the typed result.

    Example:
        >>> result = await finalize_trace(summary, text=..., session_id=..., error=None, ...)
    """
    trace, _ = _run_ids()
    tracer = get_tracer()
    status: semconv.TraceStatus = "error" if error else "success"
    trace_id = None
    if trace is not None:
        tracer.record_summary(trace, summary, status)
        trace_id = await asyncio.to_thread(tracer.nexus_trace_id, trace, settings.trace_id_wait_s)
    _note({"finish_reason": summary.finish_reason, "total_tokens": summary.total_tokens})
    return InvocationResult(
        text=text,
        session_id=session_id,
        trace_id=trace_id,
        local_trace_id=trace or "",
        flow_run_id=_flow_run_id(),
        finish_reason=summary.finish_reason,
        usage=TokenUsage(
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            total_tokens=summary.total_tokens,
        ),
        counts=summary.counts(),
        cost_usd=summary.cost_usd,
        error=error,
        latency_s=round((utcnow() - started).total_seconds(), 4),
        tools=tools,
    )
