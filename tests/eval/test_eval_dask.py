"""The evaluation on a Dask LocalCluster: chunks of cases run in worker processes, traced there."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.batch_evaluation import batch_evaluation
from nexus_bedrock_tasks.evaluation.report import EvalSummary
from nexus_bedrock_tasks.evaluation.results import read_results
from tests.eval.test_eval_flow import DEMO, case_traces, check_case_trace, task_part
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS, Traced

pytest.importorskip("prefect_dask", reason="the dask extra: pip install -e '.[dask]'")
pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]


def test_dask_local_cluster_runs_and_traces_cases_in_worker_processes(
    stack: Traced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker processes build their own exporter from the environment they inherit.
    monkeypatch.setenv("NEXUS_BASE_URL", stack.nexus.url)
    monkeypatch.setenv("NEXUS_API_KEY", stack.nexus.api_key)
    monkeypatch.setenv("NEXUS_BEDROCK_OUTBOX", str(tmp_path / "workers-outbox.sqlite3"))
    cases = [
        {"id": "pack", "prompt": "What should I pack for a city trip?",
         "must_contain": ["walking shoes"]},
        {"id": "lisbon", "prompt": "What is there to see in Lisbon?", "must_contain": ["tram"]},
        {"id": "recall", "turns": ["What is there to see in Lisbon?"],
         "prompt": "What did I ask earlier?", "must_contain": ["Lisbon"]},
        {"id": "wrong", "prompt": "What is there to see in Lisbon?", "must_contain": ["snow"]},
    ]  # fmt: skip
    summary: EvalSummary = stack.loop.run(
        batch_evaluation(
            cases, **DEMO, concurrency=2, cases_per_task=2, task_runner="dask", dask_workers=2
        )
    )
    assert (summary.cases, summary.passed) == (4, 3)
    results = {r.id: r for r in read_results(Path(summary.results_path or ""))}
    assert all(r.trace_id for r in results.values())  # learnt inside the workers
    traces = case_traces(stack, summary.eval_run_id)
    assert set(traces) == set(results)
    for case_id, trace in traces.items():
        check_case_trace(trace, results[case_id], summary)
    parts = {case_id: task_part(trace) for case_id, trace in traces.items()}
    assert parts["pack"][0] == parts["lisbon"][0] != parts["recall"][0] == parts["wrong"][0]
    assert [parts[c][1] for c in ("pack", "lisbon", "recall", "wrong")] == [1, 2, 1, 2]
