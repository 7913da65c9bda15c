"""`nexus-bedrock invoke` as a user runs it: real processes, the JSON contract, exit codes,
and every AWS recording replayed through it with figures counted independently."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from nexus_bedrock_tasks.cli import app
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from tests.bedrock.test_recordings import raw_figures
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS, RECORDINGS
from tests.flow.test_process_signals import cli_env  # noqa: F401 - fixture

pytestmark = PREFECT_SOCKET_WARNINGS
CONTRACT_KEYS = {
    "text", "session_id", "trace_id", "flow_run_id", "finish_reason", "usage", "counts",
    "cost_usd", "error",
}  # fmt: skip
COUNT_KEYS = {
    "llm_calls", "kb_lookups", "action_calls", "code_interpreter_calls", "collaborator_calls",
    "guardrail_interventions", "return_control_rounds", "tool_calls", "citations", "retries",
    "answer_chars",
}  # fmt: skip
INDEX = json.loads((RECORDINGS / "index.json").read_text())


def invoke(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "nexus_bedrock_tasks.cli", "invoke", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def summary_of(nexus: LocalNexus, trace_id: str) -> dict[str, Any]:
    trace = httpx.get(
        f"{nexus.url}/api/v1/traces/{trace_id}",
        headers={"Authorization": f"Bearer {nexus.api_key}"},
    ).json()
    spans = [span for span in trace["spans"] if span["name"] == "summary"]
    assert len(spans) == 1
    figures: dict[str, Any] = json.loads(spans[0]["output"])
    return figures


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agent-id", "bad id", "--alias-id", "TSTALIASID", "hi"], "agent_id 'bad id'"),
        (["--agent-id", "DEMO000001", "--alias-id", "TSTALIASID", ""], "prompt is empty"),
        (
            ["--agent-id", "DEMO000001", "--alias-id", "TSTALIASID", "--tools", "nope_mod", "hi"],
            "--tools nope_mod: module not found",
        ),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["invoke", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("entry", INDEX, ids=[e["file"].split(".")[0] for e in INDEX])
def test_recordings_replayed_through_invoke_match_independent_counts(
    cli_env: dict[str, str],  # noqa: F811 - fixture
    nexus: LocalNexus,
    entry: dict[str, Any],
) -> None:
    _, agent, _, alias, *_ = entry["path"].strip("/").split("/")
    done = invoke(cli_env, "--agent-id", agent, "--alias-id", alias, "--json", "replay")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == CONTRACT_KEYS and set(result["counts"]) == COUNT_KEYS
    raw = raw_figures(RECORDINGS / entry["file"])
    assert result["text"] == raw.text.decode()
    figures = summary_of(nexus, result["trace_id"])
    assert figures["input_tokens"] == sum(v[0] for v in raw.usage.values())
    assert figures["output_tokens"] == sum(v[1] for v in raw.usage.values())
    assert figures["llm_calls"] == raw.model_outputs
    assert figures["kb_lookups"] == raw.kb_inputs
    assert figures["code_interpreter_calls"] == raw.code_inputs
    assert figures["collaborator_calls"] == raw.collaborator_inputs
    assert figures["guardrail_interventions"] == raw.guardrail_interventions
    assert figures["citations"] == raw.citations
    assert {key: figures[key] for key in COUNT_KEYS} == result["counts"]


@pytest.mark.slow
def test_failed_invocation_exits_1_with_one_line(
    cli_env: dict[str, str],  # noqa: F811 - fixture
) -> None:
    done = invoke(cli_env, "--agent-id", "NOSUCHAGNT", "--alias-id", "TSTALIASID", "--json", "hi")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["finish_reason"] == "error" and "ResourceNotFoundException" in result["error"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ResourceNotFoundException" in errors[0]
