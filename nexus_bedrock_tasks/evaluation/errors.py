"""Typed errors of batch evaluations: one per thing a caller handles differently."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nexus_bedrock_tasks.exceptions import ConfigError, NexusBedrockError

if TYPE_CHECKING:
    from nexus_bedrock_tasks.evaluation.report import EvalSummary


class DatasetError(ConfigError):
    """A dataset, baseline or results file that cannot be used, naming file, line and fix.

    Attributes:
        path: the file (or ``<list>`` for an in-memory dataset).
        line: the 1-based line (CSV: row) number, when one line is at fault.
    """

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        where = f"{path} line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class PassRateBelowMinimum(NexusBedrockError):
    """The evaluation ran, but fewer cases passed than `min_pass_rate` asks for.

    Attributes:
        summary: the figures of the run (results and artifacts were written).
    """

    def __init__(self, summary: EvalSummary) -> None:
        super().__init__(
            f"pass rate {summary.pass_rate:.1%} is below the minimum "
            f"{summary.min_pass_rate or 0:.1%} ({summary.passed}/{summary.cases} cases passed)"
        )
        self.summary = summary
