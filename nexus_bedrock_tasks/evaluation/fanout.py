"""Run many cases with bounded concurrency on a chosen task runner.

Never more than `concurrency` cases are in flight: the dataset is read as cases finish,
so a 10,000-case run holds 32 futures, not 10,000. Each case runs in a copy of the flow
run context with its own `run_results` and `task_run_assets`: Prefect records every task
run there (for dependency and asset tracking) and never drops an entry, which would
otherwise grow by ~20 entries per case for the whole run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from prefect.context import FlowRunContext

from nexus_bedrock_tasks.exceptions import ConfigError

TaskRunnerName = Literal["async", "thread", "dask"]
TASK_RUNNERS: tuple[TaskRunnerName, ...] = ("async", "thread", "dask")
T = TypeVar("T")
R = TypeVar("R")


async def bounded(
    items: Iterable[T], run: Callable[[T], Awaitable[R]], limit: int
) -> AsyncIterator[R]:
    """Yield `run(item)` results as they finish, with at most `limit` running at once.

    `run` should not raise; if it does, the error propagates and the rest is cancelled.
    """
    pending: set[asyncio.Future[R]] = set()
    try:
        for item in items:
            while len(pending) >= limit:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    yield future.result()
            pending.add(asyncio.ensure_future(run(item)))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


@contextlib.contextmanager
def own_run_results() -> Iterator[None]:
    """Scope Prefect's result→state links of the tasks started inside to this block."""
    context = FlowRunContext.get()
    if context is None:
        yield
        return
    with context.model_copy(update={"run_results": {}, "task_run_assets": {}}):
        yield


def make_task_runner(
    name: str, concurrency: int, dask_address: str | None, dask_workers: int | None
) -> Any:
    """The Prefect task runner for `name` (None for ``async``: the flow's own loop).

    Raises:
        ConfigError: an unknown name, or ``dask`` without prefect-dask installed.
    """
    if name == "async":
        return None
    if name == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=concurrency)
    if name == "dask":
        try:
            from prefect_dask.task_runners import DaskTaskRunner
        except ImportError as exc:
            raise ConfigError(
                "task_runner='dask' needs prefect-dask: pip install 'nexus-bedrock-tasks[dask]'"
            ) from exc
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        workers = dask_workers or 2
        threads = max(1, -(-concurrency // workers))
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": workers,
                "threads_per_worker": threads,
                "processes": True,
                "dashboard_address": None,
                # Dask's sampling profiler walks every thread's stack every 10 ms; with a
                # dozen threads running cases it starves the worker's event loop until the
                # scheduler drops the worker (measured: a 300-case run hung after ~100).
                "config": {"distributed.worker.profile.enabled": False},
            }
        )
    raise ConfigError(f"unknown task runner {name!r}: use one of {', '.join(TASK_RUNNERS)}")


def widen_default_executor(concurrency: int) -> None:
    """Give the running loop enough threads for `concurrency` cases' blocking calls.

    The invocation tasks read Bedrock streams with `asyncio.to_thread`, whose default
    pool has min(32, cores + 4) threads: 6 on a 2-core machine would cap the cases at 6.
    """
    workers = 2 * concurrency + 4
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(workers, thread_name_prefix="nbt-eval"))


class SubmittedCases:
    """Submit cases to a Prefect task runner and await each one without blocking the loop."""

    def __init__(self, runner: Any, concurrency: int) -> None:
        self.runner = runner
        self._waiters = ThreadPoolExecutor(concurrency, thread_name_prefix="nbt-eval-wait")

    async def run(self, task: Any, parameters: dict[str, Any]) -> Any:
        """Submit `task` and return its result (raising what it raised)."""
        with own_run_results():
            future = self.runner.submit(task, parameters=parameters)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._waiters, future.result)

    def close(self) -> None:
        """Stop the waiting threads."""
        self._waiters.shutdown(wait=False, cancel_futures=True)
