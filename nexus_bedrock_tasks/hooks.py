"""Prefect state hooks that mirror run state into Nexus. They never raise into a run.

Flow hooks create the trace (`on_running`) and end it with the status the final state
implies: Completed → success, Failed → error, TimedOut → timeout, Crashed/Cancelled →
error. Task hooks post one complete `task:<name>` span per task run; spans of tasks
caught in a crashed flow (which get no hook) are closed by the flow hook.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.settings import nexus_settings
from nexus_bedrock_tasks.tracing import get_tracer, trace_key

logger = logging.getLogger(__name__)
H = TypeVar("H", bound=Callable[..., None])
_warned: set[str] = set()


def never_raise(hook: H) -> H:
    """Log a failing hook once per hook name; the run goes on."""

    @functools.wraps(hook)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            if hook.__name__ not in _warned:
                _warned.add(hook.__name__)
                logger.exception("Nexus hook %s failed; the run continues", hook.__name__)

    return wrapper  # type: ignore[return-value]


def trace_metadata(flow: Any, flow_run: Any) -> dict[str, Any]:
    """Trace metadata from the flow run's parameters (set at creation: PATCH ignores it)."""
    from nexus_bedrock_tasks.invocation import session_id_for

    params = dict(flow_run.parameters or {})
    prompt = str(params.get("prompt", ""))
    metadata: dict[str, Any] = {
        semconv.META_AGENT_ID: params.get("agent_id"),
        semconv.META_AGENT_ALIAS_ID: params.get("agent_alias_id"),
        semconv.META_SESSION_ID: params.get("session_id") or session_id_for(flow_run.id),
        semconv.META_TURN: params.get("turn", 1),
        semconv.META_PROMPT: prompt[: semconv.META_PROMPT_CHARS],
        semconv.META_FLOW_RUN_ID: str(flow_run.id),
        semconv.META_FLOW_NAME: flow.name,
    }
    if flow_run.deployment_id:
        metadata[semconv.META_DEPLOYMENT] = str(flow_run.deployment_id)
    if params.get("region"):
        metadata[semconv.META_REGION] = params["region"]
    for key, value in (params.get("trace_metadata") or {}).items():
        metadata.setdefault(str(key), value)
    return metadata


@never_raise
def on_flow_running(flow: Any, flow_run: Any, state: Any) -> None:
    """Create the run's Nexus trace (once, even across flow retries)."""
    params = flow_run.parameters or {}
    get_tracer().begin(
        flow_run.id,
        name=semconv.trace_name(str(params.get("prompt", ""))),
        agent_name=nexus_settings().agent_id,
        metadata=trace_metadata(flow, flow_run),
    )


def _end(flow_run: Any, status: semconv.TraceStatus, *, dying: bool = False) -> None:
    # Only a crashing process waits for Nexus here; otherwise the run never waits on
    # Nexus and the exporter delivers in the background (and at process exit).
    get_tracer().end(flow_run.id, status=status, flush=dying)


@never_raise
def on_flow_completion(flow: Any, flow_run: Any, state: Any) -> None:
    """End the trace as success (or as finalization recorded it)."""
    _end(flow_run, semconv.TRACE_SUCCESS)


@never_raise
def on_flow_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """End the trace as error, or timeout for a TimedOut flow run."""
    timed_out = getattr(state, "name", "") == "TimedOut"
    _end(flow_run, semconv.TRACE_TIMEOUT if timed_out else semconv.TRACE_ERROR)


@never_raise
def on_flow_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """SIGTERM and other crashes: end the trace as error, closing open task spans."""
    _end(flow_run, semconv.TRACE_ERROR, dying=True)


@never_raise
def on_flow_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """A cancelled run's trace ends as error."""
    _end(flow_run, semconv.TRACE_ERROR, dying=True)


@never_raise
def on_task_running(task: Any, task_run: Any, state: Any) -> None:
    """Note the attempt; the span is posted complete when the task run ends."""
    key = trace_key(task_run.flow_run_id)
    if key is not None:
        get_tracer().task_started(key, task_run.id, task.name)


@never_raise
def on_task_completion(task: Any, task_run: Any, state: Any) -> None:
    """Post the `task:<name>` span with status ok."""
    key = trace_key(task_run.flow_run_id)
    if key is not None:
        get_tracer().task_ended(key, task_run.id, status="ok")


@never_raise
def on_task_failure(task: Any, task_run: Any, state: Any) -> None:
    """Post the `task:<name>` span with status error and the state's message."""
    key = trace_key(task_run.flow_run_id)
    if key is not None:
        message = getattr(state, "message", None) or "task failed"
        get_tracer().task_ended(key, task_run.id, status="error", error=message)


TASK_HOOKS: dict[str, list[Any]] = {
    "on_running": [on_task_running],
    "on_completion": [on_task_completion],
    "on_failure": [on_task_failure],
}
