"""A real Prefect server on PostgreSQL, a process worker and `prefect deploy --all`.

The server, the worker and every flow run are separate processes, as on a user's
machine; the Bedrock emulator and the local Nexus run in this test process and the flows
reach them over HTTP.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from nexus_bedrock_tasks.local.bedrock.testing import run_emulator
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_SH = ROOT / "tests" / "deploy" / "postgres.sh"
STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Deployed:
    """The running deployment stack of the test module."""

    env: dict[str, str]
    api_url: str
    nexus: LocalNexus
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, **extra_env: str) -> subprocess.Popen[bytes]:
        """`prefect worker start --pool local` with the stack's env (plus `extra_env`)."""
        name = f"worker-{len(self.workers)}.log" if self.workers else "worker.log"
        with (self.logs / name).open("wb") as log:
            worker = _start(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "local"],
                {**self.env, **extra_env},
                log,
            )
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """Stop every worker still running."""
        for worker in self.workers:
            if worker.poll() is None:
                _stop(worker)

    def prefect(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run the `prefect` CLI against the test server from the repository root."""
        return subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run `nexus-bedrock` against the test server."""
        return subprocess.run(
            [sys.executable, "-m", "nexus_bedrock_tasks.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def traces(self, **metadata: Any) -> list[dict[str, Any]]:
        """Full traces in the local Nexus whose metadata has these values."""
        headers = {"Authorization": f"Bearer {self.nexus.api_key}"}
        rows = httpx.get(
            f"{self.nexus.url}/api/v1/traces", params={"limit": 200}, headers=headers
        ).json()
        return [
            httpx.get(f"{self.nexus.url}/api/v1/traces/{row['id']}", headers=headers).json()
            for row in rows
            if all(row["metadata"].get(key) == value for key, value in metadata.items())
        ]

    def wait_for_traces(self, count: int, timeout: float = 60, **metadata: Any) -> list[Any]:
        """The traces matching `metadata` once `count` of them ended (flow runs flush at exit)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [t for t in self.traces(**metadata) if t["ended_at"]]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer in {STARTUP_TIMEOUT_S}s")


def _start(command: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster (tests/deploy/postgres.sh), removed afterwards."""
    data = Path(f"/tmp/nbt-deploy-pg-{uuid.uuid4().hex[:12]}")
    started = subprocess.run(
        ["bash", str(POSTGRES_SH), "start", str(data)], capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(POSTGRES_SH), "stop", str(data)], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
        for suffix in (".port", ".password"):
            Path(f"{data}{suffix}").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def deployed(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """Server on PostgreSQL, `local` process pool, every deployment of prefect.yaml, a worker."""
    home = tmp_path_factory.mktemp("deploy")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NEXUS_"))}
    with (
        run_emulator(ROOT / "deployments" / "agents.yaml") as emulator,
        run_local_nexus(db_path=home / "nexus.db") as nexus,
    ):
        env = {
            **base,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "DO_NOT_TRACK": "1",
            "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME": emulator,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "NEXUS_BASE_URL": nexus.url,
            "NEXUS_API_KEY": nexus.api_key,
            "NEXUS_BEDROCK_OUTBOX": str(home / "outbox.sqlite3"),
            "NEXUS_BEDROCK_TOOL_LEDGER": str(home / "ledger.sqlite3"),
            "NEXUS_BEDROCK_EVAL_RESULTS_DIR": str(home / "evals"),
            "PYTHONWARNINGS": "ignore",
        }
        port = api_url.rsplit(":", 1)[1].split("/")[0]
        logs = home / "logs"
        logs.mkdir()
        with (logs / "server.log").open("wb") as server_log:
            server = _start(
                [sys.executable, "-m", "prefect", "server", "start", "--no-ui"]
                + ["--host", "127.0.0.1", "--port", port],
                env,
                server_log,
            )
        stack = Deployed(env=env, api_url=api_url, nexus=nexus, logs=logs)
        try:
            _wait_healthy(api_url, server, logs / "server.log")
            for args in (
                ("work-pool", "create", "local", "--type", "process", "--overwrite"),
                ("--no-prompt", "deploy", "--all"),
            ):
                done = stack.prefect(*args)
                assert done.returncode == 0, done.stdout + done.stderr
            stack.start_worker()
            yield stack
        finally:
            stack.stop_workers()
            _stop(server)
