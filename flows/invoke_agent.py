"""The invocation flow: one Bedrock Agent invocation, one Nexus trace."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from pydantic import ValidationError

from nexus_bedrock_tasks import hooks
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.results import InvocationResult
from nexus_bedrock_tasks.runner import InvocationParams, run_invocation
from nexus_bedrock_tasks.tracing import current_trace, local_id


def _parameter_error(exc: ValidationError) -> ConfigError:
    problems = "; ".join(
        f"parameter {'.'.join(str(part) for part in error['loc'])!r}: {error['msg']}"
        for error in exc.errors()
    )
    return ConfigError(f"{problems} (see `invoke_agent_flow`'s parameters)")


@flow(
    name="invoke-agent",
    # Prefect would build a pydantic model of the signature on every call (~10 ms);
    # `InvocationParams` checks the same types, naming the parameter.
    validate_parameters=False,
    # The answer is returned and mirrored into Nexus, not persisted. Naming the storage
    # (Prefect's own local default) spares a blocking read of the server's default result
    # storage on the event loop in every run (~8-10 ms), which Prefect makes even when
    # nothing is persisted. Persist with `with_options(persist_result=True)` (here) or
    # `with_options(persist_result=True, result_storage="s3-bucket/results")`.
    persist_result=False,
    result_storage=get_current_settings().results.local_storage_path,
    on_running=[hooks.on_flow_running],
    on_completion=[hooks.on_flow_completion],
    on_failure=[hooks.on_flow_failure],
    on_crashed=[hooks.on_flow_crashed],
    on_cancellation=[hooks.on_flow_cancellation],
)
async def invoke_agent_flow(
    agent_id: str,
    agent_alias_id: str,
    prompt: str,
    session_id: str | None = None,
    session_attributes: dict[str, str] | None = None,
    prompt_session_attributes: dict[str, str] | None = None,
    max_return_control_rounds: int | None = None,
    max_total_tokens: int | None = None,
    max_cost_usd: float | None = None,
    enable_trace: bool = True,
    memory_id: str | None = None,
    end_session: bool = False,
    region: str | None = None,
    endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
    tools_module: str | None = None,
    turn: int = 1,
    trace_metadata: dict[str, Any] | None = None,
) -> InvocationResult:
    """Invoke a Bedrock Agent until it answers, serving returnControl with local tools.

    Every run is one Nexus trace (see ../shared/SPANS.md): the flow's hooks create and end
    it, the tasks add their spans. `turn` and `trace_metadata` only label the trace (a
    session flow sets `turn`; anything else may add metadata keys).

    Example:
        >>> result = await invoke_agent_flow("DEMO000001", "TSTALIASID", "Weather in Paris?")
        >>> result.text, result.finish_reason, result.usage.total_tokens
    """
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
        raise ConfigError(f"parameter 'turn': {turn!r} is not a whole number from 1")
    if trace_metadata is not None and not isinstance(trace_metadata, dict):
        raise ConfigError("parameter 'trace_metadata': give a mapping of names to JSON values")
    try:
        params = InvocationParams(
            agent_id=agent_id,
            agent_alias_id=agent_alias_id,
            prompt=prompt,
            session_id=session_id,
            session_attributes=session_attributes,
            prompt_session_attributes=prompt_session_attributes,
            max_return_control_rounds=max_return_control_rounds,
            max_total_tokens=max_total_tokens,
            max_cost_usd=max_cost_usd,
            enable_trace=enable_trace,
            memory_id=memory_id,
            end_session=end_session,
            region=region,
            endpoint_url=endpoint_url,
            aws_credentials_block=aws_credentials_block,
            tools_module=tools_module,
        )
    except ValidationError as exc:
        raise _parameter_error(exc) from exc
    context = FlowRunContext.get()
    run_id = context.flow_run.id if context and context.flow_run else None
    key = local_id(run_id) if run_id is not None else None
    # This run's tasks report to this run's trace, even when a caller set another one.
    token = current_trace.set(key)
    try:
        return await run_invocation(params, trace=key, session_seed=str(run_id or ""))
    finally:
        current_trace.reset(token)
