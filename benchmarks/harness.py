"""What every benchmark shares: the services it talks to, an event loop for flows, timing.

`make bench` runs the services as separate processes, as a deployment has them: the local
stack (`nexus-bedrock local up --postgres`: the Bedrock emulator, the local Nexus and a
PostgreSQL-backed Prefect server) plus a second local Nexus with its fault knobs on (the
slow-Nexus figure). The smoke test runs the same benchmark code against in-process servers
(`inprocess_services`) and Prefect's test harness.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
AGENTS_FILE = ROOT / "deployments" / "agents.yaml"
RECORDINGS_DIR = ROOT / "tests" / "recordings"
DEV_KEY = "nxs_local_dev_key"
STACK_UP_TIMEOUT_S = 240.0
SERVICE_START_TIMEOUT_S = 60.0
_LEAKING_PREFIXES = ("PREFECT_", "AWS_", "NEXUS_")

T = TypeVar("T")


@dataclass
class Services:
    """Where the benchmarks find Bedrock, Nexus and Prefect.

    Attributes:
        bedrock_url: the Bedrock Agent Runtime emulator.
        nexus_url: the local Nexus every traced invocation exports to.
        api_key: the key both local Nexus servers accept.
        faults_nexus_url: a local Nexus whose ``/_faults`` knobs are on (may be `nexus_url`).
        prefect: how flow runs are recorded, in words, for the report.
        cli_env: environment for ``nexus-bedrock`` subprocesses that use these services;
            None when the CLI cannot be benchmarked here (`cli_reason` says why).
        cli_reason: why `cli_env` is None.
        notes: anything the report should say about how the services were started.
    """

    bedrock_url: str
    nexus_url: str
    api_key: str
    faults_nexus_url: str
    prefect: str
    cli_env: dict[str, str] | None = None
    cli_reason: str | None = None
    notes: list[str] = field(default_factory=list)


class LoopThread:
    """One event loop in a thread for every flow of the run, as a long-lived program has.

    A long-lived program also opens Prefect's API clients once
    (`nexus_bedrock_tasks.reuse_prefect_clients`, see README): `share_prefect_clients`
    does that, and every later `run` starts inside that client context. Without it,
    Prefect builds two HTTP clients per top-level flow run.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._context: contextvars.Context | None = None
        self._keeper: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None

    def share_prefect_clients(self) -> None:
        """Open Prefect's clients once; later runs use them (`reuse_prefect_clients`)."""
        from nexus_bedrock_tasks import reuse_prefect_clients

        ready: concurrent.futures.Future[contextvars.Context] = concurrent.futures.Future()

        async def keep_open() -> None:
            self._stop = asyncio.Event()
            async with reuse_prefect_clients():
                ready.set_result(contextvars.copy_context())
                await self._stop.wait()

        self._keeper = asyncio.run_coroutine_threadsafe(keep_open(), self.loop)
        self._context = ready.result(60)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600, shared: bool = True) -> T:
        """Run `coro` on the loop and wait for it; in the shared client context, if any,
        unless `shared` is False."""
        if self._context is None or not shared:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
        # The task copies the context current where it is created: this fresh copy.
        future = self._context.copy().run(asyncio.run_coroutine_threadsafe, coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        """Close the shared clients, cancel what is left, stop the loop and join its thread."""
        if self._keeper is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
            self._keeper.result(30)

        async def drain() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(drain(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- emulator and Nexus knobs over HTTP ---------------------------------------------------


class Knobs:
    """Sets emulator session faults and local-Nexus faults over one kept-alive HTTP client."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._http = httpx.Client(timeout=30)

    def new_session(self, step_latency_ms: float) -> str:
        """A fresh Bedrock session id whose every step takes `step_latency_ms`."""
        import uuid

        session_id = f"bench-{uuid.uuid4().hex}"
        url = f"{self._services.bedrock_url}/_emulator/sessions/{session_id}/faults"
        self._http.put(url, json={"step_latency_ms": step_latency_ms}).raise_for_status()
        return session_id

    def nexus_delay(self, seconds: float) -> None:
        """Make the fault-enabled Nexus answer every API request after `seconds`."""
        response = self._http.put(
            f"{self._services.faults_nexus_url}/_faults",
            json={"delay_s": seconds},
            headers={"Authorization": f"Bearer {self._services.api_key}"},
        )
        response.raise_for_status()

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()


def plain_client(bedrock_url: str) -> Any:
    """A stock boto3 ``bedrock-agent-runtime`` client for the emulator (the baseline)."""
    import boto3

    return boto3.client(
        "bedrock-agent-runtime",
        endpoint_url=bedrock_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def benchmark_call(client: Any, session_id: str) -> Any:
    """Invoke the benchmark agent with a plain boto3 call; its (unread) completion stream."""
    from benchmarks.figures import AGENT_ALIAS_ID, AGENT_ID, PROMPT

    response = client.invoke_agent(
        agentId=AGENT_ID,
        agentAliasId=AGENT_ALIAS_ID,
        sessionId=session_id,
        inputText=PROMPT,
        enableTrace=True,
    )
    return response["completion"]


def plain_call(client: Any, session_id: str) -> None:
    """The baseline: one plain invoke of the benchmark agent, every event of it read."""
    for _ in benchmark_call(client, session_id):
        pass


# -- starting the services ----------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without Prefect, AWS and Nexus settings, plus `extra`."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(_LEAKING_PREFIXES)
    }
    environment.update(extra or {})
    return environment


def _cli() -> list[str]:
    return [sys.executable, "-m", "nexus_bedrock_tasks.cli"]


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait until `url` answers 200.

    Raises:
        RuntimeError: the process exited or the URL did not answer within `timeout`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def background_server(argv: list[str], health_url: str, log: Path) -> Iterator[None]:
    """Run `argv` as a child process until the block ends; wait for `health_url` first."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, env=clean_environment()
        )
    try:
        wait_healthy(health_url, process, SERVICE_START_TIMEOUT_S)
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _stack_up(home: Path, ports: Mapping[str, int], postgres: bool) -> tuple[bool, str]:
    argv = [*_cli(), "local", "up", "--agents", str(AGENTS_FILE)]
    argv += [f"--{name}-port={port}" for name, port in ports.items()]
    if postgres:
        argv.append("--postgres")
    environment = clean_environment({"XDG_DATA_HOME": str(home)})
    try:
        done = subprocess.run(
            argv, env=environment, capture_output=True, text=True, timeout=STACK_UP_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return False, f"`local up` did not finish within {STACK_UP_TIMEOUT_S:.0f} s"
    return done.returncode == 0, (done.stderr or done.stdout).strip()[-600:]


def _stack_down(home: Path) -> None:
    environment = clean_environment({"XDG_DATA_HOME": str(home)})
    subprocess.run(
        [*_cli(), "local", "down"], env=environment, capture_output=True, timeout=120, check=False
    )


def _stack_env(home: Path) -> dict[str, str]:
    """What a user's shell has with the stack up: only the stack's state, no variables."""
    return clean_environment(
        {
            "XDG_DATA_HOME": str(home),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )


@contextmanager
def subprocess_services(home: Path) -> Iterator[Services]:
    """The local stack (PostgreSQL-backed Prefect when possible) and a fault-enabled Nexus.

    `home` is the stack's data directory (``XDG_DATA_HOME``): keep it between runs and the
    PostgreSQL cluster is created only once. This process is pointed at the stack through
    ``PREFECT_API_URL``, so call this before anything imports Prefect.
    """
    home.mkdir(parents=True, exist_ok=True)
    for stale in ("local-nexus.db", "outbox.sqlite3", "tool-ledger.sqlite3"):
        (home / "nexus-bedrock" / stale).unlink(missing_ok=True)
    ports = {name: free_port() for name in ("prefect", "bedrock", "nexus", "postgres")}
    notes: list[str] = []
    prefect = "PostgreSQL-backed `prefect server` (`nexus-bedrock local up --postgres`)"
    with ExitStack() as stack:
        up, output = _stack_up(home, ports, postgres=True)
        if not up:
            notes.append(f"`local up --postgres` failed ({output}); Prefect runs on SQLite")
            prefect = "SQLite-backed `prefect server` (`nexus-bedrock local up`)"
            up, output = _stack_up(home, ports, postgres=False)
        if up:
            stack.callback(_stack_down, home)
            bedrock_url = f"http://127.0.0.1:{ports['bedrock']}"
            nexus_url = f"http://127.0.0.1:{ports['nexus']}"
            os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{ports['prefect']}/api"
            cli_env: dict[str, str] | None = _stack_env(home)
            cli_reason = None
        else:
            notes.append(f"`local up` failed ({output}): own servers, ephemeral Prefect")
            prefect = "Prefect's ephemeral mode (in-process temporary server, SQLite)"
            bedrock_url = _own_server(stack, home, "bedrock", ["--agents", str(AGENTS_FILE)])
            nexus_url = _own_server(stack, home, "nexus", [], db=home / "nexus.db")
            cli_env, cli_reason = None, f"the local stack did not start: {output}"
        faults_nexus_url = _own_server(
            stack, home, "nexus", ["--faults"], db=home / "faults-nexus.db"
        )
        yield Services(
            bedrock_url=bedrock_url,
            nexus_url=nexus_url,
            api_key=DEV_KEY,
            faults_nexus_url=faults_nexus_url,
            prefect=prefect,
            cli_env=cli_env,
            cli_reason=cli_reason,
            notes=notes,
        )


def _own_server(
    stack: ExitStack, home: Path, kind: str, options: list[str], db: Path | None = None
) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (home / "logs").mkdir(exist_ok=True)
    if db is not None:
        db.unlink(missing_ok=True)
        options = [*options, "--db", str(db)]
    argv = [*_cli(), "local", kind, "--port", str(port), *options]
    health = url + ("/health" if kind == "nexus" else "/_emulator/health")
    stack.enter_context(background_server(argv, health, home / "logs" / f"{kind}-{port}.log"))
    return url


@contextmanager
def inprocess_services(workdir: Path, prefect_api_url: str | None) -> Iterator[Services]:
    """The emulator and one fault-enabled local Nexus in this process (smoke test).

    Args:
        workdir: where the Nexus database goes.
        prefect_api_url: the Prefect API the caller set up (a CLI subprocess gets it), or
            None to leave the CLI out.
    """
    from nexus_bedrock_tasks.local.bedrock.testing import run_emulator
    from nexus_bedrock_tasks.local.nexus.testing import run_local_nexus

    with (
        run_emulator(AGENTS_FILE) as bedrock_url,
        run_local_nexus(db_path=workdir / "nexus.db", faults=True) as nexus,
    ):
        cli_env = None
        if prefect_api_url is not None:
            cli_env = clean_environment(
                {
                    "PREFECT_API_URL": prefect_api_url,
                    "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME": bedrock_url,
                    "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "NEXUS_BASE_URL": nexus.url,
                    "NEXUS_API_KEY": nexus.api_key,
                    "XDG_DATA_HOME": str(workdir / "cli-data"),
                }
            )
        yield Services(
            bedrock_url=bedrock_url,
            nexus_url=nexus.url,
            api_key=nexus.api_key,
            faults_nexus_url=nexus.url,
            prefect="the caller's Prefect API (test harness)",
            cli_env=cli_env,
            cli_reason=None if cli_env else "no Prefect API URL given",
        )


def nexus_bedrock_command() -> list[str]:
    """How a user starts the CLI: the console script next to this interpreter."""
    script = Path(sys.executable).with_name("nexus-bedrock")
    if script.exists():
        return [str(script)]
    found = shutil.which("nexus-bedrock")
    return [found] if found else _cli()
