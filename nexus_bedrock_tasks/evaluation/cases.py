"""What one evaluation case asks for, and what its run produced (the scorers' input)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _as_list(value: Any) -> Any:
    """A single string where a list is expected is a list of one."""
    return [value] if isinstance(value, str) else value


class EvalCase(BaseModel):
    """One line of a dataset.

    Only `id` and `prompt` are required. `turns` are prompts sent first, in order, in the
    same Bedrock session; `prompt` is the last turn and its answer is the one scored.
    Text checks (`must_contain`, `must_not_contain`) ignore case; `expected` must match
    the whole answer (surrounding whitespace ignored); `expected_regex` is searched.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1)
    session_id: str | None = None
    turns: list[str] = Field(default_factory=list)
    expected: str | None = None
    expected_regex: str | None = None
    must_contain: list[str] = Field(default_factory=list)
    must_not_contain: list[str] = Field(default_factory=list)
    expected_tools: list[str] = Field(default_factory=list)
    expected_finish_reason: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_latency_s: float | None = Field(default=None, gt=0)
    tags: list[str] = Field(default_factory=list)

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator(
        "turns", "must_contain", "must_not_contain", "expected_tools", "tags", mode="before"
    )
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("expected_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @property
    def prompts(self) -> list[str]:
        """Every prompt of the case in the order sent: `turns`, then `prompt`."""
        return [*self.turns, self.prompt]


@dataclass(frozen=True)
class CaseOutcome:
    """What running a case produced; scorers read only this and the case.

    Attributes:
        text: the answer to the last prompt.
        finish_reason: of the last invocation (see semconv `FINISH_*`).
        tools: every tool the agent used, as ``<actionGroup>.<function or apiPath>``:
            returnControl tools run locally and Lambda action groups run by Bedrock.
        error: why the agent did not answer, None when it did.
        turns: invocations made (``len(case.prompts)`` unless one failed).
    """

    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    latency_s: float
    tools: tuple[str, ...] = ()
    error: str | None = None
    cost_usd: float | None = None
    turns: int = 1
