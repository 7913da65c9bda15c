"""The batch evaluation flow: a dataset of cases against one agent, scored and traced.

One flow run fans the cases out as tasks with bounded concurrency (no flow run per
case). A task run costs more CPU than a sub-second case, so each `evaluate_cases` task
run takes a chunk of cases and runs them one after another (`cases_per_task`, automatic
by default: see `nexus_bedrock_tasks.evaluation.chunks`). Results stream to a JSONL file
as each chunk completes; the summary goes to Prefect artifacts.

Each case is still its own Nexus trace (metadata ``eval_run_id``, ``case_id``, its score)
with the invocation's spans as usual, plus one ``task:evaluate_cases`` span: the case's
part of its chunk's task run, from the case's start to its end, whose output names the
task run (``task_run_id``), the case's ``position`` (from 1) and the ``chunk_size``. The
cases of a chunk thus show the same ``task_run_id`` in Nexus and one task run in Prefect.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext

from nexus_bedrock_tasks.evaluation.artifacts import ProgressArtifact, publish_report
from nexus_bedrock_tasks.evaluation.baseline import Baseline
from nexus_bedrock_tasks.evaluation.casework import (
    CaseRunConfig,
    end_open_case_traces,
    ensure_tools,
)
from nexus_bedrock_tasks.evaluation.chunks import check_cases_per_task
from nexus_bedrock_tasks.evaluation.dataset import Dataset
from nexus_bedrock_tasks.evaluation.errors import PassRateBelowMinimum
from nexus_bedrock_tasks.evaluation.fanout import TaskRunnerName
from nexus_bedrock_tasks.evaluation.localrun import LocalRun, run_locally
from nexus_bedrock_tasks.evaluation.progress import report_progress
from nexus_bedrock_tasks.evaluation.report import EvalSummary, RunStats
from nexus_bedrock_tasks.evaluation.results import CaseResult, ResultsWriter
from nexus_bedrock_tasks.evaluation.scorers import scorer_names
from nexus_bedrock_tasks.evaluation.sharding import check_deployment, run_shards
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.hooks import never_raise
from nexus_bedrock_tasks.settings import BedrockTasksSettings, NexusSettings

logger = logging.getLogger(__name__)
# Prefect logs two INFO lines per task run; thousands of cases would spend a sixth of
# the run's CPU printing and shipping them. Warnings and errors still show.
_TASK_RUN_LOGGER = "prefect.task_runs"
FLOW_NAME = "batch-evaluation"


def _eval_run_id(flow_run: Any) -> str:
    explicit = (flow_run.parameters or {}).get("eval_run_id")
    return str(explicit) if explicit else flow_run.id.hex


@never_raise
def _end_case_traces(flow: Any, flow_run: Any, state: Any) -> None:
    """A failed, crashed or cancelled run still ends every case trace it opened."""
    reason = f"the evaluation flow run ended {getattr(state, 'name', 'abnormally')}"
    ended = end_open_case_traces(_eval_run_id(flow_run), reason)
    if ended:
        logger.warning("ended %d case trace(s) left open: %s", ended, reason)


@contextlib.contextmanager
def _quiet_task_logs(enabled: bool) -> Iterator[None]:
    task_logger = logging.getLogger(_TASK_RUN_LOGGER)
    level = task_logger.level
    if enabled:
        task_logger.setLevel(max(logging.WARNING, level))
    try:
        yield
    finally:
        task_logger.setLevel(level)


def _check(
    concurrency: int,
    shards: int,
    min_pass_rate: float | None,
    threshold: float,
    cases_per_task: int | None,
) -> None:
    if concurrency < 1:
        raise ConfigError(f"concurrency {concurrency} must be at least 1")
    check_cases_per_task(cases_per_task)
    if shards < 1:
        raise ConfigError(f"shards {shards} must be at least 1")
    for name, value in (("min_pass_rate", min_pass_rate), ("score_threshold", threshold)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{name} {value} must be between 0 and 1 (0.9 means 90%)")


def _default_results_path(run_id: str, given_id: str | None, flow_run: Any) -> Path:
    """``<eval_results_dir>/<eval_run_id>.jsonl``; the shards of one run (which share its
    id) add their own flow run id."""
    name = run_id
    if given_id and flow_run is not None:
        name = f"{run_id}-{flow_run.id.hex[:12]}"
    return BedrockTasksSettings().eval_results_dir / f"{name}.jsonl"


@flow(
    name=FLOW_NAME,
    persist_result=True,
    on_failure=[_end_case_traces],
    on_crashed=[_end_case_traces],
    on_cancellation=[_end_case_traces],
)
async def batch_evaluation(
    dataset: str | list[dict[str, Any]],
    agent_id: str,
    agent_alias_id: str,
    concurrency: int = 8,
    cases_per_task: int | None = None,
    scorers: list[str] | None = None,
    baseline: str | None = None,
    min_pass_rate: float | None = None,
    out: str | None = None,
    max_latency_s: float | None = None,
    max_tokens: int | None = None,
    score_threshold: float = 0.5,
    task_runner: TaskRunnerName = "async",
    dask_address: str | None = None,
    dask_workers: int | None = None,
    fan_out_deployment: str | None = None,
    shards: int = 2,
    region: str | None = None,
    endpoint_url: str | None = None,
    aws_credentials_block: str | None = None,
    tools_module: str | None = None,
    memory_id: str | None = None,
    enable_trace: bool = True,
    eval_run_id: str | None = None,
    return_results: bool = False,
    quiet_task_logs: bool = True,
) -> EvalSummary:
    """Evaluate an agent on a dataset: run, score and trace every case, then report.

    Args:
        dataset: a ``.jsonl``/``.csv`` path or a list of cases (see `EvalCase`).
        concurrency: cases in flight at once (chunk task runs in flight, each running
            its cases one at a time).
        cases_per_task: cases per `evaluate_cases` task run; None chooses from the
            dataset size and concurrency (1 for small runs, up to 16 for large ones,
            shrinking to 1 for the last chunks so that all slots finish together). 1 is
            one task run per case. Each case keeps its own trace either way.
        scorers: built-in names or import paths (default: every built-in scorer).
        baseline: an earlier run's results file; regressions are reported against it.
        min_pass_rate: the run fails (after writing everything) below this fraction.
        out: the results JSONL; default ``<eval_results_dir>/<eval_run_id>.jsonl``.
        max_latency_s, max_tokens: limits for cases that set none.
        score_threshold: a float score passes at or above it.
        task_runner: ``async`` (this flow's event loop), ``thread`` or ``dask``.
        dask_address: an existing Dask scheduler; default a LocalCluster of
            `dask_workers` processes.
        fan_out_deployment: ``batch-evaluation/<deployment>`` to split the dataset into
            `shards` deployment runs on its work pool, merging their results here.
        eval_run_id: the id every case trace carries; default this flow run's id.
        return_results: put every result line in the returned summary (shards).
        quiet_task_logs: silence the per-task-run INFO lines during the run.

    Raises:
        ConfigError: bad parameters, dataset file or baseline (nothing ran).
        PassRateBelowMinimum: the pass rate is under `min_pass_rate`.

    Example:
        >>> summary = await batch_evaluation(
        ...     "deployments/datasets/smoke.jsonl", "DEMO000001", "TSTALIASID", concurrency=4
        ... )
        >>> summary.pass_rate, summary.results_path
    """
    _check(concurrency, shards, min_pass_rate, score_threshold, cases_per_task)
    names = scorer_names(scorers)
    cases = Dataset(dataset)
    compare = Baseline(Path(baseline)) if baseline else None
    context = FlowRunContext.get()
    flow_run = context.flow_run if context else None
    run_id = eval_run_id or (flow_run.id.hex if flow_run else None)
    if run_id is None:
        raise ConfigError("eval_run_id is required when the flow runs outside Prefect")
    if tools_module:
        ensure_tools(tools_module, run_id)
    results_path = Path(out) if out else _default_results_path(run_id, eval_run_id, flow_run)
    metadata: dict[str, Any] = {}
    if flow_run is not None:
        metadata = {"flow_run_id": str(flow_run.id), "flow_name": FLOW_NAME}
        if flow_run.deployment_id:
            metadata["deployment"] = str(flow_run.deployment_id)
    nexus = NexusSettings()
    config = CaseRunConfig(
        eval_run_id=run_id,
        agent_id=agent_id,
        agent_alias_id=agent_alias_id,
        nexus_agent_name=nexus.agent_id,
        scorers=names,
        score_threshold=score_threshold,
        region=region,
        endpoint_url=endpoint_url,
        aws_credentials_block=aws_credentials_block,
        tools_module=tools_module,
        memory_id=memory_id,
        enable_trace=enable_trace,
        trace_metadata=metadata,
        pool_size=concurrency + 2,
        # The exporter of a Dask worker process is not this process's: the case itself
        # waits for its trace id there.
        trace_id_wait_s=BedrockTasksSettings().trace_id_wait_s if task_runner == "dask" else 0,
    )
    if fan_out_deployment:
        await check_deployment(fan_out_deployment)
        shard_parameters = {
            "agent_id": agent_id,
            "agent_alias_id": agent_alias_id,
            "concurrency": concurrency,
            "scorers": names,
            "max_latency_s": max_latency_s,
            "max_tokens": max_tokens,
            "score_threshold": score_threshold,
            "task_runner": task_runner,
            "region": region,
            "endpoint_url": endpoint_url,
            "aws_credentials_block": aws_credentials_block,
            "tools_module": tools_module,
            "memory_id": memory_id,
            "enable_trace": enable_trace,
            "eval_run_id": run_id,
        }
        if cases_per_task is not None:  # unset, each shard chooses for its own size
            shard_parameters["cases_per_task"] = cases_per_task
        stream = run_shards(fan_out_deployment, cases, shards, shard_parameters)
    else:
        local = LocalRun(
            concurrency=concurrency,
            runner=task_runner,
            cases_per_task=cases_per_task,
            max_latency_s=max_latency_s,
            max_tokens=max_tokens,
            dask_address=dask_address,
            dask_workers=dask_workers,
        )
        stream = run_locally(cases, config, local)
    stats = RunStats()
    kept: list[CaseResult] | None = [] if return_results else None
    progress = ProgressArtifact()
    await progress.start(f"Evaluation {run_id}: {cases.total} cases")
    started = time.monotonic()
    with ResultsWriter(results_path) as writer, _quiet_task_logs(quiet_task_logs):
        async for result in stream:
            writer.write(result)
            stats.add(result)
            if compare is not None:
                compare.observe(result)
            if kept is not None:
                kept.append(result)
            report_progress(stats.cases, cases.total, stats.passed)
            await progress.update(stats.cases, cases.total)
    await progress.update(stats.cases, cases.total, force=True)
    summary = EvalSummary.build(
        stats,
        duration_s=time.monotonic() - started,
        eval_run_id=run_id,
        agent_id=agent_id,
        agent_alias_id=agent_alias_id,
        dataset=cases.label,
        results_path=str(results_path),
        min_pass_rate=min_pass_rate,
        baseline=compare.comparison() if compare else None,
        flow_run_id=str(flow_run.id) if flow_run else None,
        results=kept,
    )
    await publish_report(summary, stats, nexus.base_url)
    logger.info(
        "evaluation %s: %d/%d passed (%.1f%%), p95 %.2fs, results in %s",
        run_id,
        summary.passed,
        summary.cases,
        100 * summary.pass_rate,
        summary.p95_latency_s or 0.0,
        results_path,
    )
    if summary.below_minimum:
        raise PassRateBelowMinimum(summary)
    return summary
