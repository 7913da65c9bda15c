"""Figures of an evaluation run, kept per case in O(1) memory each, and their reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from nexus_bedrock_tasks.evaluation.baseline import BaselineComparison
from nexus_bedrock_tasks.evaluation.results import CaseResult

MAX_FAILURES_KEPT = 1000
MARKDOWN_FAILURES = 50
CLI_JSON_KEYS = (
    "cases",
    "passed",
    "pass_rate",
    "p50_latency_s",
    "p95_latency_s",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 4)


def trace_url(base_url: str, trace_id: str) -> str:
    """The Nexus page of a trace."""
    return f"{base_url.rstrip('/')}/traces/{quote(trace_id, safe='')}"


@dataclass(frozen=True)
class Failure:
    """A failed case, as listed in the reports."""

    case_id: str
    reason: str
    trace_id: str | None
    latency_s: float | None
    total_tokens: int


def failure_reason(result: CaseResult) -> str:
    """The error, else the scorers that failed."""
    if result.error:
        return result.error
    failed = [name for name, value in result.scores.items() if value is False]
    return "failed: " + (", ".join(failed) or "below the score threshold")


@dataclass
class RunStats:
    """Running totals of an evaluation; only numbers and the first failures are kept."""

    cases: int = 0
    passed: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    latencies: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    failure_count: int = 0

    def add(self, result: CaseResult) -> None:
        """Count one case."""
        self.cases += 1
        self.passed += result.passed
        self.errors += result.error is not None
        self.input_tokens += result.usage.input_tokens
        self.output_tokens += result.usage.output_tokens
        if result.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + result.cost_usd
        if result.latency_s is not None:
            self.latencies.append(result.latency_s)
        if not result.passed:
            self.failure_count += 1
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append(
                    Failure(
                        case_id=result.id,
                        reason=failure_reason(result),
                        trace_id=result.trace_id,
                        latency_s=result.latency_s,
                        total_tokens=result.usage.total_tokens,
                    )
                )

    @property
    def pass_rate(self) -> float:
        """Passed cases over all cases (bad dataset lines count as failed)."""
        return round(self.passed / self.cases, 4) if self.cases else 0.0


class EvalSummary(BaseModel):
    """What an evaluation run returns (and `nexus-bedrock eval --json` prints a part of)."""

    eval_run_id: str
    agent_id: str
    agent_alias_id: str
    dataset: str
    results_path: str | None
    cases: int
    passed: int
    failed: int
    errors: int
    pass_rate: float
    p50_latency_s: float | None
    p95_latency_s: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    duration_s: float
    cases_per_s: float
    min_pass_rate: float | None = None
    baseline: BaselineComparison | None = None
    flow_run_id: str | None = None
    # Only with `return_results` (the shards of a fan-out hand their lines back).
    results: list[CaseResult] | None = None

    @classmethod
    def build(cls, stats: RunStats, *, duration_s: float, **fields: Any) -> EvalSummary:
        """The summary of `stats`; `fields` are the run's identity (ids, paths)."""
        return cls(
            cases=stats.cases,
            passed=stats.passed,
            failed=stats.cases - stats.passed,
            errors=stats.errors,
            pass_rate=stats.pass_rate,
            p50_latency_s=percentile(stats.latencies, 50),
            p95_latency_s=percentile(stats.latencies, 95),
            input_tokens=stats.input_tokens,
            output_tokens=stats.output_tokens,
            cost_usd=None if stats.cost_usd is None else round(stats.cost_usd, 6),
            duration_s=round(duration_s, 3),
            cases_per_s=round(stats.cases / duration_s, 3) if duration_s > 0 else 0.0,
            **fields,
        )

    @property
    def below_minimum(self) -> bool:
        """The pass rate is under `min_pass_rate`."""
        return self.min_pass_rate is not None and self.pass_rate < self.min_pass_rate

    def cli_json(self) -> dict[str, Any]:
        """Exactly the keys of the `nexus-bedrock eval --json` contract."""
        data = self.model_dump()
        return {key: data[key] for key in CLI_JSON_KEYS}


def _figure(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _link(failure: Failure, nexus_url: str) -> str:
    if failure.trace_id is None:
        return "–"
    return f"[{failure.trace_id}]({trace_url(nexus_url, failure.trace_id)})"


def _cell(text: str, width: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def summary_markdown(summary: EvalSummary, stats: RunStats, nexus_url: str) -> str:
    """The run's markdown report: figures, baseline regressions, first failures."""
    lines = [
        f"# Evaluation `{summary.eval_run_id}`",
        "",
        f"Agent `{summary.agent_id}` / `{summary.agent_alias_id}` on `{summary.dataset}`; "
        f"results in `{summary.results_path or '(not written)'}`.",
        "",
        "| cases | passed | pass rate | p50 latency | p95 latency | input tokens "
        "| output tokens | cost (USD) | cases/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary.cases} | {summary.passed} | {summary.pass_rate:.1%} "
        f"| {_figure(summary.p50_latency_s, '.2f')} s | {_figure(summary.p95_latency_s, '.2f')} s "
        f"| {summary.input_tokens} | {summary.output_tokens} "
        f"| {_figure(summary.cost_usd, '.4f')} | {summary.cases_per_s:.2f} |",
    ]
    if summary.min_pass_rate is not None:
        verdict = "**below**" if summary.below_minimum else "meets"
        lines += ["", f"Pass rate {verdict} the minimum of {summary.min_pass_rate:.1%}."]
    if summary.baseline is not None:
        lines += ["", *_baseline_markdown(summary.baseline)]
    if stats.failures:
        lines += ["", f"## Failures ({stats.failure_count})", ""]
        lines += ["| case | reason | trace |", "|---|---|---|"]
        for failure in stats.failures[:MARKDOWN_FAILURES]:
            lines.append(
                f"| `{failure.case_id}` | {_cell(failure.reason)} | {_link(failure, nexus_url)} |"
            )
        if stats.failure_count > MARKDOWN_FAILURES:
            lines.append(f"\n…and {stats.failure_count - MARKDOWN_FAILURES} more in the results.")
    return "\n".join(lines) + "\n"


def _baseline_markdown(comparison: BaselineComparison) -> list[str]:
    lines = [
        f"## Against the baseline `{comparison.path}`",
        "",
        f"Baseline pass rate {comparison.baseline_pass_rate:.1%} over "
        f"{comparison.baseline_cases} cases; {comparison.regression_count} regression(s), "
        f"{comparison.fixed_count} fixed, {comparison.new_cases} new, "
        f"{comparison.missing_cases} missing.",
    ]
    if comparison.regressions:
        lines += ["", "Regressions: " + ", ".join(f"`{c}`" for c in comparison.regressions)]
    return lines


def failures_table(stats: RunStats, nexus_url: str) -> list[dict[str, Any]]:
    """Rows of the failures table artifact (the first `MAX_FAILURES_KEPT`)."""
    return [
        {
            "case": failure.case_id,
            "reason": _cell(failure.reason, 300),
            "latency_s": failure.latency_s,
            "tokens": failure.total_tokens,
            "trace": trace_url(nexus_url, failure.trace_id) if failure.trace_id else None,
        }
        for failure in stats.failures
    ]
