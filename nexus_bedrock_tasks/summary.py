"""The figures of one invocation: what the `summary` span of SPANS.md carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.bedrock.model import (
    ActionGroupCall,
    AgentTurn,
    CodeInterpreterCall,
    CollaboratorCall,
    GuardrailCheck,
    KnowledgeBaseLookup,
    ModelCall,
    ReturnControlRequest,
    iter_steps,
)
from nexus_bedrock_tasks.pricing import PriceTable, cost_usd


@dataclass(frozen=True, slots=True)
class InvocationSummary:
    """Totals over every turn (returnControl rounds, re-invocations) of one invocation."""

    finish_reason: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    llm_calls: int
    kb_lookups: int
    action_calls: int
    code_interpreter_calls: int
    collaborator_calls: int
    guardrail_interventions: int
    return_control_rounds: int
    tool_calls: int
    citations: int
    retries: int
    answer_chars: int
    cost_usd: float | None

    def as_dict(self) -> dict[str, Any]:
        """The `summary` span output, keys in SPANS.md order."""
        data = asdict(self)
        return {key: data[key] for key in semconv.SUMMARY_FIELDS}

    def counts(self) -> dict[str, int]:
        """Only the count fields."""
        data = asdict(self)
        return {key: int(data[key]) for key in semconv.SUMMARY_COUNT_FIELDS}


def summarize(
    turns: Sequence[AgentTurn],
    *,
    prices: PriceTable,
    answer: str | None = None,
    tool_calls: int = 0,
    retries: int = 0,
    finish_reason: str | None = None,
) -> InvocationSummary:
    """Sum the figures of `turns`.

    Args:
        turns: every InvokeAgent response of the invocation, failed attempts included
            (their tokens were spent).
        prices: USD per 1k tokens by model-id prefix.
        answer: the final answer; defaults to the last turn's text.
        tool_calls: tools executed locally for returnControl.
        retries: re-invocations after transient errors.
        finish_reason: overrides the last turn's finish reason (budgets, timeouts).
    """
    steps = [step for turn in turns for step in iter_steps(turn.steps)]
    calls = [step for step in steps if isinstance(step, ModelCall)]
    input_tokens = sum(call.usage.input_tokens for call in calls if call.usage)
    output_tokens = sum(call.usage.output_tokens for call in calls if call.usage)
    text = answer if answer is not None else (turns[-1].text if turns else "")
    reason = finish_reason or (turns[-1].finish_reason if turns else semconv.FINISH_ERROR)
    return InvocationSummary(
        finish_reason=reason,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        llm_calls=len(calls),
        kb_lookups=sum(isinstance(step, KnowledgeBaseLookup) for step in steps),
        action_calls=sum(isinstance(step, ActionGroupCall) and step.is_lambda for step in steps),
        code_interpreter_calls=sum(isinstance(step, CodeInterpreterCall) for step in steps),
        collaborator_calls=sum(isinstance(step, CollaboratorCall) for step in steps),
        guardrail_interventions=sum(
            isinstance(step, GuardrailCheck) and step.intervened for step in steps
        ),
        return_control_rounds=sum(isinstance(step, ReturnControlRequest) for step in steps),
        tool_calls=tool_calls,
        citations=sum(len(turn.citations) for turn in turns),
        retries=retries,
        answer_chars=len(text),
        cost_usd=cost_usd(calls, prices),
    )
