"""End-to-end fixtures: the emulator, the local Nexus, a tracer exporting to it, Prefect."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.local.bedrock.testing import run_emulator
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from nexus_bedrock_tasks.nexus.exporter import NexusExporter
from nexus_bedrock_tasks.settings import NexusSettings
from nexus_bedrock_tasks.tools import default_registry, load_tools
from nexus_bedrock_tasks.tracing import Tracer, set_tracer

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "deployments" / "agents.yaml"
RECORDINGS = ROOT / "tests" / "recordings"
DEMO_TOOLS = ROOT / "deployments" / "demo_tools.py"


@pytest.fixture(scope="session")
def emulator() -> Iterator[str]:
    """The Bedrock emulator with the deployed agents and the recordings for replay."""
    with run_emulator(AGENTS, replay_dir=RECORDINGS) as url:
        yield url


@pytest.fixture(scope="session")
def nexus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNexus]:
    """The local Nexus-compatible server (fault knobs enabled)."""
    with run_local_nexus(
        db_path=tmp_path_factory.mktemp("nexus") / "nexus.db", faults=True
    ) as server:
        yield server


@pytest.fixture(scope="session")
def aws_env(emulator: str) -> Iterator[str]:
    """Standard AWS settings pointing stock boto3 at the emulator."""
    values = {
        "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME": emulator,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    yield emulator
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@dataclass
class Traced:
    """The tracer of one test and a reader of what reached the local Nexus."""

    exporter: NexusExporter
    nexus: LocalNexus
    loop: LoopThread

    def trace(self, local_trace_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The Nexus trace of a run, once everything was delivered."""
        assert self.exporter.flush(timeout) == 0, self.exporter.stats()
        nexus_id = self.exporter.nexus_trace_id(local_trace_id, timeout=timeout)
        assert nexus_id is not None
        response = httpx.get(
            f"{self.nexus.url}/api/v1/traces/{nexus_id}",
            headers={"Authorization": f"Bearer {self.nexus.api_key}"},
            timeout=10,
        )
        response.raise_for_status()
        trace: dict[str, Any] = response.json()
        return trace


@pytest.fixture
def traced(nexus: LocalNexus, tmp_path: Path, flow_loop: LoopThread) -> Iterator[Traced]:
    """A tracer exporting to the local Nexus through a private outbox."""
    settings = NexusSettings(base_url=nexus.url, api_key=nexus.api_key, agent_id="bedrock-agent")
    exporter = NexusExporter(settings, outbox_path=tmp_path / "outbox.sqlite3")
    exporter.start()
    set_tracer(Tracer(exporter))
    try:
        yield Traced(exporter=exporter, nexus=nexus, loop=flow_loop)
    finally:
        set_tracer(None)
        exporter.close(timeout=10)


@contextlib.contextmanager
def restored_tool_registry() -> Iterator[None]:
    """The process-wide tool registry as it was before the block, whatever it registered."""
    saved = dict(default_registry._tools)
    try:
        yield
    finally:
        default_registry._tools.clear()
        default_registry._tools.update(saved)


@pytest.fixture
def tools() -> Iterator[None]:
    """The demo tools registered; the registry restored after the test."""
    with restored_tool_registry():
        load_tools(str(DEMO_TOOLS))
        yield


@pytest.fixture
def stack(prefect_backend: None, aws_env: str, traced: Traced) -> Traced:
    """Everything an end-to-end invocation needs."""
    return traced


class LoopThread:
    """One event loop for every flow of the session, as a long-lived program has.

    Prefect keeps API clients per event loop; a fresh `asyncio.run` per flow would leave
    their sockets to the garbage collector.
    """

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 240) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        import asyncio

        async def drain() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(drain(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def flow_loop(prefect_backend: None) -> Iterator[LoopThread]:
    """The session's event loop for running async flows."""
    runner = LoopThread()
    yield runner
    runner.close()


# Prefect's own API clients leave sockets to its temporary test server for the garbage
# collector (seen with one persistent event loop too). Collect them inside the flow
# tests, whose marks ignore exactly these warnings, so no later test inherits them.
PREFECT_SOCKET_WARNINGS = [
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture(autouse=True)
def _collect_prefect_sockets() -> Iterator[None]:
    yield
    import gc

    gc.collect()
