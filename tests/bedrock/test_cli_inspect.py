"""`nexus-bedrock inspect`: the JSON contract of issue 3 and clear errors for bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_bedrock_tasks.cli import app
from tests.bedrock.test_recordings import FILES, raw_figures

runner = CliRunner()
SUMMARY_KEYS = {
    "finish_reason", "input_tokens", "output_tokens", "total_tokens", "llm_calls", "kb_lookups",
    "action_calls", "code_interpreter_calls", "collaborator_calls", "guardrail_interventions",
    "return_control_rounds", "tool_calls", "citations", "retries", "answer_chars", "cost_usd",
}  # fmt: skip


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_inspect_json_matches_raw_figures(path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    raw = raw_figures(path)
    assert set(report) == SUMMARY_KEYS | {"text", "spans"}
    assert report["text"] == raw.text.decode()
    assert report["input_tokens"] == sum(v[0] for v in raw.usage.values())
    assert report["output_tokens"] == sum(v[1] for v in raw.usage.values())
    assert report["llm_calls"] == raw.model_outputs
    assert report["collaborator_calls"] == raw.collaborator_inputs
    assert report["citations"] == raw.citations
    assert report["spans"][-1] == {"name": "summary", "parent": None, "status": "ok"}
    names = {span["name"] for span in report["spans"]}
    for span in report["spans"]:
        assert set(span) == {"name", "parent", "status"}
        assert span["parent"] is None or span["parent"] in names


def test_inspect_nests_collaborators_by_name() -> None:
    path = next(p for p in FILES if p.stem == "multi_agent_collaborators")
    report = json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).stdout)
    parents = [(s["name"], s["parent"]) for s in report["spans"] if s["name"].startswith("collab")]
    assert parents == [
        ("collaborator:SimpleSupervisor", None),
        ("collaborator:MathSolverAgent", "collaborator:SimpleSupervisor"),
        ("collaborator:MathSolverAgent", "collaborator:SimpleSupervisor"),
    ]


def test_inspect_tree_output_names_spans() -> None:
    path = next(p for p in FILES if p.stem == "guardrail_intervened")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0
    assert "guardrail" in result.stdout and "finish_reason=guardrail" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "holds no InvokeAgent event"), (b"not an event stream at all", "Checksum mismatch")],
)
def test_inspect_bad_file_exits_2_with_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.eventstream"
    bad.write_bytes(content)
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(bad) in lines[0]


def test_inspect_truncated_and_missing_files(tmp_path: Path) -> None:
    cut = tmp_path / "cut.eventstream"
    cut.write_bytes(FILES[0].read_bytes()[:777])
    result = runner.invoke(app, ["inspect", str(cut)])
    assert result.exit_code == 2 and "truncated" in result.stderr
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_console_script_runs() -> None:
    path = next(p for p in FILES if p.stem == "kb_lookup")
    proc = subprocess.run(
        [sys.executable, "-m", "nexus_bedrock_tasks.cli", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kb_lookups"] == 1
