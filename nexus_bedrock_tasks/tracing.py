"""In-process bookkeeping between Prefect runs and the Nexus exporter.

Ids are derived, not shared: the trace's local id is the flow run id and a `task:*` span's
local id is its task run id, so hooks, tasks and a later `reconcile` process agree on
them without passing anything around. Nothing here raises into a run: export problems
are the exporter's to spool and report.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock.model import AgentTurn
from nexus_bedrock_tasks.ledger import get_ledger
from nexus_bedrock_tasks.nexus.exporter import NexusExporter, get_exporter
from nexus_bedrock_tasks.nexus.records import JsonValue, SpanRecord, TraceRecord, iso, utcnow
from nexus_bedrock_tasks.nexus.span_builder import summary_span, turn_spans
from nexus_bedrock_tasks.semconv import SpanStatus, TraceStatus
from nexus_bedrock_tasks.settings import BedrockTasksSettings
from nexus_bedrock_tasks.summary import InvocationSummary, summarize

logger = logging.getLogger(__name__)


def trace_to_json(trace: TraceRecord) -> dict[str, JsonValue]:
    """A trace record as stored for `reconcile`."""
    return {
        "local_id": trace.local_id,
        "name": trace.name,
        "agent_name": trace.agent_name,
        "started_at": iso(trace.started_at),
        "metadata": trace.metadata,
    }


def trace_from_json(data: dict[str, Any]) -> TraceRecord:
    """Inverse of `trace_to_json`."""
    return TraceRecord(
        name=str(data["name"]),
        agent_name=str(data["agent_name"]),
        started_at=datetime.fromisoformat(str(data["started_at"]).replace("Z", "+00:00")),
        metadata=dict(data.get("metadata") or {}),
        local_id=str(data["local_id"]),
    )


current_trace: ContextVar[str | None] = ContextVar("nexus_bedrock_current_trace", default=None)
"""The trace the current code reports to, when it is not its flow run's own trace.

A batch evaluation runs each case as a task with its own trace: it sets this around the
case, and the nested tasks and their hooks (which inherit the context) report there.
"""


current_task_span: ContextVar[str | None] = ContextVar(
    "nexus_bedrock_current_task_span", default=None
)
"""The `task:*` span the invocation steps report under, when it is not their task run's
own: a batch case gives each case of a shared task run a span of its own."""


def local_id(run_id: UUID | str) -> str:
    """The local trace/span id of a Prefect flow or task run (or an explicit trace key)."""
    if isinstance(run_id, UUID):
        return run_id.hex
    try:
        return UUID(str(run_id)).hex
    except ValueError:
        return str(run_id)


def trace_key(flow_run_id: UUID | str | None) -> str | None:
    """The trace a task of `flow_run_id` reports to: `current_trace`, else its flow run's."""
    explicit = current_trace.get()
    if explicit is not None:
        return explicit
    return None if flow_run_id is None else local_id(flow_run_id)


@dataclass
class OpenTask:
    """A task run that started and has not ended yet."""

    name: str
    started_at: datetime
    attempts: int = 1


@dataclass
class InvocationState:
    """What one flow run has exported so far."""

    trace: TraceRecord
    turns: list[AgentTurn] = field(default_factory=list)
    open_tasks: dict[str, OpenTask] = field(default_factory=dict)
    task_outputs: dict[str, JsonValue] = field(default_factory=dict)
    tool_calls: int = 0
    retries: int = 0
    summary: InvocationSummary | None = None
    status: TraceStatus | None = None
    ended: bool = False
    # A deferred trace is created at its end, with metadata only known then (a score).
    deferred: bool = False
    held: list[SpanRecord] = field(default_factory=list)


class Tracer:
    """Maps run events to exporter calls; one per process (`get_tracer`)."""

    def __init__(
        self, exporter: NexusExporter, settings: BedrockTasksSettings | None = None
    ) -> None:
        self.exporter = exporter
        self.settings = settings or BedrockTasksSettings()
        self._runs: dict[str, InvocationState] = {}
        self._lock = threading.RLock()

    def begin(
        self,
        run_id: UUID | str,
        *,
        name: str,
        agent_name: str,
        metadata: dict[str, JsonValue],
        deferred: bool = False,
    ) -> InvocationState:
        """Create the trace of a flow run once; a retried run keeps its trace.

        With `deferred`, nothing is sent until `end`, which may add metadata (Nexus
        ignores metadata after creation); spans are held until then.
        """
        key = local_id(run_id)
        with self._lock:
            state = self._runs.get(key)
            if state is None:
                trace = TraceRecord(
                    name=name,
                    agent_name=agent_name,
                    started_at=utcnow(),
                    metadata=metadata,
                    local_id=key,
                )
                state = InvocationState(trace=trace, deferred=deferred)
                self._runs[key] = state
                if not deferred:
                    self.exporter.start_trace(trace)
                    self._remember_open(trace, run_id)
            return state

    def adopt(self, trace: TraceRecord) -> InvocationState:
        """Take over a trace another (dead) process started, to end it (`reconcile`)."""
        with self._lock:
            state = self._runs.setdefault(trace.local_id, InvocationState(trace=trace))
            return state

    def _remember_open(self, trace: TraceRecord, run_id: UUID | str) -> None:
        if not self.exporter.enabled:
            return
        try:
            get_ledger(self.settings.tool_ledger).open_trace(
                trace.local_id, str(run_id), trace_to_json(self.exporter.redacted(trace))
            )
        except (OSError, sqlite3.Error) as exc:
            logger.warning("cannot record open trace %s for reconcile: %s", trace.local_id, exc)

    def state(self, run_id: UUID | str) -> InvocationState | None:
        """The bookkeeping of a flow run traced by this process."""
        with self._lock:
            return self._runs.get(local_id(run_id))

    def task_started(self, run_id: UUID | str, task_run_id: UUID | str, name: str) -> None:
        """A task attempt began (Prefect's `on_running` fires once per attempt)."""
        state = self.state(run_id)
        if state is None:
            return
        key = local_id(task_run_id)
        with self._lock:
            if key in state.open_tasks:
                state.open_tasks[key].attempts += 1
            else:
                state.open_tasks[key] = OpenTask(name=name, started_at=utcnow())

    def task_output(self, run_id: UUID | str, task_run_id: UUID | str, output: JsonValue) -> None:
        """What the `task:*` span of a task run shows as output."""
        state = self.state(run_id)
        if state is not None:
            with self._lock:
                state.task_outputs[local_id(task_run_id)] = output

    def task_ended(
        self,
        run_id: UUID | str,
        task_run_id: UUID | str,
        *,
        status: SpanStatus,
        error: str | None = None,
    ) -> None:
        """Post the complete `task:<name>` span of a task run."""
        state = self.state(run_id)
        if state is None:
            return
        key = local_id(task_run_id)
        with self._lock:
            task = state.open_tasks.pop(key, None)
            output = state.task_outputs.pop(key, None)
        if task is None:
            return
        self._post_task_span(state, key, task, status, error, output)

    def _post_task_span(
        self,
        state: InvocationState,
        key: str,
        task: OpenTask,
        status: SpanStatus,
        error: str | None,
        output: JsonValue,
    ) -> None:
        self._send(
            state,
            SpanRecord(
                name=f"{semconv.TASK_SPAN_PREFIX}{task.name}",
                started_at=task.started_at,
                ended_at=utcnow(),
                status=status,
                output={"attempts": task.attempts, "retries": task.attempts - 1, "result": output},
                error=error,
                local_id=key,
            ),
        )

    def add_turn(self, run_id: UUID | str, turn: AgentTurn, parent_task_run_id: UUID | str) -> str:
        """Post a turn's Bedrock step spans under the drain task's span.

        Returns:
            The drain span's local id (the parent of a later `return_control` span).
        """
        parent = local_id(parent_task_run_id)
        state = self.state(run_id)
        if state is None:
            return parent
        with self._lock:
            state.turns.append(turn)
        fallback = turn.started_at or utcnow()
        spans = turn_spans(turn, parent, fallback_time=fallback, include_return_control=False)
        with self._lock:
            if state.deferred:
                state.held.extend(spans.spans)
                return parent
        self.exporter.add_spans(state.trace.local_id, spans.spans)
        return parent

    def add_span(self, run_id: UUID | str, span: SpanRecord) -> None:
        """Post one complete span of a flow run's trace."""
        state = self.state(run_id)
        if state is not None:
            self._send(state, span)

    def _send(self, state: InvocationState, span: SpanRecord) -> None:
        with self._lock:
            if state.deferred:
                state.held.append(span)
                return
        self.exporter.add_span(state.trace.local_id, span)

    def record_summary(
        self, run_id: UUID | str, summary: InvocationSummary, status: TraceStatus
    ) -> None:
        """Keep the finalized figures; `end` posts them as the trace's last span."""
        state = self.state(run_id)
        if state is None:
            return
        with self._lock:
            if state.summary is None:
                state.summary = summary
                state.status = status

    def end(
        self,
        run_id: UUID | str,
        *,
        status: TraceStatus,
        finish_reason: str | None = None,
        flush: bool = False,
        metadata: dict[str, JsonValue] | None = None,
    ) -> None:
        """End the trace: close spans of tasks caught mid-run, post a summary, set status.

        `status` is what the flow run's final state implies; a status recorded by
        finalization (e.g. an in-stream error in a completed flow) wins over `success`.
        `metadata` is added to a deferred trace, which is created now.
        """
        state = self.state(run_id)
        if state is None:
            return
        with self._lock:
            if state.ended:
                return
            state.ended = True
            open_tasks = list(state.open_tasks.items())
            state.open_tasks.clear()
            held, state.held = state.held, []
            deferred, state.deferred = state.deferred, False
        if deferred:
            trace = state.trace
            self.exporter.start_trace(
                replace(trace, metadata={**trace.metadata, **(metadata or {})})
            )
        self.exporter.add_spans(state.trace.local_id, held)
        for key, task in open_tasks:
            reason = f"task did not finish: the flow run ended as {status}"
            self._post_task_span(state, key, task, "error", reason, None)
        summary = state.summary
        if summary is None:
            reason = finish_reason or (
                semconv.FINISH_TIMEOUT if status == semconv.TRACE_TIMEOUT else semconv.FINISH_ERROR
            )
            summary = summarize(
                state.turns,
                prices=self.settings.model_prices,
                tool_calls=state.tool_calls,
                retries=state.retries,
                finish_reason=reason,
            )
        now = utcnow()
        self.exporter.add_span(
            state.trace.local_id, summary_span(summary, started_at=now, ended_at=now)
        )
        final = status if status != semconv.TRACE_SUCCESS else (state.status or status)
        self.exporter.end_trace(state.trace.local_id, final, utcnow())
        try:
            get_ledger(self.settings.tool_ledger).close_trace(state.trace.local_id)
        except (OSError, sqlite3.Error) as exc:
            logger.warning("cannot mark trace %s ended: %s", state.trace.local_id, exc)
        if flush:
            self.exporter.flush(self.settings.flush_timeout_s)

    def forget(self, run_id: UUID | str) -> None:
        """Drop a finished run's bookkeeping (long-lived processes)."""
        with self._lock:
            self._runs.pop(local_id(run_id), None)

    def nexus_trace_id(self, run_id: UUID | str, timeout: float = 0.0) -> str | None:
        """The Nexus id of a run's trace, once Nexus acknowledged it.

        A deferred trace is not sent before `end`, so nothing is waited for until then.
        """
        state = self.state(run_id)
        if state is not None and state.deferred:
            return None
        return self.exporter.nexus_trace_id(local_id(run_id), timeout=timeout)


_tracer: Tracer | None = None
_tracer_lock = threading.Lock()


def get_tracer() -> Tracer:
    """The process-wide tracer (created with the process-wide exporter on first use)."""
    global _tracer
    with _tracer_lock:
        if _tracer is None:
            _tracer = Tracer(get_exporter())
        return _tracer


def set_tracer(tracer: Tracer | None) -> None:
    """Replace the process-wide tracer (CLI `--no-trace`, tests)."""
    global _tracer
    with _tracer_lock:
        _tracer = tracer


def describe(value: Any) -> str:
    """Short text of an exception for a span's error field."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)
