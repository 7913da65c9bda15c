"""The typed, immutable result of reading one InvokeAgent completion stream.

Field names follow the Bedrock service model; nothing here is invented: a value the stream
did not carry stays ``None`` (for instance `ModelCall.model` when `foundationModel` is
absent and `rawResponse` is not JSON).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

Phase = Literal["preprocessing", "orchestration", "postprocessing", "routing", "custom"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one or more model calls."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """When a step ran: from trace `metadata` when present, else from `eventTime`."""

    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    """One retrieved knowledge-base passage."""

    text: str | None
    uri: str | None
    score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Citation:
    """One `attribution.citations[]` entry of a chunk."""

    text: str | None
    span_start: int | None
    span_end: int | None
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One model invocation (`modelInvocationInput` + `modelInvocationOutput`, same traceId)."""

    phase: Phase
    trace_id: str | None
    model: str | None
    usage: Usage | None
    stop_reason: str | None
    text: str | None
    prompt_type: str | None = None
    rationale: str | None = None
    timing: Timing = Timing()
    kind: Literal["llm"] = "llm"


@dataclass(frozen=True, slots=True)
class KnowledgeBaseLookup:
    """`knowledgeBaseLookupInput` and its `knowledgeBaseLookupOutput`."""

    trace_id: str | None
    knowledge_base_id: str | None
    query: str | None
    references: tuple[Reference, ...]
    completed: bool
    timing: Timing = Timing()
    kind: Literal["kb"] = "kb"


@dataclass(frozen=True, slots=True)
class ActionGroupCall:
    """`actionGroupInvocationInput` and its `actionGroupInvocationOutput.text`."""

    trace_id: str | None
    action_group: str | None
    function: str | None
    api_path: str | None
    verb: str | None
    parameters: tuple[dict[str, Any], ...]
    request_body: dict[str, Any] | None
    execution_type: str | None
    result: str | None
    completed: bool
    input_seen: bool = True
    timing: Timing = Timing()
    kind: Literal["action"] = "action"

    @property
    def is_lambda(self) -> bool:
        """A call the agent's Lambda ran, as opposed to a returnControl result echoed back.

        An `actionGroupInvocationOutput` without an input in the same stream is the result
        the caller supplied when it resumed the session after a returnControl.
        """
        return self.input_seen and self.execution_type != "RETURN_CONTROL"

    @property
    def operation(self) -> str:
        """`function`, else `apiPath`, else empty."""
        return self.function or self.api_path or ""


@dataclass(frozen=True, slots=True)
class CodeInterpreterCall:
    """`codeInterpreterInvocationInput` and its output."""

    trace_id: str | None
    code: str | None
    files: tuple[str, ...]
    output: str | None
    error: str | None
    completed: bool
    timing: Timing = Timing()
    kind: Literal["code_interpreter"] = "code_interpreter"


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    """One `guardrailTrace`."""

    trace_id: str | None
    action: str | None
    input_assessments: tuple[dict[str, Any], ...]
    output_assessments: tuple[dict[str, Any], ...]
    timing: Timing = Timing()
    kind: Literal["guardrail"] = "guardrail"

    @property
    def intervened(self) -> bool:
        """True when the guardrail blocked or masked content."""
        return self.action == "INTERVENED"


@dataclass(frozen=True, slots=True)
class Failure:
    """A `failureTrace`, or a modelled exception that arrived in the stream."""

    trace_id: str | None
    reason: str
    code: str | None = None
    timing: Timing = Timing()
    kind: Literal["failure"] = "failure"


@dataclass(frozen=True, slots=True)
class ReturnControlParameter:
    """One `{name, type, value}` of a returnControl invocation input (values are strings)."""

    name: str
    type: str | None
    value: str | None


@dataclass(frozen=True, slots=True)
class ReturnControlCall:
    """One `invocationInputs[]` entry: a function or an API call the caller must run."""

    action_group: str
    function: str | None
    api_path: str | None
    http_method: str | None
    parameters: tuple[ReturnControlParameter, ...]
    request_body: dict[str, Any] | None
    invocation_type: str | None = None

    @property
    def operation(self) -> str:
        """`function`, else `apiPath`."""
        return self.function or self.api_path or ""

    @property
    def confirmation_required(self) -> bool:
        """A person must approve (`confirmationState` CONFIRM/DENY) before it runs."""
        return self.invocation_type in ("USER_CONFIRMATION", "USER_CONFIRMATION_AND_RESULT")

    @property
    def caller_runs_tool(self) -> bool:
        """False for `USER_CONFIRMATION`: the agent runs its own Lambda once confirmed."""
        return self.invocation_type != "USER_CONFIRMATION"


@dataclass(frozen=True, slots=True)
class ReturnControlRequest:
    """The `returnControl` event: the agent waits for these calls' results."""

    invocation_id: str
    calls: tuple[ReturnControlCall, ...]
    kind: Literal["return_control"] = "return_control"


@dataclass(frozen=True, slots=True)
class GenericStep:
    """A trace or event type the reader does not model; kept, never dropped."""

    name: str
    trace_id: str | None
    payload: dict[str, Any]
    timing: Timing = Timing()
    kind: Literal["other"] = "other"


@dataclass(frozen=True, slots=True)
class CollaboratorCall:
    """`agentCollaboratorInvocationInput`/`Output`, with the collaborator's own steps nested."""

    trace_id: str | None
    name: str
    alias_arn: str | None
    input_text: str | None
    output_text: str | None
    steps: tuple[Step, ...]
    completed: bool
    timing: Timing = Timing()
    kind: Literal["collaborator"] = "collaborator"


Step: TypeAlias = (
    ModelCall
    | KnowledgeBaseLookup
    | ActionGroupCall
    | CodeInterpreterCall
    | CollaboratorCall
    | GuardrailCheck
    | Failure
    | ReturnControlRequest
    | GenericStep
)


@dataclass(frozen=True, slots=True)
class AgentTurn:
    """Everything one InvokeAgent response said.

    Attributes:
        text: the answer, the concatenated `chunk.bytes` (decoded once, as UTF-8).
        steps: top-level steps in stream order; collaborator steps nest inside theirs.
        finish_reason: see `nexus_bedrock_tasks.semconv` FINISH_* values.
        error: the stream error (exception code and message), if the stream failed.
        error_code: the modelled exception name, e.g. ``throttlingException``.
        session_id / agent_id / agent_alias_id / agent_version: from the first trace event.
    """

    text: str
    citations: tuple[Citation, ...]
    steps: tuple[Step, ...]
    finish_reason: str
    final_response: str | None = None
    error: str | None = None
    error_code: str | None = None
    session_id: str | None = None
    agent_id: str | None = None
    agent_alias_id: str | None = None
    agent_version: str | None = None
    event_count: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def return_control(self) -> ReturnControlRequest | None:
        """The returnControl request of this turn, if the agent handed control back."""
        for step in self.steps:
            if isinstance(step, ReturnControlRequest):
                return step
        return None

    def walk(self) -> list[Step]:
        """All steps, collaborator steps included, depth first in stream order."""
        return list(iter_steps(self.steps))

    def usage_by_phase(self) -> dict[str, Usage]:
        """Token usage summed per phase over every model call, nested ones included."""
        totals: dict[str, Usage] = {}
        for step in iter_steps(self.steps):
            if isinstance(step, ModelCall) and step.usage is not None:
                totals[step.phase] = totals.get(step.phase, Usage()) + step.usage
        return totals

    @property
    def usage(self) -> Usage:
        """Token usage summed over every model call of the turn, collaborators included."""
        total = Usage()
        for usage in self.usage_by_phase().values():
            total = total + usage
        return total


def iter_steps(steps: tuple[Step, ...]) -> Iterator[Step]:
    """Yield `steps` and, depth first, the steps nested in collaborator calls."""
    for step in steps:
        yield step
        if isinstance(step, CollaboratorCall):
            yield from iter_steps(step.steps)
