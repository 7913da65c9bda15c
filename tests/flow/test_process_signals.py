"""Real processes killed mid-run: SIGTERM ends the trace as error; after SIGKILL,
`reconcile` ends it and a re-run in the same session does not run a finished tool again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS

pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]
TRIP_TOOLS = Path(__file__).with_name("trip_tools.py")


@pytest.fixture
def cli_env(
    prefect_backend: None, aws_env: str, nexus: LocalNexus, tmp_path: Path
) -> dict[str, str]:
    """Environment of a CLI process: the session's Prefect API, emulator, local Nexus."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env.update(
        {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "NEXUS_BASE_URL": nexus.url,
            "NEXUS_API_KEY": nexus.api_key,
            "NEXUS_BEDROCK_OUTBOX": str(tmp_path / "outbox.sqlite3"),
            "NEXUS_BEDROCK_TOOL_LEDGER": str(tmp_path / "ledger.sqlite3"),
            "TRIP_TOOL_LOG": str(tmp_path / "tools.log"),
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nexus_bedrock_tasks.cli", *args]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def session_trace(nexus: LocalNexus, session: str) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {nexus.api_key}"}
    rows = httpx.get(f"{nexus.url}/api/v1/traces", params={"limit": 200}, headers=headers).json()
    for row in rows:
        if row["metadata"].get("session_id") == session:
            trace: dict[str, Any] = httpx.get(
                f"{nexus.url}/api/v1/traces/{row['id']}", headers=headers
            ).json()
            return trace
    return None


def ended_trace(nexus: LocalNexus, session: str) -> dict[str, Any] | None:
    trace = session_trace(nexus, session)
    return trace if trace and trace["ended_at"] and trace["status"] != "running" else None


def test_sigterm_mid_stream_ends_the_trace_as_error(
    cli_env: dict[str, str], nexus: LocalNexus, aws_env: str
) -> None:
    session = f"term-{uuid.uuid4().hex[:8]}"
    set_session_faults(aws_env, session, step_latency_ms=4000)
    proc = subprocess.Popen(
        cli("invoke", "--agent-id", "DEMO000001", "--alias-id", "TSTALIASID",
            "--session-id", session, "What should I pack for a city trip?"),
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: session_trace(nexus, session), 90, "the trace to be created")
        time.sleep(1.0)  # inside the slow stream
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    trace = wait_for(lambda: ended_trace(nexus, session), 30, "the trace to end")
    assert trace["status"] == "error"
    names = [span["name"] for span in trace["spans"]]
    assert names.count("summary") == 1
    summary = next(s for s in trace["spans"] if s["name"] == "summary")
    assert json.loads(summary["output"])["finish_reason"] == "error"
    unfinished = [
        s for s in trace["spans"] if s["status"] == "error" and s["name"].startswith("task:")
    ]
    assert unfinished, names


def test_sigkill_mid_tool_then_reconcile_then_rerun_skips_finished_tool(
    cli_env: dict[str, str], nexus: LocalNexus, tmp_path: Path
) -> None:
    session = f"kill-{uuid.uuid4().hex[:8]}"
    prompt = "Check free dates for an itinerary in Rome for 3 nights"
    agent = ["--agent-id", "TRIP000001", "--alias-id", "TSTALIASID", "--session-id", session]
    command = cli("invoke", *agent, "--tools", str(TRIP_TOOLS), "--json", prompt)
    log = tmp_path / "tools.log"
    proc = subprocess.Popen(
        command, env={**cli_env, "TRIP_SLOW_HOTELS": "60"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(
            lambda: log.exists() and "find_hotels start" in log.read_text(), 120, "round 2's tool"
        )
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert session_trace(nexus, session)["status"] == "running"  # type: ignore[index]

    done = subprocess.run(
        cli("reconcile", "--json"), env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    reconciled = json.loads(done.stdout)["reconciled"]
    assert [item["status"] for item in reconciled] == ["error"]
    assert reconciled[0]["prefect_state"] == "Crashed"
    trace = wait_for(lambda: ended_trace(nexus, session), 30, "the reconciled trace")
    assert trace["status"] == "error"

    rerun = subprocess.run(command, env=cli_env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert "Hotels in Rome for 3 nights: Hotel Roma, Albergo Sole" in result["text"]
    lines = log.read_text().splitlines()
    assert lines.count("check_dates Rome") == 1  # finished before the kill: never again
    assert lines.count("find_hotels start Rome 3") == 2  # killed mid-way, so run again
    assert lines.count("find_hotels done Rome 3") == 1
