"""Run an evaluation's cases from its flow run: chunks of cases as task runs, streamed.

The dataset is read lazily into chunks (`chunks.chunk_cases`); at most `concurrency`
chunk task runs (`chunktask.evaluate_cases`) are in flight, on this flow's event loop
(``async``), a thread pool (``thread``) or Dask workers (``dask``). Each chunk's results
come out as soon as it completes; a bad dataset line gives its failed result without a
task run; a chunk whose task run itself fails (not one of its cases: those fail alone)
gives a failed result for each of its cases, and the other chunks go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from prefect.utilities.annotations import quote

from nexus_bedrock_tasks.bedrock.client import make_client
from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.casework import (
    CASE_TASK_NAME,
    CaseRunConfig,
    bad_line_result,
    flush_worker_exporter,
)
from nexus_bedrock_tasks.evaluation.chunks import chunk_cases
from nexus_bedrock_tasks.evaluation.chunktask import evaluate_cases
from nexus_bedrock_tasks.evaluation.dataset import BadLine, Dataset
from nexus_bedrock_tasks.evaluation.fanout import (
    SubmittedCases,
    bounded,
    make_task_runner,
    own_run_results,
    widen_default_executor,
)
from nexus_bedrock_tasks.evaluation.results import CaseResult
from nexus_bedrock_tasks.settings import BedrockTasksSettings
from nexus_bedrock_tasks.tracing import describe, get_tracer

# Results whose Nexus trace id is still unknown, held back in completion order; past this
# many the oldest goes out without its id rather than hold more memory.
MAX_AWAITING_TRACE_ID = 1000


@dataclass(frozen=True)
class LocalRun:
    """How this flow run runs its cases.

    Attributes:
        concurrency: chunk task runs (so cases) in flight at once.
        runner: ``async``, ``thread`` or ``dask``.
        cases_per_task: a fixed chunk size, or None for the automatic rule.
        max_latency_s, max_tokens: limits for cases that set none.
        dask_address, dask_workers: where Dask runs (``dask`` only).
    """

    concurrency: int
    runner: str = "async"
    cases_per_task: int | None = None
    max_latency_s: float | None = None
    max_tokens: int | None = None
    dask_address: str | None = None
    dask_workers: int | None = None

    def with_defaults(self, case: EvalCase) -> EvalCase:
        """`case` with the run's limits where it sets none."""
        update: dict[str, Any] = {}
        if case.max_latency_s is None and self.max_latency_s is not None:
            update["max_latency_s"] = self.max_latency_s
        if case.max_tokens is None and self.max_tokens is not None:
            update["max_tokens"] = self.max_tokens
        return case.model_copy(update=update) if update else case


async def with_trace_ids(
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
            if ready is None and len(waiting) <= MAX_AWAITING_TRACE_ID:
                break
            yield ready or waiting[0]
            waiting.popleft()
    deadline = time.monotonic() + wait_s
    while waiting:
        head = waiting.popleft()
        left = max(0.0, deadline - time.monotonic())
        found: CaseResult | None = await asyncio.to_thread(with_id, head, left)
        yield found or head


def chunk_failed(chunk: list[EvalCase], exc: BaseException) -> list[CaseResult]:
    """Failed results for the cases of a chunk whose task run failed as a whole."""
    error = f"the {CASE_TASK_NAME} task run of its chunk failed: {describe(exc)}"
    return [CaseResult(id=case.id, passed=False, error=error) for case in chunk]


async def _flatten(chunks: AsyncIterator[list[CaseResult]]) -> AsyncIterator[CaseResult]:
    async for results in chunks:
        for result in results:
            yield result


async def run_locally(
    dataset: Dataset, config: CaseRunConfig, run: LocalRun
) -> AsyncIterator[CaseResult]:
    """Every case's result, each chunk's as soon as it completes.

    Raises:
        ConfigError: an unknown runner, or ``dask`` without prefect-dask installed.
    """
    runner = make_task_runner(run.runner, run.concurrency, run.dask_address, run.dask_workers)
    client = None
    if run.runner != "dask":
        # In a thread: loading a credentials block from async code would return a coroutine.
        client = await asyncio.to_thread(
            make_client,
            region=config.region,
            endpoint_url=config.endpoint_url,
            credentials_block=config.aws_credentials_block,
            max_pool_connections=run.concurrency + 2,
        )
    items: Iterable[EvalCase | BadLine] = (
        item if isinstance(item, BadLine) else run.with_defaults(item) for item in dataset
    )
    chunks = chunk_cases(items, dataset.total, run.concurrency, run.cases_per_task)
    with contextlib.ExitStack() as stack:
        if client is not None:
            stack.callback(client.close)
        submitted = None
        if runner is not None:
            stack.enter_context(runner)
            submitted = SubmittedCases(runner, run.concurrency)
            stack.callback(submitted.close)
        else:
            widen_default_executor(run.concurrency)

        async def run_chunk(item: BadLine | list[EvalCase]) -> list[CaseResult]:
            if isinstance(item, BadLine):
                return [bad_line_result(item)]
            parameters: dict[str, Any] = {"cases": item, "config": config, "client": client}
            if run.runner != "dask":
                # Quoted, Prefect does not walk every case's fields looking for futures
                # (Dask would turn the quote, a named tuple, into a plain tuple).
                parameters.update(cases=quote(item), config=quote(config))
            try:
                results: list[CaseResult]
                if submitted is not None:
                    results = await submitted.run(evaluate_cases, parameters)
                    return results
                with own_run_results():
                    results = await evaluate_cases(**parameters)
                    return results
            except Exception as exc:
                return chunk_failed(item, exc)

        stream = _flatten(bounded(chunks, run_chunk, run.concurrency))
        if run.runner != "dask":  # a Dask worker's chunk looked its trace ids up itself
            stream = with_trace_ids(stream, BedrockTasksSettings().trace_id_wait_s)
        async for result in stream:
            yield result
        if run.runner == "dask":
            timeout = BedrockTasksSettings().flush_timeout_s
            await asyncio.to_thread(runner.client.run, flush_worker_exporter, timeout)
