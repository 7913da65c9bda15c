"""The whole stack with a real Prefect server (one cold start, ~15 s) and a flow run on it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from nexus_bedrock_tasks.local.prefect_api import (
    init_postgres_cluster,
    postgres_cluster,
    wait_postgres_ready,
)
from nexus_bedrock_tasks.local.stack import (
    StackError,
    is_healthy,
    is_ours,
    load_records,
    save_records,
    start_service,
    stop_service,
)
from tests.local_stack.helpers import CliRun, free_port, port_is_open

FLOW_RUN = """
import sys, time
from nexus_bedrock_tasks.local.prefect_api import choose_prefect_api
print(choose_prefect_api(verbose=True))
from prefect import flow

@flow
def ping() -> str:
    return "pong"

started = time.monotonic()
print(ping())
print(f"{time.monotonic() - started:.1f}", file=sys.stderr)
"""


@pytest.mark.slow
def test_up_runs_flows_on_the_stack_reuses_it_and_down_stops_it(local_cli: CliRun) -> None:
    ports = {name: free_port() for name in ("prefect", "bedrock", "nexus")}
    options = [item for name, port in ports.items() for item in (f"--{name}-port", str(port))]
    up = local_cli("up", *options, timeout=180)
    assert up.returncode == 0, up.stderr
    api_url = f"http://127.0.0.1:{ports['prefect']}/api"
    assert f"started prefect  {api_url}" in up.stdout and "sqlite" in up.stdout
    assert f"export PREFECT_API_URL={api_url}" in up.stdout

    report = json.loads(local_cli("status", "--json").stdout)
    assert report["prefect"]["url"] == api_url and report["prefect"]["database"] == "sqlite"
    assert all(report[name]["healthy"] for name in ("prefect", "bedrock", "nexus"))

    run = subprocess.run(
        [sys.executable, "-c", FLOW_RUN],
        capture_output=True,
        text=True,
        timeout=120,
        env={key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[:2] == ["stack", "pong"]
    count = httpx.post(f"{api_url}/flow_runs/count", json={}, timeout=10).json()
    assert count == 1

    started = time.monotonic()
    again = local_cli("up", *options)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reused") == 4 and "started" not in again.stdout
    assert time.monotonic() - started < 10

    records = load_records()
    down = local_cli("down")
    assert down.returncode == 0, down.stderr
    assert not any(is_ours(record) for record in records.values())
    assert not any(port_is_open(port) for port in ports.values())


@pytest.mark.slow
def test_the_private_postgres_cluster_starts_and_keeps_its_data(stack_home: Path) -> None:
    try:
        cluster = postgres_cluster()
    except StackError as exc:
        pytest.skip(str(exc))
    port = free_port()
    try:
        assert init_postgres_cluster(cluster) is True
        record = start_service(
            "postgres",
            cluster.server_argv(port),
            host="127.0.0.1",
            port=port,
            env=os.environ,
            run_as=cluster.run_as,
        )
        save_records({"postgres": record})
        wait_postgres_ready(cluster, record, timeout=60)
        assert is_healthy(record)
        assert cluster.connection_url(port).startswith("postgresql+asyncpg://prefect:")
        assert stop_service(record, timeout=15)
        assert not port_is_open(port)
        assert init_postgres_cluster(cluster) is False
    finally:
        for leftover in load_records().values():
            stop_service(leftover, timeout=15)
        # As root the cluster lives in the postgres user's home, outside the test's tmp dir.
        shutil.rmtree(cluster.data_dir.parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            cluster.data_dir.parent.parent.rmdir()
