"""Cases grouped into task runs, end to end: same results and traces as one task run per
case, one Prefect task run per chunk, a case that raises fails alone."""

from __future__ import annotations

import uuid
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import nexus_bedrock_tasks.evaluation.casework as casework
from flows.batch_evaluation import batch_evaluation
from nexus_bedrock_tasks.evaluation.report import EvalSummary
from nexus_bedrock_tasks.evaluation.results import CaseResult, read_results
from nexus_bedrock_tasks.exceptions import ConfigError
from tests.eval.test_eval_flow import (
    DEMO,
    case_traces,
    check_case_trace,
    spans_by_name,
    task_part,
    write_dataset,
)
from tests.flow.conftest import DEMO_TOOLS, PREFECT_SOCKET_WARNINGS, Traced

pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]
CASES: list[Any] = [
    {"id": "pack", "prompt": "What should I pack for a city trip?",
     "must_contain": ["walking shoes"]},
    {"id": "weather", "prompt": "What's the weather in Paris tomorrow?",
     "must_contain": ["light rain"], "expected_tools": ["weather.get_forecast"]},
    {"id": "no-prompt"},
    {"id": "recall", "turns": ["What is there to see in Lisbon?"],
     "prompt": "What did I ask earlier?", "must_contain": ["Lisbon"]},
    {"id": "wrong", "prompt": "What should I pack for a city trip?",
     "must_contain": ["snow boots"]},
]  # fmt: skip
CHUNK = ("pack", "weather", "recall")  # the first chunk of 3, in order
# What differs between two runs of the same case: timing, ids, sessions.
RUN_SPECIFIC = {"latency_s", "trace_id", "local_trace_id"}
RUN_SPECIFIC_METADATA = {"eval_run_id", "flow_run_id", "session_id", "nexus_bedrock_trace_id"}


async def _task_run_names(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
        )
    return [run.name.rsplit("-", 1)[0] for run in runs]


def _run(stack: Traced, dataset: Path, out: Path, cases_per_task: int) -> EvalSummary:
    summary: EvalSummary = stack.loop.run(
        batch_evaluation(
            str(dataset),
            **DEMO,
            concurrency=2,
            cases_per_task=cases_per_task,
            out=str(out),
            tools_module=str(DEMO_TOOLS),
        )
    )
    return summary


def _content(result: CaseResult) -> dict[str, Any]:
    return result.model_dump(exclude=RUN_SPECIFIC)


def _trace_content(trace: dict[str, Any]) -> tuple[Any, ...]:
    metadata = {k: v for k, v in trace["metadata"].items() if k not in RUN_SPECIFIC_METADATA}
    names = {span["id"]: span["name"] for span in trace["spans"]}
    spans = sorted(
        (span["name"], span["status"], names.get(span["parent_span_id"])) for span in trace["spans"]
    )
    return trace["status"], metadata, spans


def test_chunked_cases_give_the_same_results_and_traces_as_one_task_run_each(
    stack: Traced, tmp_path: Path
) -> None:
    dataset = write_dataset(tmp_path / "cases.jsonl", CASES)
    single = _run(stack, dataset, tmp_path / "single.jsonl", cases_per_task=1)
    chunked = _run(stack, dataset, tmp_path / "chunked.jsonl", cases_per_task=3)
    assert (chunked.cases, chunked.passed, chunked.errors) == (5, 3, 1)
    single_results = {r.id: r for r in read_results(tmp_path / "single.jsonl")}
    chunked_results = {r.id: r for r in read_results(tmp_path / "chunked.jsonl")}
    assert set(chunked_results) == {"pack", "weather", f"{dataset}:3", "recall", "wrong"}
    for case_id, result in chunked_results.items():
        assert _content(result) == _content(single_results[case_id]), case_id
    assert chunked_results[f"{dataset}:3"].error == single_results[f"{dataset}:3"].error

    single_traces = case_traces(stack, single.eval_run_id)
    chunked_traces = case_traces(stack, chunked.eval_run_id)
    assert set(chunked_traces) == set(single_traces) == {"pack", "weather", "recall", "wrong"}
    for case_id, trace in chunked_traces.items():  # one trace per case, the same spans
        check_case_trace(trace, chunked_results[case_id], chunked)
        assert _trace_content(trace) == _trace_content(single_traces[case_id]), case_id

    # Chunks in dataset order, the bad line apart: [pack, weather, recall], [wrong].
    parts = {case_id: task_part(trace) for case_id, trace in chunked_traces.items()}
    assert [parts[case_id][1] for case_id in CHUNK] == [1, 2, 3]
    first = parts["pack"][0]
    assert parts["pack"] == (first, 1, 3) and parts["weather"] == (first, 2, 3)
    assert parts["recall"] == (first, 3, 3)
    assert parts["wrong"][1:] == (1, 1) and parts["wrong"][0] != first
    assert len({task_part(trace)[0] for trace in single_traces.values()}) == 4
    assert stack.loop.run(_task_run_names(chunked.flow_run_id or "")) == ["evaluate_cases"] * 2
    assert stack.loop.run(_task_run_names(single.flow_run_id or "")) == ["evaluate_cases"] * 4
    # Each case's span covers that case only: the chunk's cases ran one after another.
    spans = [spans_by_name(chunked_traces[c])["task:evaluate_cases"][0] for c in CHUNK]
    times = [(_at(span["started_at"]), _at(span["ended_at"])) for span in spans]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(times)), times


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_case_that_raises_inside_a_chunk_fails_alone(
    stack: Traced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_score_case = casework.score_case

    def score_case(case: Any, *args: Any) -> Any:
        if case.id == "boom":
            raise RuntimeError("scoring bug")
        return real_score_case(case, *args)

    monkeypatch.setattr(casework, "score_case", score_case)
    prompt = "What should I pack for a city trip?"
    cases = [{"id": case_id, "prompt": prompt} for case_id in ("before", "boom", "after")]
    summary: EvalSummary = stack.loop.run(
        batch_evaluation(cases, **DEMO, concurrency=1, cases_per_task=3)
    )
    assert (summary.cases, summary.passed) == (3, 2)
    results = {r.id: r for r in read_results(Path(summary.results_path or ""))}
    boom = results["boom"]
    assert not boom.passed and boom.error is not None
    assert boom.error.startswith("the case raised in task run ")
    assert boom.error.endswith(": RuntimeError: scoring bug")
    traces = case_traces(stack, summary.eval_run_id)
    assert traces["boom"]["status"] == "error" and traces["boom"]["ended_at"] is not None
    assert traces["boom"]["metadata"]["passed"] is False
    (boom_task,) = spans_by_name(traces["boom"])["task:evaluate_cases"]
    assert boom_task["status"] == "error"
    for case_id in ("before", "after"):
        check_case_trace(traces[case_id], results[case_id], summary)
    assert task_part(traces["after"])[1:] == (3, 3)
    assert task_part(traces["before"])[0] == task_part(traces["after"])[0]


def test_a_chunk_size_below_one_fails_before_any_case(stack: Traced) -> None:
    with pytest.raises(ConfigError, match="cases_per_task 0 must be at least 1"):
        stack.loop.run(batch_evaluation([{"id": "a", "prompt": "Hi"}], **DEMO, cases_per_task=0))
