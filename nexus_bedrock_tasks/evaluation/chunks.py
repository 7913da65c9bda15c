"""How many cases one task run evaluates: the chunk rule, and the chunking of a dataset.

A Prefect task run costs tens of ms of CPU (the task engine here, recording its states
in Prefect's server) — more than a sub-second case's own work on a busy machine. A big
evaluation therefore groups its cases into task runs of several cases each, run one
after another, as Prefect recommends for large fan-outs of small work items.

The automatic rule (`cases_per_task` None):

- *bulk* chunks of ``total // (2 × concurrency)`` cases, at most `MAX_CASES_PER_TASK`:
  each slot of the concurrency gets about two, so a task run's cost is shared by many
  cases (1,000 cases at concurrency 32: 15);
- *tapering* at the end: a chunk never holds more than ``ceil(remaining / concurrency)``
  cases, so the last chunks shrink to single cases and all slots finish together instead
  of a few long chunks running on alone (1,000 cases at concurrency 32: 140 task runs,
  7.1 cases each on average);
- small runs keep one task run per case (8 cases at concurrency 4: 8 task runs).

`MAX_CASES_PER_TASK` (16) bounds what one task run holds: past it a task run's cost is
already under a tenth of a case's, while a chunk's results arrive (and a crashed chunk's
cases fail) together. An explicit `cases_per_task` is used as given, the last chunk
taking what is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.dataset import BadLine
from nexus_bedrock_tasks.exceptions import ConfigError

MAX_CASES_PER_TASK = 16
# Bulk chunks per concurrency slot over a run.
BULK_CHUNKS_PER_SLOT = 2


def check_cases_per_task(cases_per_task: int | None, name: str = "cases_per_task") -> None:
    """Reject a chunk size below 1; `name` is how the caller's user spells the setting.

    Raises:
        ConfigError: naming the parameter and the fix.
    """
    if cases_per_task is not None and cases_per_task < 1:
        raise ConfigError(
            f"{name} {cases_per_task} must be at least 1 (1 = one task run per case), "
            "or left unset to choose it from the dataset size and concurrency"
        )


def bulk_chunk_size(total_cases: int, concurrency: int) -> int:
    """The automatic chunk size before tapering: 1 for small runs, at most 16."""
    per_chunk = total_cases // (BULK_CHUNKS_PER_SLOT * max(1, concurrency))
    return max(1, min(MAX_CASES_PER_TASK, per_chunk))


def next_chunk_size(
    remaining: int, total_cases: int, concurrency: int, cases_per_task: int | None
) -> int:
    """How many cases the next chunk takes, `remaining` cases (or lines) being left."""
    if cases_per_task is not None:
        return cases_per_task
    tapered = -(-remaining // max(1, concurrency))
    return max(1, min(bulk_chunk_size(total_cases, concurrency), tapered))


def chunk_cases(
    items: Iterable[EvalCase | BadLine],
    total: int,
    concurrency: int,
    cases_per_task: int | None = None,
) -> Iterator[BadLine | list[EvalCase]]:
    """Group `items` into chunks of cases, read lazily; a bad line comes out on its own.

    Args:
        items: the dataset's items, in order.
        total: how many items there are (the dataset's line count), for the automatic rule.
        concurrency: task runs in flight at once.
        cases_per_task: a fixed chunk size, or None for the automatic rule.

    Example:
        >>> [len(c) for c in chunk_cases(cases, total=10, concurrency=2, cases_per_task=4)]
        [4, 4, 2]
    """
    check_cases_per_task(cases_per_task)
    seen = 0
    chunk: list[EvalCase] = []
    size = next_chunk_size(total, total, concurrency, cases_per_task)
    for item in items:
        seen += 1
        if isinstance(item, BadLine):
            yield item
            continue
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
            size = next_chunk_size(total - seen, total, concurrency, cases_per_task)
    if chunk:
        yield chunk
