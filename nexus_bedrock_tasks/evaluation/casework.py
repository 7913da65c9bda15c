"""One case of a batch evaluation: its own Nexus trace, run and scored (`run_case`).

Cases run inside task runs that hold several of them (`chunktask.evaluate_cases`), not as
flow runs, so a case opens its trace itself: a *deferred* trace (sent when it ends, so its
metadata carries the score) that the invocation's steps report to through
`tracing.current_trace`, with a `task:evaluate_cases` span of its own for its part of the
task run. Every exit path ends the trace; traces still open when the evaluation flow
itself crashes are ended by its hooks (`end_open_case_traces`).

A case never waits for Nexus: its result carries the Nexus trace id only when
`CaseRunConfig.trace_id_wait_s` asks for it (remote workers, whose traces the flow's
process cannot look up); otherwise the flow fills the ids in as Nexus acknowledges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from pydantic import BaseModel, Field

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock.client import cached_client
from nexus_bedrock_tasks.bedrock.model import ActionGroupCall, iter_steps
from nexus_bedrock_tasks.evaluation.cases import CaseOutcome, EvalCase
from nexus_bedrock_tasks.evaluation.dataset import BadLine
from nexus_bedrock_tasks.evaluation.results import CaseResult
from nexus_bedrock_tasks.evaluation.scorers import score_case
from nexus_bedrock_tasks.invocation import session_id_for
from nexus_bedrock_tasks.nexus.records import JsonValue
from nexus_bedrock_tasks.results import InvocationFailed, InvocationResult, TokenUsage
from nexus_bedrock_tasks.runner import (
    INLINE_STEPS,
    TASK_STEPS,
    InvocationParams,
    InvocationSteps,
    run_invocation,
)
from nexus_bedrock_tasks.tools import load_tools
from nexus_bedrock_tasks.tracing import (
    Tracer,
    current_task_span,
    current_trace,
    describe,
    get_tracer,
)

logger = logging.getLogger(__name__)
META_EVAL_RUN_ID = "eval_run_id"
META_CASE_ID = "case_id"
META_TAGS = "tags"
META_SCORE = "score"
META_SCORES = "scores"
META_PASSED = "passed"
CASE_TASK_NAME = "evaluate_cases"

_open_traces: dict[str, set[str]] = {}
_open_lock = threading.Lock()


class CaseRunConfig(BaseModel):
    """What every case of one evaluation run shares (picklable, for remote workers).

    Attributes:
        trace_metadata: flow-level trace metadata (flow_run_id, flow_name, deployment).
        pool_size: HTTP connections of a worker process's shared Bedrock client.
        trace_id_wait_s: how long a case waits for Nexus to acknowledge its trace so that
            its result carries the Nexus id; 0 (the default) leaves that to the caller
            (`CaseResult.local_trace_id` names the trace).
    """

    eval_run_id: str
    agent_id: str
    agent_alias_id: str
    nexus_agent_name: str
    scorers: list[str]
    score_threshold: float = 0.5
    region: str | None = None
    endpoint_url: str | None = None
    aws_credentials_block: str | None = None
    tools_module: str | None = None
    memory_id: str | None = None
    enable_trace: bool = True
    trace_metadata: dict[str, JsonValue] = Field(default_factory=dict)
    pool_size: int = 10
    trace_id_wait_s: float = 0.0


@functools.lru_cache(maxsize=32)
def ensure_tools(target: str, eval_run_id: str) -> None:
    """Load a tools module once per evaluation run and process (not once per case: a .py
    path is executed again on every load)."""
    load_tools(target)


def shared_client(config: CaseRunConfig) -> Any:
    """This process's Bedrock client for `config` (remote workers: kept for their life)."""
    return cached_client(
        region=config.region,
        endpoint_url=config.endpoint_url,
        credentials_block=config.aws_credentials_block,
        max_pool_connections=config.pool_size,
    )


def flush_worker_exporter(timeout: float) -> int:
    """Deliver what a worker process spooled (run on every Dask worker at the end)."""
    return get_tracer().exporter.flush(timeout)


def _track(eval_run_id: str, key: str, is_open: bool) -> None:
    with _open_lock:
        keys = _open_traces.setdefault(eval_run_id, set())
        if is_open:
            keys.add(key)
        else:
            keys.discard(key)
            if not keys:
                _open_traces.pop(eval_run_id, None)


def end_open_case_traces(eval_run_id: str, reason: str) -> int:
    """End (as error) the case traces of a run still open in this process; how many."""
    with _open_lock:
        keys = _open_traces.pop(eval_run_id, set())
    tracer = get_tracer()
    for key in keys:
        tracer.end(key, status=semconv.TRACE_ERROR, metadata={META_PASSED: False, "error": reason})
        tracer.forget(key)
    if keys:
        tracer.exporter.flush(tracer.settings.flush_timeout_s)
    return len(keys)


def bad_line_result(line: BadLine) -> CaseResult:
    """The failed result of a dataset line that is not a case (no trace)."""
    return CaseResult(id=line.result_id, passed=False, error=line.error)


def _case_metadata(case: EvalCase, config: CaseRunConfig, session_id: str) -> dict[str, JsonValue]:
    metadata: dict[str, JsonValue] = {
        semconv.META_AGENT_ID: config.agent_id,
        semconv.META_AGENT_ALIAS_ID: config.agent_alias_id,
        semconv.META_SESSION_ID: session_id,
        semconv.META_TURN: len(case.prompts),
        semconv.META_PROMPT: case.prompt[: semconv.META_PROMPT_CHARS],
        **config.trace_metadata,
        META_EVAL_RUN_ID: config.eval_run_id,
        META_CASE_ID: case.id,
    }
    if config.region:
        metadata[semconv.META_REGION] = config.region
    if case.tags:
        metadata[META_TAGS] = list(case.tags)
    return metadata


async def _run_turns(
    case: EvalCase,
    config: CaseRunConfig,
    key: str,
    session_id: str,
    client: Any,
    steps: InvocationSteps,
) -> tuple[list[InvocationResult], str | None]:
    """Every prompt of the case in one session; stops at the first failed turn."""
    results: list[InvocationResult] = []
    for prompt in case.prompts:
        params = InvocationParams(
            agent_id=config.agent_id,
            agent_alias_id=config.agent_alias_id,
            prompt=prompt,
            session_id=session_id,
            enable_trace=config.enable_trace,
            memory_id=config.memory_id,
            region=config.region,
            endpoint_url=config.endpoint_url,
            aws_credentials_block=config.aws_credentials_block,
        )
        try:
            result = await run_invocation(
                params, trace=key, session_seed=key, client=client, steps=steps
            )
            results.append(result)
        except InvocationFailed as exc:
            results.append(exc.result)
            return results, exc.result.error or "invocation failed"
        except Exception as exc:  # bad input (ConfigError) or a bug: this case fails alone
            return results, describe(exc)
    return results, None


def _tools_used(tracer: Tracer, key: str, results: Sequence[InvocationResult]) -> tuple[str, ...]:
    names = [str(tool["tool"]) for result in results for tool in result.tools]
    state = tracer.state(key)
    for turn in state.turns if state is not None else []:
        for step in iter_steps(turn.steps):
            if isinstance(step, ActionGroupCall):
                names.append(f"{step.action_group}.{step.function or step.api_path}")
    return tuple(dict.fromkeys(names))


def _outcome(
    results: Sequence[InvocationResult], error: str | None, latency_s: float, tools: tuple[str, ...]
) -> CaseOutcome:
    costs = [r.cost_usd for r in results if r.cost_usd is not None]
    last = results[-1] if results else None
    return CaseOutcome(
        text=last.text if last else "",
        finish_reason=last.finish_reason if last else semconv.FINISH_ERROR,
        input_tokens=sum(r.usage.input_tokens for r in results),
        output_tokens=sum(r.usage.output_tokens for r in results),
        total_tokens=sum(r.usage.total_tokens for r in results),
        latency_s=round(latency_s, 4),
        tools=tools,
        error=error,
        cost_usd=round(sum(costs), 8) if costs else None,
        turns=len(results),
    )


def _sum_turns_in_summary(tracer: Tracer, key: str, results: Sequence[InvocationResult]) -> None:
    """Make the trace's summary span cover every turn, not the first one recorded."""
    state = tracer.state(key)
    if state is None or len(results) < 2:
        return
    state.summary = None
    state.tool_calls = sum(r.counts.get("tool_calls", 0) for r in results)
    state.retries = sum(r.counts.get("retries", 0) for r in results)


@dataclass(frozen=True)
class TaskPart:
    """Where a case runs inside a chunk's task run (`chunktask.evaluate_cases`).

    Attributes:
        task_run_id: the chunk's Prefect task run (hex).
        position: the case's place in the chunk, from 1.
        size: the cases in the chunk.
        span_id: the local id of the case's own `task:evaluate_cases` span; each case's
            is distinct (span ids are unique across the outbox, not per trace).
    """

    task_run_id: str
    position: int
    size: int
    span_id: str = field(default_factory=lambda: uuid4().hex)


@contextlib.contextmanager
def _steps_report_to(part: TaskPart | None) -> Iterator[None]:
    """Make the inline steps post under the case's span, not the shared task run's."""
    if part is None:
        yield
        return
    token = current_task_span.set(part.span_id)
    try:
        yield
    finally:
        current_task_span.reset(token)


async def run_case(
    case: EvalCase,
    config: CaseRunConfig,
    client: Any | None = None,
    *,
    part: TaskPart | None = None,
) -> CaseResult:
    """Run one case (all its turns in one Bedrock session) as its own Nexus trace, scored.

    Never raises for a failing agent or scorer: the result says what went wrong. Retries
    live below (tenacity for AWS calls); cases are not retried, so a case's trace and
    score are produced once. Run inside a chunk's task run (`part` given), the steps are
    plain calls and the trace gets a `task:evaluate_cases` span for the case's part of
    that task run; otherwise each step is a task run of its own.

    Args:
        case: the case.
        config: the run's shared settings.
        client: a Bedrock client to share; None uses this process's shared client.
        part: the case's place in the chunk's task run.

    Example:
        >>> result = await run_case(EvalCase(id="c1", prompt="Hi"), config)
        >>> result.passed, result.scores, result.local_trace_id
    """
    tracer = get_tracer()
    key = uuid4().hex
    session_id = case.session_id or session_id_for(key)
    if config.tools_module:
        ensure_tools(config.tools_module, config.eval_run_id)
    tracer.begin(
        key,
        name=semconv.trace_name(case.prompt),
        agent_name=config.nexus_agent_name,
        metadata=_case_metadata(case, config, session_id),
        deferred=True,
    )
    _track(config.eval_run_id, key, True)
    if part is not None:
        tracer.task_started(key, part.span_id, CASE_TASK_NAME)
    token = current_trace.set(key)
    started = time.monotonic()
    try:
        client = client or await asyncio.to_thread(shared_client, config)
        # In the chunk's task run the invocation's steps are plain calls reporting to it:
        # a Prefect task run per step would cost more CPU than the step itself.
        steps = TASK_STEPS if part is None else INLINE_STEPS
        with _steps_report_to(part):
            results, error = await _run_turns(case, config, key, session_id, client, steps)
        outcome = _outcome(
            results, error, time.monotonic() - started, _tools_used(tracer, key, results)
        )
        card = score_case(case, outcome, config.scorers, config.score_threshold)
    except BaseException:
        current_trace.reset(token)
        tracer.end(key, status=semconv.TRACE_ERROR, metadata={META_PASSED: False})
        tracer.forget(key)
        _track(config.eval_run_id, key, False)
        raise
    current_trace.reset(token)
    passed = card.passed(outcome)
    _sum_turns_in_summary(tracer, key, results)
    if part is not None:
        tracer.task_output(
            key,
            part.span_id,
            {
                "case_id": case.id,
                "passed": passed,
                "score": card.score,
                "error": outcome.error,
                "task_run_id": part.task_run_id,
                "position": part.position,
                "chunk_size": part.size,
            },
        )
        tracer.task_ended(key, part.span_id, status="ok")
    tracer.end(
        key,
        status=semconv.TRACE_ERROR if error else semconv.TRACE_SUCCESS,
        finish_reason=outcome.finish_reason,
        metadata={META_SCORE: card.score, META_PASSED: passed, META_SCORES: dict(card.scores)},
    )
    tracer.forget(key)
    _track(config.eval_run_id, key, False)
    trace_id = None
    if config.trace_id_wait_s > 0 and part is None:
        trace_id = await asyncio.to_thread(tracer.nexus_trace_id, key, config.trace_id_wait_s)
    return CaseResult(
        id=case.id,
        passed=passed,
        scores=card.scores,
        text=outcome.text,
        trace_id=trace_id,
        usage=TokenUsage(
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            total_tokens=outcome.total_tokens,
        ),
        latency_s=outcome.latency_s,
        error=outcome.error or card.problem,
        finish_reason=outcome.finish_reason,
        cost_usd=outcome.cost_usd,
        local_trace_id=key,
    )
