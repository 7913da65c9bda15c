"""Span names, statuses and summary fields of the Nexus contract (../shared/SPANS.md).

Every name a trace reader depends on is a constant here; nothing else spells them.
"""

from __future__ import annotations

from typing import Final, Literal

TraceStatus = Literal["running", "success", "error", "timeout"]
SpanStatus = Literal["ok", "error"]

TRACE_RUNNING: Final = "running"
TRACE_SUCCESS: Final = "success"
TRACE_ERROR: Final = "error"
TRACE_TIMEOUT: Final = "timeout"

SPAN_OK: Final = "ok"
SPAN_ERROR: Final = "error"

TRACE_NAME_PREFIX: Final = "invoke: "
TRACE_NAME_PROMPT_CHARS: Final = 60

TASK_SPAN_PREFIX: Final = "task:"
LLM_SPAN_PREFIX: Final = "llm:"
KB_SPAN: Final = "kb:lookup"
ACTION_SPAN_PREFIX: Final = "action:"
CODE_INTERPRETER_SPAN: Final = "code_interpreter"
COLLABORATOR_SPAN_PREFIX: Final = "collaborator:"
GUARDRAIL_SPAN: Final = "guardrail"
RETURN_CONTROL_SPAN: Final = "return_control"
TOOL_SPAN_PREFIX: Final = "tool:"
FAILURE_SPAN: Final = "failure"
SUMMARY_SPAN: Final = "summary"
# Steps the reader kept but the contract does not name (unknown trace types, files).
OTHER_SPAN_PREFIX: Final = "bedrock:"

# Phase names used in `llm:<phase>`.
PHASE_PREPROCESSING: Final = "preprocessing"
PHASE_ORCHESTRATION: Final = "orchestration"
PHASE_POSTPROCESSING: Final = "postprocessing"
PHASE_ROUTING: Final = "routing"
PHASE_CUSTOM: Final = "custom"

# Finish reasons (summary.finish_reason).
FINISH_END_TURN: Final = "end_turn"
FINISH_MAX_TOKENS: Final = "max_tokens"
FINISH_GUARDRAIL: Final = "guardrail"
FINISH_RETURN_CONTROL: Final = "return_control"
FINISH_RETURN_CONTROL_UNANSWERED: Final = "return_control_unanswered"
FINISH_ERROR: Final = "error"
FINISH_TIMEOUT: Final = "timeout"
FINISH_TOKEN_BUDGET: Final = "token_budget_exceeded"
FINISH_COST_BUDGET: Final = "cost_budget_exceeded"
FINISH_ASK_USER: Final = "ask_user"

# The `summary` span's output keys, in the order of SPANS.md.
SUMMARY_COUNT_FIELDS: Final = (
    "llm_calls",
    "kb_lookups",
    "action_calls",
    "code_interpreter_calls",
    "collaborator_calls",
    "guardrail_interventions",
    "return_control_rounds",
    "tool_calls",
    "citations",
    "retries",
    "answer_chars",
)
SUMMARY_FIELDS: Final = (
    "finish_reason",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    *SUMMARY_COUNT_FIELDS,
    "cost_usd",
)

# Trace metadata keys set at creation (PATCH ignores metadata).
META_AGENT_ID: Final = "agent_id"
META_AGENT_ALIAS_ID: Final = "agent_alias_id"
META_SESSION_ID: Final = "session_id"
META_TURN: Final = "turn"
META_PROMPT: Final = "prompt"
META_FLOW_RUN_ID: Final = "flow_run_id"
META_FLOW_NAME: Final = "flow_name"
META_DEPLOYMENT: Final = "deployment"
META_REGION: Final = "region"
META_PROMPT_CHARS: Final = 500


def trace_name(prompt: str) -> str:
    """The Nexus trace name for one invocation: ``invoke: <prompt[:60]>``."""
    return f"{TRACE_NAME_PREFIX}{prompt[:TRACE_NAME_PROMPT_CHARS]}"
