"""Read evaluation datasets (JSONL, CSV or an in-memory list) one case at a time.

A dataset is streamed, never loaded whole: a 10,000-case file costs one line of memory
at a time plus the set of ids seen (duplicates are errors). A line that is not a valid
case does not stop the run: it comes out as a `BadLine` naming the file, the line and
the fix, and the evaluation reports it as a failed case.

Formats, chosen by extension:
- ``.jsonl`` / ``.ndjson``: one JSON object per line (blank lines are skipped).
- ``.csv``: a header row naming the columns; list columns (``turns``, ``must_contain``,
  ``must_not_contain``, ``expected_tools``, ``tags``) hold a JSON array or values
  separated by ``|``; empty cells are absent fields.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.errors import DatasetError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
LIST_LABEL = "<dataset list>"
FIELDS = tuple(EvalCase.model_fields)
LIST_FIELDS = frozenset({"turns", "must_contain", "must_not_contain", "expected_tools", "tags"})
FORMAT_HINT = 'each case needs "id" and "prompt"; optional: ' + ", ".join(
    name for name in FIELDS if name not in ("id", "prompt")
)

DatasetSource = str | Path | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class BadLine:
    """A dataset line that is not a usable case; reported as a failed case.

    Attributes:
        result_id: the id its result line carries: ``<file>:<line>`` (ids may be missing
            or duplicated on a bad line, so they are not used).
    """

    path: str
    line: int
    message: str

    @property
    def result_id(self) -> str:
        """``<file>:<line>``."""
        return f"{self.path}:{self.line}"

    @property
    def error(self) -> str:
        """The message naming file, line and fix."""
        return f"{self.path} line {self.line}: {self.message}"


def describe_validation(exc: ValidationError) -> str:
    """One line per problem: the field, what is wrong, and the accepted fields."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "line"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown field {field!r}")
        else:
            problems.append(f"field {field!r}: {error['msg']}")
    return "; ".join(problems) + f" ({FORMAT_HINT})"


class Dataset:
    """A dataset opened for streaming; iterate it for `EvalCase` or `BadLine` items.

    Args:
        source: a ``.jsonl``/``.csv`` path, or a list of case mappings.

    Raises:
        DatasetError: the file is missing, unreadable, of an unknown format, or a CSV
            header lacks ``id``/``prompt`` or names an unknown column.

    Example:
        >>> dataset = Dataset("deployments/datasets/smoke.jsonl")
        >>> dataset.total, [item.id for item in dataset if isinstance(item, EvalCase)][:2]
    """

    def __init__(self, source: DatasetSource) -> None:
        self.source = source
        if isinstance(source, str | Path):
            self.path: Path | None = Path(source)
            self.label = str(source)
            self._format = self._file_format(self.path)
            self.total = self._count()
        else:
            self.path = None
            self.label = LIST_LABEL
            self._format = "list"
            self.total = len(source)

    def _file_format(self, path: Path) -> str:
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            kind = "jsonl"
        elif suffix in CSV_SUFFIXES:
            kind = "csv"
        else:
            raise DatasetError(
                self.label,
                f"unknown dataset format {suffix or '(no extension)'!r}: use a .jsonl file "
                "(one JSON object per line) or a .csv file with a header row",
            )
        if not path.is_file():
            raise DatasetError(self.label, "no such file: give the path of a .jsonl or .csv")
        if kind == "csv":
            with self._open() as handle:
                self._check_header(csv.DictReader(handle).fieldnames or [])
        return kind

    def _open(self) -> TextIO:
        assert self.path is not None
        try:
            return self.path.open(encoding="utf-8", newline="")
        except OSError as exc:
            raise DatasetError(self.label, f"cannot read the file: {exc.strerror}") from exc

    def _check_header(self, columns: Sequence[str]) -> None:
        missing = [name for name in ("id", "prompt") if name not in columns]
        if missing:
            raise DatasetError(
                self.label,
                f"the CSV header lacks the column(s) {', '.join(missing)}: the first row must "
                f"name the columns, e.g. id,prompt,must_contain (found: {', '.join(columns)})",
                line=1,
            )
        unknown = [name for name in columns if name not in FIELDS]
        if unknown:
            raise DatasetError(
                self.label,
                f"unknown CSV column(s) {', '.join(unknown)}: known columns are "
                + ", ".join(FIELDS),
                line=1,
            )

    def _count(self) -> int:
        with self._open() as handle:
            if self._format == "csv":
                return sum(1 for _ in csv.DictReader(handle))
            return sum(1 for line in handle if line.strip())

    def __iter__(self) -> Iterator[EvalCase | BadLine]:
        seen: dict[str, int] = {}
        for line, raw in self._raw_items():
            item = raw if isinstance(raw, BadLine) else self._case(line, raw)
            if isinstance(item, EvalCase):
                first = seen.setdefault(item.id, line)
                if first != line:
                    item = BadLine(
                        self.label,
                        line,
                        f"duplicate id {item.id!r} (first on line {first}): give each case "
                        "its own id",
                    )
            yield item

    def check(self) -> None:
        """Read the whole dataset once and refuse it at its first unusable line.

        For the command line, which must not start an evaluation it would report half
        failed; a flow given the same dataset reports each bad line as a failed case.

        Raises:
            DatasetError: naming the file, the line and the fix.
        """
        for item in self:
            if isinstance(item, BadLine):
                raise DatasetError(item.path, item.message, line=item.line)

    def _case(self, line: int, data: Any) -> EvalCase | BadLine:
        if not isinstance(data, Mapping):
            return BadLine(self.label, line, f"not a JSON object ({FORMAT_HINT})")
        try:
            return EvalCase.model_validate(dict(data))
        except ValidationError as exc:
            return BadLine(self.label, line, describe_validation(exc))

    def _raw_items(self) -> Iterator[tuple[int, Any]]:
        if self._format == "list":
            assert not isinstance(self.source, str | Path)
            yield from enumerate(self.source, start=1)
            return
        with self._open() as handle:
            if self._format == "csv":
                reader = csv.DictReader(handle)
                for row in reader:
                    if None in row:
                        yield (
                            reader.line_num,
                            BadLine(
                                self.label,
                                reader.line_num,
                                "more cells than header columns: quote cells that contain commas",
                            ),
                        )
                        continue
                    yield reader.line_num, _csv_case(row)
                return
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    yield line, json.loads(text)
                except json.JSONDecodeError as exc:
                    yield (
                        line,
                        BadLine(
                            self.label, line, f"not valid JSON ({exc.msg} at column {exc.colno})"
                        ),
                    )


def _csv_case(row: Mapping[str, str | None]) -> dict[str, Any]:
    case: dict[str, Any] = {}
    for column, cell in row.items():
        if cell is None or not cell.strip():
            continue
        if column in LIST_FIELDS:
            case[column] = _csv_list(cell)
        else:
            case[column] = cell
    return case


def _csv_list(cell: str) -> Any:
    text = cell.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return [part.strip() for part in text.split("|") if part.strip()]
