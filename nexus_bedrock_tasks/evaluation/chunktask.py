"""The task of a batch evaluation: a chunk of cases, one after another, in one task run.

A Prefect task run costs more CPU (here and in Prefect's server) than a sub-second case,
so the flow hands each task run a chunk of cases (`chunks.chunk_cases`) and keeps
`concurrency` task runs in flight; a chunk runs its cases serially, so `concurrency`
still counts cases in flight. Each case keeps its own Nexus trace with a
`task:evaluate_cases` span covering its part of the task run, whose output names the
task run and the case's position in the chunk.

A case that raises fails alone: its result says why and the chunk goes on. Cases are not
retried (retries live below, in tenacity), so each trace and score is produced once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.casework import (
    CASE_TASK_NAME,
    CaseRunConfig,
    TaskPart,
    run_case,
)
from nexus_bedrock_tasks.evaluation.results import CaseResult
from nexus_bedrock_tasks.tracing import describe, get_tracer

logger = logging.getLogger(__name__)


def _learn_trace_ids(results: list[CaseResult], wait_s: float) -> list[CaseResult]:
    """Add the Nexus trace ids of the chunk's cases, waiting `wait_s` at most in all."""
    tracer = get_tracer()
    deadline = time.monotonic() + wait_s
    known: list[CaseResult] = []
    for result in results:
        if result.trace_id is None and result.local_trace_id:
            left = max(0.0, deadline - time.monotonic())
            trace_id = tracer.nexus_trace_id(result.local_trace_id, left)
            if trace_id is not None:
                result = result.model_copy(update={"trace_id": trace_id})
        known.append(result)
    return known


async def run_cases(
    cases: list[EvalCase], config: CaseRunConfig, client: Any | None = None
) -> list[CaseResult]:
    """Run a chunk's cases one after another; one result per case, in order.

    Never raises for a case: a case that raises gets a failed result naming the error.

    Args:
        cases: the chunk (a plain list, picklable for Dask workers).
        config: the run's shared settings.
        client: a Bedrock client to share; None uses this process's shared client.

    Example:
        >>> results = await evaluate_cases([EvalCase(id="c1", prompt="Hi")], config)
        >>> [(r.id, r.passed, r.local_trace_id) for r in results]
    """
    context = TaskRunContext.get()
    task_run_id = None if context is None else context.task_run.id.hex
    results: list[CaseResult] = []
    for position, case in enumerate(cases, start=1):
        part = None if task_run_id is None else TaskPart(task_run_id, position, len(cases))
        try:
            results.append(await run_case(case, config, client, part=part))
        except Exception as exc:
            logger.warning("case %s failed in task run %s: %s", case.id, task_run_id, exc)
            error = f"the case raised in task run {task_run_id}: {describe(exc)}"
            results.append(CaseResult(id=case.id, passed=False, error=error))
    if config.trace_id_wait_s > 0 and task_run_id is not None:
        results = await asyncio.to_thread(_learn_trace_ids, results, config.trace_id_wait_s)
    return results


# The task wraps `run_cases` under another name so that the function pickles by reference
# (module.run_cases) when a Dask worker receives the task.
evaluate_cases = task(name=CASE_TASK_NAME, cache_policy=NO_CACHE, persist_result=False)(run_cases)
