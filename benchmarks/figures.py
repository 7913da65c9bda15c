"""The figures of issue 8 (and `cli_overhead_s` of issue 10): keys, targets, run sizes."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

AGENT_ID = "PLANNER001"
AGENT_ALIAS_ID = "TSTALIASID"
PROMPT = "Convert 100 USD to EUR"
"""Five emulator steps: pre-processing, orchestration, the Lambda, the answer, post-processing."""
AGENT_STEPS = 5


@dataclass(frozen=True)
class Target:
    """`value <op> bound` is met."""

    symbol: str
    bound: float

    @property
    def compare(self) -> Callable[[float, float], bool]:
        """The comparison of the target."""
        return {"<=": operator.le, ">=": operator.ge, "<": operator.lt}[self.symbol]

    def met(self, value: float | None) -> bool | None:
        """Whether `value` meets the target (None when there is no value)."""
        return None if value is None else self.compare(value, self.bound)

    def __str__(self) -> str:
        return f"{self.symbol} {self.bound:,g}"


TARGETS: dict[str, Target] = {
    "overhead_ratio": Target("<=", 1.10),
    "tracing_overhead_ratio": Target("<=", 1.0),
    "batch_efficiency": Target(">=", 0.80),
    "eval_rss_mb": Target("<", 500),
    "export_spans_per_s": Target(">=", 2000),
    "slow_nexus_ratio": Target("<=", 1.05),
    "parse_ratio": Target(">=", 0.5),
    "cli_overhead_s": Target("<=", 1.0),
}
"""Every figure in the order of the report."""


@dataclass
class Figure:
    """One measured figure.

    Attributes:
        key: its key in results.json (one of `TARGETS`).
        value: the figure; None when it could not be measured (`reason` says why).
        measured: the number the figure is made of (seconds, ms, events/s…), with its unit.
        baseline: the same-run baseline it is compared with, with its unit.
        ratio: measured ÷ baseline.
        raw: every sub-figure (samples summarised, counts, settings).
        reason: why `value` is None.
        note: a caveat the report shows next to "met?".
        value_range: a 90 % interval of `value` when noise is large; the target then counts
            as met or missed only if the whole interval is on one side of it.
    """

    key: str
    value: float | None
    measured: str = ""
    baseline: str = ""
    ratio: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    note: str | None = None
    value_range: tuple[float, float] | None = None

    @property
    def target(self) -> Target:
        """The target of this figure."""
        return TARGETS[self.key]

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a value or when `value_range` straddles
        the target (inconclusive)."""
        if self.value_range is not None:
            low, high = (self.target.met(bound) for bound in self.value_range)
            return low if low == high else None
        return self.target.met(self.value)

    def as_json(self) -> dict[str, Any]:
        """The figure's details in results.json."""
        return {
            "value": self.value,
            "target": str(self.target),
            "met": self.met,
            "measured": self.measured,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "reason": self.reason,
            "note": self.note,
            "value_range": list(self.value_range) if self.value_range else None,
            "raw": self.raw,
        }


def missing(key: str, reason: str) -> Figure:
    """A figure that could not be measured in this run."""
    return Figure(key=key, value=None, reason=reason)


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does.

    Attributes:
        rounds: interleaved rounds of plain call / traced flow / untraced flow (and of raw /
            OpenInference call).
        warmup: rounds run first and not counted.
        step_latency_ms: the emulator's latency per step.
        tracing_rounds: extra rounds of only the traced and the export-off flow, for the
            paired difference `tracing_overhead_ratio` rests on (flow runs vary by ~20 ms
            here, more than the difference).
        slow_rounds: rounds of the slow-Nexus comparison (each: one fast, one slow run).
        nexus_delay_s: how late the slow Nexus answers.
        burst_invocations: traced invocations in the export burst.
        raw_posts: span POSTs of the export baseline.
        parse_seconds: least time each parse measurement runs.
        cli_calls: ``nexus-bedrock invoke --json`` calls.
        batch_cases: cases of the batch-efficiency evaluation.
        batch_concurrency: its concurrency.
        batch_step_latency_ms: its per-step latency.
        rss_cases: cases of the peak-RSS evaluation.
    """

    rounds: int
    warmup: int
    step_latency_ms: float
    tracing_rounds: int
    slow_rounds: int
    nexus_delay_s: float
    burst_invocations: int
    raw_posts: int
    parse_seconds: float
    cli_calls: int
    batch_cases: int
    batch_concurrency: int
    batch_step_latency_ms: float
    rss_cases: int


FULL = Sizes(
    rounds=20,
    warmup=2,
    step_latency_ms=200,
    tracing_rounds=40,
    slow_rounds=10,
    nexus_delay_s=1.0,
    burst_invocations=200,
    raw_posts=2000,
    parse_seconds=2.0,
    cli_calls=10,
    batch_cases=1000,
    batch_concurrency=32,
    batch_step_latency_ms=100,
    rss_cases=10_000,
)
QUICK = Sizes(
    rounds=5,
    warmup=1,
    step_latency_ms=200,
    tracing_rounds=3,
    slow_rounds=3,
    nexus_delay_s=1.0,
    burst_invocations=50,
    raw_posts=500,
    parse_seconds=0.5,
    cli_calls=3,
    batch_cases=100,
    batch_concurrency=32,
    batch_step_latency_ms=100,
    rss_cases=500,
)
TINY = Sizes(
    rounds=1,
    warmup=0,
    step_latency_ms=10,
    tracing_rounds=1,
    slow_rounds=1,
    nexus_delay_s=0.2,
    burst_invocations=3,
    raw_posts=20,
    parse_seconds=0.01,
    cli_calls=1,
    batch_cases=4,
    batch_concurrency=2,
    batch_step_latency_ms=10,
    rss_cases=4,
)
