"""The batch evaluation flow: a dataset of cases against one agent, scored and traced.

One flow run fans the cases out as tasks with bounded concurrency (no flow run per
case); each case is its own Nexus trace with metadata ``eval_run_id``, ``case_id`` and
its score. Results stream to a JSONL file; the summary goes to Prefect artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext

from nexus_bedrock_tasks.bedrock.client import make_client
from nexus_bedrock_tasks.evaluation.artifacts import ProgressArtifact, publish_report
from nexus_bedrock_tasks.evaluation.baseline import Baseline
from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.casework import (
    CaseRunConfig,
    bad_line_result,
    end_open_case_traces,
    ensure_tools,
    evaluate_case,
    flush_worker_exporter,
)
from nexus_bedrock_tasks.evaluation.dataset import BadLine, Dataset
from nexus_bedrock_tasks.evaluation.errors import PassRateBelowMinimum
from nexus_bedrock_tasks.evaluation.fanout import (
    SubmittedCases,
    TaskRunnerName,
    bounded,
    make_task_runner,
    own_run_results,
    widen_default_executor,
)
from nexus_bedrock_tasks.evaluation.progress import report_progress
from nexus_bedrock_tasks.evaluation.report import EvalSummary, RunStats
from nexus_bedrock_tasks.evaluation.results import CaseResult, ResultsWriter
from nexus_bedrock_tasks.evaluation.scorers import scorer_names
from nexus_bedrock_tasks.evaluation.sharding import check_deployment, run_shards
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.hooks import never_raise
from nexus_bedrock_tasks.settings import BedrockTasksSettings, NexusSettings
from nexus_bedrock_tasks.tracing import get_tracer

logger = logging.getLogger(__name__)
# Prefect logs two INFO lines per task run; thousands of cases would spend a sixth of
# the run's CPU printing and shipping them. Warnings and errors still show.
_TASK_RUN_LOGGER = "prefect.task_runs"
FLOW_NAME = "batch-evaluation"
# Results whose Nexus trace id is still unknown, held back in completion order; past this
# many the oldest goes out without its id rather than hold more memory.
_MAX_AWAITING_TRACE_ID = 1000


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


def _check(concurrency: int, shards: int, min_pass_rate: float | None, threshold: float) -> None:
    if concurrency < 1:
        raise ConfigError(f"concurrency {concurrency} must be at least 1")
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


def _with_defaults(case: EvalCase, max_latency_s: float | None, max_tokens: int | None) -> EvalCase:
    update: dict[str, Any] = {}
    if case.max_latency_s is None and max_latency_s is not None:
        update["max_latency_s"] = max_latency_s
    if case.max_tokens is None and max_tokens is not None:
        update["max_tokens"] = max_tokens
    return case.model_copy(update=update) if update else case


async def _with_trace_ids(
    results: AsyncIterator[CaseResult], wait_s: float
) -> AsyncIterator[CaseResult]:
    """Add the Nexus trace id to results of cases traced by this process.

    A case does not wait for Nexus to acknowledge its trace (that would hold its
    concurrency slot); its result waits here instead, in completion order, and goes on
    as soon as the id is known. After the last case the rest wait at most `wait_s` in
    all; a result whose trace Nexus has not acknowledged by then keeps ``trace_id`` None.
    """
    tracer = get_tracer()
    waiting: deque[CaseResult] = deque()

    def with_id(result: CaseResult, timeout: float = 0.0) -> CaseResult | None:
        trace_id = tracer.nexus_trace_id(str(result.local_trace_id), timeout)
        return None if trace_id is None else result.model_copy(update={"trace_id": trace_id})

    async for result in results:
        if result.trace_id is None and result.local_trace_id and tracer.exporter.enabled:
            waiting.append(result)
        else:
            yield result
        while waiting:
            ready = with_id(waiting[0])
            if ready is None and len(waiting) <= _MAX_AWAITING_TRACE_ID:
                break
            yield ready or waiting[0]
            waiting.popleft()
    deadline = time.monotonic() + wait_s
    while waiting:
        head = waiting.popleft()
        left = max(0.0, deadline - time.monotonic())
        found: CaseResult | None = await asyncio.to_thread(with_id, head, left)
        yield found or head


async def _run_locally(
    dataset: Dataset,
    config: CaseRunConfig,
    concurrency: int,
    runner_name: str,
    limits: tuple[float | None, int | None],
    dask: tuple[str | None, int | None],
) -> AsyncIterator[CaseResult]:
    runner = make_task_runner(runner_name, concurrency, *dask)
    client = None
    if runner_name != "dask":
        # In a thread: loading a credentials block from async code would return a coroutine.
        client = await asyncio.to_thread(
            make_client,
            region=config.region,
            endpoint_url=config.endpoint_url,
            credentials_block=config.aws_credentials_block,
            max_pool_connections=concurrency + 2,
        )
    items = (
        item if isinstance(item, BadLine) else _with_defaults(item, *limits) for item in dataset
    )
    with contextlib.ExitStack() as stack:
        if client is not None:
            stack.callback(client.close)
        submitted = None
        if runner is not None:
            stack.enter_context(runner)
            submitted = SubmittedCases(runner, concurrency)
            stack.callback(submitted.close)
        else:
            widen_default_executor(concurrency)

        async def run(item: EvalCase | BadLine) -> CaseResult:
            if isinstance(item, BadLine):
                return bad_line_result(item)
            parameters = {"case": item, "config": config, "client": client}
            try:
                if submitted is not None:
                    result: CaseResult = await submitted.run(evaluate_case, parameters)
                    return result
                with own_run_results():
                    return await evaluate_case(item, config, client)
            except Exception as exc:
                return CaseResult(id=item.id, passed=False, error=f"{type(exc).__name__}: {exc}")

        stream = bounded(items, run, concurrency)
        if runner_name != "dask":  # a Dask worker's case looked its trace id up itself
            stream = _with_trace_ids(stream, BedrockTasksSettings().trace_id_wait_s)
        async for result in stream:
            yield result
        if runner_name == "dask":
            timeout = BedrockTasksSettings().flush_timeout_s
            await asyncio.to_thread(runner.client.run, flush_worker_exporter, timeout)


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
        concurrency: cases in flight at once.
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
    _check(concurrency, shards, min_pass_rate, score_threshold)
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
        stream = run_shards(fan_out_deployment, cases, shards, shard_parameters)
    else:
        stream = _run_locally(
            cases,
            config,
            concurrency,
            task_runner,
            (max_latency_s, max_tokens),
            (dask_address, dask_workers),
        )
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
