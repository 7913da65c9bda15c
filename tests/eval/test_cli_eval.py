"""`nexus-bedrock eval` and `nexus-bedrock session` as a user runs them: exit codes, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_bedrock_tasks.cli import app
from nexus_bedrock_tasks.evaluation.report import CLI_JSON_KEYS
from nexus_bedrock_tasks.evaluation.results import read_results
from tests.flow.conftest import DEMO_TOOLS, PREFECT_SOCKET_WARNINGS, ROOT

pytestmark = PREFECT_SOCKET_WARNINGS
SMOKE = ROOT / "deployments" / "datasets" / "smoke.jsonl"
AGENT = ["--agent-id", "DEMO000001", "--alias-id", "TSTALIASID"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nexus_bedrock_tasks.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "missing.jsonl", *AGENT], "missing.jsonl: no such file"),
        (["eval", str(SMOKE), *AGENT, "--scorer", "nope"], "unknown scorer 'nope'"),
        (["eval", str(SMOKE), *AGENT, "--baseline", str(SMOKE)], "line 1: not a results line"),
        (["eval", str(SMOKE), *AGENT, "--task-runner", "gpu"], "--task-runner 'gpu'"),
        (["eval", str(SMOKE), *AGENT, "--cases-per-task", "0"], "--cases-per-task 0 must be"),
        (["session", *AGENT, "--attribute", "tier", "hi"], "--attribute 'tier': write KEY=VALUE"),
        (["session", *AGENT, "hi", ""], "prompt is empty"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_eval_help_explains_cases_per_task() -> None:
    result = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--cases-per-task" in result.output and "1 gives one task run per case" in result.output


@pytest.mark.slow
def test_eval_json_contract_results_and_min_pass_rate(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "smoke-results.jsonl"
    done = cli(
        cli_env, "eval", str(SMOKE), *AGENT, "--tools", str(DEMO_TOOLS), "--out", str(out),
        "--min-pass-rate", "1", "--json", "-c", "2", "--cases-per-task", "3",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert list(summary) == list(CLI_JSON_KEYS)
    assert summary["cases"] == summary["passed"] == 8 and summary["pass_rate"] == 1.0
    assert summary["input_tokens"] > 0 and summary["p95_latency_s"] >= summary["p50_latency_s"]
    assert f"results: {out}" in done.stderr
    assert {r.id for r in read_results(out)} == {
        json.loads(line)["id"] for line in SMOKE.read_text().splitlines()
    }
    # Without the tools the weather cases fail: exit 1, still one JSON object, regressions.
    failed = cli(
        cli_env, "eval", str(SMOKE), *AGENT, "--baseline", str(out), "--min-pass-rate", "0.9",
        "--scorer", "default", "--out", str(tmp_path / "second.jsonl"),
    )  # fmt: skip
    assert failed.returncode == 1
    assert "6/8 passed (75.0%)" in failed.stdout
    assert "2 regression(s)" in failed.stdout and "weather-paris" in failed.stdout
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: pass rate 75.0% is below the minimum 90.0% (6/8 cases passed)"]


@pytest.mark.slow
def test_session_command_prints_the_transcript(cli_env: dict[str, str]) -> None:
    done = cli(
        cli_env, "session", *AGENT, "--attribute", "tier=gold", "--json",
        "What is there to see in Lisbon?", "What did I ask earlier?",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    transcript = json.loads(done.stdout)
    assert [turn["turn"] for turn in transcript["turns"]] == [1, 2]
    assert transcript["turns"][1]["text"].startswith("Earlier you asked")
    assert transcript["session_ended"] is True and transcript["usage"]["total_tokens"] > 0
    assert all(turn["trace_id"] for turn in transcript["turns"])
