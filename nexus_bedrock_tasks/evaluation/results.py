"""The results file: one JSON line per case, written as cases finish (completion order).

A line: ``{"id", "passed", "scores": {scorer: value}, "text", "trace_id", "usage",
"latency_s", "error", "finish_reason", "cost_usd", "local_trace_id"}``. ``trace_id`` is
the Nexus trace id when Nexus acknowledged the trace in time; ``local_trace_id`` names the
trace in the outbox either way. The same file is a later run's ``baseline``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import BaseModel, Field, ValidationError

from nexus_bedrock_tasks.evaluation.errors import DatasetError
from nexus_bedrock_tasks.results import TokenUsage


class CaseResult(BaseModel):
    """One line of the results file."""

    id: str
    passed: bool
    scores: dict[str, bool | float] = Field(default_factory=dict)
    text: str = ""
    trace_id: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    latency_s: float | None = None
    error: str | None = None
    finish_reason: str | None = None
    cost_usd: float | None = None
    local_trace_id: str | None = None

    def to_line(self) -> str:
        """The JSON line (no newline)."""
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)


class ResultsWriter:
    """Append-as-you-go writer of a results file (replaces an existing file).

    Each line is flushed, so a crashed run leaves every finished case on disk.

    Raises:
        DatasetError: the file cannot be created (naming it and the fix).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle: IO[str] = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise DatasetError(
                str(path), f"cannot write results: {exc.strerror}; choose another --out path"
            ) from exc

    def write(self, result: CaseResult) -> None:
        """Append one line."""
        self._handle.write(result.to_line() + "\n")
        self._handle.flush()
        self.written += 1

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_results(path: Path) -> Iterator[CaseResult]:
    """Stream a results file (a baseline, a shard's output).

    Raises:
        DatasetError: the file is missing or a line is not a result line.
    """
    label = str(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(
            label, f"cannot read results: {exc.strerror}; give the --out file of an earlier run"
        ) from exc
    with handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield CaseResult.model_validate_json(text)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "line"
                raise DatasetError(
                    label,
                    f"not a results line ({where}: {first['msg']}); a baseline is the "
                    "results JSONL (--out) of an earlier evaluation",
                    line=line,
                ) from exc
