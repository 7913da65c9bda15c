"""Results file, baseline comparison, running figures and the reports built from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_bedrock_tasks.evaluation.baseline import Baseline
from nexus_bedrock_tasks.evaluation.errors import DatasetError, PassRateBelowMinimum
from nexus_bedrock_tasks.evaluation.report import (
    CLI_JSON_KEYS,
    EvalSummary,
    RunStats,
    failures_table,
    percentile,
    summary_markdown,
)
from nexus_bedrock_tasks.evaluation.results import CaseResult, ResultsWriter, read_results
from nexus_bedrock_tasks.results import TokenUsage

NEXUS = "http://127.0.0.1:9999"
LINE_KEYS = {
    "id", "passed", "scores", "text", "trace_id", "usage", "latency_s", "error",
    "finish_reason", "cost_usd", "local_trace_id",
}  # fmt: skip


def result(case_id: str, passed: bool, **fields: object) -> CaseResult:
    base: dict[str, object] = {
        "id": case_id,
        "passed": passed,
        "scores": {"contains": passed, "finish_reason": True},
        "text": "answer",
        "usage": TokenUsage(input_tokens=100, output_tokens=20, total_tokens=120),
        "latency_s": 1.0,
        "cost_usd": 0.001,
    }
    base.update(fields)
    return CaseResult.model_validate(base)


def summary_of(stats: RunStats, **fields: object) -> EvalSummary:
    identity: dict[str, object] = {
        "eval_run_id": "run-1",
        "agent_id": "DEMO000001",
        "agent_alias_id": "TSTALIASID",
        "dataset": "cases.jsonl",
        "results_path": "out.jsonl",
    }
    identity.update(fields)
    return EvalSummary.build(stats, duration_s=2.0, **identity)


def test_percentiles_interpolate() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5 and percentile(values, 95) == 95.05
    assert percentile([2.0, 1.0], 50) == 1.5


def test_results_file_round_trip_and_line_contract(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "out.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(result("a", True, trace_id="t-1", text="Light rain ☔"))
        writer.write(result("b", False, error="boom"))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and set(json.loads(lines[0])) == LINE_KEYS
    assert "☔" in lines[0]  # not escaped
    back = list(read_results(path))
    assert [r.id for r in back] == ["a", "b"] and back[1].error == "boom"
    assert back[0].usage.total_tokens == 120 and back[0].scores["contains"] is True


def test_unreadable_results_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "baseline.jsonl"
    path.write_text(result("a", True).to_line() + "\n\n" + '{"id": "b"}\n')
    with pytest.raises(DatasetError) as caught:
        list(read_results(path))
    assert caught.value.line == 3 and str(caught.value).startswith(f"{path} line 3:")
    assert "passed" in str(caught.value) and "results JSONL" in str(caught.value)
    with pytest.raises(DatasetError, match="cannot read results"):
        list(read_results(tmp_path / "missing.jsonl"))


def test_results_writer_names_an_unwritable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatasetError, match="choose another --out path"):
        ResultsWriter(blocker / "out.jsonl")


def test_baseline_regressions_fixed_new_missing(tmp_path: Path) -> None:
    path = tmp_path / "baseline.jsonl"
    with ResultsWriter(path) as writer:
        for case_id, passed in [("a", True), ("b", False), ("c", True), ("gone", True)]:
            writer.write(result(case_id, passed))
    baseline = Baseline(path)
    for case_id, passed in [("a", False), ("b", True), ("c", True), ("new", False)]:
        baseline.observe(result(case_id, passed))
    comparison = baseline.comparison()
    assert comparison.baseline_cases == 4 and comparison.baseline_pass_rate == 0.75
    assert comparison.regressions == ["a"] and comparison.regression_count == 1
    assert comparison.fixed == ["b"] and comparison.new_cases == 1
    assert comparison.missing_cases == 1


def test_stats_summary_and_cli_json() -> None:
    stats = RunStats()
    stats.add(result("a", True, latency_s=1.0))
    stats.add(result("b", False, latency_s=3.0, error="ThrottlingException: slow"))
    stats.add(result("c", False, latency_s=2.0, cost_usd=None))
    stats.add(CaseResult(id="cases.jsonl:4", passed=False, error="cases.jsonl line 4: bad"))
    summary = summary_of(stats, min_pass_rate=0.5)
    assert (summary.cases, summary.passed, summary.failed, summary.errors) == (4, 1, 3, 2)
    assert summary.pass_rate == 0.25 and summary.below_minimum
    assert summary.p50_latency_s == 2.0 and summary.p95_latency_s == 2.9
    assert (summary.input_tokens, summary.output_tokens) == (300, 60)
    assert summary.cost_usd == 0.002 and summary.cases_per_s == 2.0
    assert list(summary.cli_json()) == list(CLI_JSON_KEYS)
    assert stats.failure_count == 3 and stats.failures[0].reason == "ThrottlingException: slow"
    assert stats.failures[1].reason == "failed: contains"
    error = PassRateBelowMinimum(summary)
    assert str(error) == "pass rate 25.0% is below the minimum 50.0% (1/4 cases passed)"


def test_markdown_and_table_link_failures_to_nexus(tmp_path: Path) -> None:
    path = tmp_path / "baseline.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(result("a", True))
    baseline = Baseline(path)
    stats = RunStats()
    for item in (result("a", False, trace_id="abc-1", text="x | y"), result("b", True)):
        stats.add(item)
        baseline.observe(item)
    summary = summary_of(stats, min_pass_rate=0.9, baseline=baseline.comparison())
    markdown = summary_markdown(summary, stats, NEXUS + "/")
    assert "| 2 | 1 | 50.0% | 1.00 s | 1.00 s | 200 | 40 | 0.0020 | 1.00 |" in markdown
    assert "Pass rate **below** the minimum of 90.0%." in markdown
    assert "1 regression(s)" in markdown and "Regressions: `a`" in markdown
    assert f"| `a` | failed: contains | [abc-1]({NEXUS}/traces/abc-1) |" in markdown
    rows = failures_table(stats, NEXUS)
    assert rows == [
        {
            "case": "a",
            "reason": "failed: contains",
            "latency_s": 1.0,
            "tokens": 120,
            "trace": f"{NEXUS}/traces/abc-1",
        }
    ]
