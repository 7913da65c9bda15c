"""Worker restart during a deployment run (issue #9, Process).

The stack of tests/deploy/conftest.py (Prefect server on PostgreSQL, `local` process pool,
`prefect deploy --all`): a run of `invoke-agent/invoke-agent` for the TRIP agent, whose
steps are slow, is mid-stream when its worker gets SIGTERM; a new worker starts with the
same environment. The flow run must reach a final state (a crashed one is run again with
`prefect deployment run`), its trace must end with one `summary` span, no span may be
stored twice and no tool may run twice.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from tests.deploy.conftest import Deployed, deployed, postgres_url  # noqa: F401 - fixtures
from tests.faults.conftest import AWS_KEY_ID, AWS_SECRET, TRIP, Collector, Scenario

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TRIP_TOOLS = "tests/flow/trip_tools.py"  # relative to the deployment's working directory
PROMPT = "What's the weather in Rome and are there hotels for 3 nights?"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
HOW = (
    "The PostgreSQL-backed Prefect server, `local` process pool and `prefect deploy --all` "
    "of `tests/deploy/conftest.py`. A run of `invoke-agent/invoke-agent` (TRIP agent, one "
    "returnControl round with get_forecast and find_hotels, tools logged to a file named by "
    "`TRIP_TOOL_LOG` in the worker's environment) streams a session whose every step takes "
    "2 s (`step_latency_ms`). Once the flow run is RUNNING and Nexus holds its "
    "`task:invoke_agent` span, the worker process gets SIGTERM; when it has exited a new "
    "`prefect worker start --pool local` starts with the same environment. What Prefect "
    "does: the worker turns SIGTERM into SIGINT, shuts down, and on the way out kills the "
    "flow-run process it started (its process manager sends SIGTERM, then SIGKILL after a "
    "30 s grace); the worker exits 0. The flow-run process dies without reporting a state "
    "and without the flow's hooks ending the trace: Prefect keeps showing the run Running, "
    "the Nexus trace stays `running`, and the new worker does not touch it (a worker only "
    "picks up scheduled runs). `nexus-bedrock reconcile` (the deployment's ledger, outbox "
    "and Prefect API) then finds the open trace of a dead process, marks the run Crashed "
    "and ends the trace as error; `prefect deployment run` in the same session completes. "
    "Not one tool had run before the kill, each runs once in the re-run."
)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def flow_run(deployed: Deployed, run_id: str) -> dict[str, Any]:  # noqa: F811 - fixture name
    response = httpx.get(f"{deployed.api_url}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def flow_run_pids(run_id: str) -> list[int]:
    """Processes whose environment names this flow run (the worker's child)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0"):
            pids.append(int(proc.name))
    return pids


def alive(pid: int) -> bool:
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_worker_restart_during_a_deployment_run(
    deployed: Deployed,  # noqa: F811 - fixture
    collector: Collector,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    scenario = Scenario(
        "Process", "worker restart during a deployment run", HOW, deployed.nexus, tmp_path,
        cast(Any, None), collector, monkeypatch,
    )  # fmt: skip
    emulator = deployed.env["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"]
    worker_env = {
        "TRIP_TOOL_LOG": str(scenario.tool_log),
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID,  # secrets that look real: a leak is findable
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    }
    deployed.stop_workers()  # the fixture's worker has no tool log in its environment
    first = deployed.start_worker(**worker_env)
    session = f"restart-{uuid.uuid4().hex[:8]}"
    set_session_faults(emulator, session, step_latency_ms=2000)
    params = {**TRIP, "prompt": PROMPT, "session_id": session, "tools_module": TRIP_TOOLS}
    dep = httpx.get(f"{deployed.api_url}/deployments/name/invoke-agent/invoke-agent", timeout=10)
    dep.raise_for_status()
    created = httpx.post(
        f"{deployed.api_url}/deployments/{dep.json()['id']}/create_flow_run",
        json={"parameters": params},
        timeout=10,
    )
    created.raise_for_status()
    run_id = created.json()["id"]

    def mid_stream() -> bool:
        if flow_run(deployed, run_id)["state_type"] != "RUNNING":
            return False
        spans = [s["name"] for t in deployed.traces(session_id=session) for s in t["spans"]]
        return "task:invoke_agent" in spans

    wait_for(mid_stream, 180, "the flow run to be RUNNING and mid-stream")
    children = flow_run_pids(run_id)
    assert children, "no process of the flow run found"
    first.send_signal(signal.SIGTERM)
    worker_exit = first.wait(60)
    child_after_sigterm = {pid: alive(pid) for pid in children}
    state_after_sigterm = flow_run(deployed, run_id)["state_name"]
    deployed.start_worker(**worker_env)

    # The new worker polls every second (PREFECT_WORKER_QUERY_SECONDS=1): 30 s is 30 polls
    # in which it could pick the orphaned run up or a server-side service could crash it.
    time.sleep(30)
    after_restart = flow_run(deployed, run_id)
    traces_then = [t["status"] for t in deployed.traces(session_id=session)]
    reconciled: list[dict[str, Any]] = []
    if after_restart["state_type"] not in FINAL:
        done = deployed.cli("reconcile", "--json")
        scenario.texts.append(("nexus-bedrock reconcile", done.stdout + done.stderr))
        assert done.returncode == 0, done.stdout + done.stderr
        reconciled = json.loads(done.stdout)["reconciled"]
    final = wait_for(
        lambda: (run := flow_run(deployed, run_id))["state_type"] in FINAL and run, 60,
        "the flow run to reach a final state",
    )  # fmt: skip
    first_trace = wait_for(
        lambda: [t for t in deployed.traces(session_id=session) if t["ended_at"]], 60,
        "the first trace to end",
    )[0]  # fmt: skip
    rerun_state = None
    if final["state_type"] != "COMPLETED":
        args = ["deployment", "run", "invoke-agent/invoke-agent", "--watch",
                "--watch-interval", "1"]  # fmt: skip
        for key, value in params.items():
            args += ["--param", f"{key}={value}"]
        done = deployed.prefect(*args, timeout=300)
        scenario.texts.append(("prefect deployment run", done.stdout + done.stderr))
        rerun_state = "Completed" if "Completed" in done.stdout else f"exit {done.returncode}"
        wait_for(
            lambda: len([t for t in deployed.traces(session_id=session) if t["ended_at"]]) >= 2,
            60, "the re-run's trace to end",
        )  # fmt: skip
    traces = deployed.traces(session_id=session)
    summaries = [[s["name"] for s in t["spans"]].count("summary") for t in traces]
    for log in sorted(deployed.logs.glob("worker*.log")):
        scenario.texts.append((log.name, log.read_text(errors="replace")))
    worker_log = "\n".join(text for name, text in scenario.texts if name.startswith("worker"))
    assert deployed.nexus.api_key not in worker_log, "the Nexus API key is in a worker log"

    lines = scenario.tool_lines()
    outcome = (
        f"worker exit {worker_exit} after SIGTERM; flow-run process "
        + ", ".join("still running" if up else "gone" for up in child_after_sigterm.values())
        + f"; run state then {state_after_sigterm}, 30 s after the new worker started "
        + f"{after_restart['state_name']} (trace {traces_then})"
        + "".join(f"; reconcile: {r['prefect_state']}, trace {r['status']}" for r in reconciled)
        + f"; final {final['state_name']}"
        + (f"; re-run {rerun_state}" if rerun_state else "")
        + f"; traces {[t['status'] for t in traces]}; summaries {summaries}"
        + f"; tools {lines}"
    )
    completed = final["state_type"] == "COMPLETED" or rerun_state == "Completed"
    ok = (
        completed
        and first_trace["status"] in {"success", "error"}
        and summaries == [1] * (2 if rerun_state else 1)
        and lines.count("find_hotels start Rome 3") == 1
    )
    with temporary_settings(updates={PREFECT_API_URL: deployed.api_url}):
        scenario.record(
            runs=2 if rerun_state else 1,
            outcome=outcome,
            outcome_ok=ok,
            tools_expected=2,
            outboxes=[Path(deployed.env["NEXUS_BEDROCK_OUTBOX"])],
        )
