"""Compare a run with an earlier run's results file, case by case (by id)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from nexus_bedrock_tasks.evaluation.results import CaseResult, read_results

MAX_LISTED = 200


class BaselineComparison(BaseModel):
    """How this run differs from its baseline.

    Attributes:
        regressions: ids that passed in the baseline and fail now (first `MAX_LISTED`).
        fixed: ids that failed in the baseline and pass now (first `MAX_LISTED`).
        regression_count: all regressions, listed or not.
        new_cases: ids not in the baseline.
        missing_cases: baseline ids this run did not have.
    """

    path: str
    baseline_cases: int
    baseline_pass_rate: float
    regressions: list[str] = Field(default_factory=list)
    fixed: list[str] = Field(default_factory=list)
    regression_count: int = 0
    fixed_count: int = 0
    new_cases: int = 0
    missing_cases: int = 0


class Baseline:
    """An earlier run's verdicts, by case id (only the ids and booleans are kept).

    Raises:
        DatasetError: the file is missing or not a results file.

    Example:
        >>> baseline = Baseline(Path("last-night.jsonl"))
        >>> baseline.observe(result)
        >>> baseline.comparison().regressions
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._passed: dict[str, bool] = {r.id: r.passed for r in read_results(path)}
        self._seen: set[str] = set()
        self._result = BaselineComparison(
            path=str(path),
            baseline_cases=len(self._passed),
            baseline_pass_rate=_rate(sum(self._passed.values()), len(self._passed)),
        )

    def observe(self, result: CaseResult) -> None:
        """Compare one case of this run."""
        self._seen.add(result.id)
        before = self._passed.get(result.id)
        report = self._result
        if before is None:
            report.new_cases += 1
        elif before and not result.passed:
            report.regression_count += 1
            if len(report.regressions) < MAX_LISTED:
                report.regressions.append(result.id)
        elif not before and result.passed:
            report.fixed_count += 1
            if len(report.fixed) < MAX_LISTED:
                report.fixed.append(result.id)

    def comparison(self) -> BaselineComparison:
        """The comparison so far (`missing_cases` counts baseline ids not seen yet)."""
        missing = sum(1 for case_id in self._passed if case_id not in self._seen)
        return self._result.model_copy(update={"missing_cases": missing})


def _rate(passed: int, total: int) -> float:
    return round(passed / total, 4) if total else 0.0
