"""Fan-out over machines: split a dataset into shards run as deployment runs, then merge.

Each shard is a run of an evaluation deployment (`run_deployment`) on its work pool,
with its cases inline in the parameters and ``return_results=True``; its summary (with
the result lines) comes back through Prefect's result storage. On one machine the
default local storage works; across machines set a shared default result storage
(``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``, e.g. an S3 bucket block), see
deployments/README.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound

from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.casework import bad_line_result
from nexus_bedrock_tasks.evaluation.dataset import BadLine
from nexus_bedrock_tasks.evaluation.results import CaseResult
from nexus_bedrock_tasks.exceptions import ConfigError

logger = logging.getLogger(__name__)
POLL_INTERVAL_S = 2.0


async def check_deployment(name: str) -> None:
    """Fail before anything runs when the fan-out deployment does not exist.

    Raises:
        ConfigError: naming the deployment and how to create it.
    """
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
        except ObjectNotFound as exc:
            raise ConfigError(
                f"fan-out deployment {name!r} not found on {client.api_url}: deploy it "
                "(`prefect deploy --all` with prefect.yaml) and point PREFECT_API_URL at "
                "that server"
            ) from exc


def split(
    items: Iterable[EvalCase | BadLine], shards: int
) -> tuple[list[list[dict[str, Any]]], list[BadLine]]:
    """Deal the cases round-robin into `shards` lists of parameters; bad lines apart."""
    dealt: list[list[dict[str, Any]]] = [[] for _ in range(max(1, shards))]
    bad: list[BadLine] = []
    index = 0
    for item in items:
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        dealt[index % len(dealt)].append(item.model_dump(exclude_defaults=True))
        index += 1
    return [shard for shard in dealt if shard], bad


def _lost(shard: list[dict[str, Any]], reason: str) -> list[CaseResult]:
    return [CaseResult(id=str(case["id"]), passed=False, error=reason) for case in shard]


async def _run_shard(
    deployment: str, number: int, shard: list[dict[str, Any]], parameters: dict[str, Any]
) -> list[CaseResult]:
    flow_run = await arun_deployment(
        deployment,
        parameters={**parameters, "dataset": shard, "return_results": True},
        flow_run_name=f"{parameters['eval_run_id']}-shard-{number}",
        timeout=None,
        poll_interval=POLL_INTERVAL_S,
    )
    state = flow_run.state
    name = f"shard {number} ({flow_run.name}, flow run {flow_run.id})"
    if state is None or not state.is_completed():
        reason = f"{name} ended {state.name if state else 'without a state'}"
        logger.error("%s: its %d cases count as failed", reason, len(shard))
        return _lost(shard, reason)
    try:
        summary = await state.aresult()
    except Exception as exc:
        reason = (
            f"{name}: its results are unreadable ({type(exc).__name__}: {exc}); across "
            "machines set PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK to shared storage"
        )
        logger.error(reason)
        return _lost(shard, reason)
    results: list[CaseResult] = list(summary.results or [])
    return results


async def run_shards(
    deployment: str,
    items: Iterable[EvalCase | BadLine],
    shards: int,
    parameters: dict[str, Any],
) -> AsyncIterator[CaseResult]:
    """Run the shards concurrently and yield their results as each shard finishes.

    Args:
        deployment: ``<flow name>/<deployment name>`` of a batch-evaluation deployment.
        parameters: the shard runs' parameters besides the cases (agent, scorers, ...).
    """
    dealt, bad = split(items, shards)
    for line in bad:
        yield bad_line_result(line)
    runs = [
        asyncio.ensure_future(_run_shard(deployment, number, shard, parameters))
        for number, shard in enumerate(dealt, start=1)
    ]
    try:
        for finished in asyncio.as_completed(runs):
            for result in await finished:
                yield result
    finally:
        for run in runs:
            run.cancel()
