"""Dataset reading: formats, streaming, and bad lines that name file, line, field and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_bedrock_tasks.evaluation.cases import EvalCase
from nexus_bedrock_tasks.evaluation.dataset import BadLine, Dataset
from nexus_bedrock_tasks.evaluation.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "deployments" / "datasets"


def write_jsonl(path: Path, *lines: object) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


def test_sample_datasets_are_valid_and_agree() -> None:
    jsonl, csv = list(Dataset(SAMPLES / "smoke.jsonl")), list(Dataset(SAMPLES / "smoke.csv"))
    assert all(isinstance(item, EvalCase) for item in jsonl + csv)
    assert Dataset(SAMPLES / "smoke.jsonl").total == len(jsonl) >= 8
    by_id = {case.id: case for case in jsonl if isinstance(case, EvalCase)}
    for case in csv:
        assert isinstance(case, EvalCase)
        assert case == by_id[case.id]


def test_jsonl_fields_lists_and_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "cases.jsonl",
        {"id": 7, "prompt": "Weather in Paris?", "must_contain": "rain", "tags": ["w"]},
        "",
        {"id": "b", "prompt": "Hi", "turns": ["first"], "expected_tools": ["weather.get"]},
    )
    dataset = Dataset(path)
    first, second = list(dataset)
    assert dataset.total == 2 and dataset.label == str(path)
    assert isinstance(first, EvalCase) and first.id == "7" and first.must_contain == ["rain"]
    assert isinstance(second, EvalCase) and second.prompts == ["first", "Hi"]


def test_bad_lines_name_file_line_field_and_the_rest_still_come(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "cases.jsonl",
        {"id": "ok-1", "prompt": "Hi"},
        {"id": "no-prompt"},
        "{not json",
        {"id": "typo", "prompt": "Hi", "must_contian": ["x"]},
        ["a", "list"],
        {"id": "ok-1", "prompt": "again"},
        {"id": "bad-regex", "prompt": "Hi", "expected_regex": "("},
        {"id": "ok-2", "prompt": "Bye", "max_tokens": 0},
        {"id": "ok-3", "prompt": "Bye"},
    )
    items = list(Dataset(path))
    assert [item.id for item in items if isinstance(item, EvalCase)] == ["ok-1", "ok-3"]
    bad = {item.line: item.error for item in items if isinstance(item, BadLine)}
    assert set(bad) == {2, 3, 4, 5, 6, 7, 8}
    assert bad[2].startswith(f"{path} line 2: field 'prompt': Field required")
    assert 'each case needs "id" and "prompt"' in bad[2]
    assert "not valid JSON" in bad[3]
    assert "unknown field 'must_contian'" in bad[4]
    assert "not a JSON object" in bad[5]
    assert "duplicate id 'ok-1' (first on line 1)" in bad[6]
    assert "field 'expected_regex'" in bad[7] and "regular expression" in bad[7]
    assert "field 'max_tokens'" in bad[8]
    bad_line = next(item for item in items if isinstance(item, BadLine))
    assert bad_line.result_id == f"{path}:2"


def test_csv_list_cells_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text(
        "id,prompt,must_contain,expected_tools,max_tokens\n"
        'a,"Weather, please",rain|Paris,"[""weather.get_forecast""]",500\n'
        "b,,x,,\n"
        "c,Hi,,,\n"
        "d,Hi,,,,extra\n"
    )
    items = list(Dataset(path))
    first = items[0]
    assert isinstance(first, EvalCase)
    assert first.prompt == "Weather, please" and first.must_contain == ["rain", "Paris"]
    assert first.expected_tools == ["weather.get_forecast"] and first.max_tokens == 500
    assert isinstance(items[1], BadLine) and items[1].line == 3
    assert "field 'prompt'" in items[1].error
    assert isinstance(items[2], EvalCase) and items[2].must_contain == []
    assert isinstance(items[3], BadLine) and "more cells than header" in items[3].error


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cases.txt", "x", "unknown dataset format '.txt'"),
        ("missing.jsonl", None, "no such file"),
        ("cases.csv", "name,prompt\n", "lacks the column(s) id"),
        ("cases.csv", "id,prompt,colour\n", "unknown CSV column(s) colour"),
    ],
)
def test_unusable_files_raise_naming_the_file(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError) as caught:
        Dataset(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_in_memory_list() -> None:
    dataset = Dataset([{"id": "a", "prompt": "Hi"}, {"id": "b"}])
    items = list(dataset)
    assert dataset.total == 2 and isinstance(items[0], EvalCase)
    assert isinstance(items[1], BadLine) and items[1].error.startswith("<dataset list> line 2:")
