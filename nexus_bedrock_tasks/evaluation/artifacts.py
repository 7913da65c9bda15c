"""Prefect artifacts of an evaluation run: progress, a markdown summary, a failures table.

Artifact calls go to the Prefect API; a failure to write one is logged, never raised
(the results file is the record, artifacts are the view).
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from nexus_bedrock_tasks.evaluation.report import (
    EvalSummary,
    RunStats,
    failures_table,
    summary_markdown,
)

logger = logging.getLogger(__name__)
SUMMARY_KEY = "eval-summary"
FAILURES_KEY = "eval-failures"
PROGRESS_EVERY_S = 2.0


class ProgressArtifact:
    """A progress artifact updated at most every `PROGRESS_EVERY_S` seconds."""

    def __init__(self) -> None:
        self._id: UUID | None = None
        self._last = 0.0

    async def start(self, description: str) -> None:
        """Create it at 0%."""
        try:
            self._id = await acreate_progress_artifact(progress=0.0, description=description)
        except Exception as exc:
            logger.warning("could not create the progress artifact: %s", exc)

    async def update(self, done: int, total: int, *, force: bool = False) -> None:
        """Set it to done/total (throttled unless `force`)."""
        now = time.monotonic()
        if self._id is None or total <= 0 or (not force and now - self._last < PROGRESS_EVERY_S):
            return
        self._last = now
        try:
            await aupdate_progress_artifact(self._id, progress=min(100.0, 100 * done / total))
        except Exception as exc:
            logger.warning("could not update the progress artifact: %s", exc)
            self._id = None


async def publish_report(summary: EvalSummary, stats: RunStats, nexus_url: str) -> None:
    """The markdown summary and, when cases failed, the failures table with trace links."""
    try:
        await acreate_markdown_artifact(
            markdown=summary_markdown(summary, stats, nexus_url),
            key=SUMMARY_KEY,
            description=f"Evaluation {summary.eval_run_id}: {summary.pass_rate:.1%} passed",
        )
        if stats.failures:
            await acreate_table_artifact(
                table=failures_table(stats, nexus_url),
                key=FAILURES_KEY,
                description=(
                    f"Failed cases of evaluation {summary.eval_run_id} "
                    f"({len(stats.failures)} of {stats.failure_count} listed)"
                ),
            )
    except Exception as exc:
        logger.warning("could not publish the evaluation artifacts: %s", exc)
