"""Cases grouped into task runs: the chunk rule, and a chunk whose task run fails whole."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import nexus_bedrock_tasks.evaluation.localrun as localrun
from flows.batch_evaluation import _check
from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.casework import CaseRunConfig
from nexus_bedrock_tasks.evaluation.chunks import (
    MAX_CASES_PER_TASK,
    bulk_chunk_size,
    chunk_cases,
)
from nexus_bedrock_tasks.evaluation.dataset import BadLine, Dataset
from nexus_bedrock_tasks.evaluation.localrun import LocalRun, run_locally
from nexus_bedrock_tasks.evaluation.results import CaseResult
from nexus_bedrock_tasks.exceptions import ConfigError


def cases(count: int) -> list[EvalCase]:
    return [EvalCase(id=f"c{n}", prompt="p") for n in range(count)]


def sizes(count: int, concurrency: int, cases_per_task: int | None = None) -> list[int]:
    chunks = list(chunk_cases(cases(count), count, concurrency, cases_per_task))
    assert all(isinstance(chunk, list) for chunk in chunks)
    return [len(chunk) for chunk in chunks if isinstance(chunk, list)]


def test_small_runs_keep_one_task_run_per_case() -> None:
    assert sizes(8, 4) == [1] * 8
    assert sizes(1, 1) == [1]
    assert sizes(0, 4) == []


def test_large_runs_share_task_runs_and_taper_to_single_cases_at_the_end() -> None:
    chunked = sizes(1000, 32)
    assert sum(chunked) == 1000
    assert chunked[0] == bulk_chunk_size(1000, 32) == 15
    assert len(chunked) == 140  # 7.1 cases per task run on average
    assert chunked == sorted(chunked, reverse=True)  # never grows back
    assert chunked[-32:] == [1] * 32  # the last wave: one case each
    assert sizes(100_000, 8)[0] == MAX_CASES_PER_TASK


def test_an_explicit_size_is_used_as_given_with_a_short_last_chunk() -> None:
    assert sizes(10, 2, cases_per_task=4) == [4, 4, 2]
    assert sizes(5, 32, cases_per_task=1) == [1] * 5
    assert sizes(3, 2, cases_per_task=50) == [3]


def test_bad_lines_come_out_alone_and_keep_their_place() -> None:
    items = list(
        Dataset(
            [{"id": "a", "prompt": "p"}, {"id": "bad"}, {"id": "b", "prompt": "p"}]
            + [{"id": "c", "prompt": "p"}]
        )
    )
    out = list(chunk_cases(items, len(items), concurrency=1, cases_per_task=2))
    assert isinstance(out[0], BadLine) and out[0].result_id == "<dataset list>:2"
    assert [[case.id for case in chunk] for chunk in out[1:] if isinstance(chunk, list)] == [
        ["a", "b"],
        ["c"],
    ]


@pytest.mark.parametrize("value", [0, -3])
def test_a_size_below_one_is_a_config_error_naming_the_fix(value: int) -> None:
    with pytest.raises(ConfigError, match=rf"cases_per_task {value} must be at least 1 \(1 = "):
        _check(4, 2, None, 0.5, value)
    with pytest.raises(ConfigError, match="left unset to choose it"):
        list(chunk_cases(cases(2), 2, 1, value))
    _check(4, 2, None, 0.5, None)  # unset is fine


def test_a_failed_chunk_task_run_fails_its_cases_and_the_other_chunks_go_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[list[str]] = []

    async def chunk_task(cases: Any, config: Any, client: Any) -> list[CaseResult]:
        ids = [case.id for case in cases.unquote()]  # what Prefect would unwrap
        seen.append(ids)
        if "c2" in ids:
            raise RuntimeError("worker lost")
        return [CaseResult(id=case_id, passed=True) for case_id in ids]

    monkeypatch.setattr(localrun, "evaluate_cases", chunk_task)
    dataset = Dataset([{"id": f"c{n}", "prompt": "p"} for n in range(5)] + [{"id": "x"}])
    config = CaseRunConfig(
        eval_run_id="r", agent_id="A", agent_alias_id="B", nexus_agent_name="n", scorers=[]
    )
    run = LocalRun(concurrency=2, cases_per_task=2)

    async def collect() -> list[CaseResult]:
        return [result async for result in run_locally(dataset, config, run)]

    results = {result.id: result for result in asyncio.run(collect())}
    assert seen == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert set(results) == {"c0", "c1", "c2", "c3", "c4", "<dataset list>:6"}
    assert results["c0"].passed and results["c1"].passed and results["c4"].passed
    for case_id in ("c2", "c3"):
        assert not results[case_id].passed
        assert results[case_id].error == (
            "the evaluate_cases task run of its chunk failed: RuntimeError: worker lost"
        )
    assert results["<dataset list>:6"].error
