"""The session flow: several turns in one Bedrock session, one Nexus trace per turn."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from flows.invoke_agent import invoke_agent_flow
from nexus_bedrock_tasks.bedrock.client import cached_client, call_with_retry, describe_aws_error
from nexus_bedrock_tasks.exceptions import ConfigError, NexusBedrockError
from nexus_bedrock_tasks.invocation import session_id_for, validate_invocation
from nexus_bedrock_tasks.results import InvocationFailed, InvocationResult, TokenUsage
from nexus_bedrock_tasks.settings import BedrockTasksSettings

SESSION_FLOW_RUN_ID = "session_flow_run_id"
_TURNS_SETTING = "NEXUS_BEDROCK_SESSION_WARN_TURNS"
_TOKENS_SETTING = "NEXUS_BEDROCK_SESSION_WARN_TOKENS"


class SessionTurn(BaseModel):
    """One turn of a transcript."""

    turn: int
    prompt: str
    text: str
    finish_reason: str
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float | None = None
    trace_id: str | None = None
    local_trace_id: str
    flow_run_id: str | None = None
    latency_s: float | None = None
    error: str | None = None


class SessionTranscript(BaseModel):
    """What `agent_session` returns (and `nexus-bedrock session --json` prints).

    Attributes:
        usage: tokens over every turn.
        session_ended: the session was ended with ``endSession`` after the last turn.
        warnings: history-size warnings (turns or tokens past the configured limits).
    """

    agent_id: str
    agent_alias_id: str
    session_id: str
    memory_id: str | None = None
    turns: list[SessionTurn] = Field(default_factory=list)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float | None = None
    session_ended: bool = False
    warnings: list[str] = Field(default_factory=list)

    def add(self, prompt: str, result: InvocationResult) -> None:
        """Append a turn and update the totals."""
        self.turns.append(
            SessionTurn(
                turn=len(self.turns) + 1,
                prompt=prompt,
                text=result.text,
                finish_reason=result.finish_reason,
                usage=result.usage,
                cost_usd=result.cost_usd,
                trace_id=result.trace_id,
                local_trace_id=result.local_trace_id,
                flow_run_id=result.flow_run_id,
                latency_s=result.latency_s,
                error=result.error,
            )
        )
        self.usage = TokenUsage(
            input_tokens=self.usage.input_tokens + result.usage.input_tokens,
            output_tokens=self.usage.output_tokens + result.usage.output_tokens,
            total_tokens=self.usage.total_tokens + result.usage.total_tokens,
        )
        if result.cost_usd is not None:
            self.cost_usd = round((self.cost_usd or 0.0) + result.cost_usd, 8)


class SessionFailed(NexusBedrockError):
    """A turn of the session got no answer; `transcript` holds the turns so far."""

    def __init__(self, transcript: SessionTranscript) -> None:
        last = transcript.turns[-1] if transcript.turns else None
        detail = f"turn {last.turn} failed: {last.error}" if last else "no turn ran"
        super().__init__(f"session {transcript.session_id}: {detail}")
        self.transcript = transcript


def history_warnings(transcript: SessionTranscript, settings: BedrockTasksSettings) -> list[str]:
    """New warnings the session's size deserves now (each kind at most once per session)."""
    found: list[str] = []
    turns, tokens = len(transcript.turns), transcript.usage.total_tokens
    if turns > settings.session_warn_turns and not _warned(transcript, _TURNS_SETTING):
        found.append(
            f"session {transcript.session_id} has {turns} turns (more than "
            f"{_TURNS_SETTING}={settings.session_warn_turns}): every turn sends the growing "
            "history again; start a new session or summarise it"
        )
    if tokens > settings.session_warn_tokens and not _warned(transcript, _TOKENS_SETTING):
        found.append(
            f"session {transcript.session_id} used {tokens:,} tokens (more than "
            f"{_TOKENS_SETTING}={settings.session_warn_tokens:,}); start a new session or "
            "summarise the history"
        )
    return found


def _warned(transcript: SessionTranscript, setting: str) -> bool:
    return any(setting in warning for warning in transcript.warnings)


def _end_session(
    request: dict[str, Any],
    settings: BedrockTasksSettings,
    region: str | None,
    endpoint_url: str | None,
    credentials_block: str | None,
) -> None:
    client = cached_client(
        region=region, endpoint_url=endpoint_url, credentials_block=credentials_block
    )
    response, _ = call_with_retry(lambda: client.invoke_agent(**request), settings)
    for _event in response["completion"]:
        pass


@task(name="end_agent_session", cache_policy=NO_CACHE, persist_result=False)
async def end_agent_session(
    agent_id: str,
    agent_alias_id: str,
    session_id: str,
    memory_id: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
) -> bool:
    """End a Bedrock session (``endSession``; with a memory id Bedrock summarises it).

    tenacity retries transient AWS errors; a failure is logged and returns False.

    Example:
        >>> await end_agent_session("DEMO000001", "TSTALIASID", "my-session")
        True
    """
    settings = BedrockTasksSettings()
    request: dict[str, Any] = {
        "agentId": agent_id,
        "agentAliasId": agent_alias_id,
        "sessionId": session_id,
        "endSession": True,
    }
    if memory_id:
        request["memoryId"] = memory_id
    try:
        await asyncio.to_thread(
            _end_session, request, settings, region, endpoint_url, aws_credentials_block
        )
    except Exception as exc:
        get_run_logger().warning(
            "could not end session %s: %s", session_id, describe_aws_error(exc)
        )
        return False
    return True


@flow(name="agent-session")
async def agent_session(
    agent_id: str,
    agent_alias_id: str,
    turns: list[str],
    session_id: str | None = None,
    session_attributes: dict[str, str] | None = None,
    memory_id: str | None = None,
    end_session: bool = True,
    region: str | None = None,
    endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
    tools_module: str | None = None,
) -> SessionTranscript:
    """Run `turns` in order in one Bedrock session, each turn an invocation subflow.

    Each turn is one Nexus trace with metadata ``session_id`` and ``turn`` (1, 2, …) and
    ``session_flow_run_id``. The session attributes go with every turn; the session is
    ended after the last turn (also after a failed one) unless `end_session` is False.
    A warning is logged once when the session grows past
    ``NEXUS_BEDROCK_SESSION_WARN_TURNS`` turns or ``NEXUS_BEDROCK_SESSION_WARN_TOKENS``.

    Raises:
        ConfigError: no turns, or a malformed id or prompt (checked before any call).
        SessionFailed: a turn got no answer (the session is still ended).

    Example:
        >>> transcript = await agent_session(
        ...     "DEMO000001", "TSTALIASID", ["What's in Lisbon?", "What did I ask earlier?"]
        ... )
        >>> [turn.text for turn in transcript.turns], transcript.usage.total_tokens
    """
    if not turns:
        raise ConfigError("turns is empty: give at least one prompt")
    for prompt in turns:
        validate_invocation(
            agent_id=agent_id, agent_alias_id=agent_alias_id, prompt=prompt, session_id=session_id
        )
    context = FlowRunContext.get()
    run_id = context.flow_run.id if context and context.flow_run else None
    session = session_id or session_id_for(run_id or "")
    settings = BedrockTasksSettings()
    logger = get_run_logger()
    transcript = SessionTranscript(
        agent_id=agent_id, agent_alias_id=agent_alias_id, session_id=session, memory_id=memory_id
    )
    failed = False
    try:
        for number, prompt in enumerate(turns, start=1):
            try:
                result = await invoke_agent_flow(
                    agent_id,
                    agent_alias_id,
                    prompt,
                    session_id=session,
                    session_attributes=session_attributes,
                    memory_id=memory_id,
                    region=region,
                    endpoint_url=endpoint_url,
                    aws_credentials_block=aws_credentials_block,
                    tools_module=tools_module,
                    turn=number,
                    trace_metadata={SESSION_FLOW_RUN_ID: str(run_id)} if run_id else None,
                )
            except InvocationFailed as exc:
                transcript.add(prompt, exc.result)
                failed = True
                break
            transcript.add(prompt, result)
            for warning in history_warnings(transcript, settings):
                logger.warning(warning)
                transcript.warnings.append(warning)
    finally:
        if end_session:
            transcript.session_ended = await end_agent_session(
                agent_id,
                agent_alias_id,
                session,
                memory_id=memory_id,
                region=region,
                endpoint_url=endpoint_url,
                aws_credentials_block=aws_credentials_block,
            )
    if failed:
        raise SessionFailed(transcript)
    return transcript
