"""What the invocation flow returns (and the CLI prints with `--json`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from nexus_bedrock_tasks.exceptions import NexusBedrockError


class TokenUsage(BaseModel):
    """Tokens over every model call of the invocation."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class InvocationResult(BaseModel):
    """The typed result of `invoke_agent_flow`.

    Attributes:
        trace_id: the Nexus trace id when Nexus acknowledged it in time, else None
            (the trace is still delivered from the outbox; `local_trace_id` names it).
    """

    text: str
    session_id: str
    trace_id: str | None = None
    local_trace_id: str
    flow_run_id: str | None = None
    finish_reason: str
    usage: TokenUsage = Field(default_factory=TokenUsage)
    counts: dict[str, int] = Field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None
    latency_s: float | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)

    def cli_json(self) -> dict[str, Any]:
        """Exactly the keys of the `nexus-bedrock invoke --json` contract."""
        return {
            "text": self.text,
            "session_id": self.session_id,
            "trace_id": self.trace_id,
            "flow_run_id": self.flow_run_id,
            "finish_reason": self.finish_reason,
            "usage": self.usage.model_dump(),
            "counts": dict(self.counts),
            "cost_usd": self.cost_usd,
            "error": self.error,
        }


class InvocationFailed(NexusBedrockError):
    """The invocation ended without an answer; `result` holds what was learned."""

    def __init__(self, result: InvocationResult) -> None:
        super().__init__(result.error or "invocation failed")
        self.result = result
