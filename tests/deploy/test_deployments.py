"""prefect.yaml end to end: deploy, run each deployment on a process worker, read Nexus.

`prefect deployment run … --watch` as a user types it; the flow runs are subprocesses of
the worker and mirror into the local Nexus, where each trace is checked.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.evaluation.results import read_results
from tests.deploy.conftest import ROOT, Deployed

pytestmark = pytest.mark.slow
SMOKE = ROOT / "deployments" / "datasets" / "smoke.jsonl"
SMOKE_IDS = {json.loads(line)["id"] for line in SMOKE.read_text().splitlines()}


def run(deployed: Deployed, name: str, **params: Any) -> None:
    args = ["deployment", "run", name, "--watch", "--watch-interval", "1"]
    for key, value in params.items():
        args += ["--param", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    done = deployed.prefect(*args)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Completed" in done.stdout


def deployment(deployed: Deployed, name: str) -> dict[str, Any]:
    response = httpx.get(f"{deployed.api_url}/deployments/name/{name}", timeout=10)
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def test_prefect_yaml_deploys_every_flow_and_a_nightly_schedule(deployed: Deployed) -> None:
    nightly = deployment(deployed, "batch-evaluation/nightly-evaluation")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["schedules"][0]["active"] is True
    assert nightly["parameters"]["dataset"] == "deployments/datasets/smoke.jsonl"
    assert nightly["work_pool_name"] == "local"
    assert nightly["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    for name in ("invoke-agent/invoke-agent", "agent-session/agent-session"):
        assert deployment(deployed, name)["work_pool_name"] == "local"


def test_invocation_deployment_run_is_one_trace(deployed: Deployed) -> None:
    prompt = f"What's the weather in Paris tomorrow? ({uuid.uuid4().hex[:6]})"
    run(deployed, "invoke-agent/invoke-agent", prompt=prompt)
    (trace,) = deployed.wait_for_traces(1, prompt=prompt)
    invoke = deployment(deployed, "invoke-agent/invoke-agent")
    assert trace["status"] == "success"
    assert trace["metadata"]["deployment"] == invoke["id"]
    assert trace["metadata"]["flow_name"] == "invoke-agent"
    names = [span["name"] for span in trace["spans"]]
    assert "tool:weather.get_forecast" in names and names[-1] == "summary"


def test_session_deployment_run_is_one_trace_per_turn(deployed: Deployed) -> None:
    session = f"deploy-{uuid.uuid4().hex[:8]}"
    turns = ["What is there to see in Lisbon?", "What did I ask earlier?"]
    run(deployed, "agent-session/agent-session", turns=turns, session_id=session)
    traces = deployed.wait_for_traces(2, session_id=session)
    assert sorted(t["metadata"]["turn"] for t in traces) == [1, 2]
    assert {t["metadata"]["prompt"] for t in traces} == set(turns)
    assert all(t["status"] == "success" for t in traces)
    assert len({t["metadata"]["session_flow_run_id"] for t in traces}) == 1


def test_evaluation_deployment_run_traces_every_case(deployed: Deployed, tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    out = tmp_path / "nightly.jsonl"
    run(deployed, "batch-evaluation/evaluation", eval_run_id=run_id, out=str(out))
    results = {r.id: r for r in read_results(out)}
    assert set(results) == SMOKE_IDS and all(r.passed for r in results.values())
    traces = deployed.wait_for_traces(len(SMOKE_IDS), eval_run_id=run_id)
    assert {t["metadata"]["case_id"] for t in traces} == SMOKE_IDS
    evaluation = deployment(deployed, "batch-evaluation/evaluation")
    for trace in traces:
        assert trace["metadata"]["deployment"] == evaluation["id"]
        assert trace["metadata"]["passed"] is True and trace["metadata"]["score"] == 1.0


def test_fan_out_splits_into_deployment_runs_and_merges(deployed: Deployed, tmp_path: Path) -> None:
    out = tmp_path / "merged.jsonl"
    done = deployed.cli(
        "eval", str(SMOKE), "--agent-id", "DEMO000001", "--alias-id", "TSTALIASID",
        "--tools", "deployments/demo_tools.py", "--fan-out-deployment",
        "batch-evaluation/evaluation", "--shards", "2", "--out", str(out), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["cases"] == len(SMOKE_IDS) and summary["pass_rate"] == 1.0
    results = list(read_results(out))
    assert {r.id for r in results} == SMOKE_IDS and all(r.trace_id for r in results)
    found = {t["id"]: t for r in results for t in deployed.traces(case_id=r.id)}
    traces = [found[r.trace_id or ""] for r in results]
    assert len({t["metadata"]["eval_run_id"] for t in traces}) == 1  # one evaluation
    assert len({t["metadata"]["flow_run_id"] for t in traces}) == 2  # run by two shards
