"""The batch evaluation flow end to end: emulator → cases → scores → local Nexus traces.

Each case trace is read back from the local Nexus: eval metadata, the SPANS.md spans of
every nested task, one summary span summing every turn.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from flows.batch_evaluation import _end_case_traces, batch_evaluation
from nexus_bedrock_tasks.evaluation.casework import _track
from nexus_bedrock_tasks.evaluation.dataset import Dataset
from nexus_bedrock_tasks.evaluation.errors import PassRateBelowMinimum
from nexus_bedrock_tasks.evaluation.report import EvalSummary
from nexus_bedrock_tasks.evaluation.results import CaseResult, read_results
from nexus_bedrock_tasks.evaluation.sharding import split
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from nexus_bedrock_tasks.semconv import SUMMARY_FIELDS
from nexus_bedrock_tasks.tracing import get_tracer
from tests.flow.conftest import DEMO_TOOLS, PREFECT_SOCKET_WARNINGS, Traced

pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]
DEMO = {"agent_id": "DEMO000001", "agent_alias_id": "TSTALIASID"}


def write_dataset(path: Path, cases: list[Any]) -> Path:
    path.write_text("\n".join(c if isinstance(c, str) else json.dumps(c) for c in cases) + "\n")
    return path


def output(span: dict[str, Any]) -> Any:
    value = span["output"]
    return json.loads(value) if isinstance(value, str) else value


def nexus_get(stack: Traced, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{stack.nexus.url}/api/v1{path}",
        params=params,
        headers={"Authorization": f"Bearer {stack.nexus.api_key}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def case_traces(stack: Traced, eval_run_id: str) -> dict[str, dict[str, Any]]:
    """Every trace of an evaluation run in the local Nexus, by case id."""
    assert stack.exporter.flush(30) == 0, stack.exporter.stats()
    rows = nexus_get(stack, "/traces", limit=200)
    return {
        row["metadata"]["case_id"]: nexus_get(stack, f"/traces/{row['id']}")
        for row in rows
        if row["metadata"].get("eval_run_id") == eval_run_id
    }


def spans_by_name(trace: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        by_name.setdefault(span["name"], []).append(span)
    return by_name


def check_case_trace(trace: dict[str, Any], result: CaseResult, summary: EvalSummary) -> None:
    """The SPANS.md contract plus the evaluation metadata."""
    metadata = trace["metadata"]
    assert metadata["eval_run_id"] == summary.eval_run_id and metadata["case_id"] == result.id
    assert metadata["passed"] is result.passed and metadata["scores"] == result.scores
    assert metadata["flow_run_id"] == summary.flow_run_id
    assert metadata["flow_name"] == "batch-evaluation" and metadata["agent_id"] == "DEMO000001"
    assert trace["id"] == result.trace_id and trace["ended_at"] is not None
    assert trace["status"] == ("error" if result.error else "success")
    spans = trace["spans"]
    ids = {span["id"] for span in spans}
    assert all(s["parent_span_id"] in ids for s in spans if s["parent_span_id"] is not None)
    by_name = spans_by_name(trace)
    assert len(by_name["summary"]) == 1 and spans[-1]["name"] == "summary"
    figures = output(by_name["summary"][0])
    assert list(figures) == list(SUMMARY_FIELDS)
    assert figures["finish_reason"] == result.finish_reason
    assert figures["input_tokens"] == result.usage.input_tokens
    assert figures["total_tokens"] == result.usage.total_tokens
    llm = [s for s in spans if s["name"].startswith("llm:")]
    assert figures["llm_calls"] == len(llm)
    assert sum(output(s)["input_tokens"] for s in llm) == figures["input_tokens"]
    (case_task,) = by_name["task:evaluate_cases"]  # the case's part of its task run
    assert [name for name in by_name if name.startswith("task:")] == ["task:evaluate_cases"]
    assert all(span["parent_span_id"] == case_task["id"] for span in llm)
    assert case_task["parent_span_id"] is None and case_task["status"] == "ok"
    task_result = output(case_task)["result"]
    assert task_result["case_id"] == result.id and task_result["passed"] is result.passed
    assert len(task_result["task_run_id"]) == 32
    assert 1 <= task_result["position"] <= task_result["chunk_size"]


def task_part(trace: dict[str, Any]) -> tuple[str, int, int]:
    """(task run id, position, chunk size) of a case trace's `task:evaluate_cases` span."""
    (span,) = spans_by_name(trace)["task:evaluate_cases"]
    part = output(span)["result"]
    return part["task_run_id"], part["position"], part["chunk_size"]


def test_cases_run_scored_and_traced_with_bad_lines_reported(
    stack: Traced, tools: None, tmp_path: Path
) -> None:
    failing_session = f"eval-fail-{uuid.uuid4().hex[:8]}"
    set_session_faults(
        _emulator_url(), failing_session, stream_error_after=1, stream_error="validationException"
    )
    dataset = write_dataset(
        tmp_path / "cases.jsonl",
        [
            {"id": "pack", "prompt": "What should I pack for a city trip?",
             "must_contain": ["walking shoes"], "tags": ["kb"]},
            {"id": "weather", "prompt": "What's the weather in Paris tomorrow?",
             "must_contain": ["light rain"], "expected_tools": ["weather.get_forecast"]},
            {"id": "recall", "turns": ["What is there to see in Lisbon?"],
             "prompt": "What did I ask earlier?", "must_contain": ["Lisbon"]},
            {"id": "wrong", "prompt": "What should I pack for a city trip?",
             "must_contain": ["snow boots"]},
            {"id": "no-prompt"},
            {"id": "agent-error", "prompt": "What should I pack?", "session_id": failing_session},
        ],
    )  # fmt: skip
    out = tmp_path / "results.jsonl"
    summary: EvalSummary = stack.loop.run(
        batch_evaluation(
            str(dataset), **DEMO, concurrency=3, out=str(out), tools_module=str(DEMO_TOOLS)
        )
    )
    assert (summary.cases, summary.passed, summary.errors) == (6, 3, 2)
    assert summary.pass_rate == 0.5 and summary.results_path == str(out)
    assert summary.p50_latency_s is not None and summary.input_tokens > 0
    results = {r.id: r for r in read_results(out)}
    assert set(results) == {"pack", "weather", "recall", "wrong", f"{dataset}:5", "agent-error"}
    bad = results[f"{dataset}:5"]
    assert bad.error and bad.error.startswith(f"{dataset} line 5: field 'prompt'")
    assert not bad.passed and bad.trace_id is None
    assert results["wrong"].scores == {"contains": False, "finish_reason": True}
    assert results["weather"].scores["tools"] is True
    assert results["agent-error"].error and "validationException" in results["agent-error"].error
    assert results["recall"].text.startswith("Earlier you asked") and results["recall"].passed

    traces = case_traces(stack, summary.eval_run_id)
    assert set(traces) == {"pack", "weather", "recall", "wrong", "agent-error"}
    for case_id, trace in traces.items():
        check_case_trace(trace, results[case_id], summary)
    assert traces["pack"]["metadata"]["score"] == 1.0 and traces["pack"]["metadata"]["tags"] == [
        "kb"
    ]
    assert traces["wrong"]["metadata"]["score"] == 0.5
    assert traces["wrong"]["metadata"]["passed"] is False
    weather = spans_by_name(traces["weather"])
    assert (
        weather["tool:weather.get_forecast"][0]["parent_span_id"]
        == (weather["return_control"][0]["id"])
    )
    recall = spans_by_name(traces["recall"])
    assert len(recall["task:evaluate_cases"]) == 1 and len(recall["llm:orchestration"]) >= 2
    assert traces["recall"]["metadata"]["turn"] == 2
    assert traces["recall"]["metadata"]["session_id"].startswith("nbt-")
    assert traces["agent-error"]["metadata"]["session_id"] == failing_session
    assert get_tracer().state(results["pack"].local_trace_id or "") is None  # forgotten


def test_artifacts_baseline_regressions_and_min_pass_rate(
    stack: Traced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_BASE_URL", stack.nexus.url)  # where the trace links point
    cases = [
        {"id": "pack", "prompt": "What should I pack for a city trip?",
         "must_contain": ["walking shoes"]},
        {"id": "lisbon", "prompt": "What is there to see in Lisbon?", "must_contain": ["tram"]},
    ]  # fmt: skip
    first_out = tmp_path / "first.jsonl"
    first: EvalSummary = stack.loop.run(
        batch_evaluation(
            str(write_dataset(tmp_path / "v1.jsonl", cases)), **DEMO, out=str(first_out)
        )
    )
    assert first.pass_rate == 1.0
    cases[0]["must_contain"] = ["snow boots"]
    with pytest.raises(PassRateBelowMinimum) as caught:
        stack.loop.run(
            batch_evaluation(
                str(write_dataset(tmp_path / "v2.jsonl", cases)),
                **DEMO,
                baseline=str(first_out),
                min_pass_rate=0.9,
                out=str(tmp_path / "second.jsonl"),
            )
        )
    summary = caught.value.summary
    assert summary.pass_rate == 0.5 and summary.below_minimum
    assert summary.baseline is not None and summary.baseline.regressions == ["pack"]
    assert summary.baseline.baseline_pass_rate == 1.0
    assert len(list(read_results(tmp_path / "second.jsonl"))) == 2  # written before failing
    artifacts = stack.loop.run(_artifacts(summary.flow_run_id or ""))
    markdown = artifacts["eval-summary"]
    assert "Regressions: `pack`" in markdown and "Pass rate **below** the minimum" in markdown
    pack = next(r for r in read_results(tmp_path / "second.jsonl") if r.id == "pack")
    assert f"/traces/{pack.trace_id}" in markdown
    table = json.loads(artifacts["eval-failures"])
    assert [row["case"] for row in table] == ["pack"]
    assert table[0]["trace"] == f"{stack.nexus.url}/traces/{pack.trace_id}"
    assert artifacts["progress"] == 100.0


async def _artifacts(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])
            )
        )
    return {artifact.key or artifact.type or "": artifact.data for artifact in found}


def test_thread_runner_and_defaults_for_limits(stack: Traced, tmp_path: Path) -> None:
    cases = [{"id": f"c{n}", "prompt": "What should I pack for a city trip?"} for n in range(4)] + [
        {"id": "strict", "prompt": "What is there to see in Lisbon?", "max_tokens": 5000}
    ]
    summary: EvalSummary = stack.loop.run(
        batch_evaluation(
            cases,
            **DEMO,
            concurrency=2,
            cases_per_task=2,
            task_runner="thread",
            max_tokens=1,
            max_latency_s=60,
        )
    )
    assert summary.dataset == "<dataset list>" and summary.cases == 5 and summary.passed == 1
    results = {r.id: r for r in read_results(Path(summary.results_path or ""))}
    assert results["c0"].scores["tokens"] is False and results["c0"].scores["latency"] is True
    assert results["strict"].passed and results["strict"].scores["tokens"] is True
    traces = case_traces(stack, summary.eval_run_id)
    assert set(traces) == set(results)
    for case_id, trace in traces.items():
        check_case_trace(trace, results[case_id], summary)
    parts = {case_id: task_part(trace) for case_id, trace in traces.items()}
    assert [parts[c][1:] for c in ("c0", "c1", "c2", "c3", "strict")] == [
        (1, 2), (2, 2), (1, 2), (2, 2), (1, 1)
    ]  # fmt: skip
    assert parts["c0"][0] == parts["c1"][0] != parts["c2"][0] == parts["c3"][0]


def test_a_timed_out_run_still_ends_its_case_traces(stack: Traced, tmp_path: Path) -> None:
    session = f"eval-slow-{uuid.uuid4().hex[:8]}"
    set_session_faults(_emulator_url(), session, trickle_bytes=16, trickle_delay_ms=200)
    run_id = uuid.uuid4().hex
    slow = batch_evaluation.with_options(timeout_seconds=2)
    cases = [{"id": "slow", "prompt": "What should I pack?", "session_id": session}]
    with pytest.raises(TimeoutError):
        stack.loop.run(slow(cases, **DEMO, eval_run_id=run_id, out=str(tmp_path / "o.jsonl")))
    trace = case_traces(stack, run_id)["slow"]
    assert trace["status"] == "error" and trace["ended_at"] is not None
    assert trace["metadata"]["passed"] is False
    assert [s["name"] for s in trace["spans"]][-1] == "summary"


def test_failure_hook_ends_traces_left_open(stack: Traced) -> None:
    run_id, key = uuid.uuid4().hex, uuid.uuid4().hex
    get_tracer().begin(
        key,
        name="invoke: left open",
        agent_name="bedrock-agent",
        metadata={"eval_run_id": run_id, "case_id": "open"},
        deferred=True,
    )
    _track(run_id, key, True)
    flow_run = SimpleNamespace(parameters={"eval_run_id": run_id}, id=uuid.uuid4())
    _end_case_traces(batch_evaluation, flow_run, SimpleNamespace(name="Crashed"))
    trace = case_traces(stack, run_id)["open"]
    assert trace["status"] == "error" and trace["metadata"]["passed"] is False
    assert trace["metadata"]["error"] == "the evaluation flow run ended Crashed"
    assert get_tracer().state(key) is None


def _emulator_url() -> str:
    import os

    return os.environ["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"]


def test_fan_out_to_a_missing_deployment_fails_before_any_case(stack: Traced) -> None:
    cases = [{"id": "a", "prompt": "Hi"}]
    with pytest.raises(ConfigError, match="fan-out deployment 'batch-evaluation/nope' not found"):
        stack.loop.run(batch_evaluation(cases, **DEMO, fan_out_deployment="batch-evaluation/nope"))


def test_shards_are_dealt_round_robin_with_bad_lines_kept_apart() -> None:
    items = list(Dataset([{"id": str(n), "prompt": "p"} for n in range(5)] + [{"id": "x"}]))
    shards, bad = split(items, 2)
    assert [[case["id"] for case in shard] for shard in shards] == [["0", "2", "4"], ["1", "3"]]
    assert [line.result_id for line in bad] == ["<dataset list>:6"]
    assert split(items[:1], 3)[0] == [[{"id": "0", "prompt": "p"}]]  # no empty shards
