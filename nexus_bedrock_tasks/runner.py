"""One invocation, task by task: invoke → drain → (returnControl → tools → resume)… → finalize.

Used by the invocation flow (one trace per flow run) and by batch evaluations (one trace
per case task, see `tracing.current_trace`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock.client import cached_client, describe_aws_error
from nexus_bedrock_tasks.bedrock.model import AgentTurn, ReturnControlRequest
from nexus_bedrock_tasks.bedrock.parts import return_control_request
from nexus_bedrock_tasks.exceptions import AgentStreamError
from nexus_bedrock_tasks.invocation import (
    ToolOutcome,
    invoke_request,
    resume_session_state,
    return_control_event,
    session_id_for,
    validate_invocation,
)
from nexus_bedrock_tasks.ledger import get_ledger
from nexus_bedrock_tasks.nexus.records import SpanRecord, new_local_id, utcnow
from nexus_bedrock_tasks.nexus.span_builder import return_control_output
from nexus_bedrock_tasks.results import InvocationFailed, InvocationResult
from nexus_bedrock_tasks.settings import BedrockTasksSettings, task_settings
from nexus_bedrock_tasks.summary import summarize
from nexus_bedrock_tasks.tasks import (
    AgentResponse,
    DrainedTurn,
    PlannedCall,
    drain_stream,
    execute_tool,
    finalize_trace,
    invoke_agent,
    resolve_return_control,
)
from nexus_bedrock_tasks.tools import load_tools
from nexus_bedrock_tasks.tracing import get_tracer

logger = logging.getLogger(__name__)
# Transport failures mid-stream are as transient as the modelled ones.
_TRANSIENT_STREAM_ERRORS = AgentStreamError.TRANSIENT_CODES | {
    "ReadTimeoutError",
    "ResponseStreamingError",
    "ProtocolError",
    "IncompleteRead",
    "ConnectionClosedError",
    "streamDecodeError",
}


@dataclass(frozen=True)
class InvocationSteps:
    """The steps of an invocation: Prefect tasks (a task run each, `TASK_STEPS`), or their
    plain functions (`INLINE_STEPS`) for a caller that already runs in a task of its own,
    such as a batch evaluation's case: its steps then report to that task run."""

    invoke_agent: Callable[[Any, dict[str, Any], BedrockTasksSettings], Awaitable[AgentResponse]]
    drain_stream: Callable[[AgentResponse], Awaitable[DrainedTurn]]
    resolve_return_control: Callable[[ReturnControlRequest, str], Awaitable[list[PlannedCall]]]
    execute_tool: Callable[
        [PlannedCall, str, BedrockTasksSettings, bool | None], Awaitable[ToolOutcome]
    ]
    finalize_trace: Callable[..., Awaitable[InvocationResult]]


TASK_STEPS = InvocationSteps(
    invoke_agent, drain_stream, resolve_return_control, execute_tool, finalize_trace
)
INLINE_STEPS = InvocationSteps(
    invoke_agent.fn,
    drain_stream.fn,
    resolve_return_control.fn,
    execute_tool.fn,
    finalize_trace.fn,
)


def _refused(exc: ClientError) -> bool:
    """Bedrock rejected the request itself (not a transient failure worth retrying)."""
    code = exc.response.get("Error", {}).get("Code", "")
    return code in {"ValidationException", "ResourceNotFoundException", "ConflictException"}


class InvocationParams(BaseModel):
    """Everything one invocation needs; the invocation flow's parameters."""

    agent_id: str
    agent_alias_id: str
    prompt: str
    session_id: str | None = None
    session_attributes: dict[str, str] | None = None
    prompt_session_attributes: dict[str, str] | None = None
    max_return_control_rounds: int | None = None
    max_total_tokens: int | None = None
    max_cost_usd: float | None = None
    enable_trace: bool = True
    memory_id: str | None = None
    end_session: bool = False
    region: str | None = None
    endpoint_url: str | None = None
    aws_credentials_block: str | None = None
    tools_module: str | None = None


class Approval(RunInput):
    """What a person answers to a USER_CONFIRMATION call."""

    approve: bool
    reason: str | None = None


def _budget_reason(
    turns: Sequence[AgentTurn],
    settings: BedrockTasksSettings,
    max_total_tokens: int | None,
    max_cost_usd: float | None,
) -> str | None:
    spent = summarize(turns, prices=settings.model_prices)
    if max_total_tokens is not None and spent.total_tokens > max_total_tokens:
        return semconv.FINISH_TOKEN_BUDGET
    if max_cost_usd is not None and spent.cost_usd is not None and spent.cost_usd > max_cost_usd:
        return semconv.FINISH_COST_BUDGET
    return None


async def _confirm(plan: Sequence[PlannedCall], timeout_s: int) -> dict[int, bool | None]:
    """Ask a person (Prefect pause with input) for each call that needs confirmation."""
    answers: dict[int, bool | None] = {}
    for planned in plan:
        if not planned.call.confirmation_required:
            answers[planned.index] = None
            continue
        logger.warning(
            "waiting up to %ss for approval of %s.%s %s: resume this flow run with input "
            "approve=true|false (Prefect UI or `prefect flow-run resume`)",
            timeout_s,
            planned.call.action_group,
            planned.call.operation,
            {p.name: p.value for p in planned.call.parameters},
        )
        try:
            answer = await pause_flow_run(  # type: ignore[misc]
                wait_for_input=Approval,
                timeout=timeout_s,
                poll_interval=1,
                # Prefect keys allow only lowercase letters, digits and dashes.
                key=f"confirm-{hashlib.sha256(planned.key.encode()).hexdigest()[:20]}",
            )
        except FlowPauseTimeout:
            logger.warning("no approval within %ss: denying %s", timeout_s, planned.key)
            answers[planned.index] = False
            continue
        answers[planned.index] = bool(answer.approve)
    return answers


def _end_session_quietly(client: Any, request: dict[str, Any]) -> None:
    """Release a session left waiting on returnControl; failures are only logged."""
    try:
        minimal = {k: request[k] for k in ("agentId", "agentAliasId", "sessionId")}
        response = client.invoke_agent(**minimal, endSession=True, inputText="end session")
        for _ in response["completion"]:
            pass
    except Exception as exc:
        logger.warning("could not end session %s: %s", request.get("sessionId"), exc)


async def _invoke_and_drain(
    client: Any, request: dict[str, Any], settings: BedrockTasksSettings, steps: InvocationSteps
) -> tuple[list[DrainedTurn], int]:
    """One turn, re-invoked after transient in-stream errors; every attempt is returned
    (the tokens of failed attempts were spent) with the number of re-invocations."""
    attempts: list[DrainedTurn] = []
    retries = 0
    for attempt in range(settings.stream_retries + 1):
        response = await steps.invoke_agent(client, request, settings)
        retries += response.retries
        drained = await steps.drain_stream(response)
        attempts.append(drained)
        code = drained.turn.error_code
        if code not in _TRANSIENT_STREAM_ERRORS or attempt == settings.stream_retries:
            break
        retries += 1
        logger.warning("transient stream error %s, re-invoking the turn", code)
    return attempts, retries


async def _answer_round(
    request_rc: ReturnControlRequest,
    session: str,
    parent_span: str | None,
    settings: BedrockTasksSettings,
    trace: str | None,
    steps: InvocationSteps,
) -> list[ToolOutcome]:
    """Run the requested tools concurrently (after confirmations) and post the round's span."""
    rc_started = utcnow()
    plan = await steps.resolve_return_control(request_rc, session)
    answers = await _confirm(plan, settings.confirmation_timeout_s)
    rc_span_id = new_local_id()
    outcomes = list(
        await asyncio.gather(
            *(
                steps.execute_tool(planned, rc_span_id, settings, answers.get(planned.index))
                for planned in plan
            )
        )
    )
    if trace is not None:
        output = return_control_output(request_rc)
        output["results"] = [
            {"tool": o.tool_name, "state": o.response_state, "reused": o.reused} for o in outcomes
        ]
        get_tracer().add_span(
            trace,
            SpanRecord(
                name=semconv.RETURN_CONTROL_SPAN,
                started_at=rc_started,
                ended_at=utcnow(),
                parent_local_id=parent_span,
                output=output,
                local_id=rc_span_id,
            ),
        )
    return outcomes


async def run_invocation(
    p: InvocationParams,
    *,
    trace: str | None,
    session_seed: str,
    client: Any | None = None,
    steps: InvocationSteps = TASK_STEPS,
) -> InvocationResult:
    """Run one invocation as tasks, reporting to the trace `trace` (None: not traced).

    Args:
        p: what to invoke.
        trace: the local trace key the tasks report to (`tracing.trace_key`).
        session_seed: a UUID that derives the session id when `p.session_id` is None.
        client: a `bedrock-agent-runtime` client to use; by default this process's shared
            client for `p.region`, `p.endpoint_url` and `p.aws_credentials_block`
            (`cached_client`: making one costs ~0.1 s of CPU, so runs reuse it).
        steps: `TASK_STEPS` (a Prefect task run per step) or `INLINE_STEPS` (plain
            functions, inside the caller's own task run: ~4x less Prefect work per
            invocation, for batches).

    Raises:
        ConfigError: bad input (checked before anything is sent).
        InvocationFailed: the agent did not answer; `.result` holds what was learned.

    Example:
        >>> await run_invocation(InvocationParams(agent_id=..., ...), trace=key, session_seed=key)
    """
    started = utcnow()
    settings = task_settings()
    validate_invocation(
        agent_id=p.agent_id,
        agent_alias_id=p.agent_alias_id,
        prompt=p.prompt,
        session_id=p.session_id,
    )
    if p.tools_module:
        load_tools(p.tools_module)
    session = p.session_id or session_id_for(session_seed)
    if client is None:
        # In a thread: loading a credentials block from async code would return a coroutine.
        client = await asyncio.to_thread(
            cached_client,
            region=p.region,
            endpoint_url=p.endpoint_url,
            credentials_block=p.aws_credentials_block,
        )
    rounds_allowed = (
        settings.max_return_control_rounds
        if p.max_return_control_rounds is None
        else p.max_return_control_rounds
    )
    turns: list[AgentTurn] = []
    outcomes_all: list[ToolOutcome] = []
    retries = 0
    finish_override: str | None = None
    error: str | None = None
    state: dict[str, Any] = {}
    if p.session_attributes:
        state["sessionAttributes"] = p.session_attributes
    if p.prompt_session_attributes:
        state["promptSessionAttributes"] = p.prompt_session_attributes
    request = invoke_request(
        agent_id=p.agent_id,
        agent_alias_id=p.agent_alias_id,
        session_id=session,
        input_text=p.prompt,
        enable_trace=p.enable_trace,
        session_state=state,
        memory_id=p.memory_id,
        end_session=p.end_session,
    )
    tracer = get_tracer()
    ledger = get_ledger(settings.tool_ledger)
    stored = ledger.pending(session)
    pending = return_control_request(stored) if stored else None
    answered: str | None = None
    # Set while the answer to an earlier run's round is on its way: if Bedrock refuses it
    # (the session expired, or someone else answered), the prompt is sent instead.
    earlier_round: str | None = None
    prompt_request = request
    try:
        rounds = 0
        while True:
            if pending is not None:
                logger.warning(
                    "session %s waits for the answer to returnControl %s of an earlier run: "
                    "answering it first (finished tools are not run again)",
                    session,
                    pending.invocation_id,
                )
                request_rc, parent_span, pending = pending, None, None
                earlier_round = request_rc.invocation_id
            else:
                try:
                    drained, stream_retries = await _invoke_and_drain(
                        client, request, settings, steps
                    )
                except ClientError as exc:
                    if earlier_round is None or not _refused(exc):
                        raise
                    logger.warning(
                        "Bedrock refused the answer to returnControl %s of an earlier run "
                        "(%s): dropping it and sending this run's prompt",
                        earlier_round,
                        describe_aws_error(exc),
                    )
                    ledger.clear_pending(session, earlier_round)
                    earlier_round = answered = None
                    request, rounds = prompt_request, 0
                    continue
                earlier_round = None
                turns.extend(attempt.turn for attempt in drained)
                retries += stream_retries
                current = drained[-1].turn
                if current.error:
                    error = current.error
                    break
                if answered is not None:
                    ledger.clear_pending(session, answered)
                    answered = None
                finish_override = _budget_reason(
                    turns, settings, p.max_total_tokens, p.max_cost_usd
                )
                asked = current.return_control
                if finish_override or asked is None:
                    if finish_override and asked is not None:
                        await asyncio.to_thread(_end_session_quietly, client, request)
                    break
                request_rc, parent_span = asked, drained[-1].span_id
            if rounds >= rounds_allowed:
                finish_override = semconv.FINISH_RETURN_CONTROL_UNANSWERED
                await asyncio.to_thread(_end_session_quietly, client, request)
                break
            rounds += 1
            ledger.save_pending(session, request_rc.invocation_id, return_control_event(request_rc))
            outcomes = await _answer_round(request_rc, session, parent_span, settings, trace, steps)
            outcomes_all.extend(outcomes)
            answered = request_rc.invocation_id
            resume_state = resume_session_state(
                request_rc.invocation_id,
                outcomes,
                p.session_attributes,
                p.prompt_session_attributes,
            )
            request = invoke_request(
                agent_id=p.agent_id,
                agent_alias_id=p.agent_alias_id,
                session_id=session,
                input_text=None,
                enable_trace=p.enable_trace,
                session_state=resume_state,
                memory_id=p.memory_id,
                end_session=p.end_session,
            )
    except Exception as exc:
        error = describe_aws_error(exc)
        logger.error("invocation failed: %s", error)
    if trace is not None:
        tracer_state = tracer.state(trace)
        if tracer_state is not None:
            tracer_state.tool_calls = len(outcomes_all)
            tracer_state.retries = retries
    answer = turns[-1].text if turns else ""
    summary = summarize(
        turns,
        prices=settings.model_prices,
        answer=answer,
        tool_calls=len(outcomes_all),
        retries=retries,
        finish_reason=semconv.FINISH_ERROR if error else finish_override,
    )
    result = await steps.finalize_trace(
        summary,
        text=answer,
        session_id=session,
        error=error,
        started=started,
        settings=settings,
        tools=[
            {
                "tool": o.tool_name,
                "key": o.key,
                "reused": o.reused,
                "executed": o.executed,
                "response_state": o.response_state,
                "confirmation_state": o.confirmation_state,
                "error": o.error,
            }
            for o in outcomes_all
        ],
    )
    if error:
        raise InvocationFailed(result)
    return result
