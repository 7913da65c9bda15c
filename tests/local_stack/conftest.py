"""Fixtures of the local-stack tests: a private data dir, free ports, the CLI as a subprocess.

Every test gets its own ``XDG_DATA_HOME``, so no test ever sees or stops a real user stack,
and every process a test's stack started is stopped when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nexus_bedrock_tasks.local.stack import (
    ServiceRecord,
    load_records,
    save_records,
    start_service,
    stop_service,
)
from tests.local_stack.helpers import CliRun, free_port, port_is_open


@pytest.fixture
def stack_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The stack directory of this test; whatever its stack still runs is stopped after it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "no-profiles.toml"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        yield tmp_path / "data" / "nexus-bedrock" / "stack"
    finally:
        for record in load_records().values():
            stop_service(record, timeout=5)


@pytest.fixture
def local_cli(stack_home: Path) -> CliRun:
    """Run `nexus-bedrock local ...` in a fresh process, as a user would."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nexus_bedrock_tasks.cli", "local", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ),
        )

    return run


@pytest.fixture
def unrelated_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process the stack never started (its pid gets written into stack files by hand)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def fake_prefect(stack_home: Path, tmp_path: Path) -> Callable[[bool], ServiceRecord]:
    """Start a stand-in for the stack's Prefect server: a static server with /api/health.

    Its record is what `local up` writes; `healthy=False` leaves the health URL unanswered.
    """

    def start(healthy: bool = True) -> ServiceRecord:
        root = tmp_path / "fake-prefect"
        (root / "api").mkdir(parents=True, exist_ok=True)
        if healthy:
            (root / "api" / "health").write_text("true")
        port = free_port()
        argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        record = start_service(
            "prefect",
            [*argv, "--directory", str(root)],
            host="127.0.0.1",
            port=port,
            env=os.environ,
            database="sqlite",
        )
        save_records({**load_records(), "prefect": record})
        deadline = time.monotonic() + 15
        while not port_is_open(port):
            assert time.monotonic() < deadline, "the stand-in server did not start"
            time.sleep(0.05)
        return record

    return start
