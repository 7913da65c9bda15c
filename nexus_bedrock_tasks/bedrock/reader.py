"""Pure reader: InvokeAgent completion events → an immutable `AgentTurn`.

Follows ../shared/BEDROCK_AGENT_STREAM.md: model input and output are correlated by
`traceId` within a phase; usage is taken from every `modelInvocationOutput` of every
phase and every collaborator; collaborator steps are nested by `callerChain` (each
collaborator's events carry the caller chain extended by the collaborator's alias ARN);
citations come from `chunk.attribution`. Unknown event or trace types become
`GenericStep`s. The reader does no I/O; `read_turn` turns a stream failure into a partial
turn with finish reason ``error``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, EventStreamError
from urllib3.exceptions import HTTPError as TransportError

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock import parts
from nexus_bedrock_tasks.bedrock.model import (
    AgentTurn,
    Citation,
    Failure,
    GenericStep,
    ModelCall,
    ReturnControlRequest,
    Step,
    Timing,
)
from nexus_bedrock_tasks.bedrock.parts import (
    ActionBuilder,
    Builder,
    CodeInterpreterBuilder,
    CollaboratorBuilder,
    Container,
    KnowledgeBaseBuilder,
    as_datetime,
)
from nexus_bedrock_tasks.exceptions import StreamDecodeError

PHASE_KEYS: dict[str, str] = {
    "preProcessingTrace": semconv.PHASE_PREPROCESSING,
    "orchestrationTrace": semconv.PHASE_ORCHESTRATION,
    "postProcessingTrace": semconv.PHASE_POSTPROCESSING,
    "routingClassifierTrace": semconv.PHASE_ROUTING,
    "customOrchestrationTrace": semconv.PHASE_CUSTOM,
}
_INPUT_BUILDERS: dict[str, type[Builder]] = {
    "knowledgeBaseLookupInput": KnowledgeBaseBuilder,
    "actionGroupInvocationInput": ActionBuilder,
    "codeInterpreterInvocationInput": CodeInterpreterBuilder,
    "agentCollaboratorInvocationInput": CollaboratorBuilder,
}
_OUTPUT_KEYS = frozenset(
    {
        "knowledgeBaseLookupOutput",
        "actionGroupInvocationOutput",
        "codeInterpreterInvocationOutput",
        "agentCollaboratorInvocationOutput",
    }
)
# Errors a stream iterator raises mid-way: modelled exceptions, transport and framing errors.
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    EventStreamError,
    BotoCoreError,
    StreamDecodeError,
    TransportError,
    OSError,
)


class TurnReader:
    """Incremental reader: `feed` each event, then `finish` once.

    Example:
        >>> reader = TurnReader()
        >>> for event in response["completion"]:
        ...     reader.feed(event)
        >>> turn = reader.finish()
    """

    def __init__(self) -> None:
        self._root = Container(name=None)
        self._by_chain: dict[tuple[str, ...], list[Container]] = {}
        self._root_chain: tuple[str, ...] | None = None
        self._chunks: list[bytes] = []
        self._citations: list[Citation] = []
        self._identity: dict[str, str | None] = {}
        self._event_count = 0
        self._first_time: Any = None
        self._last_time: Any = None

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take one event dict as boto3 yields it (``{"chunk": ...}``, ``{"trace": ...}``…)."""
        self._event_count += 1
        for key, body in event.items():
            try:
                self._on_event(key, body)
            except (AttributeError, TypeError, ValueError, KeyError) as exc:
                # A shape the service model does not allow: keep it visible, never crash.
                payload = {"error": f"{type(exc).__name__}: {exc}", "value": repr(body)[:2000]}
                self._root.add(GenericStep(name=f"malformed.{key}", trace_id=None, payload=payload))

    def _on_event(self, key: str, body: Any) -> None:
        if not isinstance(body, Mapping):
            self._root.add(GenericStep(name=key, trace_id=None, payload={"value": body}))
        elif key == "chunk":
            self._on_chunk(body)
        elif key == "trace":
            self._on_trace(body)
        elif key == "returnControl":
            self._root.add(parts.return_control_request(body))
        elif key.endswith("Exception"):
            self._root.error = (key, str(body.get("message", "")))
        else:
            self._root.add(GenericStep(name=key, trace_id=None, payload=dict(body)))

    def finish(self, error: BaseException | None = None) -> AgentTurn:
        """Freeze what was read. `error` is the exception that ended the stream, if any."""
        if error is not None and self._root.error is None:
            self._root.error = _describe_error(error)
        if self._event_count == 0 and self._root.error is None:
            self._root.error = ("emptyStream", "the stream ended before any event arrived")
        text = b"".join(self._chunks).decode("utf-8", errors="replace")
        steps = self._root.build_steps()
        error_pair = self._root.error
        if error_pair is not None:
            code, message = error_pair
            steps = (*steps, Failure(trace_id=None, reason=message, code=code))
        return AgentTurn(
            text=text,
            citations=tuple(self._citations),
            steps=steps,
            finish_reason=self._finish_reason(steps, text),
            final_response=self._root.final_response,
            error=None if error_pair is None else f"{error_pair[0]}: {error_pair[1]}",
            error_code=None if error_pair is None else error_pair[0],
            session_id=self._identity.get("sessionId"),
            agent_id=self._identity.get("agentId"),
            agent_alias_id=self._identity.get("agentAliasId"),
            agent_version=self._identity.get("agentVersion"),
            event_count=self._event_count,
            started_at=as_datetime(self._first_time),
            ended_at=as_datetime(self._last_time),
        )

    def _finish_reason(self, steps: tuple[Step, ...], text: str) -> str:
        if self._root.error is not None:
            return semconv.FINISH_ERROR
        if any(getattr(step, "intervened", False) for step in steps):
            return semconv.FINISH_GUARDRAIL
        if any(isinstance(step, ReturnControlRequest) for step in steps):
            return semconv.FINISH_RETURN_CONTROL
        if any(isinstance(step, Failure) for step in steps):
            return semconv.FINISH_ERROR
        if self._root.last_observation_type == "ASK_USER":
            return semconv.FINISH_ASK_USER
        model_calls = [step for step in steps if isinstance(step, ModelCall)]
        if model_calls and model_calls[-1].stop_reason == "max_tokens":
            return semconv.FINISH_MAX_TOKENS
        return semconv.FINISH_END_TURN

    def _on_chunk(self, chunk: Mapping[str, Any]) -> None:
        data = chunk.get("bytes")
        if isinstance(data, bytes | bytearray):
            self._chunks.append(bytes(data))
        elif isinstance(data, str):
            self._chunks.append(data.encode("utf-8"))
        attribution = chunk.get("attribution") or {}
        for raw in attribution.get("citations") or ():
            self._citations.append(parts.citation(raw))

    def _on_trace(self, part: Mapping[str, Any]) -> None:
        event_time = part.get("eventTime")
        if event_time is not None:
            self._first_time = self._first_time or event_time
            self._last_time = event_time
        for key in ("sessionId", "agentId", "agentAliasId", "agentVersion"):
            if key not in self._identity and part.get(key) is not None:
                self._identity[key] = str(part[key])
        container = self._container_for(part)
        for key, body in (part.get("trace") or {}).items():
            if not isinstance(body, Mapping):
                container.add(GenericStep(name=key, trace_id=None, payload={"value": body}))
            elif key in PHASE_KEYS:
                self._on_phase(container, PHASE_KEYS[key], body, event_time)
            elif key == "guardrailTrace":
                container.add(parts.guardrail_check(body))
            elif key == "failureTrace":
                container.add(parts.failure(body))
            else:
                container.add(
                    GenericStep(name=key, trace_id=body.get("traceId"), payload=dict(body))
                )

    def _on_phase(
        self, container: Container, phase: str, body: Mapping[str, Any], event_time: Any
    ) -> None:
        for key, value in body.items():
            if key == "traceId":
                continue
            if not isinstance(value, Mapping):
                container.add(
                    GenericStep(name=f"{phase}.{key}", trace_id=None, payload={key: value})
                )
            elif key == "modelInvocationInput":
                container.open_model(phase, value, event_time)
            elif key == "modelInvocationOutput":
                container.close_model(phase, value, event_time)
            elif key == "rationale":
                container.attach_rationale(value)
            elif key == "invocationInput":
                self._on_invocation_input(container, value, event_time)
            elif key == "observation":
                self._on_observation(container, value, event_time)
            else:
                trace_id = value.get("traceId") or body.get("traceId")
                container.add(_generic(f"{phase}.{key}", trace_id, value, event_time))

    def _on_invocation_input(
        self, container: Container, value: Mapping[str, Any], event_time: Any
    ) -> None:
        trace_id = value.get("traceId")
        for key, payload in value.items():
            builder_type = _INPUT_BUILDERS.get(key)
            if builder_type is None or not isinstance(payload, Mapping):
                continue
            builder = builder_type(trace_id, payload, event_time)
            container.open_invocation(builder)
            if isinstance(builder, CollaboratorBuilder):
                chain = container.chain + ((builder.alias_arn or builder.name),)
                builder.container.chain = chain
                self._by_chain.setdefault(chain, []).append(builder.container)
            return
        name = f"invocationInput.{value.get('invocationType', 'unknown')}"
        container.add(_generic(name, trace_id, value, event_time))

    def _on_observation(
        self, container: Container, value: Mapping[str, Any], event_time: Any
    ) -> None:
        trace_id = value.get("traceId")
        if value.get("type"):
            container.last_observation_type = str(value["type"])
        final = value.get("finalResponse")
        if isinstance(final, Mapping):
            container.final_response = final.get("text")
        for key in _OUTPUT_KEYS.intersection(value):
            payload = value[key]
            builder = container.close_invocation(key, trace_id, payload, event_time)
            if isinstance(builder, CollaboratorBuilder):
                open_list = self._by_chain.get(builder.container.chain, [])
                if builder.container in open_list:
                    open_list.remove(builder.container)
        reprompt = value.get("repromptResponse")
        if isinstance(reprompt, Mapping):
            container.add(GenericStep(name="reprompt", trace_id=trace_id, payload=dict(reprompt)))

    def _container_for(self, part: Mapping[str, Any]) -> Container:
        chain = tuple(
            str(link.get("agentAliasArn", ""))
            for link in (part.get("callerChain") or ())
            if isinstance(link, Mapping)
        )
        if self._root_chain is None and len(chain) <= 1:
            self._root_chain = chain
            self._root.chain = chain
        if len(chain) <= 1:
            return self._root
        return self._open_container(chain, part.get("collaboratorName"))

    def _open_container(self, chain: tuple[str, ...], name: Any) -> Container:
        open_list = self._by_chain.get(chain)
        if open_list:
            return open_list[-1]
        # A collaborator whose invocation input we never saw: nest it under its caller anyway.
        parent = self._root if len(chain) <= 2 else self._open_container(chain[:-1], None)
        label = str(name) if name and len(chain) == 2 else parts.alias_label(chain[-1])
        builder = CollaboratorBuilder(None, {"agentCollaboratorName": label}, None)
        builder.alias_arn = chain[-1]
        builder.container.chain = chain
        parent.open_invocation(builder)
        self._by_chain.setdefault(chain, []).append(builder.container)
        return builder.container


def _generic(
    name: str, trace_id: str | None, value: Mapping[str, Any], event_time: Any
) -> GenericStep:
    """An unmodelled part of a trace, kept with its payload and arrival time."""
    return GenericStep(
        name=name,
        trace_id=trace_id,
        payload=dict(value),
        timing=Timing(started_at=as_datetime(event_time)),
    )


def _describe_error(error: BaseException) -> tuple[str, str]:
    if isinstance(error, EventStreamError):
        info = error.response.get("Error", {})
        return str(info.get("Code", "EventStreamError")), str(info.get("Message", error))
    if isinstance(error, StreamDecodeError):
        return "streamDecodeError", str(error)
    return type(error).__name__, str(error)


def read_turn(events: Iterable[Mapping[str, Any]]) -> AgentTurn:
    """Read a whole completion stream into an `AgentTurn`.

    A modelled in-stream exception, a transport error or a corrupt/truncated body ends
    the read early: the result is the partial turn with finish reason ``error`` and the
    error recorded, never an unhandled exception.

    Example:
        >>> response = client.invoke_agent(agentId=..., agentAliasId=..., sessionId=...,
        ...                                inputText="hi", enableTrace=True)
        >>> turn = read_turn(response["completion"])
        >>> turn.usage.total_tokens
    """
    reader = TurnReader()
    try:
        for event in events:
            reader.feed(event)
    except STREAM_ERRORS as exc:
        return reader.finish(error=exc)
    return reader.finish()


def read_raw(data: bytes, operation: str = "InvokeAgent") -> AgentTurn:
    """Read a raw InvokeAgent response body (as in ../shared/recordings)."""
    from nexus_bedrock_tasks.bedrock.events import decode_completion

    return read_turn(decode_completion(data, operation))
