"""The ASGI app: AWS's Bedrock Agent Runtime routes, plus a small ``/_emulator`` admin API.

Routes (as in the botocore service model):

- ``POST /agents/{agentId}/agentAliases/{agentAliasId}/sessions/{sessionId}/text``
  (InvokeAgent)
- ``POST /agents/{sessionId}`` (InvokeInlineAgent)
- ``GET /_emulator/health``: ``{"status": "ok", "agents": [...], "replay": [...]}``
- ``PUT /_emulator/sessions/{sessionId}/faults`` (JSON body: the fields of
  `faults.FaultSpec`) and ``DELETE`` on the same path: faults for one session id
- ``POST /_emulator/reset``: forget sessions, memories, call counts and session faults

Errors before the stream are JSON ``{"message": ...}`` bodies with ``x-amzn-ErrorType``;
errors inside it are ``:message-type: exception`` messages. The region used in ARNs is
the one of the request's SigV4 credential scope.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from nexus_bedrock_tasks.local.bedrock.config import AgentSpec, EmulatorConfig, load_config
from nexus_bedrock_tasks.local.bedrock.engine import AgentRun
from nexus_bedrock_tasks.local.bedrock.errors import (
    AwsError,
    StreamException,
    not_found,
    validation_error,
)
from nexus_bedrock_tasks.local.bedrock.eventstream import (
    CONTENT_TYPE_JSON,
    STREAM_CONTENT_TYPE,
    event_message,
    exception_message,
)
from nexus_bedrock_tasks.local.bedrock.faults import (
    CallCounter,
    FaultSpec,
    InjectedConnectionDrop,
    apply_stream_faults,
    faults_from_headers,
    parse_faults,
)
from nexus_bedrock_tasks.local.bedrock.inline import INLINE_AGENT_ID, inline_agent
from nexus_bedrock_tasks.local.bedrock.replay import ReplayLibrary
from nexus_bedrock_tasks.local.bedrock.returncontrol import validate_resume
from nexus_bedrock_tasks.local.bedrock.runtime import (
    Runtime,
    TurnRequest,
    alias_arn,
    session_policy,
)
from nexus_bedrock_tasks.local.bedrock.sessions import SessionKey, SessionStore
from nexus_bedrock_tasks.local.bedrock.traces import Envelope

logger = logging.getLogger(__name__)
_REGION_IN_AUTH = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")
_NOT_FOUND_MESSAGE = "Failed to retrieve resource because it doesn't exist."


def default_agents_file() -> Path:
    """``deployments/agents.yaml`` of the working directory, else the one of this checkout."""
    relative = Path("deployments") / "agents.yaml"
    if relative.is_file():
        return relative
    return Path(__file__).resolve().parents[3] / relative


@dataclass
class EmulatorState:
    """Everything the routes share."""

    config: EmulatorConfig
    runtime: Runtime
    replay: ReplayLibrary | None
    counter: CallCounter = field(default_factory=CallCounter)
    session_faults: dict[str, FaultSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class _Target:
    """Who answers a request: the agent, its trace envelope and its session key."""

    agent: AgentSpec
    envelope: Envelope
    key: SessionKey
    region: str


class _HideInjectedDrops(logging.Filter):
    """uvicorn logs an aborted response as an application error; an injected drop is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, InjectedConnectionDrop)


def create_app(agents_file: Path | None = None, replay_dir: Path | None = None) -> Starlette:
    """The emulator's ASGI app.

    Args:
        agents_file: the agents YAML (default: `default_agents_file()`).
        replay_dir: a recordings directory; its agent ids are replayed instead of emulated.

    Raises:
        ValueError: a bad agents file or replay directory.

    Example:
        >>> app = create_app(Path("deployments/agents.yaml"))
    """
    config = load_config(agents_file or default_agents_file())
    replay = ReplayLibrary(replay_dir) if replay_dir is not None else None
    state = EmulatorState(config, Runtime(config, SessionStore()), replay)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideInjectedDrops) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_HideInjectedDrops())
    routes = [
        Route(
            "/agents/{agentId}/agentAliases/{agentAliasId}/sessions/{sessionId}/text",
            invoke_agent,
            methods=["POST"],
        ),
        Route("/agents/{sessionId}", invoke_inline_agent, methods=["POST"]),
        Route("/_emulator/health", health, methods=["GET"]),
        Route("/_emulator/sessions/{sessionId}/faults", session_faults, methods=["PUT", "DELETE"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={AwsError: _aws_error, HTTPException: _http_error},
    )
    app.state.emulator = state
    return app


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


async def _aws_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AwsError)
    return JSONResponse(
        {"message": exc.message},
        status_code=exc.status,
        headers={"x-amzn-ErrorType": exc.header_value, "x-amzn-RequestId": str(uuid.uuid4())},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"message": f"{request.method} {request.url.path}: {exc.detail}"},
        status_code=exc.status_code,
        headers={"x-amzn-ErrorType": "UnknownOperationException"},
    )


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise validation_error(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise validation_error("The request body must be a JSON object.")
    return body


def _region(request: Request, config: EmulatorConfig) -> str:
    match = _REGION_IN_AUTH.search(request.headers.get("authorization", ""))
    return match.group(1) if match else config.region


def _faults(state: EmulatorState, agent_faults: FaultSpec, request: Request) -> FaultSpec:
    faults = agent_faults
    session_faults = state.session_faults.get(request.path_params["sessionId"])
    if session_faults is not None:
        faults = faults.overridden_by(session_faults)
    return faults.overridden_by(faults_from_headers(request.headers))


async def invoke_agent(request: Request) -> Response:
    """InvokeAgent."""
    state = _state(request)
    agent_id = request.path_params["agentId"]
    alias_id = request.path_params["agentAliasId"]
    session_id = request.path_params["sessionId"]
    body = await _json_body(request)
    recorded = state.replay.messages(agent_id) if state.replay else None
    agent = state.config.agent(agent_id, alias_id)
    if recorded is None and agent is None:
        raise not_found(_NOT_FOUND_MESSAGE)
    faults = _faults(state, agent.faults if agent else FaultSpec(), request)
    faults = state.counter.check(agent_id, session_id, faults)
    headers = _stream_headers(session_id, body.get("memoryId"))
    if recorded is not None:
        return _streaming(_recorded(recorded), faults, headers)
    assert agent is not None
    region = _region(request, state.config)
    envelope = Envelope(
        session_id=session_id,
        caller_chain=(alias_arn(region, state.config.account_id, agent.id, agent.alias),),
        agent_id=agent.id,
        alias_id=agent.alias,
        version=agent.version,
    )
    target = _Target(agent, envelope, (agent.id, agent.alias, session_id), region)
    return _start(state, target, body, body.get("sessionState") or {}, faults, headers)


async def invoke_inline_agent(request: Request) -> Response:
    """InvokeInlineAgent."""
    state = _state(request)
    session_id = request.path_params["sessionId"]
    body = await _json_body(request)
    agent = inline_agent(body, state.config)
    faults = _faults(state, FaultSpec(), request)
    faults = state.counter.check(INLINE_AGENT_ID, session_id, faults)
    region = _region(request, state.config)
    arn = f"arn:aws:bedrock:{region}:{state.config.account_id}:inline-agent/{agent.name}"
    envelope = Envelope(session_id, (arn,), agent.id, agent.alias, agent.version, inline=True)
    target = _Target(agent, envelope, ("", agent.alias, session_id), region)
    headers = _stream_headers(session_id, None)
    return _start(state, target, body, body.get("inlineSessionState") or {}, faults, headers)


def _start(
    state: EmulatorState,
    target: _Target,
    body: Mapping[str, Any],
    session_state: Mapping[str, Any],
    faults: FaultSpec,
    headers: dict[str, str],
) -> Response:
    """Check the request against its session and start the agent's stream.

    Raises:
        AwsError: ``ValidationException`` for a bad resume, a session waiting for
            returnControl results, or no input.
    """
    sessions = state.runtime.sessions
    session = sessions.open(target.key, session_policy(target.agent), body.get("memoryId"))
    text = str(body.get("inputText") or "")
    end_session = bool(body.get("endSession"))
    results = session_state.get("returnControlInvocationResults") or []
    outcomes = None
    if results:
        outcomes = validate_resume(session.pending, session_state.get("invocationId"), results)
    elif session.pending is not None and not end_session:
        raise validation_error(
            f"The session is waiting for the results of returnControl "
            f"{session.pending.invocation_id}; send them in "
            "sessionState.returnControlInvocationResults."
        )
    elif not text.strip():
        if not end_session:
            raise validation_error("inputText is required.")
        sessions.end(target.key)
        return _streaming(_recorded([]), faults, headers)
    streaming = body.get("streamingConfigurations") or {}
    request = TurnRequest(
        text=text,
        region=target.region,
        outcomes=outcomes,
        end_session=end_session,
        stream_final_response=bool(streaming.get("streamFinalResponse")),
        step_latency_s=faults.step_latency_ms / 1000,
    )
    run = AgentRun(state.runtime, target.agent, target.envelope, target.key, session, request)
    return _streaming(_encoded(run, bool(body.get("enableTrace"))), faults, headers)


def _stream_headers(session_id: str, memory_id: object) -> dict[str, str]:
    headers = {
        "x-amzn-bedrock-agent-content-type": CONTENT_TYPE_JSON,
        "x-amz-bedrock-agent-session-id": session_id,
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    if isinstance(memory_id, str):
        headers["x-amz-bedrock-agent-memory-id"] = memory_id
    return headers


def _streaming(
    messages: AsyncGenerator[bytes, None], faults: FaultSpec, headers: dict[str, str]
) -> StreamingResponse:
    return StreamingResponse(
        apply_stream_faults(messages, faults), headers=headers, media_type=STREAM_CONTENT_TYPE
    )


async def _recorded(messages: list[bytes]) -> AsyncGenerator[bytes, None]:
    for message in messages:
        yield message


async def _encoded(run: AgentRun, enable_trace: bool) -> AsyncGenerator[bytes, None]:
    events = run.events()
    try:
        async for kind, payload in events:
            if kind != "trace" or enable_trace:
                yield event_message(kind, payload)
    except StreamException as exc:
        logger.info("stream ends with %s", exc)
        yield exception_message(exc.exception_type, exc.message)
    finally:
        await events.aclose()


async def health(request: Request) -> Response:
    """Liveness and what is served."""
    state = _state(request)
    return JSONResponse(
        {
            "status": "ok",
            "agents": [f"{agent.id}/{agent.alias}" for agent in state.config.agents],
            "replay": state.replay.agent_ids if state.replay else [],
        }
    )


async def session_faults(request: Request) -> Response:
    """Set (PUT) or clear (DELETE) the faults of one session id."""
    state = _state(request)
    session_id = request.path_params["sessionId"]
    if request.method == "DELETE":
        state.session_faults.pop(session_id, None)
    else:
        state.session_faults[session_id] = parse_faults(await _json_body(request))
    return Response(status_code=204)


async def reset(request: Request) -> Response:
    """Forget sessions, memories, call counts and session faults."""
    state = _state(request)
    state.runtime.sessions.reset()
    state.counter.reset()
    state.session_faults.clear()
    return Response(status_code=204)
